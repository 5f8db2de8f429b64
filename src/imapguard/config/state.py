"""Where imapguard keeps what it must remember: `[state]` and `[audit]`."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import field_validator, model_validator

from imapguard.config.base import Section, raise_problems

__all__ = ["AuditConfig", "StateConfig", "redacted_url"]

# libpq's sslmode values (https://www.postgresql.org/docs/current/libpq-ssl.html).
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def redacted_url(url: str) -> str:
    """The URL as it may be shown: a password written in it (`user:secret@`, or
    a `password=` parameter) is replaced by `***`. Every message that names
    `state.url` uses this form."""
    if "@" not in url and "password" not in url.lower():
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return url.partition(":")[0] + ":***"
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hostport}"
    query = "&".join(
        f"{k}={'***' if k.lower() == 'password' else v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class StateConfig(Section):
    section_key = "state"

    # `sqlite:///PATH` (one node), or `postgresql://USER@HOST:PORT/DB?sslmode=
    # verify-full&sslrootcert=/etc/imapguard/pg-ca.pem` for several nodes (a
    # libpq URL: https://www.postgresql.org/docs/current/libpq-connect.html).
    # Keep the password out of the URL: put it in `password_file`.
    url: str = "sqlite:///var/lib/imapguard/state.db"
    # postgresql only: a file holding the database password (mode 0600).
    password_file: str | None = None
    # postgresql only: connections kept per gateway process. The stores are
    # synchronous and run on worker threads (the gateway's writer and readers);
    # one connection per such thread is enough, more only wait for a thread.
    pool_size: int = 4
    # 32+ random bytes; app-password hashes are keyed with it. Create it with
    # `head -c 32 /dev/urandom > server.key && chmod 600 server.key`.
    key_file: str = "/etc/imapguard/server.key"

    @field_validator("url")
    @classmethod
    def _supported(cls, url: str) -> str:
        if url.startswith("sqlite:///"):
            return url
        scheme = url.partition(":")[0]
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"state store {scheme!r} is not supported"
                " (use sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE)"
            )
        shown = redacted_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{shown} is not a valid URL ({exc})") from None
        del port
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        sslmode = params.get("sslmode")
        if sslmode is not None and sslmode not in _SSLMODES:
            raise ValueError(
                f"sslmode={sslmode!r} is not one of {', '.join(_SSLMODES)} (in {shown})"
            )
        return url

    @field_validator("pool_size")
    @classmethod
    def _pool(cls, size: int) -> int:
        if not 1 <= size <= 100:
            raise ValueError("must be between 1 and 100")
        return size

    @model_validator(mode="after")
    def _password_for_postgresql(self) -> StateConfig:
        if self.password_file is not None and self.url.startswith("sqlite:"):
            raise_problems([("password_file", "only for a postgresql:// state.url")])
        return self

    @property
    def postgresql(self) -> bool:
        return not self.url.startswith("sqlite:")


class AuditConfig(Section):
    section_key = "audit"

    # "-" writes to standard output.
    path: str = "/var/log/imapguard/audit.jsonl"

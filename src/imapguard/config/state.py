"""Where imapguard keeps what it must remember: `[state]` and `[audit]`."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import field_validator, model_validator

from imapguard.config.base import Section, raise_problems
from imapguard.config.redis_url import (
    PLAIN_TO_ANOTHER_HOST,
    parse_redis_url,
    plain_to_another_host,
)

__all__ = ["AuditConfig", "StateConfig", "counters_problems", "redacted_url"]

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

    # `sqlite:///PATH` (one node), or for several nodes a libpq URL
    # (https://www.postgresql.org/docs/current/libpq-connect.html) such as
    # `postgresql://USER@HOST:PORT/DB?sslmode=verify-full&sslrootcert=/etc/imapguard/pg-ca.pem`.
    # Keep the password out of the URL: put it in `password_file`. A server on
    # another host with no sslmode in the URL is checked as sslmode=verify-full.
    url: str = "sqlite:///var/lib/imapguard/state.db"
    # postgresql only: a file holding the database password (mode 0600).
    password_file: str | None = None
    # postgresql only: connections kept per gateway process at most. The store
    # is synchronous and runs on worker threads (the gateway's writer and its
    # 8 reader threads, state.on_thread.READ_THREADS); one connection per such
    # thread is enough, fewer make a thread wait for one.
    pool_size: int = 10
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

    # The defense's counters, blocks and posture in a Redis that every node
    # shares (None: in the `url` store, which must then be SQLite):
    # "redis://HOST:6379/0", "rediss://HOST:6380/0" (TLS), or the master of a
    # Sentinel service "redis+sentinel://HOST1:26379,HOST2:26379/SERVICE/0"
    # ("rediss+sentinel://" with TLS). Plain redis:// only to loopback (127.0.0.1,
    # ::1, localhost): a Redis or Sentinel on another host takes rediss://.
    # A user name may be given (redis://USER@HOST/0); the password never.
    counters_url: str | None = None
    # The Redis password (the first line of the file), if it asks for one.
    counters_password_file: str | None = None
    # rediss: the CA bundle that signed Redis's certificate (default: the
    # system's); the server name is always checked against the URL's host.
    counters_ca_file: str | None = None
    # rediss: a client certificate and its key, if Redis asks for one.
    counters_cert_file: str | None = None
    # The private key of counters_cert_file.
    counters_key_file: str | None = None
    # Every key this gateway writes starts with it (several deployments may
    # share one Redis database with different prefixes).
    counters_prefix: str = "imapguard:"

    @model_validator(mode="after")
    def _counters(self) -> StateConfig:
        raise_problems(counters_problems(self))
        return self


def counters_problems(state: StateConfig) -> list[tuple[str, str]]:
    """Why the counters_* keys cannot be used (key, message), never quoting the
    URL (it could hold a password)."""
    problems: list[tuple[str, str]] = []
    add = problems.append
    if state.counters_url is None:
        if state.url.startswith(("postgresql:", "postgres:")):
            add(
                (
                    "counters_url",
                    "required with a PostgreSQL url: the defense's counters must be shared"
                    ' by every node (set counters_url = "redis://HOST:6379/0")',
                )
            )
        others = ("password_file", "ca_file", "cert_file", "key_file")
        for key in others:
            if getattr(state, f"counters_{key}") is not None:
                add((f"counters_{key}", "is set but counters_url is not"))
        return problems
    try:
        address = parse_redis_url(state.counters_url)
    except ValueError as exc:
        add(("counters_url", str(exc)))
        return problems
    if plain_to_another_host(address):
        add(("counters_url", PLAIN_TO_ANOTHER_HOST))
    if not address.tls:
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(state, f"counters_{key}") is not None:
                add((f"counters_{key}", "only used with rediss:// (TLS)"))
    if (state.counters_cert_file is None) != (state.counters_key_file is None):
        add(("counters_cert_file", "set both counters_cert_file and counters_key_file, or neither"))
    prefix = state.counters_prefix
    if not prefix or len(prefix) > 64 or not prefix.isprintable() or " " in prefix:
        add(("counters_prefix", "must be 1 to 64 printable characters without spaces"))
    return problems


class AuditConfig(Section):
    section_key = "audit"

    # "-" writes to standard output.
    path: str = "/var/log/imapguard/audit.jsonl"

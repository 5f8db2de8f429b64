"""`[portal]`: where the web portal listens, the origin users type, its sessions.

Rules: `url` is the public `https://` origin (scheme, host, optional port, and
nothing else), because the portal compares every unsafe request's `Origin`
header with it and, later, WebAuthn binds passkeys to it; it names a host
name, never an IP literal, since browsers refuse WebAuthn on IP addresses.
`rp_id` (the WebAuthn relying party) is that host or a suffix of it with a dot
in it; changing it later invalidates every passkey. The certificate and key
default to `[tls]`'s, both or neither. Every bound is here, in the model.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from imapguard.config.base import Section, raise_problems
from imapguard.config.gateway import Address
from imapguard.config.policy import check_group

__all__ = ["PortalConfig", "origin_of"]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAX_HOST = 253


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _host_name_problem(host: str) -> str | None:
    """Why `host` (lower case) is no DNS host name, or None if it is one."""
    if _is_ip(host):
        return "an IP address cannot be used: browsers refuse WebAuthn on IP addresses"
    if not host.isascii():
        return "write an international name in its ASCII form (xn--...)"
    if len(host) > _MAX_HOST or not _HOST_NAME.fullmatch(host) or host[-1].isdigit():
        return f"{host!r} is no host name"
    return None


def _check_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme.lower() != "https":
        raise ValueError("must be an https:// URL (browsers send the portal's cookies only there)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("no credentials in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError("the origin only (https://host or https://host:port): no path or query")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("names no host")
    problem = _host_name_problem(host)
    if problem is not None:
        raise ValueError(problem)
    if port == 0:
        raise ValueError("invalid port 0")
    return url


def origin_of(url: str) -> str:
    """The origin a browser sends for `url` (a valid `portal.url`): lower-case
    scheme and host, the port only when it is not 443."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port
    return f"https://{host}" if port in (None, 443) else f"https://{host}:{port}"


class PortalConfig(Section):
    section_key = "portal"

    # host:port (or [v6]:port) the portal's HTTPS listener binds.
    listen: Address
    # The public origin users type, e.g. https://mail-security.example.org.
    url: Annotated[str, AfterValidator(_check_url)]
    # The WebAuthn relying party ID. Default: the host of `url`.
    rp_id: str | None = None
    # Default: [tls] certificate and private_key (set both or neither).
    certificate: str | None = None
    # The key of `certificate` (default: [tls]'s).
    private_key: str | None = None
    # Members of this group of [groups] may open the admin pages.
    admin_group: Annotated[str, AfterValidator(check_group)] = "admins"
    # A session unused this long ends; one ends this long after sign-in anyway.
    session_idle: Annotated[float, Field(ge=60, le=86400)] = 1800.0
    # A session ends this long after sign-in, used or not.
    session_lifetime: Annotated[float, Field(ge=300, le=30 * 86400)] = 43200.0
    # How old a second-factor check may be before adding or removing a factor or
    # creating an app password (the user is asked again past it).
    fresh_factor: Annotated[float, Field(ge=60, le=600)] = 600.0
    # Sign-in attempts (password or code) per source address and minute.
    max_sign_ins_per_minute: Annotated[int, Field(ge=1, le=100)] = 10
    # What the device setup pages (.mobileconfig, Thunderbird autoconfig, the
    # instructions) tell mail clients: the gateway's public host name (default:
    # the host of `url`), its IMAP port with implicit TLS, and the submission
    # server (host default: mail_host) on its implicit-TLS port.
    mail_host: str | None = None
    # The IMAP (implicit TLS) port the device setup pages give.
    imap_port: Annotated[int, Field(ge=1, le=65535)] = 993
    # The submission server the setup pages give (default: mail_host).
    submission_host: str | None = None
    # Its implicit-TLS submission port.
    submission_port: Annotated[int, Field(ge=1, le=65535)] = 465
    # The name the pages and the configuration profiles show.
    organisation: Annotated[str, Field(min_length=1, max_length=80)] = "Mail security"
    # Sign-in through the organisation's OpenID provider (the `[oauth]` issuer):
    # this client's id and a file holding its secret, as registered there with the
    # redirect URI `{url}/signin/oidc/callback`. Both or neither; needs [oauth].
    oidc_client_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    # File holding that client's secret.
    oidc_client_secret_file: str | None = None

    @property
    def host(self) -> str:
        """The host of `url`, lower case."""
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def origin(self) -> str:
        """What a browser sends as `Origin` from the portal's own pages."""
        return origin_of(self.url)

    @property
    def imap_host(self) -> str:
        """`mail_host` with its default filled in."""
        return self.mail_host.lower() if self.mail_host is not None else self.host

    @property
    def smtp_host(self) -> str:
        """`submission_host` with its default filled in."""
        return self.submission_host.lower() if self.submission_host is not None else self.imap_host

    @property
    def oidc_redirect_uri(self) -> str:
        """Where the OpenID provider sends the browser back with the code."""
        return f"{self.origin}/signin/oidc/callback"

    @property
    def relying_party(self) -> str:
        """`rp_id` with its default filled in."""
        return self.rp_id.lower() if self.rp_id is not None else self.host

    @model_validator(mode="after")
    def _consistent(self) -> PortalConfig:
        problems: list[tuple[str, str]] = []
        if self.session_lifetime < self.session_idle:
            problems.append(("session_lifetime", "must be at least portal.session_idle"))
        if (self.certificate is None) != (self.private_key is None):
            missing = "private_key" if self.private_key is None else "certificate"
            problems.append(
                (missing, "set certificate and private_key both, or neither (then [tls]'s)")
            )
        if (self.oidc_client_id is None) != (self.oidc_client_secret_file is None):
            missing = "oidc_client_secret_file" if self.oidc_client_id else "oidc_client_id"
            problems.append((missing, "set oidc_client_id and oidc_client_secret_file, or neither"))
        for key in ("mail_host", "submission_host"):
            name = getattr(self, key)
            if name is not None and (problem := _host_name_problem(name.lower())) is not None:
                problems.append(
                    (
                        key,
                        problem.replace(
                            "browsers refuse WebAuthn on IP addresses",
                            "the TLS certificate names a host",
                        ),
                    )
                )
        if self.rp_id is not None:
            rp_id = self.rp_id.lower()
            problem = _host_name_problem(rp_id)
            if problem is not None:
                problems.append(("rp_id", problem))
            elif rp_id != self.host and not (self.host.endswith("." + rp_id) and "." in rp_id):
                problems.append(
                    (
                        "rp_id",
                        f"must be the host of portal.url ({self.host}) or a suffix of it "
                        "with a dot, e.g. example.org for portal.example.org",
                    )
                )
        raise_problems(problems)
        return self

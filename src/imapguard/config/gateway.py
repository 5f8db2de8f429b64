"""The gateway's own sections: `[[listen]]`, `[tls]`, `[upstream]` and `[limits]`."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from imapguard.config.base import Seconds, Section, raise_problems
from imapguard.config.defense import Networks
from imapguard.names import DEFAULT_MASTER_SEPARATOR
from imapguard.net import is_loopback

__all__ = [
    "LimitsConfig",
    "ListenConfig",
    "TlsConfig",
    "UpstreamConfig",
    "parse_address",
    "proxy_warnings",
]

# A trusted_proxies network wider than this is warned about: a balancer pair
# sits in a /24 (IPv4) or a /64 (IPv6), and every host in the range may name
# any client as the source of its connections.
WIDEST_PROXIES = {4: 24, 6: 64}


def parse_address(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` → (host, port). Raises ValueError with the reason."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [ipv6]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected host:port")
        if ":" in host:
            raise ValueError("write an IPv6 address as [addr]:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid port {port!r}")
    return host, int(port)


def _check_address(text: str) -> str:
    parse_address(text)
    return text


def _check_separator(separator: str) -> str:
    if not separator or any(c.isspace() or not c.isprintable() for c in separator):
        raise ValueError("must be printable characters without spaces")
    if separator.isalnum() or separator in ".-_@":
        raise ValueError(
            f"{separator!r} is part of ordinary account names; use Dovecot's usual '*'"
        )
    return separator


#: `host:port` or `[v6]:port`.
Address = Annotated[str, AfterValidator(_check_address)]


class ListenConfig(Section):
    # host:port (or [v6]:port) the listener binds, e.g. 0.0.0.0:993.
    address: Address
    # "implicit": TLS from the first byte (port 993); "starttls": plain until the client's STARTTLS,
    # and no login before it (port 143).
    tls: Literal["implicit", "starttls"]
    # Every connection starts with a PROXY protocol header (v1 or v2, HAProxy's
    # send-proxy / send-proxy-v2) naming the real client, which then counts as the
    # connection's source everywhere (limits, defense, policy, audit, upstream).
    proxy_protocol: bool = False
    # The load balancers allowed to send that header (addresses or CIDR networks);
    # a connection from any other address is closed before a byte of IMAP. Every
    # host in them may name any source: a network wider than a /24 (IPv4) or a
    # /64 (IPv6) is warned about at start, and 0.0.0.0/0 or ::/0 is refused.
    trusted_proxies: Networks = ()

    @model_validator(mode="after")
    def _proxies(self) -> ListenConfig:
        if self.proxy_protocol and not self.trusted_proxies:
            raise_problems(
                [("trusted_proxies", "required when proxy_protocol = true: the proxies' addresses")]
            )
        everyone = [n for n in self.trusted_proxies if _network(n).prefixlen == 0]
        if everyone:
            raise_problems(
                [
                    (
                        "trusted_proxies",
                        f"{everyone[0]} is every address: anyone could name any source"
                        " (a block or policy's address); list the load balancers' addresses",
                    )
                ]
            )
        if self.trusted_proxies and not self.proxy_protocol:
            raise_problems(
                [
                    (
                        "trusted_proxies",
                        "has no effect without proxy_protocol = true on this listener",
                    )
                ]
            )
        return self


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def proxy_warnings(listeners: Sequence[ListenConfig]) -> list[str]:
    """The listeners' trusted_proxies networks wider than WIDEST_PROXIES."""
    warnings: list[str] = []
    for i, listener in enumerate(listeners):
        for text in listener.trusted_proxies:
            network = _network(text)
            widest = WIDEST_PROXIES[network.version]
            if network.prefixlen < widest:
                warnings.append(
                    f"listen[{i}].trusted_proxies: {text} is wider than a /{widest}: every"
                    " host in it may name any client as its source; list the load"
                    " balancers' addresses"
                )
    return warnings


class TlsConfig(Section):
    section_key = "tls"

    # PEM file with the server certificate and its chain (fullchain.pem).
    certificate: str
    # PEM file with the certificate's private key (not encrypted; mode 0600 or 0640).
    private_key: str
    # The oldest TLS version clients may use.
    min_version: Literal["1.2", "1.3"] = "1.2"
    # Client certificates (requested, not required, so other clients still connect):
    # a certificate that chains to this CA maps to an account by `client_cert_user`.
    client_ca: str | None = None
    # email: the subjectAltName rfc822Name (else the subject emailAddress) is the
    # account; email-local: its part before "@"; cn: the subject commonName.
    client_cert_user: Literal["email", "email-local", "cn"] = "email"
    # Revoked client certificates: PEM CRLs of the client_ca CAs (one or several
    # concatenated), read again on SIGHUP. "leaf" checks the client's certificate,
    # "chain" every CA certificate above it too (each CA then needs a CRL).
    client_crl: str | None = None
    # How much of a client certificate's chain client_crl checks (see client_crl).
    client_crl_check: Literal["leaf", "chain"] = "leaf"

    @model_validator(mode="after")
    def _crl_needs_ca(self) -> TlsConfig:
        if self.client_crl is not None and self.client_ca is None:
            raise_problems(
                [("client_crl", "needs tls.client_ca, the CAs whose certificates it revokes")]
            )
        return self


class UpstreamConfig(Section):
    section_key = "upstream"

    # host:port (or [v6]:port) of the IMAP server imapguard protects.
    address: Address
    # How imapguard talks to it: "starttls" (port 143), "implicit" (993), or "none" (loopback
    # only, unless `insecure`).
    tls: Literal["implicit", "starttls", "none"] = "starttls"
    # PEM CA bundle the upstream's certificate must chain to (default: the system's trust store).
    ca: str | None = None
    # The name the upstream certificate must carry; defaults to the host of `address`.
    server_name: str | None = None
    # Plaintext to a non-loopback upstream needs this spelled out.
    insecure: bool = False
    # "master": the gateway checks every factor, then logs in as the user with the master user's
    # credentials; "passthrough": the user's own password goes to the upstream.
    login: Literal["master", "passthrough"] = "master"
    # The upstream's master user (Dovecot: a passdb with master = yes).
    master_user: str | None = None
    # File with the master user's password (mode 0600 or 0640).
    master_password_file: str | None = None
    # How the upstream learns the client's address: "id" sends IMAP ID
    # x-originating-ip (Dovecot's login_trusted_networks), "proxy-v2" a PROXY v2
    # header first on the connection (a `haproxy = yes` listener and
    # haproxy_trusted_networks), "none" nothing.
    forward_client_ip: Literal["id", "proxy-v2", "none"] = "id"
    # The upstream's master-user separator (Dovecot's auth_master_user_separator):
    # an account name containing it is refused, whatever `login` is, so that
    # `alice*imapguard` plus a master password never reaches the upstream.
    master_separator: Annotated[str, AfterValidator(_check_separator)] = DEFAULT_MASTER_SEPARATOR
    # Seconds to connect to the upstream (and finish TLS).
    connect_timeout: Seconds = 10.0
    # Seconds for the upstream's whole login dialogue.
    login_timeout: Seconds = 30.0

    @model_validator(mode="after")
    def _consistent(self) -> UpstreamConfig:
        problems: list[tuple[str, str]] = []
        host, _ = parse_address(self.address)
        if self.tls == "none" and not is_loopback(host) and not self.insecure:
            problems.append(
                (
                    "tls",
                    "'none' sends passwords in clear to a non-loopback address; "
                    "use starttls/implicit or set upstream.insecure = true",
                )
            )
        if self.login == "master":
            if not self.master_user:
                problems.append(("master_user", 'required when upstream.login = "master"'))
            if not self.master_password_file:
                problems.append(("master_password_file", 'required when upstream.login = "master"'))
        raise_problems(problems)
        return self


class LimitsConfig(Section):
    section_key = "limits"

    # Longest command line before login, in bytes; a longer one is refused with BAD.
    max_line: Annotated[int, Field(ge=1024, le=65536)] = 8192
    # Largest literal before login (a password, a SASL response), in bytes; a larger one is refused
    # before it is read.
    max_literal: Annotated[int, Field(ge=256, le=65536)] = 8192
    # Commands a connection may send before it logs in; then BYE.
    max_preauth_commands: Annotated[int, Field(ge=3, le=1000)] = 30
    # Malformed commands before login; then BYE.
    max_bad_commands: Annotated[int, Field(ge=1, le=100)] = 3
    # Failed logins on one connection; then BYE.
    max_auth_failures: Annotated[int, Field(ge=1, le=100)] = 3
    # Seconds a connection may stay without logging in.
    preauth_timeout: Seconds = 60.0
    # Seconds for the TLS handshake (and a PROXY header, on such a listener).
    handshake_timeout: Seconds = 10.0
    # Connections not logged in yet, per source (an IPv4 address or an IPv6 /64)
    # and in total; one over a limit is closed at accept, before TLS.
    max_preauth_per_source: Annotated[int, Field(ge=1)] = 20
    # The same limit for all sources together.
    max_preauth_total: Annotated[int, Field(ge=1)] = 2000
    # Of max_preauth_total, slots only familiar sources (defense.trusted_networks,
    # a successful login in the last 24 h) may take. Default: a tenth of it.
    familiar_reserve: Annotated[int, Field(ge=0)] | None = None
    # Concurrent TLS handshakes of unfamiliar sources at most (HAProxy's
    # maxsslconn); under load the limit follows the event loop's lag below it.
    # Default: max_preauth_total.
    max_handshakes: Annotated[int, Field(ge=1)] | None = None
    # SIGTERM: how long established sessions may go on before they are closed.
    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0

    @model_validator(mode="after")
    def _reserve_below_total(self) -> LimitsConfig:
        if self.familiar_reserve is not None and self.familiar_reserve >= self.max_preauth_total:
            raise_problems([("familiar_reserve", "must be below limits.max_preauth_total")])
        return self

    @property
    def reserve(self) -> int:
        """familiar_reserve with its default filled in."""
        if self.familiar_reserve is None:
            return self.max_preauth_total // 10
        return self.familiar_reserve

    @property
    def handshakes(self) -> int:
        """max_handshakes with its default filled in."""
        return self.max_preauth_total if self.max_handshakes is None else self.max_handshakes

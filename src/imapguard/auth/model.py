"""What the auth service speaks: who asks (`ClientAddress`, `AuthContext`),
what they present (`LoginRequest`), what they get (`AuthResult`), and the ports
a front end plugs in (`Upstream`, `Session`, `NoticeHook`).

The service knows no socket and no protocol. The gateway presents the IMAP
client's credentials and implements `Upstream` with a real IMAP login; the web
portal (to come) will present its users' the same way, so every front end that
signs someone in gets the same password check, the same factors, the same
defense counting and the same audit events. (The CLI signs nobody in: it
enrols factors and lifts blocks with the same pieces, built by `compose`.)
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from imapguard.names import AccountNames
from imapguard.secret import Secret
from imapguard.vocab import DEFAULT_SUFFICIENT

__all__ = [
    "AuthContext",
    "AuthResult",
    "ClientAddress",
    "FactorSettings",
    "LoginRequest",
    "NoticeHook",
    "Outcome",
    "Session",
    "Upstream",
]


class Session(Protocol):
    """An upstream session a successful login opened (the gateway relays it)."""

    async def discard(self) -> None:
        """Log out and close: the session will not be used (the login failed
        after the password was checked, or the policy said no)."""


S = TypeVar("S", bound=Session)
S_co = TypeVar("S_co", bound=Session, covariant=True)


@dataclass(frozen=True)
class ClientAddress:
    """The connection a login came over (both ends), and its audit session id."""

    ip: str
    port: int
    local_ip: str
    local_port: int
    session: str


class Upstream(Protocol[S_co]):
    """The mail server, as the auth service needs it: a login as the user with
    their password (which is how a password is checked), or, with `password`
    None, a login on the user's behalf (master user) once another factor proved
    who they are. Raises `errors.UpstreamRefused` (wrong password) or
    `errors.UpstreamUnavailable` (cannot ask)."""

    @property
    def logs_in_for_users(self) -> bool:
        """Whether a login without the user's password (master user) is possible."""

    def login(self, user: str, password: Secret | None, client: ClientAddress) -> Awaitable[S_co]:
        """Open a session as `user`."""


class LoginRequest(Protocol):
    """What a client presented: the mechanism ("LOGIN" or a SASL name), the raw
    user name (the service validates it, so that even a malformed one gets the
    uniform failure), the secret and the authorization identity (b"": none)."""

    @property
    def mechanism(self) -> str: ...
    @property
    def username(self) -> bytes: ...
    @property
    def secret(self) -> Secret: ...
    @property
    def authzid(self) -> bytes: ...


class Outcome(enum.Enum):
    OK = "ok"
    INVALID = "invalid"
    MISSING_FACTOR = "missing_factor"
    DENIED = "denied"  # authenticated, but the policy says no
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class AuthContext:
    client: ClientAddress
    client_id: str | None
    listener: str
    # IMAP ID name and version ("" when the client sent none): part of a device.
    id_name: str = ""
    id_version: str = ""
    # The account a verified client certificate maps to, if one was presented.
    cert_user: str | None = None


@dataclass(frozen=True)
class AuthResult(Generic[S]):
    outcome: Outcome
    user: str | None
    method: str | None
    reason: str
    session: S | None = None
    # What the login proved ("app-password", "password+totp", "trusted-device", ...).
    factor: str | None = None
    device: str | None = None
    # A failed OAUTHBEARER/XOAUTH2 exchange: the RFC 7628 error JSON for the client.
    challenge: bytes | None = None
    # The policy rule that decided, and the [ALERT] text of a deny (shown only to
    # a client whose credentials were right).
    rule: str | None = None
    alert: str | None = None
    # Refused by the defense before any credential was looked at.
    blocked: bool = False
    # The id of the app password that logged in (revoking it ends the session).
    app_password: str | None = None

    @property
    def credential(self) -> str | None:
        """What the login used, as the sign-in history and a revocation name it:
        the app password, else the device that was trusted, else the factor's
        kind (oauth-mfa, client-cert, ...)."""
        if self.app_password is not None:
            return f"app-password:{self.app_password}"
        if self.device is not None:
            return f"device:{self.device}"
        return self.factor


@dataclass(frozen=True)
class FactorSettings:
    """[auth] settings the factor decisions need (see config.AuthConfig)."""

    sufficient: tuple[str, ...] = DEFAULT_SUFFICIENT
    device_trust: float = 30 * 86400.0
    totp_max_failures: int = 5
    totp_lockout: float = 900.0
    new_device_approval: bool = True
    verified_cache_seconds: float = 300.0
    verified_cache_entries: int = 10_000
    # A pending device its owner approved: trusted this long, at its exact address.
    approved_device_trust: float = 7 * 86400.0
    # The account-name rule (imapguard.names).
    names: AccountNames = field(default_factory=AccountNames)


# Called (synchronously; it must not block) when the owner should be told:
# kind is "compromise_signal", "new_device" or "lockout".
NoticeHook = Callable[[str, str, AuthContext, str | None], None]

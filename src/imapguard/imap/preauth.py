"""The pre-authentication IMAP state machine: the one owner of a client's state.

Sans-IO: the shell feeds bytes in with `receive_data()` and asks `next_action()`
what to do; decisions (TLS is up, authentication finished) come back through
`tls_established()` and `auth_finished()`. Nothing here blocks or touches a socket.

Phases and transitions (every other input is answered on the wire, never raised):

    NOT_AUTHENTICATED --STARTTLS (in clear)------> STARTTLS
    STARTTLS          --tls_established()--------> NOT_AUTHENTICATED (now encrypted)
    NOT_AUTHENTICATED --LOGIN / AUTHENTICATE IR--> AUTHENTICATING
    NOT_AUTHENTICATED --AUTHENTICATE (no IR)-----> SASL
    SASL              --response line------------> AUTHENTICATING
    SASL              --"*" / bad / too long-----> NOT_AUTHENTICATED
    AUTHENTICATING    --auth_finished(OK)--------> AUTHENTICATED (Relay action)
    AUTHENTICATING    --auth_finished(failure)---> NOT_AUTHENTICATED (LOGOUT after too many)
    AUTHENTICATING    --failure with challenge---> SASL_ERROR (RFC 7628 §3.2.2: "+ error")
    SASL_ERROR        --any response line--------> NOT_AUTHENTICATED (tagged NO)
    any               --LOGOUT / limit / fatal---> LOGOUT (Close action)

Rules that protect the gateway:

* Before TLS, LOGIN and AUTHENTICATE answer NO [PRIVACYREQUIRED] from the command
  name alone: the arguments (the credentials) are never parsed, and a synchronizing
  literal in them is refused instead of invited with `+`.
* On STARTTLS every byte after the STARTTLS line is dropped, including bytes that
  arrive before the handshake (CVE-2011-0411 class): nothing sent in clear is ever
  read as a command inside TLS. The tagged OK travels inside `StartTlsNow`, not as
  a `Send`, so that the shell writes it only at the moment it switches the
  transport to TLS, however long it waited before (a client must wait for the OK:
  whatever arrives before it was injected).
* There is no PREAUTH greeting, and STARTTLS inside TLS is a tagged BAD.
* Counts are bounded: commands, bad commands and authentication failures per
  connection; each limit ends the connection with a BYE that says why.
* A SASL response that cannot be framed (too long) ends the AUTHENTICATE with a
  BAD tagged like the AUTHENTICATE command, so that the client is not left waiting.

SASL payloads: PLAIN is split here (RFC 4616). OAUTHBEARER and XOAUTH2 payloads
go to the chokepoint whole, as the credential's secret (their grammar and the
token are the authenticator's business); EXTERNAL's payload is the requested
authorization identity, the certificate itself comes from the TLS layer.
"""

from __future__ import annotations

import binascii
import enum
import functools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from imapguard.imap import commands as cmd
from imapguard.imap.framing import (
    NEED_DATA,
    ContinuationRequest,
    Frame,
    FrameError,
    FrameErrorKind,
    FrameLimits,
    Framer,
    NeedData,
    RawLine,
)
from imapguard.secret import Secret

__all__ = [
    "AuthOutcome",
    "AuthRequest",
    "Close",
    "Credentials",
    "Phase",
    "PreAuth",
    "PreAuthSettings",
    "Relay",
    "Send",
    "StartTlsNow",
    "filter_capabilities",
]


class Phase(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    STARTTLS = "starttls"
    SASL = "sasl continuation"
    AUTHENTICATING = "authenticating"
    SASL_ERROR = "sasl error continuation"
    AUTHENTICATED = "authenticated"
    LOGOUT = "logout"


class AuthOutcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Credentials:
    """What the client presented. The user name is raw bytes: the chokepoint
    validates it, so that even a malformed one gets the uniform failure."""

    mechanism: str  # "LOGIN" (the command) or a SASL mechanism name
    username: bytes
    secret: Secret
    authzid: bytes = b""


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class StartTlsNow:
    """Write `response` (the tagged OK) and start the server-side TLS handshake
    with no await in between, then call `tls_established()`. Bytes received
    before the TLS layer is in place are never fed back (the shell adds their
    number to `discarded_after_starttls`)."""

    response: bytes


@dataclass(frozen=True)
class AuthRequest:
    tag: bytes
    credentials: Credentials


@dataclass(frozen=True)
class Relay:
    """Authenticated: relay bytes from now on, starting with `trailing` (bytes the
    client pipelined after its login command)."""

    trailing: bytes


@dataclass(frozen=True)
class Close:
    reason: str


Action = Send | StartTlsNow | AuthRequest | Relay | Close | NeedData


@dataclass(frozen=True)
class PreAuthSettings:
    tls: bool
    starttls: bool
    mechanisms: tuple[str, ...] = ("PLAIN",)
    frame_limits: FrameLimits = field(default_factory=FrameLimits)
    # Dovecot's imap-login allows 3 bad commands; a real client sends fewer than
    # ten commands before it logs in.
    max_commands: int = 30
    max_bad_commands: int = 3
    max_auth_failures: int = 3
    greeting: str = "IMAP gateway ready."


# What a gateway cannot honour for the client after login: it negotiated TLS
# and authentication itself (duesee/imap-proxy util.rs filters the same).
_FILTERED = ("STARTTLS", "LOGINDISABLED", "SASL-IR", "LOGIN-REFERRALS")


def filter_capabilities(capabilities: Sequence[str]) -> list[str]:
    out = []
    for capability in capabilities:
        upper = capability.upper()
        if upper in _FILTERED or upper.startswith("AUTH="):
            continue
        out.append(capability)
    return out


@functools.lru_cache(maxsize=16)
def _capability_code(capabilities: tuple[str, ...]) -> str:
    # The upstream answers every login with the same list (Dovecot's has ~40
    # entries): filtered and joined once, not upper-cased again on every login.
    caps = " ".join(filter_capabilities(capabilities))
    return f"[CAPABILITY {caps}] " if caps else ""


class PreAuth:
    def __init__(self, settings: PreAuthSettings) -> None:
        self.settings = settings
        self.tls = settings.tls
        self.phase = Phase.NOT_AUTHENTICATED
        self.framer = Framer(settings.frame_limits)
        self.client_id: tuple[tuple[str, str | None], ...] | None = None
        self.commands = 0
        self.bad_commands = 0
        self.auth_failures = 0
        self.discarded_after_starttls = 0
        self._out: deque[Action] = deque()
        self._sasl: tuple[bytes, str] | None = None
        self._pending_tag: bytes | None = None
        self._alert: str | None = None

    # -- inputs ---------------------------------------------------------------

    def greeting(self) -> bytes:
        caps = " ".join(self.capabilities())
        return f"* OK [CAPABILITY {caps}] {self.settings.greeting}\r\n".encode()

    def receive_data(self, data: bytes) -> None:
        if self.phase is Phase.STARTTLS:
            # Sent after STARTTLS and before the handshake: never interpreted.
            self.discarded_after_starttls += len(data)
            return
        if self.phase is not Phase.LOGOUT:
            self.framer.feed(data)

    def tls_established(self) -> None:
        if self.phase is not Phase.STARTTLS:
            raise RuntimeError(f"tls_established() in phase {self.phase}")
        self.framer.discard_buffered()
        self.tls = True
        self.phase = Phase.NOT_AUTHENTICATED

    def auth_finished(
        self,
        outcome: AuthOutcome,
        capabilities: Sequence[str] = (),
        challenge: bytes | None = None,
        alert: str | None = None,
    ) -> None:
        """`challenge`: on a failed OAUTHBEARER/XOAUTH2 exchange, the error JSON
        the client gets as a continuation before the tagged NO (RFC 7628 §3.2.2).
        `alert`: a policy's text for a client whose credentials were right, sent
        as `NO [ALERT] text` instead of the uniform failure (RFC 9051 §7.1)."""
        if self.phase is not Phase.AUTHENTICATING or self._pending_tag is None:
            raise RuntimeError(f"auth_finished() in phase {self.phase}")
        if outcome is AuthOutcome.FAILED and challenge is not None:
            self._alert = alert
            self.phase = Phase.SASL_ERROR
            self._send(b"+ " + binascii.b2a_base64(challenge, newline=False) + b"\r\n")
            return
        tag, self._pending_tag = self._pending_tag, None
        if outcome is AuthOutcome.OK:
            code = _capability_code(tuple(capabilities))
            self._send(tag + f" OK {code}Logged in.\r\n".encode())
            self.phase = Phase.AUTHENTICATED
            self._out.append(Relay(self.framer.take_buffered()))
            return
        self.phase = Phase.NOT_AUTHENTICATED
        if outcome is AuthOutcome.UNAVAILABLE:
            self._send(tag + b" NO [UNAVAILABLE] Service temporarily unavailable, try later.\r\n")
            return
        alert = alert or self._alert
        self._alert = None
        if alert:
            clean = "".join(c for c in alert if c.isprintable() and c != "]")[:200]
            self._send(tag + b" NO [ALERT] " + clean.encode() + b"\r\n")
        else:
            self._send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        self.auth_failures += 1
        if self.auth_failures >= self.settings.max_auth_failures:
            self._bye("Too many authentication failures.", "auth failure limit")

    def timed_out(self) -> None:
        """The shell's pre-auth timer fired."""
        if self.phase not in (Phase.AUTHENTICATED, Phase.LOGOUT):
            self._out.clear()
            self._bye("Autologout: too long without logging in.", "pre-auth timeout")

    # -- outputs --------------------------------------------------------------

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "ID", "LITERAL+"]
        if not self.tls:
            if self.settings.starttls:
                caps.append("STARTTLS")
            caps.append("LOGINDISABLED")
        else:
            caps.append("SASL-IR")
            caps.extend(f"AUTH={m}" for m in self.settings.mechanisms)
        return caps

    def next_action(self) -> Action:
        while not self._out:
            if self.phase not in (Phase.NOT_AUTHENTICATED, Phase.SASL, Phase.SASL_ERROR):
                return NEED_DATA
            event = self.framer.next_event(raw_line=self.phase in (Phase.SASL, Phase.SASL_ERROR))
            if isinstance(event, NeedData):
                return NEED_DATA
            self._handle(event)
        return self._out.popleft()

    # -- handling -------------------------------------------------------------

    def _handle(self, event: Frame | RawLine | ContinuationRequest | FrameError) -> None:
        if isinstance(event, ContinuationRequest):
            head = cmd.peek_name(event.first_line, self.settings.frame_limits.max_tag)
            if head is not None and self._privacy_required(head[1]):
                # Do not invite a password in clear: refuse the literal instead.
                self.framer.refuse_literal()
                if self._count_command():
                    self._send_privacy_required(head[0])
                return
            self._send(b"+ Ready for literal data\r\n")
        elif isinstance(event, FrameError):
            self._frame_error(event)
        elif isinstance(event, RawLine):
            self._sasl_response(event.data)
        elif self._count_command():
            self._command(event)

    def _count_command(self) -> bool:
        """Count one more command; over the limit, say BYE and return False."""
        self.commands += 1
        if self.commands > self.settings.max_commands:
            self._bye("Too many commands before authentication.", "command limit")
            return False
        return True

    def _frame_error(self, error: FrameError) -> None:
        text = {
            FrameErrorKind.LINE_TOO_LONG: "Command line too long.",
            FrameErrorKind.LITERAL_TOO_LARGE: "Literal too large.",
            FrameErrorKind.COMMAND_TOO_LARGE: "Command too large.",
        }[error.kind]
        tag = error.tag
        if self.phase is Phase.SASL_ERROR and self._pending_tag is not None:
            tag, self._pending_tag = self._pending_tag, None
            self.phase = Phase.NOT_AUTHENTICATED
        if self.phase is Phase.SASL and self._sasl is not None:
            # The response line of an AUTHENTICATE: that command fails.
            tag = self._sasl[0]
            self._sasl = None
            self.phase = Phase.NOT_AUTHENTICATED
        self._bad(tag, f"[TOOBIG] {text}")
        if error.fatal and self.phase is not Phase.LOGOUT:
            self._bye("Protocol stream out of sync.", error.kind.value)

    def _command(self, frame: Frame) -> None:
        limits = self.settings.frame_limits
        head = cmd.peek_name(frame.lines[0], limits.max_tag)
        if head is not None and self._privacy_required(head[1]):
            # The credentials are not even parsed before TLS.
            self._send_privacy_required(head[0])
            return
        command = cmd.parse_command(frame, limits.max_tag)
        match command:
            case cmd.ParseError(tag=tag, text=text):
                self._bad(tag, text)
            case cmd.Capability(tag=tag):
                self._send(f"* CAPABILITY {' '.join(self.capabilities())}\r\n".encode())
                self._ok(tag, "Capability completed.")
            case cmd.Noop(tag=tag):
                self._ok(tag, "NOOP completed.")
            case cmd.Logout(tag=tag):
                self._send(b"* BYE Logging out.\r\n")
                self._ok(tag, "Logout completed.")
                self._close("logout")
            case cmd.StartTls(tag=tag):
                self._starttls(tag)
            case cmd.Id(tag=tag, params=params):
                self.client_id = params
                self._send(b"* ID NIL\r\n")
                self._ok(tag, "ID completed.")
            case cmd.Login(tag=tag, username=username, password=password):
                self._authenticate(tag, Credentials("LOGIN", username, password))
            case cmd.Authenticate(tag=tag, mechanism=mechanism, initial_response=initial):
                if mechanism not in self.settings.mechanisms:
                    self._send(tag + b" NO Unsupported authentication mechanism.\r\n")
                elif initial is None:
                    self._sasl = (tag, mechanism)
                    self.phase = Phase.SASL
                    self._send(b"+ \r\n")
                else:
                    self._sasl_payload(tag, mechanism, initial.reveal())
            case cmd.Unknown(tag=tag):
                self._bad(tag, "Command unknown or not allowed before authentication.")

    def _privacy_required(self, name: str) -> bool:
        return not self.tls and name in ("LOGIN", "AUTHENTICATE")

    def _send_privacy_required(self, tag: bytes) -> None:
        self._send(tag + b" NO [PRIVACYREQUIRED] Encryption required: use STARTTLS first.\r\n")

    def _starttls(self, tag: bytes) -> None:
        if self.tls:
            self._bad(tag, "TLS is already active.")
            return
        if not self.settings.starttls:
            self._bad(tag, "STARTTLS is not offered here.")
            return
        self.discarded_after_starttls += self.framer.discard_buffered()
        self.phase = Phase.STARTTLS
        self._out.append(StartTlsNow(tag + b" OK Begin TLS negotiation now.\r\n"))

    def _sasl_response(self, line: bytes) -> None:
        if self.phase is Phase.SASL_ERROR:
            # The client's answer to the error challenge (RFC 7628: a lone 0x01,
            # "AQ=="); whatever it is, the exchange has failed.
            self.phase = Phase.AUTHENTICATING
            self.auth_finished(AuthOutcome.FAILED)
            return
        if self._sasl is None:
            raise RuntimeError("SASL response without a pending AUTHENTICATE")
        tag, mechanism = self._sasl
        self._sasl = None
        self.phase = Phase.NOT_AUTHENTICATED
        if line == b"*":
            self._bad(tag, "Authentication cancelled.", count=False)
            return
        self._sasl_payload(tag, mechanism, line)

    def _sasl_payload(self, tag: bytes, mechanism: str, b64: bytes) -> None:
        try:
            payload = b"" if b64 == b"=" else binascii.a2b_base64(b64, strict_mode=True)
        except binascii.Error:
            self._bad(tag, "Invalid base64 in the SASL response.")
            return
        if mechanism in ("OAUTHBEARER", "XOAUTH2"):
            self._authenticate(tag, Credentials(mechanism, b"", Secret(payload)))
            return
        if mechanism == "EXTERNAL":
            self._authenticate(tag, Credentials(mechanism, payload, Secret(b""), payload))
            return
        # RFC 4616: authzid NUL authcid NUL passwd.
        parts = payload.split(b"\0")
        if mechanism != "PLAIN" or len(parts) != 3:
            self._bad(tag, "Malformed SASL PLAIN response.")
            return
        authzid, authcid, password = parts
        self._authenticate(tag, Credentials("PLAIN", authcid, Secret(password), authzid))

    def _authenticate(self, tag: bytes, credentials: Credentials) -> None:
        self.phase = Phase.AUTHENTICATING
        self._pending_tag = tag
        self._out.append(AuthRequest(tag, credentials))

    # -- responses ------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._out.append(Send(data))

    def _ok(self, tag: bytes, text: str) -> None:
        self._send(tag + b" OK " + text.encode() + b"\r\n")

    def _bad(self, tag: bytes | None, text: str, *, count: bool = True) -> None:
        self._send((tag or b"*") + b" BAD " + text.encode() + b"\r\n")
        if count:
            self.bad_commands += 1
            if self.bad_commands >= self.settings.max_bad_commands:
                self._bye("Too many invalid commands.", "bad command limit")

    def _bye(self, text: str, reason: str) -> None:
        self._send(b"* BYE " + text.encode() + b"\r\n")
        self._close(reason)

    def _close(self, reason: str) -> None:
        self.phase = Phase.LOGOUT
        self._out.append(Close(reason))

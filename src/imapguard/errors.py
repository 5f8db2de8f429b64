"""The exception tree of imapguard: every exception class defined under
src/imapguard, where it lives, and what it means (tests/unit/test_errors.py keeps
this drawing complete).

    Exception
    ├── ImapguardError                  base of everything raised on purpose
    │   ├── ConfigError                 the configuration cannot be used
    │   │                               (.problems: list of (key path, message))
    │   ├── StateError                  the state store failed (.operation)
    │   │   └── StateUnavailable        ... and is unreachable or locked
    │   │       └── SchemaMismatch      state.versions: its schema is not this imapguard's
    │   │                               (.found, .newer): `imapguard db upgrade`, or refused
    │   ├── KeyMismatch                 state.keycheck: the server key is not the one the
    │   │                               store's secrets were sealed with
    │   ├── AppPasswordLimit            state.accounts: the account holds the most app
    │   │                               passwords it may (.user, .max_count)
    │   ├── UpstreamError               talking to the backend IMAP server failed (.address)
    │   │   ├── UpstreamUnavailable     cannot connect, TLS failed, timed out, bad greeting
    │   │   └── UpstreamRefused         the backend answered NO/BAD to the login
    │   ├── SealError                   auth.totp: a sealed TOTP secret does not open (.reason)
    │   ├── PasskeyRefused              auth.passkeys: a WebAuthn registration or assertion
    │   │                               that does not prove what it claims (.reason)
    │   ├── OAuthError                  auth.oauth.errors: .reason for the audit log,
    │   │   │                           never the token
    │   │   ├── SaslMalformed           the SASL response breaks RFC 7628 / XOAUTH2 (BAD)
    │   │   ├── TokenRejected           the token does not prove who the user is (NO)
    │   │   └── IssuerUnavailable       the issuer's keys cannot be had now (NO [UNAVAILABLE])
    │   ├── CountryDatabaseError        policy.geoip: the country database cannot be used
    │   ├── UsageError                  cli.common: a command line that cannot be run (exit 2)
    │   └── AdmissionShed               gateway.admission: an unfamiliar connection waited
    │                                   for its handshake turn longer than allowed
    ├── ValueError
    │   ├── Problems                    config.base: a section's cross-field validator
    │   │                               names its keys (pydantic turns it into ConfigError)
    │   ├── TargetError                 scanner.targets: a target or port list that cannot be used
    │   └── CatalogError                scanner.catalog: catalog.toml is broken (names the check)
    ├── ResponseError                   imap.responses: an IMAP server's bytes are no response
    │   │                               we accept (.reason, .excerpt)
    │   ├── ResponseLimitExceeded       ... a line, literal or response went past its limit
    │   └── ResponseSyntaxError         ... bytes that are not an IMAP response
    ├── DialogError                     scanner.dialogs: a server's bytes are no response
    │   │                               the scanner can accept (any protocol; .protocol)
    │   ├── ResponseTooLong             ... a line, literal or response went past its limit
    │   └── MalformedResponse           ... bytes that are not a response of the protocol
    ├── Throttled                       scanner.net: the server refused or deferred us (421)
    ├── Closed                          scanner.mail.connection: how one probe of a scan
    ├── Refused                         ended (caught by the step runner, never leaving
    ├── Unexpected                      the scanner): closed before answering, turned away,
    ├── Temporary                       a reply the dialog cannot go on from, a temporary
    └── TimeoutError                    failure; a port that accepts no connection
        ├── ConnectTimeout              (ConnectTimeout) or no answer to the dummy
        └── AuthDelayed                 credential in time (AuthDelayed)

Private to their module (control flow that never leaves it):

    _Fail (imap.commands)   a command that does not parse (returned as a ParseError)
    _Taken (state.sql.portal)  a passkey's credential id is taken: roll back

The IMAP pre-auth protocol does not raise: it answers BAD/NO on the wire (see
`imapguard.imap.preauth`). Exceptions carry their context as fields, so callers
and the audit log never have to parse messages.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ImapguardError",
    "StateError",
    "StateUnavailable",
    "UpstreamError",
    "UpstreamRefused",
    "UpstreamUnavailable",
]


class ImapguardError(Exception):
    """Base class of the errors imapguard raises on purpose."""


class ConfigError(ImapguardError):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))


class StateError(ImapguardError):
    def __init__(self, operation: str, detail: str) -> None:
        self.operation = operation
        self.detail = detail
        super().__init__(f"state store {operation} failed: {detail}")


class StateUnavailable(StateError):
    pass


class UpstreamError(ImapguardError):
    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        self.detail = detail
        super().__init__(f"upstream {address}: {detail}")


class UpstreamUnavailable(UpstreamError):
    pass


class UpstreamRefused(UpstreamError):
    def __init__(self, address: str, detail: str, code: str | None = None) -> None:
        super().__init__(address, detail)
        self.code = code  # the refusal's response code (RFC 5530), if it had one

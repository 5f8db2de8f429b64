"""The exception tree of imapguard.

    ImapguardError                      base of everything raised on purpose
    ├── ConfigError                     the configuration cannot be used
    │                                   (.problems: list of (key path, message))
    ├── StateError                      the state store failed (.operation)
    │   └── StateUnavailable            ... and is unreachable or locked
    ├── UpstreamError                   talking to the backend IMAP server failed (.address)
    │   ├── UpstreamUnavailable         cannot connect, TLS failed, timed out, bad greeting
    │   └── UpstreamRefused             the backend answered NO/BAD to the login
    └── NotFound                        a user, app password or record does not exist (.what)

The IMAP pre-auth protocol does not raise: it answers BAD/NO on the wire (see
`imapguard.imap.preauth`). Exceptions carry their context as fields, so callers
and the audit log never have to parse messages.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ImapguardError",
    "NotFound",
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
    pass


class NotFound(ImapguardError):
    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"not found: {what}")

"""The client's commands in the scanner's dialogs: the bytes for the wire and the
line to show in evidence, built together so that a secret is masked where it is
put on the wire. An argument containing CR, LF or NUL is refused (`ValueError`):
the scanner must never be the one injecting commands. IMAP tags come from a
`TagSequence`, so the bytes of every dialog are deterministic and tests can
spell them out."""

from __future__ import annotations

import base64
import dataclasses

from imapguard.imap.responses import is_tag
from imapguard.secret import Secret


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """Bytes for the wire and the line shown in evidence (secrets masked)."""

    wire: bytes
    shown: str

    def __add__(self, other: Command) -> Command:
        """Two commands in one write (the STARTTLS injection tests)."""
        return Command(self.wire + other.wire, f"{self.shown} + {other.shown}")


def _clean(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"command argument with CR, LF or NUL: {value!r}")
    return value


def _plain(line: str) -> Command:
    line = _clean(line)
    return Command(line.encode("utf-8") + b"\r\n", line)


class TagSequence:
    """IMAP tags `<prefix>1`, `<prefix>2`, ... (deterministic, so tests can spell
    out the dialog)."""

    def __init__(self, prefix: str = "s") -> None:
        if not is_tag(prefix):
            raise ValueError(f"bad tag prefix {prefix!r}")
        self._prefix = prefix
        self._count = 0

    def next(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count}"


def imap_quote(value: str) -> str:
    """An IMAP quoted string (RFC 9051 §4.3)."""
    escaped = _clean(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def imap_command(tag: str, command: str) -> Command:
    """`<tag> <command>` (CAPABILITY, STARTTLS, NOOP, LOGOUT, `ID NIL` ...)."""
    return _plain(f"{tag} {command}")


def _secret_text(password: Secret) -> str:
    """The secret for the wire; refused (without echoing it) if it could break a line."""
    value = password.reveal().decode("utf-8")
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a password with CR, LF or NUL cannot be sent")
    return value


def imap_login(tag: str, user: str, password: Secret) -> Command:
    """LOGIN with quoted strings; the password is masked in `shown`."""
    quoted = _secret_text(password).replace("\\", "\\\\").replace('"', '\\"')
    wire = f'{_clean(tag)} LOGIN {imap_quote(user)} "{quoted}"\r\n'.encode()
    return Command(wire, f"{tag} LOGIN {user} ***")


def imap_authenticate(tag: str, mechanism: str) -> Command:
    return _plain(f"{tag} AUTHENTICATE {mechanism}")


def pop3_command(command: str) -> Command:
    """A POP3 command line (CAPA, STLS, NOOP, QUIT, `AUTH NTLM` ...)."""
    return _plain(command)


def pop3_user(user: str) -> Command:
    return _plain(f"USER {user}")


def smtp_command(command: str) -> Command:
    """An SMTP command line (`EHLO name`, STARTTLS, `MAIL FROM:<>`, RSET, QUIT ...)."""
    return _plain(command)


def _plain_response(user: str, password: Secret) -> str:
    secret = _secret_text(password).encode("utf-8")
    token = b"\0" + _clean(user).encode("utf-8") + b"\0" + secret
    return base64.b64encode(token).decode("ascii")


def smtp_auth_plain(user: str, password: Secret) -> Command:
    """`AUTH PLAIN <initial response>` (RFC 4954 §4); the response is masked."""
    wire = f"AUTH PLAIN {_plain_response(user, password)}\r\n".encode("ascii")
    return Command(wire, f"AUTH PLAIN *** (user {user})")


def sasl_plain_command(user: str, password: Secret) -> Command:
    """A bare SASL PLAIN response line (after a `+`/`334` continuation), masked."""
    wire = f"{_plain_response(user, password)}\r\n".encode("ascii")
    return Command(wire, f"*** (PLAIN response for {user})")


def sasl_line(data: bytes, shown: str) -> Command:
    """A base64 SASL response line."""
    return Command(base64.b64encode(data) + b"\r\n", shown)

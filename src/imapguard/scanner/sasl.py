"""SASL mechanisms in the capability lists the mail checks record: which ones a
list offers (IMAP `AUTH=X`, POP3 `SASL X Y`, SMTP `AUTH X Y`), and which of them
carry the password in clear or are only legacy challenge-response."""

from __future__ import annotations

from collections.abc import Iterable

from imapguard.scanner.model import Protocol

__all__ = ["LEGACY_SASL", "PLAINTEXT_SASL", "sasl_mechanisms"]

#: SASL mechanisms that carry the password in clear (RFC 9051 §6.2.2 "plaintext
#: password mechanisms"; LOGIN is the draft-murchison-sasl-login mechanism).
PLAINTEXT_SASL = frozenset({"PLAIN", "LOGIN"})
#: SASL mechanisms that are only legacy challenge-response (RFC 6331 moved
#: DIGEST-MD5 to Historic; CRAM-MD5 is on the same path, draft-ietf-sasl-crammd5-to-historic).
LEGACY_SASL = frozenset({"CRAM-MD5", "DIGEST-MD5"})


def sasl_mechanisms(protocol: Protocol, capabilities: Iterable[str]) -> tuple[str, ...]:
    """The SASL mechanisms a capability list (as `scanner/mail/` records it) offers:
    IMAP `AUTH=X` atoms, a POP3 `SASL X Y` line, an SMTP `AUTH X Y` line."""
    mechanisms: list[str] = []
    for entry in capabilities:
        words = entry.upper().split()
        if not words:
            continue
        if protocol is Protocol.IMAP and words[0].startswith("AUTH="):
            mechanisms.append(words[0][5:])
        elif (protocol is Protocol.POP3 and words[0] == "SASL") or (
            protocol is Protocol.SMTP and words[0] == "AUTH"
        ):
            mechanisms.extend(words[1:])
    return tuple(dict.fromkeys(mechanisms))

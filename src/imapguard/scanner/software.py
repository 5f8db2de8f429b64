"""Which server software answered on a port, from what it said before login.

Two parts of the scan need it: twins (run.py pairs a cleartext port only with an
implicit-TLS port of the same server: same software, same certificate identity), and
the fix texts (catalog.fix_for shows the settings of the software found, so imapguard
is never told to set Dovecot's ssl_alt_cert).

Signals, strongest first (each is what the software sends by default; an
administrator may change greetings, so a service we cannot name is ``None``, never a
guess):
- IMAP ID (RFC 2971) "name": Dovecot answers ``("name" "Dovecot")`` unless
  imap_id_send is emptied, Cyrus ``"Cyrus IMAPd"``, Courier ``"Courier-IMAP"``;
- the greeting: imapguard's ``IMAP gateway ready.`` (imap/preauth.py), ``Dovecot
  ready.``, ``ESMTP Postfix``, ``ESMTP Exim 4.96``, ``Microsoft Exchange``, ``Cyrus``,
  ``Courier-IMAP``;
- the capability list, when it is a software's default list, in order: imapguard's
  ``IMAP4rev1 ID LITERAL+`` (then STARTTLS/LOGINDISABLED, or SASL-IR and AUTH=),
  Dovecot's ``IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+`` and its POP3
  ``CAPA TOP UIDL RESP-CODES PIPELINING AUTH-RESP-CODE``.

Pure functions only: scanner/mail/ collects what the server said, this module names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from imapguard.scanner.model import Identified, Protocol, Software

__all__ = ["IMAPGUARD_GREETING", "identify"]

#: imapguard's greeting text (imap/preauth.py PreAuthSettings.greeting; a unit test
#: keeps the two equal).
IMAPGUARD_GREETING = "IMAP gateway ready."

#: ID "name" values (lower case, prefix) -> software.
_ID_NAMES: tuple[tuple[str, Software], ...] = (
    ("dovecot", Software.DOVECOT),
    ("cyrus", Software.CYRUS),
    ("courier", Software.COURIER),
    ("microsoft exchange", Software.EXCHANGE),
)
#: Greeting patterns (after the status word and any [response code]).
_GREETINGS: tuple[tuple[re.Pattern[str], Software], ...] = (
    (re.compile(r"(^|\s)" + re.escape(IMAPGUARD_GREETING) + r"$"), Software.IMAPGUARD),
    (re.compile(r"\bDovecot\b"), Software.DOVECOT),
    (re.compile(r"\bCyrus\b", re.IGNORECASE), Software.CYRUS),
    (re.compile(r"\bCourier-(IMAP|POP3)\b", re.IGNORECASE), Software.COURIER),
    (re.compile(r"\bMicrosoft Exchange\b", re.IGNORECASE), Software.EXCHANGE),
    (re.compile(r"\bESMTP Postfix\b"), Software.POSTFIX),
    (re.compile(r"\bESMTP Exim\b"), Software.EXIM),
)
#: Default capability lists, as the first items in this order (upper case).
_CAPABILITIES: tuple[tuple[Protocol, tuple[str, ...], Software], ...] = (
    (Protocol.IMAP, ("IMAP4REV1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE"),
     Software.DOVECOT),
    (Protocol.POP3, ("CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"),
     Software.DOVECOT),
)  # fmt: skip
#: imapguard's whole list: these three, then only these others (imap/preauth.py).
_IMAPGUARD_HEAD = ("IMAP4REV1", "ID", "LITERAL+")
_IMAPGUARD_REST = re.compile(r"STARTTLS|LOGINDISABLED|SASL-IR|AUTH=[A-Z0-9_-]+")


def _greeting_text(greeting: str) -> str:
    """The free text of a greeting line: without "* OK", "+OK", "220" and [codes]."""
    text = re.sub(r"^(\*\s+(OK|PREAUTH|BYE)|\+OK|-ERR|\d{3}[ -])\s*", "", greeting.strip(), count=1)
    return re.sub(r"^\[[^\]]*\]\s*", "", text).strip()


def _from_capabilities(protocol: Protocol, lists: Sequence[Sequence[str]]) -> Identified | None:
    for caps in lists:
        upper = tuple(c.upper() for c in caps)
        if not upper:
            continue
        if (
            protocol is Protocol.IMAP
            and upper[:3] == _IMAPGUARD_HEAD
            and all(_IMAPGUARD_REST.fullmatch(c) for c in upper[3:])
        ):
            return Identified(Software.IMAPGUARD, f"capabilities {' '.join(caps)}")
        for known_protocol, head, software in _CAPABILITIES:
            if known_protocol is protocol and upper[: len(head)] == head:
                return Identified(software, f"capabilities {' '.join(caps)}")
    return None


def identify(
    protocol: Protocol,
    greeting: str,
    capabilities: Sequence[Sequence[str]] = (),
    imap_id: Mapping[str, str | None] | None = None,
) -> Identified | None:
    """The software behind a service, or None. `greeting` is the first line as seen,
    `capabilities` the lists seen (before TLS, after TLS), `imap_id` the ID fields."""
    name = (imap_id or {}).get("name")
    if name:
        for prefix, software in _ID_NAMES:
            if name.strip().lower().startswith(prefix):
                return Identified(software, f'ID name "{name}"')
    text = _greeting_text(greeting)
    for pattern, software in _GREETINGS:
        if pattern.search(text):
            return Identified(software, f"greeting {greeting.strip()!r}")
    # POP3 CAPA's IMPLEMENTATION line (RFC 2449 §6.9) names the server like a greeting.
    for caps in capabilities:
        for cap in caps:
            keyword, _, rest = cap.partition(" ")
            if keyword.upper() != "IMPLEMENTATION":
                continue
            for pattern, software in _GREETINGS:
                if pattern.search(rest):
                    return Identified(software, f"CAPA {cap}")
    return _from_capabilities(protocol, capabilities)

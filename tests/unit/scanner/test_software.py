"""Which software answered (scanner/software.py): by table, from what real servers say
by default, and imapguard's own greeting and capabilities taken from the gateway's
pre-auth state machine itself, so the two cannot drift apart."""

from __future__ import annotations

import pytest

from imapguard.imap.preauth import PreAuth, PreAuthSettings
from imapguard.scanner.model import Protocol, Software
from imapguard.scanner.software import IMAPGUARD_GREETING, identify

#: Dovecot 2.3's lists, as the lab Dovecot sends them (tests/scanlab.py).
DOVECOT_IMAP = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS LOGINDISABLED"
DOVECOT_POP3 = ("CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "STLS")


@pytest.mark.parametrize(
    ("protocol", "greeting", "caps", "imap_id", "expected"),
    [
        # imapguard: its greeting, or its capability list alone.
        (Protocol.IMAP, "* OK [CAPABILITY IMAP4rev1 ID LITERAL+] IMAP gateway ready.", (), None,
         Software.IMAPGUARD),
        (Protocol.IMAP, "* OK Welcome", (("IMAP4REV1", "ID", "LITERAL+", "SASL-IR",
                                           "AUTH=PLAIN"),), None, Software.IMAPGUARD),
        # Dovecot: its ID name beats a neutral greeting; its default lists; its greeting.
        (Protocol.IMAP, "* OK Server ready.", (), {"name": "Dovecot"}, Software.DOVECOT),
        (Protocol.IMAP, "* OK Server ready.", (DOVECOT_IMAP.upper().split(),), None,
         Software.DOVECOT),
        (Protocol.POP3, "+OK Server ready.", (DOVECOT_POP3,), None, Software.DOVECOT),
        (Protocol.POP3, "+OK Dovecot (Debian) ready.", (), None, Software.DOVECOT),
        (Protocol.IMAP, "* OK [CAPABILITY IMAP4rev1] Dovecot 2.3.19 ready.", (), None,
         Software.DOVECOT),
        # Others by greeting, ID or CAPA IMPLEMENTATION.
        (Protocol.SMTP, "220 mail.example.org ESMTP Postfix (Debian/GNU)", (), None,
         Software.POSTFIX),
        (Protocol.SMTP, "220 mx.example.org ESMTP Exim 4.96 Tue, 02 Dec 2026 13:02:36 +0000",
         (), None, Software.EXIM),
        (Protocol.IMAP, "* OK mail Cyrus IMAP v3.2.6 server ready", (), None, Software.CYRUS),
        (Protocol.IMAP, "* OK ready", (), {"name": "Cyrus IMAPd", "version": "3.2.6"},
         Software.CYRUS),
        (Protocol.POP3, "+OK ready", (("TOP", "IMPLEMENTATION Cyrus POP3 v3.2.6"),), None,
         Software.CYRUS),
        (Protocol.IMAP, "* OK [CAPABILITY IMAP4rev1] Courier-IMAP ready.", (), None,
         Software.COURIER),
        (Protocol.SMTP, "220 ex01 Microsoft ESMTP MAIL Service ready", (), None, None),
        (Protocol.IMAP, "* OK The Microsoft Exchange IMAP4 service is ready.", (), None,
         Software.EXCHANGE),
        # Nothing that names anyone: unknown, never a guess.
        (Protocol.IMAP, "* OK Server ready.", (("IMAP4REV1", "ID", "STARTTLS"),), None, None),
        (Protocol.IMAP, "* OK [CAPABILITY IMAP4rev1 ID LITERAL+ IDLE] ready", (
            ("IMAP4REV1", "ID", "LITERAL+", "IDLE"),), None, None),
        (Protocol.SMTP, "220 mail.lab.test ESMTP ready", (), None, None),
        (Protocol.IMAP, "* OK IMAP gateway ready. Or not", (), None, None),
        (Protocol.IMAP, "* OK ready", (), {"name": None}, None),
    ],
)  # fmt: skip
def test_identify(
    protocol: Protocol,
    greeting: str,
    caps: tuple[tuple[str, ...], ...],
    imap_id: dict[str, str | None] | None,
    expected: Software | None,
) -> None:
    found = identify(protocol, greeting, caps, imap_id)
    assert (found.software if found else None) is expected


def test_identify_says_what_gave_it_away() -> None:
    found = identify(Protocol.IMAP, "* OK Server ready.", (), {"name": "Dovecot"})
    assert found is not None
    assert found.evidence == 'ID name "Dovecot"'
    assert found.to_json() == {"name": "Dovecot", "evidence": 'ID name "Dovecot"'}


@pytest.mark.parametrize("tls", [False, True])
def test_imapguard_is_recognised_from_what_the_gateway_sends(tls: bool) -> None:
    """The gateway's own greeting and capability lists (cleartext with STARTTLS, and
    inside TLS) name imapguard, each on its own."""
    machine = PreAuth(PreAuthSettings(tls=tls, starttls=not tls, mechanisms=("PLAIN",)))
    greeting = machine.greeting().decode().rstrip("\r\n")
    assert PreAuthSettings(tls=tls, starttls=True).greeting == IMAPGUARD_GREETING
    by_greeting = identify(Protocol.IMAP, greeting)
    assert by_greeting is not None
    assert by_greeting.software is Software.IMAPGUARD
    caps = tuple(c.upper() for c in machine.capabilities())
    by_caps = identify(Protocol.IMAP, "* OK hello", (caps,))
    assert by_caps is not None
    assert by_caps.software is Software.IMAPGUARD

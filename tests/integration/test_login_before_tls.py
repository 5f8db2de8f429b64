"""Credentials in clear: on the STARTTLS listener LOGIN and AUTHENTICATE before
STARTTLS answer NO [PRIVACYREQUIRED]; the credentials are neither checked (no
auth event), nor forwarded (Dovecot sees nothing), nor logged."""

from __future__ import annotations

import base64

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import RawClient, capability_code, dovecot_lines, session_of

pytestmark = pytest.mark.dovecot

PRIVACY = b"NO [PRIVACYREQUIRED] "


def test_login_and_authenticate_before_starttls_are_refused(
    gw: GatewayProcess, dovecot: DovecotServer, alice_password: str
) -> None:
    src = source_address(50)
    plain = base64.b64encode(b"\0alice\0" + alice_password.encode())
    with RawClient(gw.starttls_port, src) as c:
        greeting = c.line()
        assert greeting.startswith(b"* OK ")
        caps = capability_code(greeting)
        assert "STARTTLS" in caps
        assert "LOGINDISABLED" in caps
        assert not [cap for cap in caps if cap.startswith("AUTH=")]
        assert b"PREAUTH" not in greeting

        lines = c.command(b"c", b"CAPABILITY")
        assert lines[0].split()[2:] == [cap.encode() for cap in caps]
        assert lines[-1].startswith(b"c OK")

        password = alice_password.encode()
        attempts = [
            b'a1 LOGIN alice "' + password + b'"',
            b"a2 LOGIN alice " + password,
            b"a3 AUTHENTICATE PLAIN " + plain,
            b"a5 LOGIN {5+}\r\nalice {" + str(len(password)).encode() + b"+}\r\n" + password,
        ]
        for attempt in attempts:
            tag = attempt.split(b" ", 1)[0]
            assert c.command(tag, attempt.split(b" ", 1)[1]) == [
                tag + b" " + PRIVACY + b"Encryption required: use STARTTLS first."
            ]
        # AUTHENTICATE without an initial response: no "+" invitation either.
        lines = c.command(b"a4", b"AUTHENTICATE PLAIN")
        assert lines == [b"a4 " + PRIVACY + b"Encryption required: use STARTTLS first."]
        # The connection is still fine: the refusals are not protocol errors.
        assert c.command(b"n", b"NOOP") == [b"n OK NOOP completed."]
        session = session_of(gw, src, c.local_port)

        # Not checked, not forwarded, not logged.
        assert not [e for e in gw.events("auth") if e.get("session") == session]
        assert not [e for e in gw.events("auth") if e.get("src") == src]
        assert not dovecot_lines(dovecot, f"rip={src},")
        assert not dovecot_lines(dovecot, f"session=<{session}>")
        assert alice_password not in gw.audit_path.read_text()
        assert alice_password not in gw.log_text()
        assert plain.decode() not in gw.audit_path.read_text()

        # After STARTTLS the very same credentials work.
        assert c.command(b"s", b"STARTTLS")[-1].startswith(b"s OK")
        c.starttls(gw.client_ssl())
        lines = c.command(b"l", b'LOGIN alice "' + password + b'"')
        assert lines[-1].startswith(b"l OK "), lines
    auths = [e for e in gw.events("auth") if e.get("session") == session]
    assert [e["result"] for e in auths] == ["ok"]


def test_synchronizing_literal_login_before_tls_gets_no_continuation(
    gw: GatewayProcess, dovecot: DovecotServer
) -> None:
    """A LOGIN with a synchronizing literal must not be invited with "+": the
    client would then send its password in clear."""
    src = source_address(51)
    with RawClient(gw.starttls_port, src) as c:
        c.line()
        c.send(b"a LOGIN {5}\r\n")
        reply = c.line()
        assert not reply.startswith(b"+"), reply
        assert reply.startswith(b"a " + PRIVACY), reply
        assert c.command(b"n", b"NOOP") == [b"n OK NOOP completed."]
    assert not [e for e in gw.events("auth") if e.get("src") == src]
    assert not dovecot_lines(dovecot, f"rip={src},")

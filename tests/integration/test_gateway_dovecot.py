"""The gateway end to end in front of a real Dovecot: both login modes over both
listener kinds, upstream STARTTLS and implicit TLS, what the client is told, what
is refused, and what the audit log and Dovecot's log record."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from imapguard.auth import app_passwords
from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import (
    AUTH_FAILED,
    RawClient,
    capability_code,
    close_imap,
    dovecot_lines,
    message,
    open_imap,
    running_gateway,
    session_of,
    wait_for,
)

pytestmark = pytest.mark.dovecot

# Capabilities that mean nothing once logged in (a client would try STARTTLS or a
# login again): the gateway must not pass them on to its client at login.
_NEVER_AFTER_LOGIN = ("STARTTLS", "LOGINDISABLED", "SASL-IR")
# Dovecot's post-login capabilities that the gateway's own pre-auth list never has.
_FROM_DOVECOT = {"IDLE", "ENABLE", "MOVE", "UIDPLUS", "NAMESPACE"}


@pytest.fixture(scope="module")
def gw_passthrough(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("gw-passthrough"),
        dovecot,
        login="passthrough",
        methods=("password",),
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def gw_upstream_implicit(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("gw-up-implicit"), dovecot, login="master", upstream_tls="implicit"
    ) as gw:
        yield gw


@dataclass(frozen=True)
class Setup:
    gw: GatewayProcess
    user: str
    password: str
    method: str
    orig_user: str  # what Dovecot logs as orig_user=<...>


def _setup(request: pytest.FixtureRequest, dovecot: DovecotServer, mode: str) -> Setup:
    if mode == "passthrough":
        gw: GatewayProcess = request.getfixturevalue("gw_passthrough")
        return Setup(gw, "bob", dovecot.users["bob"], "password", "bob")
    gw = request.getfixturevalue("gw" if mode == "master" else "gw_upstream_implicit")
    password = gw.create_app_password("alice", f"{mode}-{secrets.token_hex(2)}")
    return Setup(gw, "alice", password, "app-password", dovecot.master_user)


def _check_login_capabilities(caps: list[str]) -> None:
    assert {c.upper() for c in caps} >= _FROM_DOVECOT, caps
    for cap in caps:
        assert cap.upper() not in _NEVER_AFTER_LOGIN, caps
        assert not cap.upper().startswith("AUTH="), caps


@pytest.mark.parametrize(
    ("mode", "listener", "n"),
    [
        ("master", "implicit", 10),
        ("master", "starttls", 11),
        ("passthrough", "implicit", 12),
        ("passthrough", "starttls", 13),
        ("upstream-implicit", "implicit", 14),
        ("upstream-implicit", "starttls", 21),
    ],
)
def test_login_select_and_capabilities(
    request: pytest.FixtureRequest, dovecot: DovecotServer, mode: str, listener: str, n: int
) -> None:
    setup = _setup(request, dovecot, mode)
    gw, src = setup.gw, source_address(n)
    subject = f"gw-{mode}-{listener}-{secrets.token_hex(4)}"
    dovecot.deliver(setup.user, message(subject))

    conn = open_imap(gw, listener, src)
    try:
        # Before login the gateway speaks for itself: no IDLE, AUTH=PLAIN offered.
        assert "IDLE" not in conn.capabilities
        assert "AUTH=PLAIN" in conn.capabilities
        typ, login = conn.login(setup.user, setup.password)
        assert typ == "OK"
        _check_login_capabilities(capability_code(login[0]))

        status, data = conn.select("INBOX")
        assert status == "OK"
        assert data[0] is not None
        assert int(data[0]) >= 1
        status, data = conn.search(None, f'SUBJECT "{subject}"')
        assert status == "OK"
        assert data[0] is not None
        assert len(data[0].split()) == 1

        # A CAPABILITY command after login is relayed to Dovecot, which answers it.
        status, data = conn.capability()
        assert status == "OK"
        assert data[0] is not None
        relayed = data[0].decode().split()
        assert {c.upper() for c in relayed} >= _FROM_DOVECOT
        for cap in relayed:
            assert cap.upper() not in ("STARTTLS", "LOGINDISABLED"), relayed
            assert not cap.upper().startswith("AUTH="), relayed
    finally:
        close_imap(conn)

    auths = [e for e in gw.events("auth") if e.get("src") == src]
    assert len(auths) == 1, auths
    auth = auths[0]
    assert auth["result"] == "ok"
    assert auth["reason"] == "ok"
    assert auth["user"] == setup.user
    assert auth["method"] == setup.method

    # Dovecot saw the client's address (ID x-originating-ip), the gateway's session id
    # and, in master mode, the master login.
    session = auth["session"]
    lines = wait_for(
        lambda: [ln for ln in dovecot_lines(dovecot, f"session=<{session}>") if "Login:" in ln],
        what="Dovecot's login line",
    )
    assert f"user=<{setup.user}>" in lines[0]
    assert f"rip={src}," in lines[0]
    assert f"orig_user=<{setup.orig_user}>" in lines[0]
    assert ", TLS," in lines[0]


def test_primary_password_alone_is_refused(
    gw: GatewayProcess, dovecot: DovecotServer, alice_password: str
) -> None:
    """methods = ["app-password"]: the Dovecot password is not a second factor."""
    src = source_address(15)
    primary = dovecot.users["alice"]
    plain = base64.b64encode(b"\0alice\0" + primary.encode())
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        assert c.line().startswith(b"* OK ")
        assert c.command(b"a1", f'LOGIN alice "{primary}"'.encode()) == [b"a1 " + AUTH_FAILED]
        assert c.command(b"a2", b"AUTHENTICATE PLAIN " + plain) == [b"a2 " + AUTH_FAILED]
        # The right app password still works on the same connection.
        lines = c.command(b"a3", f'LOGIN alice "{alice_password}"'.encode())
        assert lines[-1].startswith(b"a3 OK ")

    auths = [e for e in gw.events("auth") if e.get("src") == src]
    assert [e["result"] for e in auths] == ["invalid", "invalid", "ok"]
    assert all(e["user"] == "alice" for e in auths)
    assert auths[0]["reason"] == auths[1]["reason"] == "not a valid app password"
    assert [e["mechanism"] for e in auths] == ["LOGIN", "PLAIN", "LOGIN"]
    # The primary password was never sent upstream (only the master login of a3 was).
    logins = dovecot_lines(dovecot, f"rip={src},")
    assert len(logins) == 1, logins
    assert f"orig_user=<{dovecot.master_user}>" in logins[0]
    # ... and is in no log.
    assert primary not in gw.audit_path.read_text()
    assert primary not in gw.log_text()


def test_revoked_app_password_is_refused(gw: GatewayProcess) -> None:
    src = source_address(16)
    created = json.loads(
        gw.cli("app-password", "create", "alice", "--label", "to-revoke", "--json").stdout
    )
    login = f'LOGIN alice "{created["password"]}"'.encode()
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        assert c.command(b"a1", login)[-1].startswith(b"a1 OK ")

    out = gw.cli("app-password", "revoke", "alice", created["id"], "--json")
    assert json.loads(out.stdout) == {"id": created["id"], "revoked": True}

    with RawClient(gw.starttls_port, src) as c:
        c.line()
        assert c.command(b"s", b"STARTTLS")[-1].startswith(b"s OK")
        c.starttls(gw.client_ssl())
        assert c.command(b"a2", login) == [b"a2 " + AUTH_FAILED]
    auths = [e for e in gw.events("auth") if e.get("src") == src]
    assert [e["result"] for e in auths] == ["ok", "invalid"]
    listed = json.loads(gw.cli("app-password", "list", "alice", "--json").stdout)
    assert created["id"] not in [r["id"] for r in listed]


def test_unknown_user_and_wrong_password_look_the_same(
    gw: GatewayProcess, dovecot: DovecotServer, alice_password: str
) -> None:
    """Every failure gets the same bytes on the wire; only the audit log differs."""
    src = source_address(17)
    well_formed = app_passwords.generate().reveal().decode()
    attempts = [
        ("nosuchuser", well_formed),  # unknown user, well-formed app password
        ("alice", well_formed),  # known user, wrong app password
        ("alice", "not-an-app-password"),  # known user, not even the format
        ("bob", dovecot.users["bob"]),  # a Dovecot user with his real password, no app password
        ("alice", alice_password + "x"),  # almost right
        ("", alice_password),  # empty user name
    ]
    answers: list[list[bytes]] = []
    timings: list[float] = []
    for user, password in attempts:
        with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
            c.line()
            started = time.monotonic()
            answers.append(c.command(b"x1", f'LOGIN "{user}" "{password}"'.encode()))
            timings.append(time.monotonic() - started)
            # The connection stays usable after one failure.
            assert c.command(b"x2", b"NOOP")[-1].startswith(b"x2 OK")
    assert answers == [[b"x1 " + AUTH_FAILED]] * len(attempts)
    # failure_delay = 0.05 s (tests/gateway.py): no failure is answered sooner.
    assert min(timings) >= 0.045, timings

    auths = [e for e in gw.events("auth") if e.get("src") == src]
    assert len(auths) == len(attempts)
    assert {e["result"] for e in auths} == {"invalid"}
    reasons = [e["reason"] for e in auths]
    assert reasons[0] == reasons[1] == "not a valid app password"
    assert reasons[5] == "malformed user name"
    for reason in reasons:
        assert reason.encode() not in AUTH_FAILED
    assert not dovecot_lines(dovecot, f"rip={src},")


def test_app_password_last_use_is_recorded(gw: GatewayProcess) -> None:
    src = source_address(18)
    created = json.loads(
        gw.cli("app-password", "create", "alice", "--label", "last-used", "--json").stdout
    )
    before = time.time()
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        c.command(b"i", b'ID ("name" "pytest-client" "version" "1.0")')
        assert c.command(b"a", f'LOGIN alice "{created["password"]}"'.encode())[-1].startswith(
            b"a OK "
        )
        assert c.command(b"b", b"NOOP")[-1].startswith(b"b OK")

    def recorded() -> dict[str, Any] | None:
        # Bookkeeping is written behind the login (state/writebehind.py: within 0.25 s).
        listed = json.loads(gw.cli("app-password", "list", "alice", "--json").stdout)
        record: dict[str, Any] = next(r for r in listed if r["id"] == created["id"])
        return record if record["last_used_at"] is not None else None

    record = wait_for(recorded, 10.0, "the app password's last use")
    assert before - 1 <= record["last_used_at"] <= time.time() + 1
    assert record["last_used_address"] == src
    assert record["last_used_client"] == "pytest-client/1.0"
    auth = next(e for e in gw.events("auth") if e.get("src") == src)
    assert auth["client_id"] == "pytest-client/1.0"


def test_passthrough_wrong_password_is_refused(
    gw_passthrough: GatewayProcess, dovecot: DovecotServer
) -> None:
    """The password goes to Dovecot; its refusal is the uniform failure, and Dovecot's
    penalty lands on the client's address, not on the gateway's."""
    src = source_address(19)
    with RawClient(gw_passthrough.implicit_port, src, tls=gw_passthrough.client_ssl()) as c:
        c.line()
        wrong = "not-" + dovecot.users["bob"]
        assert c.command(b"p1", f'LOGIN bob "{wrong}"'.encode()) == [b"p1 " + AUTH_FAILED]
    auth = next(e for e in gw_passthrough.events("auth") if e.get("src") == src)
    assert auth["result"] == "invalid"
    assert auth["reason"].startswith("wrong password")
    assert wait_for(lambda: dovecot_lines(dovecot, f"rip={src},"))
    assert wrong not in gw_passthrough.audit_path.read_text()


def test_login_forms_literal_sasl_continuation_and_pipelining(
    gw: GatewayProcess, alice_password: str
) -> None:
    """LOGIN with synchronizing and non-synchronizing literals, AUTHENTICATE PLAIN
    with a continuation, and commands pipelined behind the login: all reach
    Dovecot in order once the login is done."""
    src = source_address(22)
    password = alice_password.encode()
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        c.send(b"a LOGIN {5}\r\n")
        assert c.line().startswith(b"+")
        c.send(b"alice {" + str(len(password)).encode() + b"}\r\n")
        assert c.line().startswith(b"+")
        c.send(password + b"\r\n")
        assert c.until_tagged(b"a")[-1].startswith(b"a OK [CAPABILITY ")
        assert c.command(b"b", b"NOOP")[-1].startswith(b"b OK")

    with RawClient(gw.starttls_port, src) as c:
        c.line()
        c.command(b"s", b"STARTTLS")
        c.starttls(gw.client_ssl())
        c.send(b"a LOGIN {5+}\r\nalice {" + str(len(password)).encode() + b"+}\r\n")
        c.send(password + b"\r\n")
        assert c.until_tagged(b"a")[-1].startswith(b"a OK ")

    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        c.send(b"a AUTHENTICATE PLAIN\r\n")
        assert c.line() == b"+ "
        c.send(base64.b64encode(b"alice\0alice\0" + password) + b"\r\n")
        assert c.until_tagged(b"a")[-1].startswith(b"a OK ")

    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        # Login and three commands in one segment: the three go to Dovecot.
        c.send(b'a LOGIN alice "' + password + b'"\r\nb SELECT INBOX\r\nc NOOP\r\nd LOGOUT\r\n')
        assert c.until_tagged(b"a")[-1].startswith(b"a OK ")
        assert c.until_tagged(b"b")[-1].startswith(b"b OK [READ-WRITE]")
        assert c.until_tagged(b"c")[-1].startswith(b"c OK")
        lines = c.until_tagged(b"d")
        assert lines[0].startswith(b"* BYE ")
        assert lines[-1].startswith(b"d OK")
        assert c.rest_until_closed() == b""
    results = [e["result"] for e in gw.events("auth") if e.get("src") == src]
    assert results == ["ok"] * 4


def test_client_cannot_spoof_its_address(gw: GatewayProcess, dovecot: DovecotServer) -> None:
    """The client's own ID (with an x-originating-ip of its choice) is answered by
    the gateway and never reaches Dovecot: Dovecot logs the real address."""
    src = source_address(23)
    password = gw.create_app_password("alice", "spoof")
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        lines = c.command(b"i", b'ID ("x-originating-ip" "198.51.100.66" "name" "evil")')
        assert lines == [b"* ID NIL", b"i OK ID completed."]
        assert c.command(b"l", f'LOGIN alice "{password}"'.encode())[-1].startswith(b"l OK")
        # After login the relay is opaque, but Dovecot ignores a late ID address.
        c.command(b"j", b'ID ("x-originating-ip" "198.51.100.67")')
        session = session_of(gw, src, c.local_port)
    line = wait_for(
        lambda: [ln for ln in dovecot_lines(dovecot, f"session=<{session}>") if "Login:" in ln]
    )[0]
    assert f"rip={src}," in line
    assert "198.51.100.6" not in dovecot.log_text()


def test_too_many_failures_end_the_connection(gw: GatewayProcess) -> None:
    src = source_address(24)
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        for i in range(3):
            tag = f"f{i}".encode()
            assert c.command(tag, b'LOGIN alice "wrong"') == [tag + b" " + AUTH_FAILED]
        assert c.line() == b"* BYE Too many authentication failures."
        assert c.rest_until_closed() == b""


def test_client_vanishing_during_login_leaves_no_upstream_session(
    gw: GatewayProcess, dovecot: DovecotServer, alice_password: str
) -> None:
    """A client that sends its login and disconnects at once: the upstream session
    the gateway opened for it is closed too."""
    src = source_address(25)
    c = RawClient(gw.implicit_port, src, tls=gw.client_ssl())
    c.line()
    c.send(f'a LOGIN alice "{alice_password}"\r\n'.encode())
    session = session_of(gw, src, c.local_port)
    c.close()
    closes = wait_for(
        lambda: [e for e in gw.events("close") if e.get("session") == session],
        what="the close event",
    )
    assert closes[0]["reason"] == "relay ended"
    auths = [e for e in gw.events("auth") if e.get("session") == session]
    assert [e["result"] for e in auths] == ["ok"]
    # Dovecot logged the login; it must also log the end of that session.
    wait_for(
        lambda: [
            ln
            for ln in dovecot_lines(dovecot, f"<{session}>")
            if "Disconnected" in ln and "imap(alice)" in ln
        ],
        what="Dovecot's disconnect line",
    )

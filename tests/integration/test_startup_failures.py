"""Clear failures at start, tried as a new admin would: the real `imapguard serve`
and `imapguard check-config` (subprocesses) on a configuration with one thing
wrong. Each problem is one line naming its key, exit 2, no traceback and no
secret: a port in use, a key that does not match its certificate, a file that
is not PEM; an expired certificate is a warning. `check-config --connect` and the
start of `serve` try the upstream: down, its certificate name wrong, the master
password refused. A refused master login at a user's login is the gateway's
fault: `NO [UNAVAILABLE]`, audited with the reason, and no defense counter moves.

These tests run a Dovecot of their own: checking the master user is an
authentication Dovecot counts against 127.0.0.1 (its auth penalty), which must
not slow down the other tests' shared server. The tests that refuse the master
password come last, as the penalty grows with each failure.
"""

from __future__ import annotations

import datetime
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dovecot import DOVECOT_BINARY, DovecotServer, free_port
from tests.gateway import IMAPGUARD, GatewayProcess, source_address
from tests.integration.conftest import RawClient, running_gateway, set_upstream, wait_for
from tests.pem import write_pair

pytestmark = pytest.mark.dovecot

UNAVAILABLE = b"NO [UNAVAILABLE] Service temporarily unavailable, try later."


@pytest.fixture(scope="module")
def own_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotServer]:
    if not DOVECOT_BINARY.exists():
        pytest.fail(f"{DOVECOT_BINARY} is missing: run `bash .ci/run`", pytrace=False)
    server = DovecotServer.create(tmp_path_factory.mktemp("dovecot-startup"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gw(tmp_path: Path, own_dovecot: DovecotServer) -> GatewayProcess:
    """A gateway's configuration in front of the module's Dovecot, not started."""
    return GatewayProcess.create(tmp_path / "gw", own_dovecot)


def _run(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IMAPGUARD, *args, "--config", str(gw.config_path)],
        capture_output=True,
        text=True,
        env=gw._env(),
        timeout=60,
        check=False,
    )


def _one_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    """Exit 2 and exactly `line` on stderr: no traceback, nothing else."""
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [line], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def _edit(gw: GatewayProcess, old: str, new: str) -> None:
    text = gw.config_path.read_text()
    assert old in text
    gw.config_path.write_text(text.replace(old, new, 1))


# -- the configuration's files --------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_a_key_of_another_certificate_is_one_line(gw: GatewayProcess, command: str) -> None:
    key = gw.base / "gateway.key"
    other = gw.base / "other.pem"
    write_pair(other, key)  # the key now belongs to another certificate
    line = (
        f"config error: tls.private_key: {key} does not match the certificate in "
        f"{gw.base / 'gateway.pem'} (the key of another certificate?)"
    )
    _one_line(_run(gw, command), line)


@pytest.mark.parametrize("command", ["serve", "check-config"])
@pytest.mark.parametrize(
    "key", ["tls.certificate", "tls.private_key", "tls.client_ca", "upstream.ca"]
)
def test_a_file_that_is_not_pem_is_named(
    gw: GatewayProcess, own_dovecot: DovecotServer, command: str, key: str
) -> None:
    der = gw.base / "not-pem.der"
    der.write_bytes(b"\x30\x82\x01\x0a" + bytes(64))  # DER's opening, no PEM armour
    der.chmod(0o600)
    if key == "tls.certificate":
        _edit(gw, f'certificate = "{gw.base / "gateway.pem"}"', f'certificate = "{der}"')
    elif key == "tls.private_key":
        _edit(gw, f'private_key = "{gw.base / "gateway.key"}"', f'private_key = "{der}"')
    elif key == "tls.client_ca":
        _edit(gw, "[tls]\n", f'[tls]\nclient_ca = "{der}"\n')
    else:
        _edit(gw, f'ca = "{own_dovecot.ca_cert}"', f'ca = "{der}"')
    tool = "pkey" if key == "tls.private_key" else "x509"
    line = (
        f"config error: {key}: {der} is not PEM (convert a DER file with "
        f"`openssl {tool} -inform der -in FILE -out FILE.pem`)"
    )
    _one_line(_run(gw, command), line)


def test_an_expired_certificate_is_a_warning_and_serve_says_so(gw: GatewayProcess) -> None:
    cert = gw.base / "gateway.pem"
    ended = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    write_pair(cert, gw.base / "gateway.key", not_after=ended)
    expected = (
        f"tls.certificate: {cert} expired at {ended:%Y-%m-%d %H:%M} UTC: "
        "clients refuse it; renew it"
    )

    result = _run(gw, "check-config")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"warning: {expected}"]
    assert result.stdout == f"{gw.config_path}: configuration is valid\n"

    gw.start()  # serve still starts: the clients decide what to do with it
    try:
        wait_for(lambda: expected in gw.log_text(), what="the expiry warning")
        assert f"WARNING imapguard: {expected}" in gw.log_text()
    finally:
        gw.stop()


def test_a_certificate_ending_within_14_days_is_announced(gw: GatewayProcess) -> None:
    cert = gw.base / "gateway.pem"
    ends = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5, minutes=30)
    write_pair(cert, gw.base / "gateway.key", not_after=ends)
    result = _run(gw, "check-config")
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(f"warning: tls.certificate: {cert} expires at {ends:%Y-%m-%d %H:%M}")
    assert warning.endswith(" UTC, in 5 days 0 hours: renew it")


# -- ports -------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1])
def test_a_listen_port_in_use_is_one_line_naming_it(gw: GatewayProcess, index: int) -> None:
    port = (gw.implicit_port, gw.starttls_port)[index]
    with socket.create_server(("127.0.0.1", port)):
        result = _run(gw, "serve")
    line = (
        f"config error: listen[{index}].address: cannot listen on 127.0.0.1:{port}: "
        "Address already in use"
    )
    _one_line(result, line)
    # Nothing was left listening on the other port either.
    assert not gw.accepts(gw.implicit_port if index else gw.starttls_port)


# -- the upstream --------------------------------------------------------------------


def test_check_config_connect_says_the_upstream_and_master_user_work(
    gw: GatewayProcess, own_dovecot: DovecotServer
) -> None:
    result = _run(gw, "check-config", "--connect")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{gw.config_path}: configuration is valid",
        f"upstream 127.0.0.1:{own_dovecot.imap_port}: reachable (STARTTLS, certificate "
        "verified for 'localhost'), master user 'imapguard' accepted",
    ]
    # The check asked for no real mailbox: Dovecot's log shows the .invalid name.
    assert "Master user logging in as imapguard-check.invalid" in own_dovecot.log_text()


def test_check_config_connect_to_an_upstream_that_is_down(gw: GatewayProcess) -> None:
    port = free_port()
    gw.config_path.write_text(set_upstream(gw.config_path.read_text(), port))
    _one_line(
        _run(gw, "check-config", "--connect"),
        f"config error: upstream.address: upstream 127.0.0.1:{port}: Connection refused",
    )


def test_check_config_connect_with_the_wrong_certificate_name(
    gw: GatewayProcess, own_dovecot: DovecotServer
) -> None:
    _edit(gw, 'server_name = "localhost"', 'server_name = "mail.wrong.example"')
    _one_line(
        _run(gw, "check-config", "--connect"),
        f"config error: upstream.server_name: upstream 127.0.0.1:{own_dovecot.imap_port}: "
        "certificate verification failed: Hostname mismatch, certificate is not valid for "
        "'mail.wrong.example'.",
    )


def test_check_config_connect_with_implicit_tls_to_a_plain_port(
    gw: GatewayProcess, own_dovecot: DovecotServer
) -> None:
    _edit(gw, 'tls = "starttls"\nca = ', 'tls = "implicit"\nca = ')
    _one_line(
        _run(gw, "check-config", "--connect"),
        f"config error: upstream.tls: upstream 127.0.0.1:{own_dovecot.imap_port}: "
        "TLS error: WRONG_VERSION_NUMBER",
    )


def test_serve_logs_its_listeners_and_an_upstream_that_is_down(
    tmp_path: Path, own_dovecot: DovecotServer
) -> None:
    port = free_port()
    with running_gateway(
        tmp_path / "gw", own_dovecot, edit=lambda text: set_upstream(text, port)
    ) as gw:
        # It starts all the same: the upstream may come later.
        wait_for(lambda: "upstream.address" in gw.log_text(), what="the upstream warning")
        log = gw.log_text()
        for address, tls in ((gw.implicit_port, "implicit"), (gw.starttls_port, "starttls")):
            assert f"INFO imapguard.gateway: listening on 127.0.0.1:{address} ({tls} TLS)" in log
        assert (
            f"WARNING imapguard.gateway: upstream.address: upstream 127.0.0.1:{port}: "
            "Connection refused"
        ) in log


# -- a refused master password (last: Dovecot's penalty on 127.0.0.1 grows) -----------


def _wrong_master(gw: GatewayProcess) -> None:
    (gw.base / "master.secret").write_text("not-the-master-password\n")


def test_check_config_connect_with_a_refused_master_password(
    gw: GatewayProcess, own_dovecot: DovecotServer
) -> None:
    _wrong_master(gw)
    result = _run(gw, "check-config", "--connect")
    _one_line(
        result,
        f"config error: upstream.master_password_file: upstream 127.0.0.1:"
        f"{own_dovecot.imap_port} refused the master user 'imapguard' (login: NO "
        "[AUTHENTICATIONFAILED] Authentication failed.): check upstream.master_user and the "
        "password in upstream.master_password_file",
    )
    assert "not-the-master-password" not in result.stdout + result.stderr


def test_a_refused_master_login_is_unavailable_not_a_wrong_password(
    gw: GatewayProcess, own_dovecot: DovecotServer
) -> None:
    """The user's app password is right; the gateway's master password is not.
    The user is told to come back later, not that their password is wrong, and
    the defense learns nothing: no failure counted, no lockout, no spray."""
    password = gw.create_app_password("alice", "phone")
    _wrong_master(gw)
    gw.start()
    try:
        # At start, serve tries the connection and TLS only (no authentication
        # for Dovecot to count against the gateway's address).
        wait_for(lambda: "reachable" in gw.log_text(), what="the upstream check at start")
        assert (
            f"INFO imapguard.gateway: upstream 127.0.0.1:{own_dovecot.imap_port}: reachable "
            "(STARTTLS, certificate verified for 'localhost')\n"
        ) in gw.log_text()
        with RawClient(gw.implicit_port, source_address(225), tls=gw.client_ssl()) as c:
            c.line()
            for tag in (b"l1", b"l2"):
                started = time.monotonic()
                answer = c.command(tag, f'LOGIN alice "{password}"'.encode())
                assert answer == [tag + b" " + UNAVAILABLE], answer
                assert time.monotonic() - started < 40
        # The log says it once, naming the setting to fix.
        refusals = [line for line in gw.log_text().splitlines() if "master_password_file" in line]
        assert len(refusals) == 1, refusals
        assert refusals[0].endswith(
            f"WARNING imapguard.gateway: upstream.master_password_file: upstream 127.0.0.1:"
            f"{own_dovecot.imap_port} refused the master user 'imapguard' (login: NO "
            "[AUTHENTICATIONFAILED] Authentication failed.): users cannot log in until "
            "upstream.master_user and its password are right"
        )
        auths = [e for e in gw.events("auth") if e.get("user") == "alice"]
        assert [e["result"] for e in auths] == ["unavailable", "unavailable"]
        for event in auths:
            assert event["reason"].startswith(
                "upstream refused the master login (login: NO [AUTHENTICATIONFAILED]"
            ), event
        db = sqlite3.connect(gw.base / "state.db")
        try:
            for table in ("defense_counters", "defense_members", "defense_blocks"):
                assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table  # noqa: S608
        finally:
            db.close()
        assert not gw.events("defense_block")
        assert not gw.events("spray_alert")
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text()

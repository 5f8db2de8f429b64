"""Attack-named: another local user reads the state database. It holds account names,
client addresses, devices and keyed app-password digests; SQLite creates a new
database 0644 less the umask, so every user of the machine could copy it. Every
command that creates it (`serve`, the CLI, `demo`) must create it 0600, with its
-wal and -shm files; `check-config` (and `serve`) refuse one that group or others
may read, naming `state.url`.

Source addresses: 127.0.1.240-244.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import IMAPGUARD, GatewayProcess, source_address
from tests.integration.conftest import RawClient, running_gateway, wait_for
from tests.integration.test_demo import _free_base, _start, _stop


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cli(gw: GatewayProcess, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IMAPGUARD, *args, "--config", str(gw.config_path)],
        capture_output=True,
        text=True,
        env=gw._env(),
        check=False,
        timeout=60,
        umask=umask,
    )


@pytest.mark.dovecot
def test_another_local_user_reads_the_state_database_of_the_gateway(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    # A directory others may enter, as /var/lib/imapguard usually is.
    tmp_path.chmod(0o755)
    with running_gateway(tmp_path, dovecot, login="master") as gw:
        password = gw.create_app_password("alice", "phone")
        with RawClient(gw.implicit_port, source_address(240), tls=gw.client_ssl()) as c:
            c.line()
            assert c.command(b"a", b'LOGIN alice "' + password.encode() + b'"')[-1].startswith(
                b"a OK"
            )
        db = tmp_path / "state.db"
        # While the gateway runs, its write-ahead log and shared memory exist too.
        wal, shm = wait_for(
            lambda: (
                (db.with_name("state.db-wal"), db.with_name("state.db-shm"))
                if db.with_name("state.db-wal").exists() and db.with_name("state.db-shm").exists()
                else None
            ),
            what="the -wal and -shm files",
        )
        assert [_mode(p) for p in (db, wal, shm)] == [0o600, 0o600, 0o600]
        assert _cli(gw, "check-config").returncode == 0


@pytest.mark.dovecot
def test_another_local_user_reads_a_state_database_the_cli_created(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    """The CLI is often the first to open the store (an app password made before
    the first start), and an administrator's umask may be 000."""
    tmp_path.chmod(0o755)
    gw = GatewayProcess.create(tmp_path, dovecot, login="master")
    created = _cli(gw, "app-password", "create", "bob", "--label", "laptop", umask=0)
    assert created.returncode == 0, created.stderr
    assert _mode(tmp_path / "state.db") == 0o600
    for suffix in ("-wal", "-shm"):
        leftover = tmp_path / f"state.db{suffix}"
        assert not leftover.exists() or _mode(leftover) == 0o600


@pytest.mark.dovecot
def test_check_config_and_serve_refuse_a_world_readable_state_database(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    tmp_path.chmod(0o755)
    gw = GatewayProcess.create(tmp_path, dovecot, login="master")
    assert _cli(gw, "blocks", "list").returncode == 0  # creates the store
    db = tmp_path / "state.db"
    db.chmod(0o644)  # as an older imapguard created it
    checked = _cli(gw, "check-config")
    assert checked.returncode == 2
    assert checked.stderr.startswith("config error: state.url: /"), checked.stderr
    assert "state.db is readable or writable by group or others: chmod 600" in checked.stderr
    with pytest.raises(RuntimeError, match=r"state\.url: .*state\.db is readable"):
        gw.start()
    # A directory only the gateway's user may enter keeps the file out of reach.
    tmp_path.chmod(0o700)
    assert _cli(gw, "check-config").returncode == 0
    tmp_path.chmod(0o755)
    db.chmod(0o600)
    assert _cli(gw, "check-config").returncode == 0


@pytest.mark.clients
def test_another_local_user_reads_the_state_database_of_the_demo(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    base = _free_base()
    proc = _start(state, base)
    try:
        assert _mode(state / "state.db") == 0o600
    finally:
        code, out = _stop(proc)
    assert code == 0, out
    assert os.stat(state).st_mode & 0o077 == 0

"""Schema revisions on SQLite: a new store made at the current revision directly
is what Alembic makes, a file written before Alembic (tests/data/
state-before-alembic.db, made by imapguard's store as it was then, user_version 6,
with a user, an app password, a sealed TOTP secret, a trusted device, a portal
session and a revocation) is recognised and upgraded without losing a record,
and a store of another revision is refused with one line naming state.url.
The same on PostgreSQL: tests/integration/test_postgres_state.py."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from imapguard.cli import main
from imapguard.state.migrations import current, upgrade
from imapguard.state.sqlite import open_store
from imapguard.state.versions import BASELINE, HEAD, SchemaMismatch

BEFORE_ALEMBIC = Path(__file__).parent.parent / "data" / "state-before-alembic.db"


@pytest.fixture(autouse=True)
def own_root_logger() -> Iterator[None]:
    """No root handler for the test (Alembic logs at INFO): one left by another
    test may write to a stream that is closed by now."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers[:] = []
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level


def _config(tmp_path: Path, url: str) -> Path:
    """A configuration on the store at `url` (the rest as tests/unit/test_cli.py's)."""
    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    key = tmp_path / "server.key"
    key.write_bytes(b"k" * 32)
    master = tmp_path / "master"
    master.write_text("pw")
    for secret in (key, master, tmp_path / "key.pem"):
        secret.chmod(0o600)
    path = tmp_path / "imapguard.toml"
    path.write_text(
        f"""
[state]
url = "{url}"
key_file = "{key}"
[[listen]]
address = "127.0.0.1:10993"
tls = "implicit"
[tls]
certificate = "{tmp_path}/cert.pem"
private_key = "{tmp_path}/key.pem"
[upstream]
address = "127.0.0.1:143"
tls = "none"
master_user = "imapguard"
master_password_file = "{master}"
[audit]
path = "{tmp_path}/audit.jsonl"
"""
    )
    return path


def _schema(path: Path) -> tuple[object, ...]:
    db = sqlite3.connect(path)
    try:
        tables = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        (version,) = db.execute("PRAGMA user_version").fetchone()
        revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
        return tuple(tables), version, tuple(revision)
    finally:
        db.close()


def test_a_new_store_made_directly_has_the_schema_alembic_makes(tmp_path: Path) -> None:
    fast, slow = tmp_path / "fast.db", tmp_path / "alembic.db"
    started = time.perf_counter()
    open_store(f"sqlite:///{fast}").close()
    direct = time.perf_counter() - started
    assert upgrade(f"sqlite:///{slow}") == (None, HEAD)
    assert _schema(fast) == _schema(slow)
    assert _schema(fast)[2] == ((HEAD,),)
    # The point of the direct path: a new store costs a few milliseconds, not
    # Alembic's start (about half a second a store, more to import it).
    assert direct < 0.5


def _old_file(tmp_path: Path) -> str:
    path = tmp_path / "state.db"
    shutil.copyfile(BEFORE_ALEMBIC, path)
    return f"sqlite:///{path}"


def test_a_store_written_before_alembic_is_stamped_then_refused_until_upgraded(
    tmp_path: Path,
) -> None:
    url = _old_file(tmp_path)
    with pytest.raises(SchemaMismatch) as refused:
        open_store(url)
    assert not refused.value.newer
    assert current(url) == BASELINE  # recognised: user_version 6 is the baseline
    assert upgrade(url) == (BASELINE, HEAD)
    store = open_store(url)
    try:
        (alice,) = store.list_users()
        assert (alice.name, alice.app_passwords) == ("alice", 1)
        assert store.find_app_password("alice", b"a" * 32) is not None
        totp = store.get_totp("alice")
        assert totp is not None
        assert len(totp.sealed) > 28
        assert [d.client_name for d in store.list_devices("alice")] == ["Thunderbird"]
        assert store.find_portal_session(b"t" * 32, 1004.0, 60.0) is not None
        assert store.last_revocation() == 1
    finally:
        store.close()
    assert upgrade(url) == (HEAD, HEAD)  # again: nothing to do


def test_an_older_store_is_refused_by_the_cli_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _old_file(tmp_path)
    config = _config(tmp_path, url)
    line = (
        f"config error: state.url: {url}: schema revision {BASELINE} is older than this"
        f" imapguard's ({HEAD}): run `imapguard db upgrade`\n"
    )
    assert main(["user", "list", "--config", str(config)]) == 2
    assert capsys.readouterr().err == line
    assert main(["serve", "--config", str(config)]) == 2  # refused before it listens
    assert capsys.readouterr().err.endswith(line)
    assert main(["db", "check", "--config", str(config)]) == 1
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert f"upgraded from {BASELINE} to {HEAD}" in capsys.readouterr().out
    assert main(["db", "check", "--config", str(config)]) == 0
    assert main(["user", "list", "--config", str(config)]) == 0
    assert "alice" in capsys.readouterr().out


def test_a_store_of_a_newer_imapguard_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.db"
    open_store(f"sqlite:///{path}").close()
    db = sqlite3.connect(path)
    db.execute("UPDATE alembic_version SET version_num = '0099_future'")
    db.commit()
    db.close()
    with pytest.raises(SchemaMismatch) as refused:
        open_store(f"sqlite:///{path}")
    assert refused.value.newer
    config = _config(tmp_path, f"sqlite:///{path}")
    assert main(["user", "list", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"config error: state.url: sqlite:///{path}: schema revision 0099_future was written"
        f" by a newer imapguard (this one knows up to {HEAD}): upgrade imapguard\n"
    )

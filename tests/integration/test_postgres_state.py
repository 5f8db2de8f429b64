"""The PostgreSQL state store against a real server (tests/postgres.py): TLS with
verify-full and its refusal of a wrong CA, a password that never shows, schema
revisions (Alembic and the direct path agree, older and newer refused with one
line, `db upgrade`), the server key check, and the gateway serving logins from
it with real Dovecot. What every store does is tests/conformance/, which runs
on PostgreSQL too."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from imapguard.errors import StateUnavailable
from imapguard.state.migrations import upgrade
from imapguard.state.postgres import PgStore, open_store
from imapguard.state.postgres.connection import CONNECT_TIMEOUT, POOL_TIMEOUT
from imapguard.state.versions import BASELINE, HEAD
from tests.dovecot import DovecotServer
from tests.gateway import IMAPGUARD, GatewayProcess
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway, wait_for
from tests.postgres import PostgresServer, pg_empty_url, pg_url, postgres
from tests.redis_server import RedisServer, redis_server
from tests.unit.test_migrations import _config

__all__ = ["pg_empty_url", "pg_url", "postgres", "redis_server"]


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env_src = str(Path(__file__).resolve().parent.parent.parent / "src")
    return subprocess.run(
        [*IMAPGUARD, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_src, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


# The commands tested here open no counter store, but a PostgreSQL url requires one.
COUNTERS = 'counters_url = "redis://127.0.0.1:1/0"'


def _pg_config(tmp_path: Path, url: str, postgres: PostgresServer | None) -> Path:
    """A configuration on the database at `url` (its password from the file
    when `postgres` is given)."""
    config = _config(tmp_path, url)
    extra = f'\npassword_file = "{postgres.password_file}"' if postgres is not None else ""
    text = config.read_text().replace(f'url = "{url}"', f'url = "{url}"{extra}\n{COUNTERS}')
    config.write_text(text)
    return config


def _dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _sql(postgres: PostgresServer, url: str, statement: str) -> None:
    database = _dbname(url)
    with psycopg.connect(
        host="127.0.0.1",
        port=postgres.port,
        user="imapguard",
        password=postgres.password,
        dbname=database,
        autocommit=True,
    ) as db:
        db.execute(statement)


# -- TLS and the password -------------------------------------------------------------


def test_verify_full_connects_and_a_wrong_ca_is_refused_in_one_line(
    tmp_path: Path, postgres: PostgresServer, pg_url: str
) -> None:
    config = _pg_config(tmp_path, pg_url, postgres)
    assert _cli(config, "user", "list").returncode == 0
    wrong = pg_url.replace(str(postgres.ca), str(postgres.other_ca))
    config.write_text(config.read_text().replace(pg_url, wrong))
    out = _cli(config, "user", "list")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"imapguard: state store: state store open failed: {wrong} (state.url): connection"
        f' failed: connection to server at "127.0.0.1", port {postgres.port} failed: SSL error:'
        " certificate verify failed"
    ]


def test_a_database_on_another_host_without_sslmode_is_refused_under_a_wrong_name(
    tmp_path: Path, postgres: PostgresServer, pg_url: str
) -> None:
    """An attacker between the gateway and its database answers with a
    certificate of its own (here: the real server's, which does not name the
    host the URL asks for). A URL that sets no sslmode is checked as verify-full,
    not libpq's `prefer`, which would take any certificate and let the attacker
    answer for the store; the same URL on loopback keeps libpq's default."""
    database = _dbname(pg_url)
    url = (
        f"postgresql://imapguard@db.imapguard.test:{postgres.port}/{database}"
        f"?hostaddr=127.0.0.1&sslrootcert={postgres.ca}"
    )
    config = _pg_config(tmp_path, url, postgres)
    out = _cli(config, "user", "list")
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"imapguard: state store: state store open failed: {url} (state.url):")
    assert 'server certificate for "localhost"' in line
    assert 'does not match host name "db.imapguard.test"' in line
    with pytest.raises(StateUnavailable, match="does not match host name"):
        upgrade(url, password=postgres.password)
    # Its sslmode written out (an unverified server chosen knowingly) connects.
    config.write_text(config.read_text().replace(url, url + "&sslmode=require"))
    assert _cli(config, "user", "list").returncode == 0
    loopback = f"postgresql://imapguard@127.0.0.1:{postgres.port}/{database}"
    config.write_text(config.read_text().replace(url + "&sslmode=require", loopback))
    assert _cli(config, "user", "list").returncode == 0


def test_a_password_in_the_url_is_never_shown(
    tmp_path: Path, postgres: PostgresServer, pg_url: str
) -> None:
    """Written inline (against the advice), a password shows as *** in errors:
    here a refused CA, and a malformed URL."""
    inline = postgres.url_with_password(_dbname(pg_url))
    wrong = inline.replace(str(postgres.ca), str(postgres.other_ca))
    config = _pg_config(tmp_path, wrong, None)
    out = _cli(config, "user", "list")
    assert out.returncode == 1
    assert postgres.password not in out.stderr + out.stdout
    assert "imapguard:***@127.0.0.1" in out.stderr
    config.write_text(config.read_text().replace(f":{postgres.port}/", ":port/"))
    out = _cli(config, "user", "list")
    assert out.returncode == 2
    assert postgres.password not in out.stderr + out.stdout
    assert out.stderr.startswith("config error: state.url: postgresql://imapguard:***@")


# -- schema revisions -----------------------------------------------------------------


def _schema(postgres: PostgresServer, url: str) -> dict[str, object]:
    database = _dbname(url)
    with psycopg.connect(
        host="127.0.0.1",
        port=postgres.port,
        user="imapguard",
        password=postgres.password,
        dbname=database,
    ) as db:
        columns = db.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default,"
            " is_identity FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, column_name"
        ).fetchall()
        indexes = db.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " ORDER BY indexname"
        ).fetchall()
        constraints = db.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace ORDER BY conname"
        ).fetchall()
        revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return {"columns": columns, "indexes": indexes, "constraints": constraints, "rev": revision}


def test_alembic_and_the_direct_path_make_one_schema(
    postgres: PostgresServer, pg_url: str, pg_empty_url: str
) -> None:
    """`pg_url` was made by the store itself (a new empty database, created
    directly at HEAD); `pg_empty_url` is brought there by Alembic."""
    assert upgrade(pg_empty_url, password=postgres.password) == (None, HEAD)
    made = _schema(postgres, pg_url)
    assert made == _schema(postgres, pg_empty_url)
    assert made["rev"] == [(HEAD,)]


def test_an_older_schema_is_refused_until_upgraded(
    tmp_path: Path, postgres: PostgresServer, pg_url: str
) -> None:
    store = open_store(pg_url, password=postgres.password)
    store.add_app_password("alice", "laptop", b"a" * 32, 1.0)
    store.close()
    # The store as the baseline left it: no meta table yet.
    _sql(postgres, pg_url, "DROP TABLE meta")
    _sql(postgres, pg_url, f"UPDATE alembic_version SET version_num = '{BASELINE}'")  # noqa: S608
    config = _pg_config(tmp_path, pg_url, postgres)
    out = _cli(config, "user", "list")
    assert (out.returncode, out.stderr) == (
        2,
        f"config error: state.url: {pg_url}: schema revision {BASELINE} is older than this"
        f" imapguard's ({HEAD}): run `imapguard db upgrade`\n",
    )
    assert _cli(config, "db", "check").returncode == 1
    out = _cli(config, "db", "upgrade", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"url": pg_url, "before": BASELINE, "after": HEAD}
    assert _cli(config, "db", "check").returncode == 0
    listed = json.loads(_cli(config, "app-password", "list", "alice", "--json").stdout)
    assert [r["label"] for r in listed] == ["laptop"]


def test_a_newer_schema_is_refused(tmp_path: Path, postgres: PostgresServer, pg_url: str) -> None:
    _sql(postgres, pg_url, "UPDATE alembic_version SET version_num = '0099_future'")
    config = _pg_config(tmp_path, pg_url, postgres)
    out = _cli(config, "user", "list")
    assert (out.returncode, out.stderr) == (
        2,
        f"config error: state.url: {pg_url}: schema revision 0099_future was written by a"
        f" newer imapguard (this one knows up to {HEAD}): upgrade imapguard\n",
    )
    out = _cli(config, "db", "current", "--json")
    assert json.loads(out.stdout)["state"] == "newer"


# -- the server key -------------------------------------------------------------------


def test_another_server_key_is_refused_at_start(
    tmp_path: Path, postgres: PostgresServer, pg_url: str
) -> None:
    config = _pg_config(tmp_path, pg_url, postgres)
    assert _cli(config, "user", "list").returncode == 0
    (tmp_path / "server.key").write_bytes(b"x" * 32)
    out = _cli(config, "user", "list")
    assert (out.returncode, out.stderr) == (
        2,
        f"config error: state.key_file: {tmp_path / 'server.key'} is not the key the state"
        f" store {pg_url} (state.url) was sealed with (the store was sealed with another"
        " key): restore that key file\n",
    )


# -- the gateway on PostgreSQL ----------------------------------------------------------


@pytest.fixture
def pg_gateway(
    tmp_path: Path,
    dovecot: DovecotServer,
    postgres: PostgresServer,
    pg_url: str,
    redis_server: RedisServer,
) -> Iterator[GatewayProcess]:
    """The gateway as a node of several: accounts in PostgreSQL, the defense's
    counters in Redis."""
    state = (
        f'url = "{pg_url}"\npassword_file = "{postgres.password_file}"\n'
        f'counters_url = "{redis_server.url}"\n'
        f'counters_password_file = "{redis_server.password_file}"'
    )
    with running_gateway(tmp_path / "gw", dovecot, state=state) as gw:
        yield gw


def test_the_gateway_logs_in_with_an_app_password_kept_in_postgresql(
    pg_gateway: GatewayProcess, postgres: PostgresServer, pg_url: str
) -> None:
    """An app password created by the CLI (a process of its own) on the same
    PostgreSQL logs in through the running gateway; revoked, it is refused."""
    created = json.loads(
        pg_gateway.cli("app-password", "create", "alice", "--label", "pg", "--json").stdout
    )
    login = f'LOGIN alice "{created["password"]}"'.encode()
    src = "127.0.213.1"
    with RawClient(pg_gateway.implicit_port, src, tls=pg_gateway.client_ssl()) as c:
        c.line()
        assert c.command(b"a1", login)[-1].startswith(b"a1 OK ")
        assert c.command(b"a2", b"SELECT INBOX")[-1].startswith(b"a2 OK")
    store = open_store(pg_url, password=postgres.password)
    try:
        # The gateway's bookkeeping (written behind the login), in PostgreSQL.
        wait_for(
            lambda: store.list_app_passwords("alice")[0].last_used_address == src,
            what="the app password's last use",
        )
    finally:
        store.close()
    pg_gateway.cli("app-password", "revoke", "alice", created["id"])
    with RawClient(pg_gateway.implicit_port, "127.0.213.2", tls=pg_gateway.client_ssl()) as c:
        c.line()
        assert c.command(b"a3", login) == [b"a3 " + AUTH_FAILED]


# -- the server going away ------------------------------------------------------------


def test_a_stopped_server_fails_calls_quickly_and_the_store_recovers_by_itself() -> None:
    """A server of its own (the session's is shared): while it is down, every
    call fails as StateUnavailable (what the gateway turns into NO
    [UNAVAILABLE]) within seconds; once it is back the same store works again,
    the pool having dropped its dead connections."""
    server = PostgresServer.start()
    try:
        name = server.create_database()
        store = open_store(server.url(name), password=server.password, pool_size=2)
        try:
            store.ensure_user("alice", 1.0)
            server.pause()
            calls: list[Callable[[], object]] = [
                lambda: store.get_user("alice"),  # a read
                lambda: store.ensure_user("bob", 2.0),  # a write
                lambda: store.get_user("alice"),  # and again, with no connection left
            ]
            for call in calls:
                started = time.monotonic()
                with pytest.raises(StateUnavailable):
                    call()
                assert time.monotonic() - started < POOL_TIMEOUT + CONNECT_TIMEOUT + 2
            server.resume()
            # (The test server runs without fsync: what it had is lost in the stop.)
            wait_for(lambda: _answers(store), timeout=15.0, what="the store back")
            store.ensure_user("bob", 3.0)
            assert "bob" in [u.name for u in store.list_users()]
        finally:
            store.close()
        with pytest.raises(StateUnavailable):
            store.get_user("alice")  # closed
    finally:
        server.stop()


def _answers(store: PgStore) -> bool:
    try:
        store.get_user("alice")
    except StateUnavailable:
        return False
    return True

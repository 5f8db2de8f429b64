"""Two gateway nodes as a cluster runs them: accounts in one real PostgreSQL,
the defense's counters in one real Redis, the same server key, real Dovecot
behind both. What is revoked through one node holds on the other at once, and
a session the other node is relaying (IDLE) ends within seconds: the revocation
feed is in the shared store, which every node reads.

Source network: 127.0.214.0/24."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway
from tests.postgres import PostgresServer, pg_url, postgres
from tests.redis_server import RedisServer, redis_server

__all__ = ["pg_url", "postgres", "redis_server"]

pytestmark = pytest.mark.dovecot


@pytest.fixture
def nodes(
    tmp_path: Path,
    dovecot: DovecotServer,
    postgres: PostgresServer,
    pg_url: str,
    redis_server: RedisServer,
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    state = (
        f'url = "{pg_url}"\npassword_file = "{postgres.password_file}"\n'
        f'counters_url = "{redis_server.url}"\n'
        f'counters_password_file = "{redis_server.password_file}"'
    )
    with running_gateway(tmp_path / "a", dovecot, state=state) as a:
        key = re.search(r'^key_file = "(.*)"$', a.config_path.read_text(), flags=re.M)
        assert key is not None

        def same_key(text: str) -> str:
            return re.sub(r'^key_file = ".*"$', f'key_file = "{key.group(1)}"', text, flags=re.M)

        with running_gateway(tmp_path / "b", dovecot, state=state, edit=same_key) as b:
            yield a, b


def test_revoked_through_one_node_ends_the_idle_session_on_the_other(
    nodes: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = nodes
    password = a.create_app_password("alice", "phone")  # through node A's CLI and store
    login = f'LOGIN alice "{password}"'.encode()
    with RawClient(b.implicit_port, "127.0.214.1", tls=b.client_ssl(), timeout=15) as idle:
        idle.line()
        assert idle.command(b"a1", login)[-1].startswith(b"a1 OK ")
        assert idle.command(b"a2", b"SELECT INBOX")[-1].startswith(b"a2 OK ")
        idle.send(b"a3 IDLE\r\n")
        assert idle.line().startswith(b"+ ")
        listed = json.loads(a.cli("app-password", "list", "alice", "--json").stdout)
        revoked_at = time.monotonic()
        a.cli("app-password", "revoke", "alice", listed[0]["id"])
        while True:
            line = idle.line()  # node B's BYE, from the feed node A wrote
            if line.startswith(b"* BYE"):
                break
        assert time.monotonic() - revoked_at < 5.0
        assert b"revoked" in line
    with RawClient(b.implicit_port, "127.0.214.2", tls=b.client_ssl()) as again:
        again.line()
        assert again.command(b"b1", login)[-1] == b"b1 " + AUTH_FAILED


def _fds(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    return len(list(Path(f"/proc/{gw.proc.pid}/fd").iterdir()))


def test_both_stores_killed_sessions_relay_on_logins_fail_closed_then_recover(
    nodes: tuple[GatewayProcess, GatewayProcess],
    postgres: PostgresServer,
    redis_server: RedisServer,
) -> None:
    """PostgreSQL stopped at once and Redis killed while a session relays: the
    session goes on, a new login is NO [UNAVAILABLE] (not a wrong password), and
    once both are back the node lets logins in again by itself, with no
    descriptor left behind."""
    a, _ = nodes
    password = a.create_app_password("alice", "laptop")
    login = f'LOGIN alice "{password}"'.encode()
    with RawClient(a.implicit_port, "127.0.214.3", tls=a.client_ssl(), timeout=15) as relaying:
        relaying.line()
        assert relaying.command(b"r1", login)[-1].startswith(b"r1 OK ")
        assert relaying.command(b"r2", b"SELECT INBOX")[-1].startswith(b"r2 OK ")
        before = _fds(a)
        postgres.pause()
        redis_server.stop()
        try:
            assert relaying.command(b"r3", b"NOOP")[-1].startswith(b"r3 OK")
            for n in range(3):
                with RawClient(a.implicit_port, "127.0.214.4", tls=a.client_ssl()) as new:
                    new.line()
                    answer = new.command(b"n", login)[-1]
                assert answer.startswith(b"n NO [UNAVAILABLE]"), (n, answer)
            assert relaying.command(b"r4", b"SELECT INBOX")[-1].startswith(b"r4 OK ")
        finally:
            postgres.resume()
            redis_server.start()
        deadline = time.monotonic() + 30
        while True:
            with RawClient(a.implicit_port, "127.0.214.5", tls=a.client_ssl()) as again:
                again.line()
                if again.command(b"g", login)[-1].startswith(b"g OK "):
                    break
            assert time.monotonic() < deadline, "the node did not recover by itself"
            time.sleep(0.5)
        assert relaying.command(b"r5", b"NOOP")[-1].startswith(b"r5 OK")
        time.sleep(1)  # the closed clients' descriptors
        assert _fds(a) <= before + 4  # the pools' new connections, no leak per login

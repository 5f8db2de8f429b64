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

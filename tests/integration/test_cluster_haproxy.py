"""The whole cluster as it is deployed: a real HAProxy (`send-proxy-v2`, round-robin)
in front of two gateway nodes, their accounts in one real PostgreSQL, their
defense's counters in one real Redis, the same server key, real Dovecot behind
both. Every client here speaks only to HAProxy's port (the CLI calls name a node
on purpose), so each test proves a cluster property where a client cannot choose
its node:

* a password spray whose attempts HAProxy spreads over both nodes, neither node
  seeing enough of it alone, is detected as one spray and its password blocked;
* a source blocked by node A is refused at node B, even with the right password;
* an app password revoked through node A's CLI ends its IDLE session on node B
  within 5 s, and is refused on a new login;
* the client's address (not HAProxy's) is in both nodes' audit logs and in
  Dovecot's log.

Source networks: 127.0.241.0/24 (clients); HAProxy connects from
test_proxy_protocol's HAPROXY_SOURCE, the nodes' only trusted proxy.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess
from tests.haproxy import HAProxy, Route, running_haproxy
from tests.integration.conftest import (
    AUTH_FAILED,
    RawClient,
    dovecot_lines,
    running_gateway,
    wait_for,
)
from tests.integration.test_cluster_redis import _node, last_reason, redis
from tests.integration.test_proxy_protocol import (
    HAPROXY_SOURCE,
    events,
    new_user,
    proxied_listeners,
)
from tests.postgres import PostgresServer, postgres
from tests.redis_server import RedisServer

__all__ = ["postgres", "redis"]

pytestmark = pytest.mark.dovecot

NET = "127.0.241"
# test_cluster_redis.DEFENSE: a password on 5 accounts is a spray, an address
# failing on 8 accounts is blocked (at most: fewer once the posture tightens).
SPRAY_ACCOUNTS = 5
SOURCE_ACCOUNTS = 8


@dataclass
class Cluster:
    a: GatewayProcess
    b: GatewayProcess
    haproxy: HAProxy
    tls: ssl.SSLContext  # trusts both nodes' certificates (each has its own CA)

    @property
    def port(self) -> int:
        return self.haproxy.port("imaps")

    def connect(self, src: str, timeout: float = 15.0) -> tuple[RawClient, GatewayProcess]:
        """A client of HAProxy from `src`, TLS up and greeting read, and the
        node HAProxy gave it to (the one whose audit log has its connection)."""
        client = RawClient(self.port, src, tls=self.tls, timeout=timeout)
        greeting = client.line()
        assert greeting.startswith(b"* OK"), greeting
        port = client.local_port

        def node() -> GatewayProcess | None:
            for gw in (self.a, self.b):
                if events(gw, "connect", src=src, src_port=port, proxy=HAPROXY_SOURCE):
                    return gw
            return None

        gw: GatewayProcess = wait_for(node, 5.0, f"the connect line of {src}:{port}")
        return client, gw

    def login(self, src: str, user: str, password: str) -> tuple[bytes, GatewayProcess]:
        client, gw = self.connect(src)
        with client:
            answer: bytes = client.command(b"a", f'LOGIN "{user}" "{password}"'.encode())[-1]
        return answer, gw


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    dovecot: DovecotServer,
    postgres: PostgresServer,
    redis: RedisServer,
) -> Iterator[Cluster]:
    database = postgres.create_database()
    state = f'url = "{postgres.url(database)}"\npassword_file = "{postgres.password_file}"'
    ports = {name: (free_port(), free_port()) for name in ("a", "b")}

    def node(
        name: str, key_from: GatewayProcess | None
    ) -> contextlib.AbstractContextManager[GatewayProcess]:
        """Node `name`: PostgreSQL, Redis (and `key_from`'s server key), the
        DEFENSE of test_cluster_redis, listeners that trust only HAProxy."""
        counters = _node(redis, None if key_from is None else key_from.base / "server.key")
        return running_gateway(
            tmp_path_factory.mktemp(f"lb-node-{name}"),
            dovecot,
            state=state,
            limits="max_preauth_per_source = 200\n",
            edit=lambda text: counters(text) + proxied_listeners(*ports[name]),
        )

    try:
        with node("a", None) as a, node("b", a) as b:
            for gw, name in ((a, "a"), (b, "b")):
                wait_for(lambda: gw.accepts(ports[name][0]), 10, "a proxied listener")  # noqa: B023
            route = Route("imaps", (ports["a"][0], ports["b"][0]), "send-proxy-v2")
            with running_haproxy(
                tmp_path_factory.mktemp("lb-haproxy"), [route], source=HAPROXY_SOURCE
            ) as proxy:
                tls = a.client_ssl()
                tls.load_verify_locations(cafile=str(b.ca_cert))
                yield Cluster(a, b, proxy, tls)
    finally:
        postgres.drop_database(database)


def sprayed_accounts(gw: GatewayProcess, users: list[str]) -> set[str]:
    return {e["user"] for e in gw.events("auth") if e.get("user") in users}


def test_a_spray_through_haproxy_over_both_nodes_is_one_spray(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    sprayed = f"Winter{secrets.token_hex(3)}!"
    users = [f"ls{secrets.token_hex(3)}" for _ in range(SOURCE_ACCOUNTS)]
    # One password on eight accounts, each from an address of its own.
    for n, user in enumerate(users):
        answer, _ = cluster.login(f"{NET}.{10 + n}", user, sprayed)
        assert answer == b"a " + AUTH_FAILED, answer
    # HAProxy spread it: each node saw part of it, too little to be a spray alone.
    seen = {gw.base: sprayed_accounts(gw, users) for gw in (a, b)}
    assert set.union(*seen.values()) == set(users)
    assert all(0 < len(part) < SPRAY_ACCOUNTS for part in seen.values()), seen
    # Yet it was one spray: counted once in Redis, the password's fingerprint
    # blocked, the alert naming addresses that came through either node.
    (alert,) = [e for gw in (a, b) for e in gw.events("spray_alert") if e["by"] == "fingerprint"]
    assert alert["accounts"] <= SPRAY_ACCOUNTS
    for gw in (a, b):
        through = {e["src"] for e in gw.events("auth") if e.get("user") in users}
        assert through & set(alert["sources"]), (gw.base, alert)
    assert [e for gw in (a, b) for e in events(gw, "defense_block", target_kind="fingerprint")]
    # The password is refused before any check, from new addresses, on both nodes.
    refused_on = set()
    for n in range(2):
        src = f"{NET}.{30 + n}"
        answer, gw = cluster.login(src, f"late{secrets.token_hex(3)}", sprayed)
        assert answer == b"a " + AUTH_FAILED, answer
        assert last_reason(gw, src).startswith("blocked:")
        refused_on.add(gw.base)
    assert refused_on == {a.base, b.base}


def test_a_block_made_at_node_a_refuses_the_source_through_haproxy_at_node_b(
    cluster: Cluster, dovecot: DovecotServer
) -> None:
    a, b = cluster.a, cluster.b
    user = new_user(dovecot, "lb")
    password = a.create_app_password(user, "phone")
    attacker = f"{NET}.50"
    block = {"target": f"source:{attacker}"}
    # The attacker's wrong passwords, each on another account, go to node A (a
    # connection HAProxy gives to node B is closed unused) until node A blocks it.
    for n in range(SOURCE_ACCOUNTS):
        client, gw = cluster.connect(attacker)
        if gw is not a:
            client.close()
            client, gw = cluster.connect(attacker)
        assert gw is a
        with client:
            guess = f'LOGIN "lb{n}{secrets.token_hex(3)}" "{secrets.token_hex(8)}"'
            assert client.command(b"a", guess.encode())[-1] == b"a " + AUTH_FAILED
        if events(a, "defense_block", **block):
            break
    assert events(a, "defense_block", **block), "node A placed no block"
    assert not events(b, "defense_block", **block)
    assert not events(b, "auth", src=attacker)  # node B never saw the attack
    # Round-robin: the attacker's next connection is node B's, which refuses the
    # source, even with the account's right password.
    client, gw = cluster.connect(attacker)
    assert gw is b
    with client:
        answer = client.command(b"a", f'LOGIN "{user}" "{password}"'.encode())[-1]
    assert answer == b"a " + AUTH_FAILED, answer
    assert last_reason(b, attacker).startswith("blocked:")
    # Another client, through the same HAProxy, logs in with it on either node.
    on = set()
    for _ in range(2):
        answer, gw = cluster.login(f"{NET}.51", user, password)
        assert answer.startswith(b"a OK"), answer
        on.add(gw.base)
    assert on == {a.base, b.base}


def test_an_app_password_revoked_through_node_a_ends_its_idle_session_on_node_b(
    cluster: Cluster, dovecot: DovecotServer
) -> None:
    a, b = cluster.a, cluster.b
    user = new_user(dovecot, "li")
    created = json.loads(a.cli("app-password", "create", user, "--label", "phone", "--json").stdout)
    login = f'LOGIN "{user}" "{created["password"]}"'.encode()
    with contextlib.ExitStack() as stack:
        idle: dict[str, tuple[RawClient, str]] = {}
        for n in range(2):  # round-robin: one session on each node
            src = f"{NET}.{60 + n}"
            client, gw = cluster.connect(src)
            stack.callback(client.close)
            assert client.command(b"a1", login)[-1].startswith(b"a1 OK ")
            assert client.command(b"a2", b"SELECT INBOX")[-1].startswith(b"a2 OK ")
            client.send(b"a3 IDLE\r\n")
            assert client.line().startswith(b"+ ")
            idle["a" if gw is a else "b"] = (client, src)
        assert set(idle) == {"a", "b"}
        on_b, src_b = idle["b"]
        wait_for(lambda: events(b, "relay", src=src_b, user=user), 5, "node B's relay line")
        revoked_at = time.monotonic()
        a.cli("app-password", "revoke", user, created["id"])
        while not (line := on_b.line()).startswith(b"* BYE"):
            pass
        assert time.monotonic() - revoked_at < 5.0
        assert b"revoked" in line
    assert [e["src"] for e in events(b, "revoked", user=user)] == [src_b]
    for n in range(2):  # refused at both nodes
        answer, _ = cluster.login(f"{NET}.{62 + n}", user, created["password"])
        assert answer == b"a " + AUTH_FAILED, answer


def test_the_client_address_through_haproxy_reaches_both_nodes_audit_and_dovecot_log(
    cluster: Cluster, dovecot: DovecotServer
) -> None:
    src = f"{NET}.70"
    user = new_user(dovecot, "la")
    password = cluster.a.create_app_password(user, "phone")
    sessions = {}
    for _ in range(2):
        answer, gw = cluster.login(src, user, password)
        assert answer.startswith(b"a OK"), answer
        (auth,) = events(gw, "auth", src=src, user=user)
        assert auth["result"] == "ok"
        sessions[gw.base] = auth["session"]
    assert set(sessions) == {cluster.a.base, cluster.b.base}
    for gw in (cluster.a, cluster.b):
        wait_for(lambda: events(gw, "relay", src=src, user=user), 5, "the relay line")  # noqa: B023
        assert not events(gw, "connect", src=HAPROXY_SOURCE)  # HAProxy's is no client's
    # Dovecot heard of the client from each node (ID x-originating-ip).
    wait_for(lambda: len(dovecot_lines(dovecot, f"user=<{user}>")) >= 2, 5, "Dovecot's lines")
    lines = dovecot_lines(dovecot, f"user=<{user}>")
    assert len(lines) == 2, lines
    assert all(f"rip={src}," in line for line in lines), lines
    for session in sessions.values():
        assert [line for line in lines if f"session=<{session}>" in line], (session, lines)

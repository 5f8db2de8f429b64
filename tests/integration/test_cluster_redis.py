"""Two gateway nodes in front of one real Dovecot, their defense state in one
real Redis (tests/redis_server.py), each with its own SQLite file for accounts
and the same server key (the password fingerprints are keyed with it): an
attack spread over both nodes counts once, and what one node decides the other
enforces. The counting itself is atomic in Redis (tests/conformance/ races
processes on it).

Source networks: 127.0.140.0/24 - 127.0.172.0/24 (a /24 per attempt or role).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess
from tests.integration.conftest import AUTH_FAILED, RawClient, guesses_at_once, running_gateway
from tests.metrics_scrape import delta, scrape
from tests.redis_server import RedisServer

pytestmark = pytest.mark.dovecot

# Low thresholds so the scenarios run in seconds: a password tried on 5
# accounts is a spray; an address failing on 8 accounts is blocked.
DEFENSE = """
[defense]
spray_accounts = 5
source_free = 3
source_accounts = 8
delay_base = 0.05
delay_max = 0.2
"""


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer.create(tmp_path_factory.mktemp("cluster-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _node(redis: RedisServer, key_file: Path | None) -> Any:
    """The edit that puts a generated configuration's counters in `redis` (and
    its server key at `key_file`, another node's)."""

    def edit(text: str) -> str:
        counters = (
            f'[state]\ncounters_url = "{redis.url}"\n'
            f'counters_password_file = "{redis.password_file}"\n'
        )
        text = text.replace("[state]\n", counters, 1)
        if key_file is not None:
            text = re.sub(r'^key_file = ".*"$', f'key_file = "{key_file}"', text, flags=re.M)
        return text + DEFENSE

    return edit


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer, redis: RedisServer
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    base_a, base_b = tmp_path_factory.mktemp("node-a"), tmp_path_factory.mktemp("node-b")
    limits = "max_preauth_per_source = 200\n"
    with (
        running_gateway(
            base_a, dovecot, login="master", limits=limits, edit=_node(redis, None)
        ) as a,
        running_gateway(
            base_b,
            dovecot,
            login="master",
            limits=limits,
            edit=_node(redis, base_a / "server.key"),
        ) as b,
    ):
        yield a, b


def login(gw: GatewayProcess, src: str, user: str, password: str) -> bool:
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        answer = c.command(b"a", f'LOGIN "{user}" "{password}"'.encode())[-1]
    if answer.startswith(b"a OK"):
        return True
    assert answer == b"a " + AUTH_FAILED, answer
    return False


def blocks(gw: GatewayProcess) -> set[str]:
    return {b["target"] for b in json.loads(gw.cli("blocks", "list", "--json").stdout)}


def last_reason(gw: GatewayProcess, src: str) -> str:
    reason: str = [e for e in gw.events("auth") if e.get("src") == src][-1]["reason"]
    return reason


def test_a_spray_spread_over_two_nodes_is_one_spray(
    nodes: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = nodes
    sprayed = f"Autumn{secrets.token_hex(3)}!"
    users = [f"cs{secrets.token_hex(3)}" for _ in range(8)]
    # Four accounts through node A: under the limit of five, on one node.
    for n, user in enumerate(users[:4]):
        assert not login(a, f"127.0.{140 + n}.1", user, sprayed)
    assert not any(t.startswith("fingerprint:") for t in blocks(a))
    # Four more through node B: B counts A's four too, and stops the password.
    for n, user in enumerate(users[4:]):
        assert not login(b, f"127.0.{150 + n}.1", user, sprayed)
    assert any(t.startswith("fingerprint:") for t in blocks(a))
    assert b.events("spray_alert"), "node B saw no spray"
    # The password is refused before any check, from a new address, on either node.
    assert not login(a, "127.0.160.1", f"late{secrets.token_hex(3)}", sprayed)
    assert last_reason(a, "127.0.160.1").startswith("blocked:")
    # A different password from that address is judged on its own.
    assert not login(a, "127.0.160.1", f"late{secrets.token_hex(3)}", secrets.token_hex(8))
    assert not last_reason(a, "127.0.160.1").startswith("blocked:")


def test_a_block_made_through_node_a_refuses_the_source_at_node_b(
    nodes: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = nodes
    attacker = "127.0.165.1"
    for n in range(8):
        user = f"cb{n}{secrets.token_hex(3)}"
        assert not login(a, attacker, user, secrets.token_hex(8))
    assert f"source:{attacker}" in blocks(b)  # B's CLI reads the shared Redis
    assert not [e for e in b.events("auth") if e.get("src") == attacker]  # B never saw it
    assert not login(b, attacker, f"cb{secrets.token_hex(3)}", secrets.token_hex(8))
    assert last_reason(b, attacker).startswith("blocked:")
    # Lifted through B's CLI, it is lifted at A.
    b.cli("blocks", "clear", attacker)
    assert f"source:{attacker}" not in blocks(a)


def test_logins_fail_closed_while_redis_is_down_and_work_when_it_returns(
    nodes: tuple[GatewayProcess, GatewayProcess], redis: RedisServer, dovecot: DovecotServer
) -> None:
    a, _ = nodes
    user = f"cr{secrets.token_hex(3)}"
    dovecot.add_user(user, secrets.token_urlsafe(12))
    password = a.create_app_password(user, "phone")
    assert login(a, "127.0.170.1", user, password)
    redis.stop()
    try:
        with RawClient(a.implicit_port, "127.0.170.1", tls=a.client_ssl()) as c:
            c.line()
            answer = c.command(b"a", f'LOGIN "{user}" "{password}"'.encode())[-1]
        # Not let in without the defense, and not told the password is wrong.
        assert answer.startswith(b"a NO [UNAVAILABLE]"), answer
        assert last_reason(a, "127.0.170.1").startswith("state store:")
    finally:
        redis.start()
    assert login(a, "127.0.170.1", user, password)  # no restart of the gateway


def test_with_fail_open_logins_go_on_unchecked_and_audited_while_redis_is_down(
    tmp_path: Path, redis: RedisServer, dovecot: DovecotServer
) -> None:
    """`defense.fail_open = true`: the right app password still logs in while the
    counter store is down (the factor is checked, the defense is not), each such
    login audited as defense_unavailable, and the log says it; a wrong one is
    still refused as wrong."""
    edit = _node(redis, None)
    port = free_port()
    metrics = f'\n[metrics]\naddress = "127.0.0.1:{port}"\n'
    with running_gateway(
        tmp_path / "node-c",
        dovecot,
        edit=lambda text: (
            edit(text).replace("[defense]\n", "[defense]\nfail_open = true\n") + metrics
        ),
    ) as c:
        user = f"co{secrets.token_hex(3)}"
        dovecot.add_user(user, secrets.token_urlsafe(12))
        password = c.create_app_password(user, "phone")
        before = scrape(port)
        redis.stop()
        try:
            assert login(c, "127.0.171.1", user, password)
            assert login(c, "127.0.171.1", user, password)
            assert not login(c, "127.0.171.2", user, "not-the-password")
            down = scrape(port)
        finally:
            redis.start()
        # Counted as well as logged: what went on unchecked, and the logins.
        assert delta(before, down, "imapguard_defense_unavailable_total") == 3
        assert delta(before, down, "imapguard_logins_total", result="ok") == 2
        assert delta(before, down, "imapguard_logins_total", result="unavailable") == 0
        unchecked = c.events("defense_unavailable")
        assert [e["user"] for e in unchecked] == [user, user, user]
        assert all(e["src"].startswith("127.0.171.") for e in unchecked)
        assert c.log_text().count("let on without the defense (defense.fail_open)") == 1
        assert login(c, "127.0.171.1", user, password)  # Redis back: checked again
        assert len(c.events("defense_unavailable")) == 3


def test_concurrent_guesses_over_two_nodes_reach_the_check_at_most_pair_block_times(
    nodes: tuple[GatewayProcess, GatewayProcess], dovecot: DovecotServer
) -> None:
    """40 wrong passwords for one account from one address, sent at the same
    instant over 40 connections, 20 through each node: every precheck would read
    the same counts, so without the gate (auth.gate) all 40 would be checked and
    counted after the fact. One guess at a time per pair, over both nodes: at
    most `pair_block` (10, the default) are checked, the rest are blocked."""
    a, b = nodes
    user = f"cg{secrets.token_hex(3)}"
    dovecot.add_user(user, secrets.token_urlsafe(12))
    attacker = "127.0.172.1"
    answers = guesses_at_once([a, b], attacker, user, 40)
    assert answers == [b"a " + AUTH_FAILED] * 40
    reasons = [e["reason"] for gw in (a, b) for e in gw.events("auth") if e.get("src") == attacker]
    assert len(reasons) == 40
    checked = [r for r in reasons if not r.startswith("blocked:")]
    assert 1 <= len(checked) <= 10, checked

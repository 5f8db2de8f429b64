"""Attack-named: brute force and password spraying through the gateway to a real
Dovecot, from many real source addresses on 127.0.0.0/8. The thresholds are set
low and the delays short so the scenarios run in seconds; the engine's own
windows, escalation and posture are proven with an injected clock in
tests/unit/test_defense_scenarios.py.

Source networks: 127.0.60.0/24 - 127.0.99.0/24 (a /24 per role).
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway

pytestmark = pytest.mark.dovecot

DEFENSE = """
[defense]
pair_free = 1
pair_block = 4
account_attacked = 3
account_lockout = 6
source_free = 3
source_accounts = 8
spray_accounts = 5
delay_base = 0.05
delay_max = 0.2
"""


def defense_gateway(
    base: Path, dovecot: DovecotServer, defense: str
) -> AbstractContextManager[GatewayProcess]:
    """A master-mode gateway with app passwords, room for many connections from
    one source, and the `[defense]` section given."""
    return running_gateway(
        base,
        dovecot,
        login="master",
        methods=("app-password",),
        limits="max_preauth_per_source = 200\n",
        edit=lambda text: text + defense,
    )


@pytest.fixture(scope="module")
def gw_defense(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with defense_gateway(tmp_path_factory.mktemp("gw-defense"), dovecot, DEFENSE) as gw:
        yield gw


def add_users(dovecot: DovecotServer, prefix: str, n: int) -> list[str]:
    """n new Dovecot users (their own passwords are never used: app passwords)."""
    names = [f"{prefix}{secrets.token_hex(3)}" for _ in range(n)]
    for name in names[:-1]:
        dovecot.users[name] = secrets.token_urlsafe(12)
    dovecot.add_user(names[-1], secrets.token_urlsafe(12))  # writes the file once, waits
    return names


def login(gw: GatewayProcess, src: str, user: str, password: str) -> bool:
    with RawClient(gw.implicit_port, src, tls=gw.client_ssl()) as c:
        c.line()
        answer = c.command(b"a", f'LOGIN "{user}" "{password}"'.encode())[-1]
    if answer.startswith(b"a OK"):
        return True
    assert answer == b"a " + AUTH_FAILED, answer
    return False


def blocks(gw: GatewayProcess) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(gw.cli("blocks", "list", "--json").stdout)
    return listed


def auth_events(gw: GatewayProcess, **match: str) -> list[dict[str, Any]]:
    return [e for e in gw.events("auth") if all(e.get(k) == v for k, v in match.items())]


def test_brute_force_one_account_one_address_owner_keeps_working(
    gw_defense: GatewayProcess, dovecot: DovecotServer
) -> None:
    gw = gw_defense
    (user,) = add_users(dovecot, "bf", 1)
    password = gw.create_app_password(user, "phone")
    # The owner's phone logs in first: its network is familiar to the account.
    assert login(gw, "127.0.60.1", user, password)
    attacker = "127.0.61.1"
    for n in range(8):
        assert not login(gw, attacker, user, f"guess-{n}-{secrets.token_hex(4)}")
    targets = {b["target"] for b in blocks(gw)}
    assert f"account-source:{attacker}|{user}" in targets
    # Even the right app password is refused from the attacker's address now...
    assert not login(gw, attacker, user, password)
    refused = auth_events(gw, src=attacker, user=user)[-1]
    assert refused["reason"].startswith("blocked:")
    # ...while the owner's phone, on its familiar network, keeps working.
    assert login(gw, "127.0.60.1", user, password)
    # No address-wide block for one account's guesses.
    assert f"source:{attacker}" not in targets


def test_distributed_brute_force_locks_out_unfamiliar_sources_only(
    gw_defense: GatewayProcess, dovecot: DovecotServer
) -> None:
    gw = gw_defense
    (user,) = add_users(dovecot, "dbf", 1)
    password = gw.create_app_password(user, "laptop")
    assert login(gw, "127.0.62.1", user, password)  # familiar network
    sources = [f"127.0.{63 + n // 100}.{1 + n % 100}" for n in range(40)]

    def guess(src: str) -> bool:
        return login(gw, src, user, f"guess-{secrets.token_hex(6)}")

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        assert not any(pool.map(guess, sources))
    targets = {b["target"] for b in blocks(gw)}
    assert f"account-unfamiliar:{user}" in targets
    assert not any(t.startswith("source:127.0.63.") for t in targets)
    # A new, unfamiliar address with the right password: locked out for this account.
    assert not login(gw, "127.0.66.1", user, password)
    # The owner, from the familiar network, logs in during the attack.
    assert login(gw, "127.0.62.1", user, password)
    # The admin lifts the lockout.
    gw.cli("user", "unlock", user)
    assert login(gw, "127.0.66.1", user, password)
    notices = [e for e in gw.events("defense_block") if e.get("target", "").endswith(user)]
    assert notices


def test_password_spray_is_caught_by_its_fingerprint(gw_defense: GatewayProcess) -> None:
    gw = gw_defense
    sprayed = f"Spring{secrets.token_hex(3)}!"
    users = [f"sp{secrets.token_hex(3)}" for _ in range(20)]
    sources = [f"127.0.{70 + n}.1" for n in range(20)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        pairs = list(zip(sources, users, strict=True))
        results = list(pool.map(lambda a: login(gw, a[0], a[1], sprayed), pairs))
    assert not any(results)
    alerts = gw.events("spray_alert")
    assert alerts, "no spray alert"
    assert any(b["kind"] == "fingerprint" for b in blocks(gw))
    # The password itself never reaches a log or the state.
    assert sprayed not in gw.audit_path.read_text()
    assert sprayed.encode() not in (gw.base / "state.db").read_bytes()
    # Late tries of the blocked password are refused before any check.
    assert not login(gw, "127.0.95.1", f"late{secrets.token_hex(3)}", sprayed)
    assert auth_events(gw, src="127.0.95.1")[-1]["reason"].startswith("blocked:")


def test_a_phone_retrying_its_old_password_is_never_blocked(
    gw_defense: GatewayProcess, dovecot: DovecotServer
) -> None:
    gw = gw_defense
    (user,) = add_users(dovecot, "ph", 1)
    password = gw.create_app_password(user, "phone")
    old = "the-old-password-" + secrets.token_hex(4)
    for _ in range(30):
        assert not login(gw, "127.0.96.1", user, old)
    assert not [b for b in blocks(gw) if user in b["target"] or "127.0.96." in b["target"]]
    # The new password works at once from the same phone.
    assert login(gw, "127.0.96.1", user, password)


def test_nat_users_are_not_blocked_by_one_mistyping(
    gw_defense: GatewayProcess, dovecot: DovecotServer
) -> None:
    gw = gw_defense
    nat = "127.0.97.1"
    users = add_users(dovecot, "nat", 12)
    passwords = {u: gw.create_app_password(u, "phone") for u in users}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert all(pool.map(lambda u: login(gw, nat, u, passwords[u]), users))
    # One of them mistypes a few times.
    for n in range(3):
        assert not login(gw, nat, users[0], f"typo-{n}")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert all(pool.map(lambda u: login(gw, nat, u, passwords[u]), users[1:]))
    # At most the mistyping user at that address is held back (the earlier tests put
    # the gateway under attack: thresholds are halved); never the address itself.
    nat_blocks = [b["target"] for b in blocks(gw) if "127.0.97." in b["target"]]
    assert set(nat_blocks) <= {f"account-source:{nat}|{users[0]}"}

""" "This wasn't me" (auth/disown.py) on the real SQLite store and defense: the
credential is revoked and published, the source blocked for the account (and
for everyone only when no other account logged in from it), the owner and
admins told; another account's sign-in cannot be disowned; an account has a
few reports per window, then nothing more is blocked."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imapguard.audit import AuditLog
from imapguard.auth.chokepoint import Outcome
from imapguard.auth.disown import disown
from imapguard.auth.model import AuthContext, ClientAddress
from imapguard.defense import Defense, DefenseSettings, Fingerprinter, Target, TargetKind
from imapguard.defense.engine import Action
from imapguard.defense.owner import OWNER_REPORTS
from imapguard.secret import Secret
from imapguard.state.sqlite import SqliteStore
from tests.unit import test_chokepoint_factors as base

NOW = 1_800_000_000.0
ATTACKER = "198.51.100.7"


# The chokepoint tests' fixtures: a real SQLite store and an audit log; the
# chokepoint itself with a stub upstream.
store = base.store
audit = base.audit
executor = base.executor
env = base.env


def defense(
    store: SqliteStore,
    settings: DefenseSettings | None = None,
    clock: Callable[[], float] = lambda: NOW,
) -> Defense:
    return Defense(
        settings or DefenseSettings(),
        store,
        clock,
        random.Random(1),
        fingerprints=Fingerprinter(Secret(b"k" * 32)),
    )


def owner(user: str = "alice") -> AuthContext:
    return AuthContext(ClientAddress("192.0.2.10", 50000, "127.0.0.1", 8443, "p1"), None, "portal")


def signed_in(store: SqliteStore, user: str, credential: str) -> str:
    store.record_sign_in(user, NOW - 60, ATTACKER, "app-password", True, "", credential, "x")
    (row,) = [r for r in store.list_sign_ins(user, 0.0, 10) if r.credential == credential]
    return row.id


def test_disowning_a_sign_in_revokes_its_app_password_and_blocks_its_source(
    store: SqliteStore, audit: AuditLog, tmp_path: Path
) -> None:
    record = store.add_app_password("alice", "stolen", b"d" * 32, NOW - 100)
    sign_in = signed_in(store, "alice", f"app-password:{record.id}")
    notices: list[tuple[str, str]] = []
    guard = defense(store)
    start = store.last_revocation()
    done = disown(
        store,
        guard,
        audit,
        "alice",
        sign_in,
        owner(),
        notice=lambda kind, user, ctx, device: notices.append((kind, user)),
        clock=lambda: NOW,
    )
    assert done is not None
    assert done.revoked == f"app-password:{record.id}"
    # Nobody else logged in from there: the address is blocked for everyone too.
    assert set(done.blocked) == {
        Target(TargetKind.ACCOUNT_SOURCE, f"{ATTACKER}|alice"),
        Target(TargetKind.SOURCE, ATTACKER),
    }
    assert done.everyone
    assert store.list_app_passwords("alice") == []
    assert [r.credential for r in store.revocations_after(start, 10)] == [
        f"app-password:{record.id}"
    ]
    assert store.get_sign_in("alice", sign_in).disowned  # type: ignore[union-attr]
    verdict = guard.precheck(guard.attempt(ATTACKER, "alice", None, method="login", listener="l"))
    assert verdict.action is Action.BLOCKED
    assert notices == [("disowned", "alice")]
    audit.close()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    (event,) = [e for e in lines if e["event"] == "disowned"]
    assert event["blocked"] == f"account-source:{ATTACKER}|alice source:{ATTACKER}"
    assert "limited" not in event
    placed = {e["target"] for e in lines if e["event"] == "defense_block"}
    assert placed == {f"account-source:{ATTACKER}|alice", f"source:{ATTACKER}"}


def test_another_accounts_sign_in_cannot_be_disowned(store: SqliteStore, audit: AuditLog) -> None:
    """Bob changes the id in the form to one of Alice's sign-ins."""
    record = store.add_app_password("alice", "phone", b"d" * 32, NOW - 100)
    alices = signed_in(store, "alice", f"app-password:{record.id}")
    store.ensure_user("bob", NOW)
    assert disown(store, defense(store), audit, "bob", alices, owner("bob")) is None
    assert len(store.list_app_passwords("alice")) == 1
    assert not store.get_sign_in("alice", alices).disowned  # type: ignore[union-attr]
    assert store.last_revocation() == 0


def test_a_password_sign_in_ends_the_accounts_other_portal_sessions(
    store: SqliteStore, audit: AuditLog
) -> None:
    store.ensure_user("alice", NOW)
    mine = store.create_portal_session("alice", b"m" * 32, "full", NOW, NOW + 900, "a", "ua")
    store.create_portal_session("alice", b"o" * 32, "full", NOW, NOW + 900, "b", "ua")
    sign_in = signed_in(store, "alice", "password")
    kwargs: dict[str, Any] = {"keep_session": mine.id, "clock": lambda: NOW}
    done = disown(store, None, audit, "alice", sign_in, owner(), **kwargs)
    assert done is not None
    assert done.revoked is None
    assert [s.id for s in store.list_portal_sessions("alice", NOW)] == [mine.id]


def _verdict(guard: Defense, ip: str, user: str) -> Action:
    return guard.precheck(guard.attempt(ip, user, None, method="login", listener="l")).action


def _failed_from(store: SqliteStore, user: str, address: str) -> str:
    """A failed login of `user` from `address` (a wrong password in the webmail
    form, say), as the history holds it; its id."""
    store.ensure_user(user, NOW - 3600)
    store.record_sign_in(user, NOW - 60, address, "LOGIN", False, "wrong", "password", "")
    return next(r.id for r in store.list_sign_ins(user, 0.0, 100) if r.address == address)


def test_disowning_a_sign_in_from_a_shared_address_blocks_it_for_that_account_only(
    store: SqliteStore, audit: AuditLog
) -> None:
    """The webmail server's address: carol logged in from it this hour. alice's
    word stops alice's logins from there and nobody else's."""
    guard = defense(store)
    carol = guard.attempt(ATTACKER, "carol", Secret(b"pw"), method="login", listener="l")
    guard.record_success(carol)
    sign_in = _failed_from(store, "alice", ATTACKER)
    done = disown(store, guard, audit, "alice", sign_in, owner(), clock=lambda: NOW)
    assert done is not None
    assert done.blocked == (Target(TargetKind.ACCOUNT_SOURCE, f"{ATTACKER}|alice"),)
    assert not done.everyone
    assert _verdict(guard, ATTACKER, "alice") is Action.BLOCKED
    assert _verdict(guard, ATTACKER, "carol") is Action.ALLOW
    assert _verdict(guard, ATTACKER, "dave") is Action.ALLOW


def test_an_address_in_a_trusted_network_is_never_blocked_for_everyone_by_an_owner(
    store: SqliteStore, audit: AuditLog
) -> None:
    guard = defense(store, DefenseSettings(trusted_networks=("198.51.100.0/24",)))
    sign_in = _failed_from(store, "alice", ATTACKER)
    done = disown(store, guard, audit, "alice", sign_in, owner(), clock=lambda: NOW)
    assert done is not None
    assert done.blocked == (Target(TargetKind.ACCOUNT_SOURCE, f"{ATTACKER}|alice"),)
    assert _verdict(guard, ATTACKER, "alice") is Action.BLOCKED
    assert _verdict(guard, ATTACKER, "bob") is Action.ALLOW


def test_an_allowlisted_address_is_not_blocked_by_an_owner(
    store: SqliteStore, audit: AuditLog
) -> None:
    guard = defense(store, DefenseSettings(allowlist=("198.51.100.0/24",)))
    sign_in = _failed_from(store, "alice", ATTACKER)
    done = disown(store, guard, audit, "alice", sign_in, owner(), clock=lambda: NOW)
    assert done is not None
    assert (done.blocked, done.limited) == ((), False)
    assert guard.blocks() == []


def test_an_accounts_reports_run_out_and_come_back_with_the_window(
    store: SqliteStore, audit: AuditLog, tmp_path: Path
) -> None:
    """A user disowning sign-in after sign-in to run blocks up: past
    OWNER_REPORTS in the window the credential is still revoked but nothing more
    is blocked; another account's allowance is its own; an hour on, it is back."""
    now = [NOW]
    guard = defense(store, clock=lambda: now[0])
    addresses = [f"203.0.113.{i}" for i in range(1, OWNER_REPORTS + 3)]
    results = []
    for address in addresses:
        record = store.add_app_password("alice", address, address.encode().ljust(32), NOW)
        store.record_sign_in(
            "alice", NOW - 60, address, "LOGIN", True, "", f"app-password:{record.id}", ""
        )
        sign_in = next(r.id for r in store.list_sign_ins("alice", 0.0, 100) if r.address == address)
        done = disown(store, guard, audit, "alice", sign_in, owner(), clock=lambda: now[0])
        assert done is not None
        assert done.revoked == f"app-password:{record.id}"  # always: it protects the owner
        results.append((bool(done.blocked), done.limited))
    allowed = [(True, False)] * OWNER_REPORTS
    assert results == [*allowed, (False, True), (False, True)]
    assert _verdict(guard, addresses[-1], "alice") is Action.ALLOW
    assert store.list_app_passwords("alice") == []
    # bob's reports are his own.
    bobs = _failed_from(store, "bob", "203.0.113.200")
    done = disown(store, guard, audit, "bob", bobs, owner("bob"), clock=lambda: now[0])
    assert done is not None
    assert done.blocked
    # A window later alice may report again.
    now[0] += DefenseSettings().window
    last = _failed_from(store, "alice", "203.0.113.201")
    done = disown(store, guard, audit, "alice", last, owner(), clock=lambda: now[0])
    assert done is not None
    assert (bool(done.blocked), done.limited) == (True, False)
    audit.close()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    limited = [e for e in lines if e["event"] == "disowned" and e.get("limited")]
    assert [e["sign_in_src"] for e in limited] == addresses[-2:]
    assert all("blocked" not in e for e in limited)


@pytest.mark.asyncio
async def test_the_owners_block_stops_that_accounts_logins_through_the_gateways_chokepoint(
    env: base.Env,
) -> None:
    """What the gateway calls for every login (precheck first): after alice
    disowns a sign-in from the shared webmail address, her logins from there are
    refused before anything is checked, even with her password and code (a
    familiar source too); bob's from there, and hers from elsewhere, go on."""
    auth = base.defended(env)
    alice, bob = env.enroll("alice"), env.enroll("bob")
    webmail = "198.51.100.80"
    with_code = base.PASSWORDS["bob"] + bob.at(env.clock.now)
    assert (await base.attempt(auth, "bob", with_code, base.ctx(webmail))).outcome is Outcome.OK
    with_code = base.PASSWORDS["alice"] + alice.at(env.clock.now)
    mine = await base.attempt(auth, "alice", with_code, base.ctx(webmail))
    assert mine.outcome is Outcome.OK  # the network is familiar to alice from now on
    await auth.flush()
    guess = await base.attempt(auth, "alice", "guess", base.ctx(webmail))
    assert guess.outcome is Outcome.INVALID
    env.store.record_sign_in("alice", env.clock.now, webmail, "LOGIN", False, "x", "password", "")
    (record,) = [r for r in env.store.list_sign_ins("alice", 0.0, 10) if not r.ok]
    assert auth.defense is not None
    done = disown(env.store, auth.defense, env.audit, "alice", record.id, owner(), clock=env.clock)
    assert done is not None
    assert done.blocked == (Target(TargetKind.ACCOUNT_SOURCE, f"{webmail}|alice"),)
    env.clock.now += 30
    upstream_calls = len(env.upstream.calls)
    refused = await base.attempt(
        auth, "alice", base.PASSWORDS["alice"] + alice.at(env.clock.now), base.ctx(webmail)
    )
    assert (refused.outcome, refused.blocked) == (Outcome.INVALID, True)
    assert len(env.upstream.calls) == upstream_calls  # refused before any check
    bobs = await base.attempt(
        auth, "bob", base.PASSWORDS["bob"] + bob.at(env.clock.now), base.ctx(webmail)
    )
    assert bobs.outcome is Outcome.OK
    elsewhere = await base.attempt(
        auth, "alice", base.PASSWORDS["alice"] + alice.at(env.clock.now), base.ctx("192.0.2.44")
    )
    assert not elsewhere.blocked

""" "This wasn't me" (auth/disown.py) on the real SQLite store and defense: the
credential is revoked and published, the source blocked, the owner and admins
told; another account's sign-in cannot be disowned."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from imapguard.audit import AuditLog
from imapguard.auth.disown import disown
from imapguard.auth.model import AuthContext, ClientAddress
from imapguard.defense import Defense, DefenseSettings, Fingerprinter
from imapguard.defense.engine import Action
from imapguard.secret import Secret
from imapguard.state.sqlite import SqliteStore
from tests.unit import test_chokepoint_factors as base

NOW = 1_800_000_000.0
ATTACKER = "198.51.100.7"


# The chokepoint tests' fixtures: a real SQLite store and an audit log.
store = base.store
audit = base.audit


def defense(store: SqliteStore) -> Defense:
    return Defense(
        DefenseSettings(),
        store,
        lambda: NOW,
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
    assert (done.revoked, done.blocked) == (f"app-password:{record.id}", ATTACKER)
    assert store.list_app_passwords("alice") == []
    assert [r.credential for r in store.revocations_after(start, 10)] == [
        f"app-password:{record.id}"
    ]
    assert store.get_sign_in("alice", sign_in).disowned  # type: ignore[union-attr]
    verdict = guard.precheck(guard.attempt(ATTACKER, "alice", None, method="login", listener="l"))
    assert verdict.action is Action.BLOCKED
    assert notices == [("disowned", "alice")]
    audit.close()
    kinds = [json.loads(x)["event"] for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert "disowned" in kinds
    assert "defense_block" in kinds


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

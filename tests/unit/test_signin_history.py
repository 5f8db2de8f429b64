"""auth/history.py: the owner's sign-in history says what the audit log says,
for known accounts only."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imapguard.audit import AuditLog, events
from imapguard.auth.history import MAX_CLIENT, SignInHistory, short_reason
from imapguard.state.sqlite import SqliteStore, open_store
from imapguard.state.writebehind import WriteBehind


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def auth_event(user: str, result: str, reason: str, credential: str | None) -> events.Auth:
    return events.Auth(
        session="s1",
        src="192.0.2.7",
        listener="127.0.0.1:993",
        client_id="Thunderbird/115",
        mechanism="LOGIN",
        user=user,
        method="app-password",
        credential=credential,
        result=result,
        reason=reason,
    )


@pytest.mark.asyncio
async def test_auth_events_of_known_accounts_become_sign_ins(
    store: SqliteStore, tmp_path: Path
) -> None:
    store.ensure_user("alice", 1.0)
    with ThreadPoolExecutor(1) as executor:
        bookkeeping = WriteBehind(store, executor, delay=0.0)
        audit = AuditLog(str(tmp_path / "audit.jsonl"), clock=lambda: 1000.0)
        audit.subscribe(SignInHistory(store, bookkeeping))
        audit.emit(auth_event("alice", "ok", "ok", "app-password:ab12"))
        audit.emit(
            auth_event("alice", "invalid", "wrong password (NO [AUTHENTICATIONFAILED] x)", None)
        )
        # A sprayed name that is no account leaves nothing behind.
        audit.emit(auth_event("nobody-here", "invalid", "wrong password", None))
        audit.emit(events.Relay(session="s1", src="192.0.2.7", user="alice"))
        await bookkeeping.aclose()
        audit.close()
    rows = store.list_sign_ins("alice", 0.0, 10)
    assert [(r.ok, r.reason, r.credential, r.client, r.address) for r in rows] == [
        (False, "wrong password", "", "Thunderbird/115", "192.0.2.7"),
        (True, "", "app-password:ab12", "Thunderbird/115", "192.0.2.7"),
    ]
    assert store.get_user("nobody-here") is None


def test_the_owner_sees_what_failed_not_the_defense_internals() -> None:
    assert short_reason("wrong password (NO [AUTHENTICATIONFAILED] Authentication failed.)") == (
        "wrong password"
    )
    assert short_reason("correct password, wrong one-time code; codes now locked") == (
        "correct password, wrong one-time code"
    )
    assert len(short_reason("x" * 500)) == 80


@pytest.mark.asyncio
async def test_a_portal_step_is_recorded_with_what_its_mechanism_checked_and_a_bounded_client(
    store: SqliteStore,
) -> None:
    store.ensure_user("alice", 1.0)
    with ThreadPoolExecutor(1) as executor:
        bookkeeping = WriteBehind(store, executor, delay=0.0)
        history = SignInHistory(store, bookkeeping)
        for mechanism in ("PORTAL-PASSWORD", "PORTAL-TOTP", "PLAIN"):
            event = events.Auth(
                src="192.0.2.7",
                listener="portal",
                client_id="Mozilla/5.0 " + "x" * 500,
                mechanism=mechanism,
                user="alice",
                method="portal",
                result="ok",
                reason="ok",
            )
            history(event, 1000.0)
        await bookkeeping.aclose()
    records = store.list_sign_ins("alice", 0.0, 10)
    assert sorted(r.credential for r in records) == ["", "one-time-code", "password"]
    assert [len(r.client) for r in records] == [MAX_CLIENT] * 3

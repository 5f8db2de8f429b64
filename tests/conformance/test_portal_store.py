"""What every PortalStore does (imapguard.state.portal), part one: sign-in
sessions (lookup, absolute and idle expiry, activity, the second factor,
revocation, forgetting), passkeys (user handles, one credential in the store, the
limit, the sign counter), and the store as a whole (a closed store, batches, a
second handle). Every record another account's id names is out of reach ("change
the id in the URL"). Recovery codes, invitations, the sign-in history and the
revocation feed: test_portal_records.py. Concurrent writers:
test_concurrent_writers.py."""

from __future__ import annotations

import dataclasses

import pytest

from imapguard.errors import StateUnavailable
from imapguard.state.portal import (
    MAX_PASSKEYS,
    MAX_PASSWORD_SESSIONS,
    PortalSession,
    PortalStore,
)
from tests.conformance.conftest import Backend

IDLE = 300.0


def token(n: int) -> bytes:
    return n.to_bytes(32, "big")


def session(
    portal: PortalStore, user: str, n: int, now: float = 100.0, expires: float = 1000.0
) -> PortalSession:
    return portal.create_portal_session(
        user, token(n), "password", now, expires, "192.0.2.1", "Firefox/140"
    )


# -- sessions --------------------------------------------------------------------------


def test_a_session_is_found_by_its_token_digest(portal: PortalStore) -> None:
    made = session(portal, "alice", 1)
    assert (made.user, made.level, made.created_at, made.last_seen_at) == (
        "alice",
        "password",
        100.0,
        100.0,
    )
    assert (made.expires_at, made.second_factor_at) == (1000.0, None)
    assert (made.address, made.user_agent) == ("192.0.2.1", "Firefox/140")
    assert made.id
    assert portal.find_portal_session(token(1), 100.0, IDLE) == made
    assert portal.find_portal_session(token(2), 100.0, IDLE) is None
    assert portal.get_user("alice") is not None  # the write created the user
    full = portal.create_portal_session("alice", token(2), "full", 110.0, 1000.0, "::1", "ua")
    assert (full.level, full.second_factor_at) == ("full", 110.0)  # both factors at once
    assert full.id != made.id
    assert portal.find_portal_session(token(2), 110.0, IDLE) == full


def test_a_session_token_digest_is_stored_once(portal: PortalStore) -> None:
    session(portal, "alice", 1)
    with pytest.raises(StateUnavailable):
        session(portal, "bob", 1)
    assert portal.get_user("bob") is None  # nothing of the refused write was kept
    assert portal.list_portal_sessions("bob", 100.0) == []


def test_a_session_expires_at_its_absolute_expiry(portal: PortalStore) -> None:
    made = session(portal, "alice", 1, now=100.0, expires=1000.0)
    portal.touch_portal_session(made.id, 990.0)
    assert portal.find_portal_session(token(1), 1000.0, IDLE) is not None  # inclusive
    assert portal.find_portal_session(token(1), 1000.5, IDLE) is None  # activity or not
    assert portal.list_portal_sessions("alice", 1000.5) == []


def test_a_session_expires_when_idle(portal: PortalStore) -> None:
    made = session(portal, "alice", 1, now=100.0)
    assert portal.find_portal_session(token(1), 100.0 + IDLE, IDLE) is not None  # inclusive
    assert portal.find_portal_session(token(1), 100.5 + IDLE, IDLE) is None
    portal.touch_portal_session(made.id, 350.0)  # activity, recorded late
    found = portal.find_portal_session(token(1), 350.0 + IDLE, IDLE)
    assert found == dataclasses.replace(made, last_seen_at=350.0)
    assert portal.find_portal_session(token(1), 350.5 + IDLE, IDLE) is None
    portal.touch_portal_session(made.id, 200.0)  # an earlier time never moves it back
    assert portal.find_portal_session(token(1), 350.0 + IDLE, IDLE) == found
    portal.touch_portal_session("no-such-id", 400.0)  # ignored


def test_a_second_factor_raises_the_session_under_a_new_token(portal: PortalStore) -> None:
    made = session(portal, "alice", 1, now=100.0)
    assert portal.raise_portal_session(made.id, token(2), 150.0)
    # The token of the password step (perhaps planted or seen) finds nothing now.
    assert portal.find_portal_session(token(1), 150.0, IDLE) is None
    raised = portal.find_portal_session(token(2), 150.0, IDLE)
    assert raised == dataclasses.replace(
        made, level="full", second_factor_at=150.0, last_seen_at=150.0
    )
    assert portal.raise_portal_session(made.id, token(3), 200.0)  # a fresh check again
    again = portal.find_portal_session(token(3), 200.0, IDLE)
    assert again is not None
    assert (again.level, again.second_factor_at) == ("full", 200.0)
    assert not portal.raise_portal_session("no-such-id", token(4), 200.0)


def test_an_expired_or_gone_session_is_not_raised(portal: PortalStore) -> None:
    made = session(portal, "alice", 1, now=100.0, expires=1000.0)
    assert not portal.raise_portal_session(made.id, token(2), 1000.5)
    assert portal.find_portal_session(token(1), 1000.0, 1e9) == made  # unchanged
    assert portal.find_portal_session(token(2), 1000.0, 1e9) is None
    other = session(portal, "bob", 5)
    with pytest.raises(StateUnavailable):  # another session's token digest
        portal.raise_portal_session(made.id, token(5), 200.0)
    assert portal.find_portal_session(token(5), 200.0, IDLE) == other
    assert portal.revoke_portal_session("alice", made.id)
    assert not portal.raise_portal_session(made.id, token(2), 200.0)


def test_sessions_are_listed_newest_first_while_live(portal: PortalStore) -> None:
    old = session(portal, "alice", 1, now=100.0, expires=500.0)
    new = session(portal, "alice", 2, now=300.0, expires=5000.0)
    mid = session(portal, "alice", 3, now=200.0, expires=5000.0)
    session(portal, "bob", 4, now=400.0)
    assert portal.list_portal_sessions("alice", 400.0) == [new, mid, old]
    assert portal.list_portal_sessions("alice", 500.0) == [new, mid, old]  # inclusive
    assert portal.list_portal_sessions("alice", 600.0) == [new, mid]
    assert portal.list_portal_sessions("carol", 400.0) == []


def test_a_revoked_session_is_gone_and_only_its_owner_revokes_it(portal: PortalStore) -> None:
    made = session(portal, "alice", 1)
    assert not portal.revoke_portal_session("bob", made.id)  # another account's id
    assert portal.find_portal_session(token(1), 100.0, IDLE) == made
    assert portal.revoke_portal_session("alice", made.id)
    assert portal.find_portal_session(token(1), 100.0, IDLE) is None
    assert not portal.revoke_portal_session("alice", made.id)
    portal.touch_portal_session(made.id, 150.0)  # bookkeeping after it: ignored
    assert portal.find_portal_session(token(1), 150.0, IDLE) is None
    assert portal.list_portal_sessions("alice", 100.0) == []


def test_revoking_every_session_but_one(portal: PortalStore) -> None:
    mine = [session(portal, "alice", n, now=100.0 + n) for n in range(3)]
    bobs = session(portal, "bob", 10)
    assert portal.revoke_portal_sessions("alice", keep=mine[1].id) == 2
    assert portal.list_portal_sessions("alice", 200.0) == [mine[1]]
    assert portal.find_portal_session(token(0), 200.0, IDLE) is None
    assert portal.find_portal_session(token(1), 200.0, IDLE) == mine[1]
    # Keeping another account's session keeps nothing of this one's.
    assert portal.revoke_portal_sessions("bob", keep=mine[1].id) == 1
    assert portal.find_portal_session(token(10), 200.0, IDLE) is None
    assert portal.find_portal_session(token(1), 200.0, IDLE) == mine[1]
    assert bobs.id != mine[1].id
    assert portal.revoke_portal_sessions("alice") == 1
    assert portal.list_portal_sessions("alice", 200.0) == []
    assert portal.revoke_portal_sessions("alice") == 0


def test_expired_sessions_are_forgotten(portal: PortalStore) -> None:
    for n, expires in enumerate((150.0, 200.0, 300.0)):
        session(portal, "alice", n, now=100.0 + n, expires=expires)
    assert portal.forget_portal_sessions(200.0) == 1  # past 150 only
    assert [s.expires_at for s in portal.list_portal_sessions("alice", 0.0)] == [300.0, 200.0]
    assert portal.forget_portal_sessions(300.5) == 2
    assert portal.forget_portal_sessions(300.5) == 0
    assert portal.find_portal_session(token(2), 300.0, 1e9) is None


def test_password_sessions_are_capped_and_full_ones_kept(portal: PortalStore) -> None:
    full = portal.create_portal_session("alice", token(999), "full", 1.0, 1e6, "::1", "ua")
    first = session(portal, "alice", 0, now=10.0, expires=1e6)
    for n in range(1, MAX_PASSWORD_SESSIONS + 5):
        session(portal, "alice", n, now=10.0 + n, expires=1e6)
        if n == 3:
            portal.touch_portal_session(first.id, 1000.0)  # the first one stays in use
    live = portal.list_portal_sessions("alice", 2000.0)
    passwords = [s for s in live if s.level == "password"]
    assert len(passwords) == MAX_PASSWORD_SESSIONS
    assert full in live  # whoever has only the password cannot push it out
    assert portal.find_portal_session(token(0), 1000.0, 1e9) is not None
    assert portal.find_portal_session(token(1), 1000.0, 1e9) is None  # least recently seen
    last = MAX_PASSWORD_SESSIONS + 4
    assert portal.find_portal_session(token(last), 1000.0, 1e9) is not None
    session(portal, "bob", 5000)  # another account's are its own
    assert len(portal.list_portal_sessions("bob", 100.0)) == 1


# -- passkeys --------------------------------------------------------------------------


def add(portal: PortalStore, user: str, n: int, count: int = 0, now: float = 1.0) -> str | None:
    record = portal.add_passkey(user, b"cred-%d" % n, b"cose-%d" % n, count, f"key {n}", "", now)
    return None if record is None else record.id


def test_the_first_user_handle_is_kept(portal: PortalStore) -> None:
    first = portal.user_handle("alice", b"h" * 32, 1.0)
    assert first == b"h" * 32
    assert portal.get_user("alice") is not None
    assert portal.user_handle("alice", b"i" * 32, 2.0) == b"h" * 32
    assert portal.user_for_handle(b"h" * 32) == "alice"
    assert portal.user_for_handle(b"i" * 32) is None
    with pytest.raises(StateUnavailable):  # a handle names one account
        portal.user_handle("bob", b"h" * 32, 3.0)
    assert portal.get_user("bob") is None
    assert portal.user_handle("bob", b"j" * 32, 3.0) == b"j" * 32


def test_a_passkey_is_stored_and_found_by_its_credential(portal: PortalStore) -> None:
    record = portal.add_passkey("alice", b"cred", b"cose", 7, "phone", "aaguid-1", 5.0)
    assert record is not None
    assert (record.user, record.credential_id, record.public_key) == ("alice", b"cred", b"cose")
    assert (record.sign_count, record.name, record.aaguid) == (7, "phone", "aaguid-1")
    assert (record.created_at, record.last_used_at) == (5.0, None)
    assert portal.find_passkey(b"cred") == record
    assert portal.find_passkey(b"other") is None
    assert portal.list_passkeys("alice") == [record]
    assert portal.get_user("alice") is not None


def test_a_credential_is_stored_once_in_the_store(portal: PortalStore) -> None:
    assert add(portal, "alice", 1) is not None
    # Registering alice's authenticator to another account is refused.
    assert portal.add_passkey("bob", b"cred-1", b"evil", 0, "mine", "", 2.0) is None
    assert portal.get_user("bob") is None  # nothing stored
    assert portal.add_passkey("alice", b"cred-1", b"new", 0, "again", "", 2.0) is None
    found = portal.find_passkey(b"cred-1")
    assert found is not None
    assert (found.user, found.public_key, found.name) == ("alice", b"cose-1", "key 1")


def test_passkeys_are_limited_and_listed_oldest_first(portal: PortalStore) -> None:
    ids = [add(portal, "alice", n, now=100.0 - n) for n in range(MAX_PASSKEYS)]
    assert None not in ids
    assert add(portal, "alice", 1000) is None
    assert portal.find_passkey(b"cred-1000") is None
    assert [p.id for p in portal.list_passkeys("alice")] == ids[::-1]
    assert add(portal, "bob", 1000) is not None  # another account has room
    first = ids[0]
    assert first is not None
    assert portal.remove_passkey("alice", first)
    assert add(portal, "alice", 1001) is not None
    assert portal.list_passkeys("carol") == []


def test_only_the_owner_renames_or_removes_a_passkey(portal: PortalStore) -> None:
    passkey = add(portal, "alice", 1)
    assert passkey is not None
    add(portal, "bob", 2)
    before = portal.find_passkey(b"cred-1")
    assert not portal.rename_passkey("bob", passkey, "evil")  # the id of alice's in bob's URL
    assert not portal.remove_passkey("bob", passkey)
    assert portal.find_passkey(b"cred-1") == before
    assert portal.rename_passkey("alice", passkey, "laptop")
    renamed = portal.find_passkey(b"cred-1")
    assert renamed is not None
    assert renamed.name == "laptop"
    assert not portal.rename_passkey("alice", "no-such-id", "x")
    assert portal.remove_passkey("alice", passkey)
    assert portal.find_passkey(b"cred-1") is None
    assert not portal.use_passkey(b"cred-1", 5, 3.0)  # it no longer signs in
    assert not portal.remove_passkey("alice", passkey)
    assert [p.name for p in portal.list_passkeys("bob")] == ["key 2"]


def test_a_passkey_counter_only_goes_up(portal: PortalStore) -> None:
    add(portal, "alice", 1, count=5)
    assert not portal.use_passkey(b"cred-1", 5, 2.0)  # not above the stored one
    assert not portal.use_passkey(b"cred-1", 4, 2.0)
    assert not portal.use_passkey(b"cred-1", 0, 2.0)
    record = portal.find_passkey(b"cred-1")
    assert record is not None
    assert (record.sign_count, record.last_used_at) == (5, None)  # nothing recorded
    assert portal.use_passkey(b"cred-1", 6, 3.0)
    record = portal.find_passkey(b"cred-1")
    assert record is not None
    assert (record.sign_count, record.last_used_at) == (6, 3.0)
    # A clone: the genuine authenticator signs with 9, the copy then with 9 (or 7).
    assert portal.use_passkey(b"cred-1", 9, 4.0)
    assert not portal.use_passkey(b"cred-1", 9, 5.0)
    assert not portal.use_passkey(b"cred-1", 7, 5.0)
    assert not portal.use_passkey(b"unknown", 100, 5.0)


def test_a_passkey_without_a_counter_stays_usable(portal: PortalStore) -> None:
    add(portal, "alice", 1, count=0)
    assert portal.use_passkey(b"cred-1", 0, 2.0)
    assert portal.use_passkey(b"cred-1", 0, 3.0)  # both 0: no counter kept
    record = portal.find_passkey(b"cred-1")
    assert record is not None
    assert (record.sign_count, record.last_used_at) == (0, 3.0)
    assert portal.use_passkey(b"cred-1", 2, 4.0)  # it starts counting
    assert not portal.use_passkey(b"cred-1", 0, 5.0)  # and may not stop


def test_the_last_second_factor_is_not_removed(portal: PortalStore) -> None:
    portal.set_totp("alice", b"sealed", 1.0)
    passkey = add(portal, "alice", 1)
    assert passkey is not None
    assert portal.remove_second_factor("alice", f"passkey:{passkey}") == "removed"
    assert portal.list_passkeys("alice") == []
    assert portal.remove_second_factor("alice", "totp") == "last"
    assert portal.get_totp("alice") is not None  # nothing changed
    # Two passkeys, no TOTP: one of them goes, the other is the last.
    first, second = add(portal, "bob", 2), add(portal, "bob", 3)
    assert portal.remove_second_factor("bob", f"passkey:{second}") == "removed"
    assert portal.remove_second_factor("bob", f"passkey:{first}") == "last"
    assert [p.id for p in portal.list_passkeys("bob")] == [first]
    # A TOTP and a passkey: the TOTP goes, the passkey is the last.
    portal.set_totp("carol", b"sealed", 1.0)
    kept = add(portal, "carol", 4)
    assert portal.remove_second_factor("carol", "totp") == "removed"
    assert portal.get_totp("carol") is None
    assert portal.remove_second_factor("carol", f"passkey:{kept}") == "last"


def test_a_factor_the_account_does_not_have_is_absent(portal: PortalStore) -> None:
    portal.set_totp("alice", b"sealed", 1.0)
    alices = add(portal, "alice", 1)
    portal.set_totp("bob", b"sealed", 1.0)
    add(portal, "bob", 2)
    # The id of alice's passkey in bob's form removes nothing of either.
    assert portal.remove_second_factor("bob", f"passkey:{alices}") == "absent"
    assert [p.id for p in portal.list_passkeys("alice")] == [alices]
    assert len(portal.list_passkeys("bob")) == 1
    for factor in ("passkey:", "passkey:no-such-id", "password", "", "totp:x"):
        assert portal.remove_second_factor("alice", factor) == "absent"
    assert portal.remove_second_factor("dave", "totp") == "absent"  # no factor at all
    assert portal.get_totp("alice") is not None
    assert len(portal.list_passkeys("alice")) == 1


# -- the store as a whole --------------------------------------------------------------


def test_a_closed_store_raises_state_unavailable(portal: PortalStore) -> None:
    portal.close()
    with pytest.raises(StateUnavailable):
        portal.find_portal_session(token(1), 1.0, IDLE)
    with pytest.raises(StateUnavailable):
        portal.use_invite(b"inv", "alice", 1.0)
    with pytest.raises(StateUnavailable):
        portal.publish_revocation("alice", None, 1.0)


def test_a_batch_of_portal_writes_is_all_or_nothing(portal: PortalStore) -> None:
    made = session(portal, "alice", 1)

    class Refused(Exception):
        pass

    def bookkeeping_then_fail() -> None:
        with portal.batch():
            portal.touch_portal_session(made.id, 200.0)
            portal.record_sign_in("alice", 200.0, "::1", "portal", True, "", "password", "ua")
            raise Refused

    with pytest.raises(Refused):
        bookkeeping_then_fail()
    assert portal.find_portal_session(token(1), 100.0, IDLE) == made
    assert portal.list_sign_ins("alice", 0.0, 10) == []


def test_a_second_handle_sees_the_same_state(portal_backend: Backend[PortalStore]) -> None:
    """Two handles (the portal and a gateway node) on one store read each other's writes."""
    one, two = portal_backend.open(), portal_backend.open()
    made = session(one, "alice", 1)
    assert two.find_portal_session(token(1), 100.0, IDLE) == made
    assert two.revoke_portal_session("alice", made.id)
    assert one.find_portal_session(token(1), 100.0, IDLE) is None
    assert one.user_handle("alice", b"h" * 32, 1.0) == two.user_handle("alice", b"i" * 32, 2.0)
    add(one, "alice", 1, count=1)
    assert two.use_passkey(b"cred-1", 2, 3.0)
    assert not one.use_passkey(b"cred-1", 2, 3.0)
    one.set_recovery_codes("alice", [b"a"], 1.0)
    assert two.use_recovery_code("alice", b"a", 2.0)
    assert not one.use_recovery_code("alice", b"a", 2.0)
    one.add_invite("bob", b"inv", 1.0, 100.0)
    assert two.use_invite(b"inv", "bob", 2.0)
    assert not one.use_invite(b"inv", "bob", 2.0)
    seq = one.publish_revocation("alice", None, 5.0)
    assert two.last_revocation() == seq
    assert [r.seq for r in two.revocations_after(0, 10)] == [seq]

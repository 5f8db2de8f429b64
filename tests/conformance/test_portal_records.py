"""What every PortalStore does (imapguard.state.portal), part two: recovery codes
(each used once, replaced by a new set, one account's only), invitations (used
once, expired or unknown refused, the account's others void once one is used),
the sign-in history (newest first, trimmed, only known accounts, read and
disowned by the owner only) and the revocation feed (seqs in order, never
reused). Part one, with the store as a whole: test_portal_store.py."""

from __future__ import annotations

import dataclasses

import pytest

from imapguard.errors import StateUnavailable
from imapguard.state.accounts import DeviceKey
from imapguard.state.portal import MAX_RECOVERY_CODES, MAX_SIGN_INS, PortalStore

# -- recovery codes --------------------------------------------------------------------


def test_each_recovery_code_works_once_for_its_account(portal: PortalStore) -> None:
    portal.set_recovery_codes("alice", [b"a", b"b", b"c"], 1.0)
    assert portal.get_user("alice") is not None
    assert portal.count_recovery_codes("alice") == 3
    assert portal.use_recovery_code("alice", b"a", 2.0)
    assert not portal.use_recovery_code("alice", b"a", 3.0)
    assert not portal.use_recovery_code("bob", b"b", 3.0)  # alice's code, bob's account
    assert not portal.use_recovery_code("alice", b"z", 3.0)
    assert portal.count_recovery_codes("alice") == 2
    assert portal.count_recovery_codes("bob") == 0


def test_a_new_set_of_recovery_codes_replaces_the_old(portal: PortalStore) -> None:
    portal.set_recovery_codes("alice", [b"a", b"b"], 1.0)
    portal.set_recovery_codes("bob", [b"a"], 1.0)
    assert portal.use_recovery_code("alice", b"a", 2.0)
    portal.set_recovery_codes("alice", [b"a", b"x", b"y"], 3.0)
    assert portal.count_recovery_codes("alice") == 3  # the used one is new again
    assert not portal.use_recovery_code("alice", b"b", 4.0)  # the old set is gone
    assert portal.use_recovery_code("alice", b"a", 4.0)
    assert portal.use_recovery_code("bob", b"a", 4.0)  # bob's own set, untouched
    portal.set_recovery_codes("alice", [], 5.0)
    assert portal.count_recovery_codes("alice") == 0
    assert not portal.use_recovery_code("alice", b"x", 6.0)


def test_a_bad_set_of_recovery_codes_changes_nothing(portal: PortalStore) -> None:
    portal.set_recovery_codes("alice", [b"a"], 1.0)
    too_many = [bytes([n]) * 8 for n in range(MAX_RECOVERY_CODES + 1)]
    with pytest.raises(ValueError, match="at most"):
        portal.set_recovery_codes("alice", too_many, 2.0)
    with pytest.raises(ValueError, match="twice"):
        portal.set_recovery_codes("alice", [b"b", b"b"], 2.0)
    assert portal.count_recovery_codes("alice") == 1
    portal.set_recovery_codes("alice", too_many[:MAX_RECOVERY_CODES], 3.0)
    assert portal.count_recovery_codes("alice") == MAX_RECOVERY_CODES


# -- invitations -----------------------------------------------------------------------


def test_an_invitation_is_used_once(portal: PortalStore) -> None:
    portal.add_invite("alice", b"inv-1", 1.0, 100.0)
    assert portal.get_user("alice") is not None
    assert not portal.use_invite(b"unknown", "alice", 2.0)
    assert portal.use_invite(b"inv-1", "alice", 2.0)
    assert not portal.use_invite(b"inv-1", "alice", 3.0)


def test_an_expired_invitation_is_refused(portal: PortalStore) -> None:
    portal.add_invite("alice", b"inv-1", 1.0, 100.0)
    portal.add_invite("bob", b"inv-2", 1.0, 100.0)
    assert not portal.use_invite(b"inv-1", "alice", 100.5)
    assert portal.use_invite(b"inv-2", "bob", 100.0)  # inclusive


def test_using_an_invitation_voids_the_accounts_others(portal: PortalStore) -> None:
    portal.add_invite("alice", b"inv-1", 1.0, 100.0)
    portal.add_invite("alice", b"inv-2", 2.0, 100.0)  # the earlier one stays valid
    portal.add_invite("alice", b"inv-3", 3.0, 100.0)
    portal.add_invite("bob", b"inv-4", 3.0, 100.0)
    assert portal.use_invite(b"inv-1", "alice", 4.0)
    assert not portal.use_invite(b"inv-2", "alice", 5.0)
    assert not portal.use_invite(b"inv-3", "alice", 5.0)
    assert portal.use_invite(b"inv-4", "bob", 5.0)  # another account's is its own


def test_an_invitation_is_not_spent_by_another_account(portal: PortalStore) -> None:
    """A redemption that names bob does not burn alice's link (it stays good
    for alice) nor void bob's own."""
    portal.add_invite("alice", b"inv-1", 1.0, 100.0)
    portal.add_invite("bob", b"inv-2", 1.0, 100.0)
    assert not portal.use_invite(b"inv-1", "bob", 2.0)
    assert portal.use_invite(b"inv-1", "alice", 3.0)
    assert portal.use_invite(b"inv-2", "bob", 4.0)


def test_an_invitation_digest_is_stored_once(portal: PortalStore) -> None:
    portal.add_invite("alice", b"inv-1", 1.0, 100.0)
    with pytest.raises(StateUnavailable):
        portal.add_invite("bob", b"inv-1", 2.0, 100.0)
    assert portal.get_user("bob") is None
    assert portal.use_invite(b"inv-1", "alice", 3.0)


# -- sign-in history -------------------------------------------------------------------


def sign_in(portal: PortalStore, user: str, at: float, ok: bool = True) -> None:
    reason = "" if ok else "bad_password"
    portal.record_sign_in(user, at, "192.0.2.1", "password", ok, reason, "password", "Tb/128")


def test_sign_ins_are_listed_newest_first(portal: PortalStore) -> None:
    portal.ensure_user("alice", 1.0)
    sign_in(portal, "alice", 10.0)
    sign_in(portal, "alice", 30.0, ok=False)
    sign_in(portal, "alice", 20.0)
    portal.record_sign_in(
        "alice", 40.0, "2001:db8::1", "app-password", True, "", "app-password:3f9c", "Mail"
    )
    listed = portal.list_sign_ins("alice", 0.0, 10)
    assert [(r.at, r.method) for r in listed] == [
        (40.0, "app-password"),
        (30.0, "password"),
        (20.0, "password"),
        (10.0, "password"),
    ]
    newest = listed[0]
    assert (newest.user, newest.address, newest.ok, newest.reason) == (
        "alice",
        "2001:db8::1",
        True,
        "",
    )
    assert (newest.credential, newest.client, newest.disowned) == (
        "app-password:3f9c",
        "Mail",
        False,
    )
    assert (listed[1].ok, listed[1].reason) == (False, "bad_password")
    assert len({r.id for r in listed}) == 4
    assert [r.at for r in portal.list_sign_ins("alice", 20.0, 10)] == [40.0, 30.0, 20.0]
    assert [r.at for r in portal.list_sign_ins("alice", 0.0, 2)] == [40.0, 30.0]
    assert portal.list_sign_ins("alice", 0.0, 0) == []
    assert portal.list_sign_ins("alice", 41.0, 10) == []
    assert portal.list_sign_ins("bob", 0.0, 10) == []


def test_a_sign_in_of_an_unknown_account_is_not_recorded(portal: PortalStore) -> None:
    sign_in(portal, "made-up", 10.0, ok=False)
    assert portal.get_user("made-up") is None
    assert portal.list_sign_ins("made-up", 0.0, 10) == []


def test_the_sign_in_history_keeps_the_newest(portal: PortalStore) -> None:
    portal.ensure_user("alice", 1.0)
    portal.ensure_user("bob", 1.0)
    sign_in(portal, "bob", 1.0)
    with portal.batch():  # bookkeeping, batched the way write-behind does it
        for n in range(MAX_SIGN_INS + 3):
            sign_in(portal, "alice", 100.0 + n)
    listed = portal.list_sign_ins("alice", 0.0, MAX_SIGN_INS * 2)
    assert len(listed) == MAX_SIGN_INS
    assert (listed[0].at, listed[-1].at) == (100.0 + MAX_SIGN_INS + 2, 103.0)
    sign_in(portal, "alice", 50.0)  # older than all it keeps: forgotten at once
    assert portal.list_sign_ins("alice", 0.0, MAX_SIGN_INS * 2) == listed
    assert len(portal.list_sign_ins("bob", 0.0, 10)) == 1  # another account's stay


def test_only_the_owner_reads_or_disowns_a_sign_in(portal: PortalStore) -> None:
    portal.ensure_user("alice", 1.0)
    portal.ensure_user("bob", 1.0)
    sign_in(portal, "alice", 10.0)
    (record,) = portal.list_sign_ins("alice", 0.0, 10)
    assert portal.get_sign_in("alice", record.id) == record
    assert portal.get_sign_in("bob", record.id) is None  # alice's id in bob's URL
    assert not portal.disown_sign_in("bob", record.id)
    assert portal.get_sign_in("alice", record.id) == record
    assert portal.disown_sign_in("alice", record.id)
    assert portal.get_sign_in("alice", record.id) == dataclasses.replace(record, disowned=True)
    assert not portal.disown_sign_in("alice", "no-such-id")
    assert portal.get_sign_in("alice", "no-such-id") is None


# -- revocation feed -------------------------------------------------------------------


def test_an_empty_feed(portal: PortalStore) -> None:
    assert portal.last_revocation() == 0
    assert portal.revocations_after(0, 10) == []
    assert portal.forget_revocations(1e12) == 0


def test_revocations_are_read_in_order_after_a_seq(portal: PortalStore) -> None:
    one = portal.publish_revocation("alice", "app-password:3f9c", 10.0)
    two = portal.publish_revocation("bob", None, 11.0)
    three = portal.publish_revocation("alice", "portal-session", 12.0)
    assert 0 < one < two < three
    assert portal.last_revocation() == three
    feed = portal.revocations_after(0, 10)
    assert [(r.seq, r.user, r.credential, r.at) for r in feed] == [
        (one, "alice", "app-password:3f9c", 10.0),
        (two, "bob", None, 11.0),
        (three, "alice", "portal-session", 12.0),
    ]
    assert portal.revocations_after(one, 10) == feed[1:]
    assert portal.revocations_after(one, 1) == feed[1:2]
    assert portal.revocations_after(three, 10) == []
    assert portal.revocations_after(0, 0) == []
    assert portal.get_user("alice") is None  # the feed creates no user


def test_old_revocations_are_forgotten_and_seqs_never_reused(portal: PortalStore) -> None:
    seqs = [portal.publish_revocation("alice", None, at) for at in (10.0, 20.0, 30.0)]
    assert portal.forget_revocations(20.0) == 1
    assert [r.seq for r in portal.revocations_after(0, 10)] == seqs[1:]
    assert portal.forget_revocations(100.0) == 2
    assert portal.revocations_after(0, 10) == []
    later = portal.publish_revocation("alice", None, 40.0)
    assert later > seqs[-1]
    assert portal.last_revocation() == later


def test_revoking_a_credential_removes_it_and_publishes_together(portal: PortalStore) -> None:
    """One transaction: a process that sees the credential gone sees the
    revocation too (the gateway ends the sessions that used it)."""
    kept = portal.add_app_password("alice", "laptop", b"d" * 32, 1.0)
    gone = portal.add_app_password("alice", "phone", b"e" * 32, 1.0)
    start = portal.last_revocation()
    assert portal.revoke("alice", f"app-password:{gone.id}", 5.0)
    assert [r.id for r in portal.list_app_passwords("alice")] == [kept.id]
    (published,) = portal.revocations_after(start, 10)
    assert (published.user, published.credential, published.at) == (
        "alice",
        f"app-password:{gone.id}",
        5.0,
    )
    # Again, or another account's id: nothing removed, nothing published.
    assert not portal.revoke("alice", f"app-password:{gone.id}", 6.0)
    assert not portal.revoke("bob", f"app-password:{kept.id}", 6.0)
    assert portal.list_app_passwords("alice") != []
    assert portal.revocations_after(published.seq, 10) == []


def test_revoking_a_device(portal: PortalStore) -> None:
    key = DeviceKey("alice", "192.0.2.0/24", "Thunderbird", "115")
    device = portal.trust_device(key, 1.0, 100.0, "192.0.2.7", b"s" * 32)
    assert not portal.revoke("bob", f"device:{device.id}", 2.0)
    assert portal.revoke("alice", f"device:{device.id}", 2.0)
    assert portal.list_devices("alice") == []
    assert portal.revocations_after(0, 10)[-1].credential == f"device:{device.id}"


def test_revoking_an_account_ends_all_it_can_log_in_with(portal: PortalStore) -> None:
    portal.add_app_password("alice", "laptop", b"d" * 32, 1.0)
    portal.trust_device(DeviceKey("alice", "n", "c", "v"), 1.0, 100.0, "a", b"s" * 32)
    portal.create_portal_session("alice", b"t" * 32, "full", 1.0, 100.0, "a", "ua")
    portal.add_app_password("bob", "laptop", b"f" * 32, 1.0)
    assert portal.revoke("alice", None, 2.0)
    assert portal.list_app_passwords("alice") == []
    assert portal.list_devices("alice") == []
    assert portal.find_portal_session(b"t" * 32, 2.0, 1000.0) is None
    assert len(portal.list_app_passwords("bob")) == 1
    assert portal.revocations_after(0, 10)[-1].credential is None
    assert not portal.revoke("carol", None, 3.0)  # nothing to remove, nothing published


@pytest.mark.parametrize("credential", ["password", "app-password:", "totp:x", ""])
def test_what_cannot_be_revoked_is_refused(portal: PortalStore, credential: str) -> None:
    with pytest.raises(ValueError, match="not a revocable credential"):
        portal.revoke("alice", credential, 1.0)

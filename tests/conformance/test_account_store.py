"""What every AccountStore does (imapguard.state.accounts): users and last login,
app passwords, TOTP secrets with their used steps and failure lock, devices
(pending, trusted, approved, revoked, used), notice claims; expiry, revocation,
batches, a closed store; and that a second handle on the same state (another
gateway node) sees it all. Concurrent writers: test_concurrent_writers.py."""

from __future__ import annotations

import dataclasses

import pytest

from imapguard.errors import StateUnavailable
from imapguard.state.accounts import (
    MAX_PENDING_DEVICES,
    AccountStore,
    AppPasswordLimit,
    DeviceKey,
)
from tests.conformance.conftest import Backend

KEY = DeviceKey("alice", "192.0.2.0/24", "Thunderbird", "115")


def test_app_password_scope_is_kept(accounts: AccountStore) -> None:
    scoped = accounts.add_app_password(
        "alice", "office", b"s" * 32, 1.0, network="192.0.2.0/24", expires_at=100.0
    )
    assert (scoped.network, scoped.expires_at) == ("192.0.2.0/24", 100.0)
    assert accounts.find_app_password("alice", b"s" * 32) == scoped
    assert accounts.list_app_passwords("alice") == [scoped]
    plain = accounts.add_app_password("alice", "phone", b"p" * 32, 2.0)
    assert (plain.network, plain.expires_at) == (None, None)


def test_app_password_lifecycle(accounts: AccountStore) -> None:
    a = accounts.add_app_password("alice", "phone", b"a" * 32, 1.0)
    b = accounts.add_app_password("alice", "laptop", b"b" * 32, 2.0)
    assert accounts.find_app_password("alice", b"a" * 32) == a
    assert accounts.find_app_password("bob", b"a" * 32) is None
    accounts.record_app_password_use(a.id, 5.0, "192.0.2.1", "Thunderbird/128")
    used = accounts.find_app_password("alice", b"a" * 32)
    assert used is not None
    assert (used.last_used_at, used.last_used_address, used.last_used_client) == (
        5.0,
        "192.0.2.1",
        "Thunderbird/128",
    )
    assert accounts.revoke_app_password("alice", a.id) is True
    assert accounts.revoke_app_password("alice", a.id) is False
    assert accounts.revoke_app_password("bob", b.id) is False
    assert [r.id for r in accounts.list_app_passwords("alice")] == [b.id]
    user = accounts.get_user("alice")
    assert user is not None
    assert user.app_passwords == 1
    accounts.record_login("alice", 9.0, "192.0.2.2", "app-password")
    assert accounts.list_users()[0].last_login_address == "192.0.2.2"


def test_app_password_limit_is_checked_with_the_add(accounts: AccountStore) -> None:
    """`max_count`: a full account gets nothing added (AppPasswordLimit); other
    accounts have their own count; a revoked one frees its place."""
    kept = [
        accounts.add_app_password("alice", f"d{i}", bytes([i]) * 32, 1.0, max_count=3)
        for i in range(3)
    ]
    with pytest.raises(AppPasswordLimit) as refused:
        accounts.add_app_password("alice", "one more", b"x" * 32, 2.0, max_count=3)
    assert (refused.value.user, refused.value.max_count) == ("alice", 3)
    assert accounts.list_app_passwords("alice") == kept
    assert accounts.find_app_password("alice", b"x" * 32) is None
    accounts.add_app_password("bob", "laptop", b"b" * 32, 2.0, max_count=3)
    # Without max_count nothing is counted (the CLI's `app-password add`).
    accounts.add_app_password("alice", "admin made", b"y" * 32, 2.0)
    assert len(accounts.list_app_passwords("alice")) == 4
    accounts.revoke_app_password("alice", kept[0].id)
    accounts.revoke_app_password("alice", kept[1].id)
    again = accounts.add_app_password("alice", "again", b"z" * 32, 3.0, max_count=3)
    assert accounts.find_app_password("alice", b"z" * 32) == again


def test_a_closed_store_raises_state_unavailable(accounts: AccountStore) -> None:
    accounts.close()
    with pytest.raises(StateUnavailable):
        accounts.list_users()
    with pytest.raises(StateUnavailable):
        accounts.record_login("alice", 1.0, "192.0.2.1", "password")


def test_device_lifecycle_and_pending_cap(accounts: AccountStore) -> None:
    key = DeviceKey("alice", "192.0.2.0/24", "Thunderbird", "115")
    pending = accounts.add_pending_device(key, 1.0, "192.0.2.5")
    assert (pending.status, pending.trusted_at(1.0)) == ("pending", False)
    assert accounts.add_pending_device(key, 2.0, "192.0.2.6").id == pending.id  # one per device
    assert accounts.approve_device("alice", pending.id, until=100.0)
    approved = accounts.get_device("alice", pending.id)
    assert approved is not None
    assert (approved.trusted_at(99.0), approved.trusted_at(100.0)) == (True, False)
    # Whoever has the password cannot grow the table: the newest pending ones stay.
    for n in range(MAX_PENDING_DEVICES + 5):
        accounts.add_pending_device(
            DeviceKey("alice", f"10.{n}.0.0/24", "x", ""), 10.0 + n, "10.0.0.1"
        )
    devices = accounts.list_devices("alice")
    pending_networks = [d.network for d in devices if d.status == "pending"]
    assert len(pending_networks) == MAX_PENDING_DEVICES
    assert "10.0.0.0/24" not in pending_networks
    assert f"10.{MAX_PENDING_DEVICES + 4}.0.0/24" in pending_networks
    assert accounts.get_device("alice", pending.id) is not None  # trusted ones are kept
    assert accounts.revoke_device("alice", pending.id)
    assert not accounts.revoke_device("alice", pending.id)


def test_totp_step_is_taken_once_and_failures_lock(accounts: AccountStore) -> None:
    accounts.set_totp("alice", b"sealed", 1.0)
    assert accounts.use_totp_step("alice", 100)
    assert not accounts.use_totp_step("alice", 100)
    assert not accounts.use_totp_step("alice", 99)
    assert accounts.use_totp_step("alice", 101)
    assert [accounts.record_totp_failure("alice", 10.0 + i, 60, 3, 900) for i in range(3)] == [
        False,
        False,
        True,
    ]
    record = accounts.get_totp("alice")
    assert record is not None
    assert record.locked_until == 12.0 + 900
    assert accounts.clear_totp_lock("alice")
    assert accounts.claim_notice("alice", "new_device", 5.0, 3600)
    assert not accounts.claim_notice("alice", "new_device", 10.0, 3600)
    assert accounts.claim_notice("alice", "lockout", 10.0, 3600)
    assert accounts.claim_notice("alice", "new_device", 3605.0, 3600)


# -- users ---------------------------------------------------------------------------


def test_users_are_created_once_and_remember_the_last_login(accounts: AccountStore) -> None:
    assert accounts.get_user("bob") is None
    assert accounts.list_users() == []
    accounts.ensure_user("bob", 1.0)
    accounts.ensure_user("bob", 2.0)  # already there: unchanged
    bob = accounts.get_user("bob")
    assert bob is not None
    assert (bob.created_at, bob.last_login_at, bob.app_passwords) == (1.0, None, 0)
    accounts.record_login("carol", 5.0, "192.0.2.7", "password+totp")  # creates carol
    accounts.record_login("bob", 6.0, "2001:db8::1", "app-password")
    accounts.record_login("bob", 7.0, "192.0.2.8", "password+device")
    bob = accounts.get_user("bob")
    assert bob is not None
    assert (bob.created_at, bob.last_login_at, bob.last_login_address, bob.last_login_method) == (
        1.0,
        7.0,
        "192.0.2.8",
        "password+device",
    )
    carol = accounts.get_user("carol")
    assert carol is not None
    assert (carol.created_at, carol.last_login_method) == (5.0, "password+totp")
    assert [u.name for u in accounts.list_users()] == ["bob", "carol"]


def test_users_are_listed_in_code_point_order(accounts: AccountStore) -> None:
    for name in ("zoe", "Zed", "émile", "alice", "Bob"):
        accounts.ensure_user(name, 1.0)
    assert [u.name for u in accounts.list_users()] == ["Bob", "Zed", "alice", "zoe", "émile"]


# -- app passwords ---------------------------------------------------------------------


def test_a_revoked_app_password_stops_working_at_once(accounts: AccountStore) -> None:
    record = accounts.add_app_password("alice", "phone", b"p" * 32, 1.0)
    assert accounts.find_app_password("alice", b"p" * 32) == record
    assert accounts.revoke_app_password("alice", record.id)
    assert accounts.find_app_password("alice", b"p" * 32) is None
    assert accounts.list_app_passwords("alice") == []
    # Bookkeeping of a login decided just before the revocation is ignored.
    accounts.record_app_password_use(record.id, 2.0, "192.0.2.1", None)
    assert accounts.find_app_password("alice", b"p" * 32) is None


def test_app_passwords_are_listed_oldest_first_with_fresh_ids(accounts: AccountStore) -> None:
    made = [
        accounts.add_app_password("alice", f"d{i}", bytes([i]) * 32, 10.0 - i) for i in range(3)
    ]
    assert accounts.list_app_passwords("alice") == made[::-1]
    assert len({r.id for r in made}) == 3
    assert all(r.id and r.last_used_at is None for r in made)
    assert accounts.list_app_passwords("bob") == []


def test_an_app_password_digest_is_stored_once(accounts: AccountStore) -> None:
    accounts.add_app_password("alice", "phone", b"d" * 32, 1.0)
    with pytest.raises(StateUnavailable):
        accounts.add_app_password("bob", "laptop", b"d" * 32, 2.0)
    assert accounts.find_app_password("bob", b"d" * 32) is None
    assert accounts.get_user("bob") is None  # nothing of the refused write was kept


# -- one-time codes --------------------------------------------------------------------


def test_no_secret_no_step_no_failure(accounts: AccountStore) -> None:
    assert accounts.get_totp("alice") is None
    assert not accounts.use_totp_step("alice", 1)
    assert not accounts.record_totp_failure("alice", 1.0, 60, 1, 900)
    assert not accounts.clear_totp_lock("alice")
    assert not accounts.remove_totp("alice")
    assert accounts.get_totp("alice") is None


def test_an_enrolled_secret_starts_afresh(accounts: AccountStore) -> None:
    accounts.set_totp("alice", b"sealed-1", 1.0)
    record = accounts.get_totp("alice")
    assert record is not None
    assert (record.sealed, record.created_at, record.last_step) == (b"sealed-1", 1.0, None)
    assert (record.failures, record.first_failure_at, record.locked_until) == (0, None, None)
    assert accounts.get_user("alice") is not None  # enrolling creates the user
    assert accounts.use_totp_step("alice", 500)
    assert accounts.record_totp_failure("alice", 2.0, 60, 1, 900)  # locked
    accounts.set_totp("alice", b"sealed-2", 3.0)  # replaced: step, failures, lock forgotten
    record = accounts.get_totp("alice")
    assert record is not None
    assert (record.sealed, record.created_at, record.last_step) == (b"sealed-2", 3.0, None)
    assert (record.failures, record.first_failure_at, record.locked_until) == (0, None, None)
    assert accounts.use_totp_step("alice", 400)  # an earlier step than the old secret's


def test_a_removed_secret_accepts_no_code(accounts: AccountStore) -> None:
    accounts.set_totp("alice", b"sealed", 1.0)
    assert accounts.remove_totp("alice")
    assert accounts.get_totp("alice") is None
    assert not accounts.use_totp_step("alice", 1)
    assert not accounts.remove_totp("alice")


def test_a_used_step_resets_the_failures_but_not_the_lock(accounts: AccountStore) -> None:
    accounts.set_totp("alice", b"sealed", 1.0)
    assert not accounts.record_totp_failure("alice", 10.0, 60, 3, 900)
    assert not accounts.record_totp_failure("alice", 11.0, 60, 3, 900)
    assert accounts.use_totp_step("alice", 7)
    record = accounts.get_totp("alice")
    assert record is not None
    assert (record.last_step, record.failures, record.first_failure_at) == (7, 0, None)
    # Two more failures do not lock: the count restarted at the correct code.
    assert [accounts.record_totp_failure("alice", 12.0 + i, 60, 3, 900) for i in range(2)] == [
        False,
        False,
    ]
    assert accounts.record_totp_failure("alice", 14.0, 60, 3, 900)
    assert accounts.use_totp_step("alice", 8)
    record = accounts.get_totp("alice")
    assert record is not None
    assert record.locked_until == 14.0 + 900  # a lock is lifted by time or by an admin


def test_failures_outside_the_window_start_a_new_series(accounts: AccountStore) -> None:
    accounts.set_totp("alice", b"sealed", 1.0)
    assert not accounts.record_totp_failure("alice", 100.0, 60, 3, 900)
    assert not accounts.record_totp_failure("alice", 130.0, 60, 3, 900)
    assert accounts.record_totp_failure("alice", 160.0, 60, 3, 900)  # 60 s: same series
    record = accounts.get_totp("alice")
    assert record is not None
    assert record.locked_until == 160.0 + 900
    assert (record.failures, record.first_failure_at) == (0, None)  # a new series begins
    assert accounts.clear_totp_lock("alice")
    assert not accounts.record_totp_failure("alice", 200.0, 60, 3, 900)
    assert not accounts.record_totp_failure("alice", 260.5, 60, 3, 900)  # > 60 s: restarted
    assert not accounts.record_totp_failure("alice", 261.0, 60, 3, 900)
    record = accounts.get_totp("alice")
    assert record is not None
    assert (record.failures, record.first_failure_at, record.locked_until) == (2, 260.5, None)


# -- devices ---------------------------------------------------------------------------


def test_a_device_that_proved_a_code_is_trusted_for_it(accounts: AccountStore) -> None:
    pending = accounts.add_pending_device(KEY, 1.0, "192.0.2.5")
    trusted = accounts.trust_device(KEY, 2.0, 1000.0, "192.0.2.6", b"s" * 32)
    assert trusted.id == pending.id  # the same device, now trusted
    assert (trusted.status, trusted.trusted_until, trusted.secret) == ("trusted", 1000.0, b"s" * 32)
    assert (trusted.bound_address, trusted.split_code) == (None, True)
    assert (trusted.created_at, trusted.last_seen_at, trusted.last_address) == (
        1.0,
        2.0,
        "192.0.2.6",
    )
    assert trusted.trusted_at(999.0)
    assert not trusted.trusted_at(1000.0)  # expired
    assert accounts.find_device(KEY) == trusted
    assert accounts.get_device("alice", trusted.id) == trusted
    assert accounts.get_device("bob", trusted.id) is None
    # A pending login from it later changes nothing but when it was last seen.
    again = accounts.add_pending_device(KEY, 3.0, "192.0.2.7")
    assert again == dataclasses.replace(trusted, last_seen_at=3.0, last_address="192.0.2.7")


def test_a_new_device_proving_a_code_is_created_trusted(accounts: AccountStore) -> None:
    device = accounts.trust_device(KEY, 5.0, 50.0, "192.0.2.9", b"c" * 32)
    assert (device.status, device.created_at, device.secret) == ("trusted", 5.0, b"c" * 32)
    assert accounts.get_user("alice") is not None
    assert [d.id for d in accounts.list_devices("alice")] == [device.id]


def test_approval_binds_the_device_to_its_last_address(accounts: AccountStore) -> None:
    coded = accounts.trust_device(KEY, 1.0, 1000.0, "192.0.2.6", b"s" * 32)
    accounts.record_device_use(coded.id, 2.0, "192.0.2.8", None)
    assert accounts.approve_device("alice", coded.id, 500.0)
    approved = accounts.get_device("alice", coded.id)
    assert approved is not None
    assert (approved.status, approved.trusted_until) == ("trusted", 500.0)
    assert (approved.secret, approved.bound_address) == (None, "192.0.2.8")
    assert approved.trusted_at(499.0)
    assert not accounts.approve_device("bob", coded.id, 500.0)  # not bob's device
    assert not accounts.approve_device("alice", "no-such-id", 500.0)
    # Proving a code again binds it to the code and no longer to the address.
    recoded = accounts.trust_device(KEY, 3.0, 2000.0, "192.0.2.9", b"t" * 32)
    assert (recoded.id, recoded.secret, recoded.bound_address) == (coded.id, b"t" * 32, None)


def test_a_revoked_device_is_gone(accounts: AccountStore) -> None:
    device = accounts.trust_device(KEY, 1.0, 1000.0, "192.0.2.6", b"s" * 32)
    assert not accounts.revoke_device("bob", device.id)  # another account's
    assert accounts.revoke_device("alice", device.id)
    assert accounts.find_device(KEY) is None
    assert accounts.get_device("alice", device.id) is None
    assert accounts.list_devices("alice") == []
    accounts.record_device_use(device.id, 2.0, "192.0.2.7", True)  # ignored
    assert accounts.list_devices("alice") == []
    # A login from it afterwards starts over: pending, no trust.
    pending = accounts.add_pending_device(KEY, 3.0, "192.0.2.7")
    assert (pending.status, pending.secret, pending.trusted_at(3.0)) == ("pending", None, False)


def test_device_use_is_recorded(accounts: AccountStore) -> None:
    device = accounts.trust_device(KEY, 1.0, 1000.0, "192.0.2.6", b"s" * 32)
    accounts.record_device_use(device.id, 2.0, "192.0.2.7", False)
    used = accounts.find_device(KEY)
    assert used is not None
    assert (used.last_seen_at, used.last_address, used.split_code) == (2.0, "192.0.2.7", False)
    accounts.record_device_use(device.id, 3.0, "192.0.2.8", None)  # split_code unchanged
    used = accounts.find_device(KEY)
    assert used is not None
    assert (used.last_seen_at, used.last_address, used.split_code) == (3.0, "192.0.2.8", False)
    assert (used.trusted_until, used.secret) == (1000.0, b"s" * 32)


def test_devices_are_listed_oldest_first(accounts: AccountStore) -> None:
    keys = [DeviceKey("alice", f"198.51.100.{i}/32", "c", str(i)) for i in range(3)]
    accounts.add_pending_device(keys[2], 1.0, "198.51.100.2")
    accounts.trust_device(keys[0], 2.0, 100.0, "198.51.100.0", b"s" * 32)
    accounts.add_pending_device(keys[1], 3.0, "198.51.100.1")
    assert [d.client_version for d in accounts.list_devices("alice")] == ["2", "0", "1"]
    assert accounts.list_devices("bob") == []


# -- notices ---------------------------------------------------------------------------


def test_a_notice_is_claimed_once_per_interval_per_account_and_kind(
    accounts: AccountStore,
) -> None:
    assert accounts.claim_notice("alice", "lockout", 100.0, 60.0)
    assert not accounts.claim_notice("alice", "lockout", 159.9, 60.0)
    assert accounts.claim_notice("bob", "lockout", 120.0, 60.0)  # another account
    assert accounts.claim_notice("alice", "new_device", 120.0, 60.0)  # another kind
    assert accounts.claim_notice("alice", "lockout", 160.0, 60.0)  # exactly one interval later
    assert not accounts.claim_notice("alice", "lockout", 200.0, 60.0)  # counted from 160


# -- batches and handles ---------------------------------------------------------------


def test_a_batch_is_all_or_nothing(accounts: AccountStore) -> None:
    class Refused(Exception):
        pass

    def login_then_fail() -> None:
        with accounts.batch():
            accounts.record_login("alice", 1.0, "192.0.2.1", "password")
            assert accounts.get_user("alice") is not None  # a read sees the batch's writes
            raise Refused

    with pytest.raises(Refused):
        login_then_fail()
    assert accounts.get_user("alice") is None
    with accounts.batch():
        accounts.record_login("alice", 1.0, "192.0.2.1", "password")
        with accounts.batch():
            accounts.record_login("bob", 2.0, "192.0.2.2", "password")
    assert [u.name for u in accounts.list_users()] == ["alice", "bob"]


def test_a_second_handle_sees_the_same_state(account_backend: Backend[AccountStore]) -> None:
    """Two handles (two gateway nodes) on one store read each other's writes."""
    one, two = account_backend.open(), account_backend.open()
    record = one.add_app_password("alice", "phone", b"a" * 32, 1.0)
    assert two.find_app_password("alice", b"a" * 32) == record
    one.set_totp("alice", b"sealed", 1.0)
    assert two.use_totp_step("alice", 5)
    assert not one.use_totp_step("alice", 5)
    device = two.trust_device(KEY, 1.0, 100.0, "192.0.2.1", b"s" * 32)
    assert one.find_device(KEY) == device
    assert one.claim_notice("alice", "lockout", 1.0, 60.0)
    assert not two.claim_notice("alice", "lockout", 2.0, 60.0)
    assert two.revoke_app_password("alice", record.id)
    assert one.find_app_password("alice", b"a" * 32) is None

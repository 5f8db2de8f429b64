"""Concurrent writers for test_concurrent_writers.py: the operations they race
with, and the loop that runs one racer in a thread or in a process of its own
(top-level functions, so that a spawned process can unpickle them)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from multiprocessing.queues import Queue
from typing import Any, Protocol

from imapguard.defense.counters import CounterStore
from imapguard.state.accounts import AccountStore, AppPasswordLimit
from imapguard.state.portal import PortalStore

# How long a racer waits for the others at a round's start before the test fails.
BARRIER_TIMEOUT = 60.0


class Barrier(Protocol):
    def wait(self, timeout: float | None = None) -> int: ...


Operation = Callable[[Any, int], Any]


def increment(store: CounterStore, round_: int) -> int:
    """Everybody adds 1 to one counter bucket: the check-and-increment."""
    return store.bucket_incr("race", 7, 1, 1e12, 0.0)


def swap(store: CounterStore, round_: int) -> bool:
    """Everybody moves the value from the last round's to this round's."""
    expected = None if round_ == 0 else str(round_ - 1)
    return store.value_swap("race", expected, str(round_), None, 0.0)


def use_step(store: AccountStore, round_: int) -> bool:
    """Everybody presents the same code (this round's time step)."""
    return store.use_totp_step("alice", round_ + 1)


def fail(store: AccountStore, round_: int, *, racers: int) -> bool:
    """Everybody types a wrong code; every `racers` failures lock codes once."""
    return store.record_totp_failure("alice", 10.0 + round_, 60.0, racers, 900.0)


def claim(store: AccountStore, round_: int) -> bool:
    """Everybody wants to tell alice of a lockout, one interval after the last round."""
    return store.claim_notice("alice", "lockout", 100.0 * round_, 60.0)


def digest(round_: int) -> bytes:
    """This round's invitation, recovery code or credential."""
    return round_.to_bytes(32, "big")


def use_invite(store: PortalStore, round_: int) -> bool:
    """Everybody follows this round's invitation link (of account user<round>)."""
    return store.use_invite(digest(round_), f"user{round_}", 2.0)


def use_recovery_code(store: PortalStore, round_: int) -> bool:
    """Everybody types this round's account's recovery code."""
    return store.use_recovery_code(f"user{round_}", digest(round_), 2.0)


def use_passkey(store: PortalStore, round_: int) -> bool:
    """Everybody presents one passkey's signature with this round's counter."""
    return store.use_passkey(b"credential", round_ + 1, 2.0)


def user_handle(store: PortalStore, round_: int) -> bytes:
    """Everybody asks for this round's account's user handle, offering its own."""
    return store.user_handle(f"user{round_}", secrets.token_bytes(32), 1.0)


def add_passkey(store: PortalStore, round_: int) -> bool:
    """Everybody registers this round's credential to an account of its own."""
    return (
        store.add_passkey(f"user{secrets.token_hex(8)}", digest(round_), b"cose", 0, "key", "", 1.0)
        is not None
    )


def add_passkeys(store: PortalStore, round_: int) -> bool:
    """Everybody registers a credential of its own to bob, past his limit."""
    return store.add_passkey("bob", secrets.token_bytes(16), b"cose", 0, "key", "", 1.0) is not None


# The app passwords the racers may give alice (the portal's limit is 50; fewer
# keep the race short while most rounds still run into it).
APP_PASSWORD_LIMIT = 20


def add_app_passwords(store: AccountStore, round_: int) -> bool:
    """Everybody creates an app password of its own for alice, past her limit."""
    try:
        store.add_app_password(
            "alice", "race", secrets.token_bytes(32), 1.0, max_count=APP_PASSWORD_LIMIT
        )
    except AppPasswordLimit:
        return False
    return True


def give_factors(store: PortalStore, rounds: int) -> None:
    """For each round an account with a TOTP and one passkey (mixed<round>) and
    one with two passkeys (pair<round>)."""
    for round_ in range(rounds):
        store.set_totp(f"mixed{round_}", b"sealed", 1.0)
        store.add_passkey(f"mixed{round_}", digest(round_), b"cose", 0, "key", "", 1.0)
        for n in (1, 2):
            credential = digest(rounds * n + round_)
            store.add_passkey(f"pair{round_}", credential, b"cose", 0, "key", "", 1.0)


def remove_totp(store: PortalStore, round_: int) -> bool:
    """The owner removes this round's mixed account's TOTP."""
    return store.remove_second_factor(f"mixed{round_}", "totp") == "removed"


def remove_passkey(store: PortalStore, round_: int, *, account: str, index: int) -> bool:
    """The owner (another tab) removes the passkey at `index` of this round's
    account, as listed when the page was drawn."""
    listed = store.list_passkeys(f"{account}{round_}")
    if index >= len(listed):
        return False  # gone before this tab listed it
    return store.remove_second_factor(f"{account}{round_}", f"passkey:{listed[index].id}") == (
        "removed"
    )


def race(store: Any, operation: Operation, rounds: int, barrier: Barrier) -> list[Any]:
    """Each round: wait until every racer is at the line, then run the operation once."""
    results = []
    for round_ in range(rounds):
        barrier.wait(BARRIER_TIMEOUT)
        results.append(operation(store, round_))
    return results


def race_in_process(
    opener: Callable[[str], Any],
    address: str,
    close: Callable[[Any], None],
    operation: Operation,
    rounds: int,
    barrier: Barrier,
    results: Queue[tuple[int, list[Any] | str]],
    index: int,
) -> None:
    """A racer in a process of its own, with its own handle on the store. Sends
    (index, results), or (index, the error) if it failed."""
    try:
        store = opener(address)
        try:
            results.put((index, race(store, operation, rounds, barrier)))
        finally:
            close(store)
    except BaseException as exc:
        results.put((index, f"{type(exc).__name__}: {exc}"))
        raise


def claim_meta(store: AccountStore, round_: int) -> bytes:
    """Everybody claims this round's name with a value of its own: the first wins."""
    return store.claim_meta(f"race-{round_}", secrets.token_bytes(16))

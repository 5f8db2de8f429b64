"""Concurrent writers on one store: no lost update, no double acceptance.

Several racers run the same write at the same moment, round after round (a
barrier lines them up before each round): threads sharing one handle (the
gateway's store worker threads), threads with a handle each (several nodes),
and processes with a handle each, on every implementation that other processes
can reach. The store's own atomicity is the only thing keeping them apart: one
use of a one-time code, an invitation or a passkey counter, one user handle, one
holder of a credential, no account past its passkey or app password limit, no
account left without a second factor by removals at once."""

from __future__ import annotations

import functools
import multiprocessing
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pytest

from imapguard.defense.counters import CounterStore
from imapguard.state.accounts import AccountStore
from imapguard.state.portal import MAX_PASSKEYS, PortalStore
from tests.conformance import racers
from tests.conformance.conftest import Backend

THREADS = 4
PROCESSES = 3
ROUNDS = 30

# Racer processes fork from a server process that imported the stores once (a
# fresh single-threaded interpreter, not a fork of this one with its threads and
# connections): each racer starts in milliseconds instead of importing psycopg,
# redis and imapguard anew, as the "spawn" start method made every one of them do.
_PROCESS_CONTEXT = multiprocessing.get_context("forkserver")
_PROCESS_CONTEXT.set_forkserver_preload(["tests.conformance.racers", "tests.conformance.conftest"])

Sharing = Literal["one handle", "a handle each"]


@pytest.fixture(params=["one handle", "a handle each"])
def sharing(request: pytest.FixtureRequest) -> Sharing:
    sharing: Sharing = request.param
    return sharing


def _each(operation: racers.Operation | list[racers.Operation], racers_: int) -> list[Any]:
    """One operation for every racer, or racer i runs operations[i % len]."""
    ops = operation if isinstance(operation, list) else [operation]
    return [ops[i % len(ops)] for i in range(racers_)]


def race_threads(
    backend: Backend[Any],
    sharing: Sharing,
    operation: racers.Operation | list[racers.Operation],
) -> list[list[Any]]:
    """Each thread's results, round by round."""
    shared = backend.open()
    handles = [shared if sharing == "one handle" else backend.open() for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [
            pool.submit(racers.race, handle, op, ROUNDS, barrier)
            for handle, op in zip(handles, _each(operation, THREADS), strict=True)
        ]
        return [future.result() for future in futures]


def race_processes(
    backend: Backend[Any], operation: racers.Operation | list[racers.Operation]
) -> list[list[Any]]:
    """Each process's results, round by round; each process opens its own handle."""
    backend.open()  # the store exists (a new SQLite file: created) before the race
    context = _PROCESS_CONTEXT
    barrier = context.Barrier(PROCESSES)
    results: Any = context.Queue()
    processes = [
        context.Process(
            target=racers.race_in_process,
            args=(
                backend.opener,
                backend.address,
                backend.close,
                op,
                ROUNDS,
                barrier,
                results,
                index,
            ),
        )
        for index, op in enumerate(_each(operation, PROCESSES))
    ]
    for process in processes:
        process.start()
    try:
        received = dict(results.get(timeout=90) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
    failed = {i: r for i, r in received.items() if isinstance(r, str)}
    assert not failed, failed
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    return [received[i] for i in range(PROCESSES)]


def one_winner_per_round(results: list[list[bool]]) -> list[int]:
    """How many racers won each round."""
    return [sum(round_) for round_ in zip(*results, strict=True)]


# -- threads ---------------------------------------------------------------------------


def test_threads_increment_without_losing_a_count(
    counter_backend: Backend[CounterStore], sharing: Sharing
) -> None:
    results = race_threads(counter_backend, sharing, racers.increment)
    values = sorted(v for thread in results for v in thread)
    assert values == list(range(1, THREADS * ROUNDS + 1))  # each new value seen once
    assert counter_backend.open().bucket_counts("race", range(7, 8), 0.0) == [THREADS * ROUNDS]


def test_threads_swap_a_value_once_per_round(
    counter_backend: Backend[CounterStore], sharing: Sharing
) -> None:
    results = race_threads(counter_backend, sharing, racers.swap)
    assert one_winner_per_round(results) == [1] * ROUNDS
    assert counter_backend.open().values_get(["race"], 0.0) == {"race": str(ROUNDS - 1)}


def test_threads_accept_each_code_once(
    account_backend: Backend[AccountStore], sharing: Sharing
) -> None:
    account_backend.open().set_totp("alice", b"sealed", 1.0)
    results = race_threads(account_backend, sharing, racers.use_step)
    assert one_winner_per_round(results) == [1] * ROUNDS
    record = account_backend.open().get_totp("alice")
    assert record is not None
    assert record.last_step == ROUNDS


def test_threads_lock_codes_once_per_series_of_failures(
    account_backend: Backend[AccountStore], sharing: Sharing
) -> None:
    account_backend.open().set_totp("alice", b"sealed", 1.0)
    operation = functools.partial(racers.fail, racers=THREADS)
    results = race_threads(account_backend, sharing, operation)
    # THREADS failures a round, a lock every THREADS failures: one lock a round.
    assert one_winner_per_round(results) == [1] * ROUNDS


def test_threads_claim_a_notice_once_per_interval(
    account_backend: Backend[AccountStore], sharing: Sharing
) -> None:
    results = race_threads(account_backend, sharing, racers.claim)
    assert one_winner_per_round(results) == [1] * ROUNDS


# -- processes -------------------------------------------------------------------------


def test_processes_increment_without_losing_a_count(
    shared_counter_backend: Backend[CounterStore],
) -> None:
    results = race_processes(shared_counter_backend, racers.increment)
    values = Counter(v for process in results for v in process)
    assert sorted(values) == list(range(1, PROCESSES * ROUNDS + 1))
    assert set(values.values()) == {1}
    store = shared_counter_backend.open()
    assert store.bucket_counts("race", range(7, 8), 0.0) == [PROCESSES * ROUNDS]


def test_processes_accept_each_code_once(shared_account_backend: Backend[AccountStore]) -> None:
    shared_account_backend.open().set_totp("alice", b"sealed", 1.0)
    results = race_processes(shared_account_backend, racers.use_step)
    assert one_winner_per_round(results) == [1] * ROUNDS


def test_processes_claim_a_notice_once_per_interval(
    shared_account_backend: Backend[AccountStore],
) -> None:
    results = race_processes(shared_account_backend, racers.claim)
    assert one_winner_per_round(results) == [1] * ROUNDS


# -- the portal's check-and-sets -------------------------------------------------------


def prepare(store: PortalStore) -> None:
    """An invitation and a recovery code for a new account each round (using one
    invitation voids its account's others), and one passkey counting from 0."""
    for round_ in range(ROUNDS):
        store.add_invite(f"user{round_}", racers.digest(round_), 1.0, 100.0)
        store.set_recovery_codes(f"user{round_}", [racers.digest(round_)], 1.0)
    assert store.add_passkey("alice", b"credential", b"cose", 0, "key", "", 1.0) is not None


ONE_WINNER = [racers.use_invite, racers.use_recovery_code, racers.use_passkey, racers.add_passkey]


@pytest.mark.parametrize("operation", ONE_WINNER, ids=lambda op: op.__name__)
def test_threads_use_each_once(
    portal_backend: Backend[PortalStore], sharing: Sharing, operation: racers.Operation
) -> None:
    prepare(portal_backend.open())
    results = race_threads(portal_backend, sharing, operation)
    assert one_winner_per_round(results) == [1] * ROUNDS


@pytest.mark.parametrize("operation", ONE_WINNER, ids=lambda op: op.__name__)
def test_processes_use_each_once(
    shared_portal_backend: Backend[PortalStore], operation: racers.Operation
) -> None:
    prepare(shared_portal_backend.open())
    results = race_processes(shared_portal_backend, operation)
    assert one_winner_per_round(results) == [1] * ROUNDS
    store = shared_portal_backend.open()
    passkey = store.find_passkey(b"credential")
    assert passkey is not None
    assert passkey.sign_count == (ROUNDS if operation is racers.use_passkey else 0)


def test_processes_agree_on_one_user_handle(
    shared_portal_backend: Backend[PortalStore],
) -> None:
    results = race_processes(shared_portal_backend, racers.user_handle)
    store = shared_portal_backend.open()
    for round_, handles in enumerate(zip(*results, strict=True)):
        assert len(set(handles)) == 1  # the first caller's, for every caller
        assert store.user_for_handle(handles[0]) == f"user{round_}"


def test_processes_keep_an_account_within_its_passkey_limit(
    shared_portal_backend: Backend[PortalStore],
) -> None:
    results = race_processes(shared_portal_backend, racers.add_passkeys)
    assert sum(added for process in results for added in process) == MAX_PASSKEYS
    assert len(shared_portal_backend.open().list_passkeys("bob")) == MAX_PASSKEYS


def test_threads_keep_an_account_within_its_app_password_limit(
    account_backend: Backend[AccountStore], sharing: Sharing
) -> None:
    """Several tabs (or a script with a stolen session) create app passwords at
    once: each add counts and inserts in one step, so none goes past the limit."""
    results = race_threads(account_backend, sharing, racers.add_app_passwords)
    assert sum(added for thread in results for added in thread) == racers.APP_PASSWORD_LIMIT
    held = account_backend.open().list_app_passwords("alice")
    assert len(held) == racers.APP_PASSWORD_LIMIT


def test_processes_keep_an_account_within_its_app_password_limit(
    shared_account_backend: Backend[AccountStore],
) -> None:
    results = race_processes(shared_account_backend, racers.add_app_passwords)
    assert sum(added for process in results for added in process) == racers.APP_PASSWORD_LIMIT
    held = shared_account_backend.open().list_app_passwords("alice")
    assert len(held) == racers.APP_PASSWORD_LIMIT


# -- the last second factor ------------------------------------------------------------

# Two tabs of the owner (or the owner and a thief with a fresh session) remove at once.
REMOVALS: dict[str, list[racers.Operation]] = {
    "the totp and the last passkey": [
        racers.remove_totp,
        functools.partial(racers.remove_passkey, account="mixed", index=0),
    ],
    "two passkeys": [
        functools.partial(racers.remove_passkey, account="pair", index=0),
        functools.partial(racers.remove_passkey, account="pair", index=1),
    ],
}


def factors_left(store: PortalStore, account: str) -> int:
    return int(store.get_totp(account) is not None) + len(store.list_passkeys(account))


@pytest.mark.parametrize("removals", sorted(REMOVALS))
def test_threads_removing_factors_at_once_leave_one(
    portal_backend: Backend[PortalStore], sharing: Sharing, removals: str
) -> None:
    store = portal_backend.open()
    racers.give_factors(store, ROUNDS)
    results = race_threads(portal_backend, sharing, REMOVALS[removals])
    assert one_winner_per_round(results) == [1] * ROUNDS
    account = "mixed" if removals.startswith("the totp") else "pair"
    assert [factors_left(store, f"{account}{r}") for r in range(ROUNDS)] == [1] * ROUNDS


@pytest.mark.parametrize("removals", sorted(REMOVALS))
def test_processes_removing_factors_at_once_leave_one(
    shared_portal_backend: Backend[PortalStore], removals: str
) -> None:
    store = shared_portal_backend.open()
    racers.give_factors(store, ROUNDS)
    results = race_processes(shared_portal_backend, REMOVALS[removals])
    assert one_winner_per_round(results) == [1] * ROUNDS
    account = "mixed" if removals.startswith("the totp") else "pair"
    assert [factors_left(store, f"{account}{r}") for r in range(ROUNDS)] == [1] * ROUNDS

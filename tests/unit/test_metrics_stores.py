"""Store latency and errors: the timing proxy answers exactly like the store it
wraps (a real SQLite store, the defense on it), times each operation under a
label from a fixed set, and counts the calls a store that is unavailable fails.

Its cost was measured by hand (timeit, a point read of the SQLite reader and a
MemoryCounterStore read): about 3 µs per call in one process, 5 to 10 µs with
several workers (prometheus-client's multiprocess values ask for the pid on
every write); a login makes about nine store calls. What the tests hold is that
the wrapper is built once per method, not per call."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.compose.observing import timed_counters, timed_store
from imapguard.defense import Defense, DefenseSettings, Fingerprinter, MemoryCounterStore
from imapguard.defense.counters import CounterStore
from imapguard.defense.model import FailureKind
from imapguard.errors import StateUnavailable
from imapguard.metrics import Metrics
from imapguard.metrics.registry import STORE_OPERATIONS, STORES
from imapguard.metrics.stores import account_operation, counter_operation
from imapguard.secret import Secret
from imapguard.state.accounts import AppPasswordLimit
from imapguard.state.sqlite import open_reader, open_store

SECONDS = "imapguard_store_operation_duration_seconds_count"
ERRORS = "imapguard_store_errors_total"


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_every_protocol_method_has_an_operation_from_the_fixed_set() -> None:
    counter_methods = [
        name
        for name in vars(CounterStore)
        if not name.startswith("_") and callable(getattr(CounterStore, name))
    ]
    assert len(counter_methods) > 15
    for name in counter_methods:
        if name != "batch":
            assert counter_operation(name) in STORE_OPERATIONS, name
    assert counter_operation("batch") is None
    assert account_operation("get_user") == "read"
    assert account_operation("find_app_password") == "read"
    assert account_operation("record_login") == "write"
    assert account_operation("batch") is None
    assert account_operation("close") is None
    assert set(STORES) == {"accounts", "counters"}


def test_the_account_store_answers_as_before_and_each_call_is_timed(tmp_path: Path) -> None:
    m = Metrics()
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    timed = timed_store(store, m)
    with timed.batch():  # passes through: one transaction, untimed itself
        timed.ensure_user("alice", 1.0)
        timed.ensure_user("bob", 1.0)
    assert timed.get_user("alice") is not None
    assert timed.get_user("carol") is None
    assert [u.name for u in timed.list_users()] == ["alice", "bob"]
    assert _value(m, SECONDS, store="accounts", operation="write") == 2
    assert _value(m, SECONDS, store="accounts", operation="read") == 3
    # Built once: the next lookup is a plain attribute of the proxy.
    assert "get_user" in vars(timed)
    assert timed.get_user is timed.get_user
    timed.close()
    assert timed_store(store, None) is store  # without [metrics], the store itself


def test_an_unavailable_store_is_counted_and_still_raised(tmp_path: Path) -> None:
    m = Metrics()
    url = f"sqlite:///{tmp_path}/state.db"
    writer = open_store(url)
    reader = timed_counters(open_reader(url), m)  # read-only: its writes fail
    with pytest.raises(StateUnavailable):
        reader.value_put("posture", "normal", None)
    assert _value(m, ERRORS, store="counters", operation="write") == 1
    assert _value(m, SECONDS, store="counters", operation="write") == 1  # failed ones too
    assert reader.values_get(["posture"], 0.0) == {}
    assert _value(m, ERRORS, store="counters", operation="read") == 0
    writer.close()
    # A closed store fails every call: each is counted.
    accounts = timed_store(open_store(url), m)
    accounts.close()
    with pytest.raises(StateUnavailable):
        accounts.get_user("alice")
    assert _value(m, ERRORS, store="accounts", operation="read") == 1


def test_a_refusal_by_the_store_s_rules_is_not_a_store_error(tmp_path: Path) -> None:
    """Only StateUnavailable says the store failed; AppPasswordLimit is an answer."""
    m = Metrics()
    store = timed_store(open_store(f"sqlite:///{tmp_path}/state.db"), m)
    store.ensure_user("alice", 1.0)
    store.add_app_password("alice", "phone", b"d" * 32, 1.0, max_count=1)
    with pytest.raises(AppPasswordLimit):
        store.add_app_password("alice", "laptop", b"e" * 32, 1.0, max_count=1)
    assert _value(m, SECONDS, store="accounts", operation="write") == 3
    assert _value(m, ERRORS, store="accounts", operation="write") == 0
    store.close()


def test_the_defense_runs_on_timed_counters_and_its_precheck_is_a_lookup() -> None:
    m = Metrics()
    counters = timed_counters(MemoryCounterStore(), m)
    defense = Defense(DefenseSettings(), counters, fingerprints=Fingerprinter(Secret(b"k" * 32)))
    attempt = defense.attempt(
        "192.0.2.7", "alice", Secret(b"guess"), method="password", listener="l"
    )
    verdict = defense.precheck(attempt)
    assert _value(m, SECONDS, store="counters", operation="lookup") == 1
    for _ in range(3):
        defense.record_failure(attempt, FailureKind.CREDENTIAL, verdict.familiar)
    assert _value(m, SECONDS, store="counters", operation="write") >= 3
    # The failures were remembered through the proxy: the same as without it.
    plain = Defense(
        DefenseSettings(), MemoryCounterStore(), fingerprints=Fingerprinter(Secret(b"k" * 32))
    )
    for _ in range(3):
        plain.record_failure(attempt, FailureKind.CREDENTIAL, verdict.familiar)
    assert defense.precheck(attempt) == plain.precheck(attempt)

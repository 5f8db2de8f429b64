"""The gate's turns (`auth/gate.py`) on a real SQLite counter store shared by two
gates, as two worker processes share it: the precheck runs in the hop that takes
the turn, a left turn is given back in a batch, a login of the same pair in the
same process takes it over at once, and the old turn's queued release never frees
the turn the next login holds (else a guess could pass the precheck beside it).
Across processes the real thing is `test_cluster_redis.py`'s 40 simultaneous
guesses over two nodes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imapguard.auth import gate as gate_module
from imapguard.auth.gate import RELEASE_DELAY, Gate
from imapguard.defense import Defense, DefenseSettings, Fingerprinter
from imapguard.defense.engine import Attempt
from imapguard.errors import StateUnavailable
from imapguard.secret import Secret
from imapguard.state.sqlite.store import open_store
from imapguard.state.sqlite.turns import FileTurns


def _defense(path: Path) -> Defense:
    store = open_store(f"sqlite:///{path}/state.db")
    return Defense(DefenseSettings(), store, fingerprints=Fingerprinter(Secret(b"k" * 32)))


def _attempt(defense: Defense, user: str = "alice") -> Attempt:
    return defense.attempt("192.0.2.7", user, Secret(b"guess"), method="login", listener="imaps")


def test_the_precheck_runs_on_the_store_thread_in_the_hop_that_takes_the_turn(
    tmp_path: Path,
) -> None:
    defense = _defense(tmp_path)
    calls: list[str] = []

    def then(attempt: Attempt) -> str:
        calls.append(threading.current_thread().name)
        return "verdict"

    async def main() -> str:
        with ThreadPoolExecutor(1, thread_name_prefix="store") as executor:
            gate = Gate(defense, executor)
            turn = gate.turn()
            try:
                return await turn.enter(_attempt(defense), then)
            finally:
                turn.leave()
                await gate.releases.flush()

    assert asyncio.run(main()) == "verdict"
    assert len(calls) == 1
    assert calls[0].startswith("store")


def test_a_guess_on_another_process_waits_until_the_left_turn_is_given_back(
    tmp_path: Path,
) -> None:
    """Process A's login left its turn (release queued); process B's login of the
    same pair cannot take it until A's batch gave it back, then it can."""
    a_defense, b_defense = _defense(tmp_path), _defense(tmp_path)

    async def main() -> None:
        with ThreadPoolExecutor(1) as ex_a, ThreadPoolExecutor(1) as ex_b:
            a, b = Gate(a_defense, ex_a), Gate(b_defense, ex_b)
            b_turn = b.turn()
            turn = a.turn()
            await turn.enter(_attempt(a_defense), lambda _: None)
            turn.leave()
            # Still held in the store: B's compare-and-set fails until the batch.
            assert not b_defense.gate_enter(_attempt(b_defense), "probe")
            await asyncio.wait_for(b_turn.enter(_attempt(b_defense), lambda _: None), 5)
            # B holds it now: A's next login must wait for B, not take it over.
            assert not a_defense.gate_enter(_attempt(a_defense), "probe")
            b_turn.leave()
            await b.releases.flush()
            await a.releases.flush()

    asyncio.run(main())


def test_the_next_login_of_the_pair_takes_the_turn_over_and_the_old_release_frees_nothing(
    tmp_path: Path,
) -> None:
    """Two guesses of one pair in one process, back to back: the second takes the
    turn over from the first's token without waiting for the release batch, and
    when that batch runs, the first's release leaves the second's turn held: a
    third guess from another process still cannot enter beside it."""
    defense, other = _defense(tmp_path), _defense(tmp_path)

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            pauses: list[float] = []

            async def pause(seconds: float) -> None:
                pauses.append(seconds)
                await asyncio.sleep(seconds)

            gate = Gate(defense, executor, pause)
            first = gate.turn()
            await first.enter(_attempt(defense), lambda _: None)
            first.leave()
            second = gate.turn()
            await second.enter(_attempt(defense), lambda _: None)
            assert pauses == []  # taken over, not waited for
            await gate.releases.flush()  # the first's release ran
            await asyncio.sleep(RELEASE_DELAY * 3)
            assert not other.gate_enter(_attempt(other), "third")
            second.leave()
            await gate.releases.flush()
            assert other.gate_enter(_attempt(other), "third")

    asyncio.run(main())


def test_turns_of_other_pairs_do_not_wait_for_each_other(tmp_path: Path) -> None:
    defense = _defense(tmp_path)

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            gate = Gate(defense, executor)
            held = gate.turn()
            await held.enter(_attempt(defense, "alice"), lambda _: None)
            other = gate.turn()
            await asyncio.wait_for(other.enter(_attempt(defense, "bob"), lambda _: None), 1)
            other.leave()
            held.leave()
            await gate.releases.flush()
            assert gate._held == {}
            assert gate._queues == {}

    asyncio.run(main())


def test_a_turn_left_past_the_takeover_cap_is_still_given_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `MAX_HELD` remembered turns (a flood while the store stalled), a left
    turn is not remembered for a takeover, but its release must still run: a turn
    never given back would stop the pair's logins everywhere for GATE_HOLD."""
    monkeypatch.setattr(gate_module, "MAX_HELD", 1)
    defense, other = _defense(tmp_path), _defense(tmp_path)

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            gate = Gate(defense, executor)
            for user in ("alice", "bob"):
                turn = gate.turn()
                await turn.enter(_attempt(defense, user), lambda _: None)
                turn.leave()
            assert list(gate._held) == ["192.0.2.7|alice"]  # bob's was not remembered
            await gate.releases.flush()
            assert gate._held == {}
            assert other.gate_enter(_attempt(other, "alice"), "next")
            assert other.gate_enter(_attempt(other, "bob"), "next")

    asyncio.run(main())


# -- turns on one machine: byte-range locks beside a SQLite state -----------------------

_HOLDER = """
import sys, time
from imapguard.state.sqlite.turns import FileTurns
turns = FileTurns.for_file(sys.argv[1], b"k" * 32)
assert turns.take(sys.argv[2])
print("held", flush=True)
time.sleep(60)
"""


def test_a_turn_held_by_another_process_waits_and_is_free_once_that_process_is_killed(
    tmp_path: Path,
) -> None:
    """Another worker holds the pair's turn: this one cannot take it (other pairs it
    can); the worker is killed (SIGKILL, no clean-up of its own) and the kernel has
    given the turn back at once, where a turn in the store would stay taken until
    it expired (`engine.GATE_HOLD`)."""
    path = str(tmp_path / "state.db-turns")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, path, "192.0.2.7|alice"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        turns = FileTurns.for_file(path, b"k" * 32)
        assert not turns.take("192.0.2.7|alice")
        assert turns.take("192.0.2.7|bob")
        turns.give_back("192.0.2.7|bob")
        holder.kill()
        holder.wait(10)
        assert turns.take("192.0.2.7|alice")
        turns.give_back("192.0.2.7|alice")
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_with_turns_on_one_machine_a_login_makes_no_hop_and_no_write(tmp_path: Path) -> None:
    """The precheck is read inline on the event loop (the embedded store's reads
    are), the counter store is not written, and a second login of the pair in
    this process, through another gate (a reload made a new one), waits for the
    first: the process's own holders are counted, not left to the kernel, which
    would grant a byte the process already holds."""
    defense = _defense(tmp_path)
    turns = FileTurns.for_file(str(tmp_path / "state.db-turns"), b"k" * 32)
    threads: list[str] = []

    def then(attempt: Attempt) -> str:
        threads.append(threading.current_thread().name)
        return "verdict"

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            gate = Gate(defense, executor, local=turns)
            turn = gate.turn()
            assert await turn.enter(_attempt(defense), then) == "verdict"
            assert threads == [threading.main_thread().name]
            assert defense.gate_enter(_attempt(defense), "store")  # never taken there
            second = Gate(defense, executor, local=turns).turn()
            async with asyncio.TaskGroup() as tg:
                waiting = tg.create_task(second.enter(_attempt(defense), then))
                await asyncio.sleep(0.1)
                assert not waiting.done()
                turn.leave()
            assert waiting.result() == "verdict"
            second.leave()
            assert turns._pairs == set()
            assert turns._bytes == {}

    asyncio.run(main())


def test_a_takeover_cancelled_before_it_reached_the_store_leaves_no_turn_taken(
    tmp_path: Path,
) -> None:
    """A login takes over the pair's left turn (its token) but is cancelled (the
    pre-auth timeout, under a flood that keeps the store thread busy) before its
    compare-and-set ran. The turn must still be given back: else every login of
    the pair, on every process, waits until it expires (GATE_HOLD, 2 minutes)."""
    defense, other = _defense(tmp_path), _defense(tmp_path)
    busy = threading.Event()

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            gate = Gate(defense, executor)
            first = gate.turn()
            await first.enter(_attempt(defense), lambda _: None)
            first.leave()  # its release is queued; the token is remembered
            executor.submit(busy.wait, 10)  # the store thread stalls
            second = gate.turn()
            async with asyncio.TaskGroup() as tg:
                taking = tg.create_task(second.enter(_attempt(defense), lambda _: None))
                await asyncio.sleep(0.05)  # it took the token over, its write waits
                taking.cancel()
            second.leave()
            busy.set()
            await gate.releases.flush()
            assert other.gate_enter(_attempt(other), "next")

    asyncio.run(main())


def test_a_turns_file_another_user_could_open_and_lock_is_refused(tmp_path: Path) -> None:
    """A lock file readable by others (or theirs): any of them could hold a read
    lock on all of it, and no login would ever get its turn. Refused, naming it."""
    path = tmp_path / "state.db-turns"
    path.touch(mode=0o644)
    path.chmod(0o644)
    with pytest.raises(StateUnavailable, match="mode 0600"):
        FileTurns(str(path), b"k" * 32)
    link = tmp_path / "elsewhere-turns"
    link.symlink_to(tmp_path / "target")
    with pytest.raises(StateUnavailable):
        FileTurns(str(link), b"k" * 32)  # not followed
    assert not (tmp_path / "target").exists()

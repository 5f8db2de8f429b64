"""auth/reads.py: where the login path reads its stores. With a read executor
(a networked store) every read of the IMAP chokepoint and the portal's sign-in
runs on that executor's threads, never on the event loop, the counter store's
on its own; without one (the embedded store) they run inline, with no thread
hop. The store is the real SQLite store behind a proxy that notes the thread of
each read."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from imapguard.auth.chokepoint import Authenticator, Outcome
from imapguard.auth.model import FactorSettings
from imapguard.auth.signin import TwoStepSignIn
from imapguard.defense import Defense, DefenseSettings, Fingerprinter
from imapguard.gateway.upstream import UpstreamSession
from imapguard.secret import Secret
from imapguard.state.sqlite.turns import FileTurns
from tests.unit import test_chokepoint_factors as base
from tests.unit.test_chokepoint_factors import KEY, PASSWORDS, SEAL, Env, attempt, ctx
from tests.unit.test_signin import portal_ctx

store = base.store
executor = base.executor
audit = base.audit
env = base.env

ACCOUNT_THREADS = "account-reads"
COUNTER_THREADS = "counter-reads"
# The store's methods that the login path reads with (the writes go to the
# store's own thread and are not this module's concern).
READS = frozenset(
    {
        "find_device",
        "get_totp",
        "find_app_password",
        "list_app_passwords",
        "list_devices",
        "get_user",
        "defense_lookup",
        "values_get",
    }
)


class Watched:
    """The store, noting which thread made each read (method -> thread names)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.threads: dict[str, set[str]] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in READS:
            return attr

        def read(*args: Any, **kwargs: Any) -> Any:
            self.threads.setdefault(name, set()).add(threading.current_thread().name)
            return attr(*args, **kwargs)

        return read


@pytest.fixture
def pools() -> Iterator[tuple[ThreadPoolExecutor, ThreadPoolExecutor]]:
    accounts = ThreadPoolExecutor(2, thread_name_prefix=ACCOUNT_THREADS)
    counters = ThreadPoolExecutor(2, thread_name_prefix=COUNTER_THREADS)
    yield accounts, counters
    accounts.shutdown()
    counters.shutdown()


def networked(
    env: Env,
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None,
    methods: tuple[str, ...] = ("app-password", "password+totp"),
    turns: FileTurns | None = None,
    **settings: Any,
) -> tuple[Authenticator[UpstreamSession], Watched]:
    """The chokepoint with a defense, reading through a watched reader, on
    `pools` (account reads, counter reads) or inline (None)."""
    reader = Watched(env.store)
    accounts, counters = pools if pools is not None else (None, None)
    auth: Authenticator[UpstreamSession] = Authenticator(
        methods=methods,
        store=env.store,
        store_executor=env.executor,
        app_password_key=KEY,
        upstream=env.upstream,
        audit=env.audit,
        failure_delay=0.0,
        failure_jitter=0.0,
        clock=env.clock,
        wall_clock=env.clock,
        sleep=env.clock.sleep,
        rng=random.Random(1),
        reader=reader,
        factors=FactorSettings(verified_cache_seconds=0),
        totp_key=SEAL,
        on_notice=lambda kind, user, c, device: env.notices.append((kind, user, device)),
        defense=Defense(
            DefenseSettings(**settings),
            env.store,
            env.clock,
            random.Random(3),
            fingerprints=Fingerprinter(Secret(KEY)),
            reader=reader,
        ),
        read_executor=accounts,
        counter_read_executor=counters,
        gate_turns=turns,
    )
    return auth, reader


def on(reader: Watched, method: str) -> set[str]:
    """The kinds of thread `method` was read on: account, counter, or the loop."""
    kinds = set()
    for name in reader.threads.get(method, set()):
        if name.startswith(ACCOUNT_THREADS):
            kinds.add("account")
        elif name.startswith(COUNTER_THREADS):
            kinds.add("counter")
        elif name == threading.main_thread().name:
            kinds.add("loop")
        else:
            kinds.add(name)
    return kinds


def store_thread(env: Env) -> str:
    """The name of the store's writer thread (`env.executor`'s one thread)."""
    name: str = env.executor.submit(lambda: threading.current_thread().name).result()
    return name


def off_the_loop(reader: Watched) -> None:
    loop = threading.main_thread().name
    assert all(loop not in names for names in reader.threads.values()), reader.threads


def two_step(env: Env, auth: Authenticator[UpstreamSession]) -> TwoStepSignIn[Any]:
    return TwoStepSignIn(
        auth,
        audit=env.audit,
        executor=env.executor,
        totp_key=SEAL,
        on_notice=lambda kind, user, c, device: env.notices.append((kind, user, device)),
        wall_clock=env.clock,
        sleep=env.clock.sleep,
    )


# -- the IMAP chokepoint ------------------------------------------------------------


@pytest.mark.asyncio
async def test_account_records_are_read_on_the_read_executor(env: Env, pools: Any) -> None:
    auth, reader = networked(env, pools)
    otp = env.enroll("alice")
    result = await attempt(auth, "alice", PASSWORDS["alice"] + otp.at(env.clock.now))
    assert result.outcome is Outcome.OK
    assert on(reader, "find_device") == on(reader, "get_totp") == {"account"}
    off_the_loop(reader)


@pytest.mark.asyncio
async def test_a_guess_is_prechecked_in_the_hop_that_takes_its_turn(env: Env, pools: Any) -> None:
    """A named account with a password takes the pair's turn at the gate
    (auth/gate.py) on the store's thread; its precheck is read there in the same
    hop, not in a second hop to the counter executor."""
    auth, reader = networked(env, pools)
    await attempt(auth, "alice", "a-guess")
    assert on(reader, "defense_lookup") == {store_thread(env)}
    off_the_loop(reader)


@pytest.mark.asyncio
async def test_an_app_password_is_looked_up_on_the_read_executor(env: Env, pools: Any) -> None:
    from tests.unit.test_chokepoint import _issue

    auth, reader = networked(env, pools)
    password = _issue(env.store, "alice")
    assert (await attempt(auth, "alice", password.reveal().decode())).outcome is Outcome.OK
    assert on(reader, "find_app_password") == {"account"}
    off_the_loop(reader)


@pytest.mark.asyncio
async def test_the_compromise_signal_reads_enrolment_on_the_read_executor(
    env: Env, pools: Any
) -> None:
    auth, reader = networked(env, pools, methods=("password+totp",))
    env.store.add_app_password("alice", "phone", b"d" * 32, 1.0)  # enrolled, no TOTP
    result = await attempt(auth, "alice", PASSWORDS["alice"])
    assert result.outcome is Outcome.MISSING_FACTOR
    assert on(reader, "list_app_passwords") == {"account"}
    off_the_loop(reader)


@pytest.mark.asyncio
async def test_a_lockout_owner_is_looked_up_on_the_read_executor(env: Env, pools: Any) -> None:
    auth, reader = networked(env, pools, account_lockout=2, pair_free=100, source_free=100)
    env.enroll("alice")  # a known account: its owner is told of the lockout
    for n in range(3):
        await attempt(auth, "alice", f"guess-{n}", ctx(f"198.51.100.{n + 1}"))
    assert ("lockout", "alice", None) in env.notices
    assert on(reader, "get_user") == {"account"}
    off_the_loop(reader)


# -- the portal's sign-in -------------------------------------------------------------


@pytest.mark.asyncio
async def test_portal_sign_in_reads_on_the_read_executors(env: Env, pools: Any) -> None:
    auth, reader = networked(env, pools)
    otp = env.enroll("alice")
    signin = two_step(env, auth)
    check = await signin.check_password("alice", Secret(PASSWORDS["alice"]), portal_ctx())
    assert (check.ok, check.has_totp) == (True, True)
    assert await signin.check_totp("alice", Secret(otp.at(env.clock.now)), portal_ctx())
    assert on(reader, "get_totp") == {"account"}
    # The password step is a guess of the account: read in the hop of the gate's
    # turn; the code step (no secret the gate keys on) on the counter executor.
    assert on(reader, "defense_lookup") == {store_thread(env), "counter"}
    off_the_loop(reader)


@pytest.mark.asyncio
@pytest.mark.parametrize("executors", ["pools", "inline"])
async def test_with_turns_on_one_machine_the_precheck_reads_where_counter_reads_run(
    env: Env, pools: Any, executors: str, tmp_path: Path
) -> None:
    """A turn taken as a byte-range lock (`state/sqlite/turns.py`) makes no hop:
    the precheck is then read where the counter store's reads run, on its read
    executor if there is one (a slow store must not freeze the loop), else inline."""
    turns = FileTurns.for_file(str(tmp_path / "state.db-turns"), KEY)
    auth, reader = networked(env, pools if executors == "pools" else None, turns=turns)
    await attempt(auth, "alice", "a-guess")
    assert on(reader, "defense_lookup") == ({"counter"} if executors == "pools" else {"loop"})


# -- the embedded store: no hop ---------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("scenario", ["imap", "portal"])
async def test_without_a_read_executor_reads_stay_on_the_loop(env: Env, scenario: str) -> None:
    """The embedded store's path is what it was: every read inline, not one
    thread hop (which would cost more CPU than the read)."""
    auth, reader = networked(env, None)
    otp = env.enroll("alice")
    if scenario == "imap":
        result = await attempt(auth, "alice", PASSWORDS["alice"] + otp.at(env.clock.now))
        assert result.outcome is Outcome.OK
    else:
        signin = two_step(env, auth)
        check = await signin.check_password("alice", Secret(PASSWORDS["alice"]), portal_ctx())
        assert check.ok
    assert reader.threads
    # The precheck of a gated guess is read on the store's thread, in the hop
    # that takes the pair's turn (auth/gate.py): no hop of its own.
    gated = {"defense_lookup"}
    for method in reader.threads:
        where = {store_thread(env)} if method in gated else {"loop"}
        assert on(reader, method) == where, reader.threads

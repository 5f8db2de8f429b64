"""What the brute-force defense costs: the pre-credential path per login, and a real
user's login latency while failed attempts from 500 addresses arrive as fast as this
machine can drive them.

Run by hand (needs root and Debian dovecot-imapd)::

    .venv/bin/python -m bench.defense            # full run, about 7 minutes
    .venv/bin/python -m bench.defense --quick    # smoke run, under a minute

Options: --only a|b (repeatable), --json FILE (all figures), --src DIR (benchmark another
imapguard source tree), --wait-quiet SECONDS, --max-foreign CORES / --retries N (as in
bench/gateway.py), --attack-connections N, --with-password (see (b)), --keep (keep the
temporary directory).

Everything runs on 127.0.0.1 (clients bound to other 127.0.0.0/8 addresses), on free
ports, under a temporary directory, and is stopped at the end (also on Ctrl-C, SIGTERM
or an exception):

* Dovecot (tests.dovecot.DovecotServer), its master password stored as {PLAIN} like the
  users' (as bench/gateway.py does).
* One `imapguard serve` (tests.gateway.GatewayProcess): login = "master", methods =
  app-password, upstream tls = "none" to Dovecot's plain port, `[auth] failure_delay`
  and `failure_jitter` at the product's defaults (1 s + up to 0.25 s: what a guesser
  waits for every refusal), `[defense]` at its defaults; `[limits]
  max_preauth_per_source` and `max_preauth_total` raised so that the attack of (b) is
  stopped by the defense, not by the connection limits. alice has an app password and
  logs in with it once before anything is measured, so 127.0.0.0/24 is a familiar
  source of her account (a successful login with a factor).

(a) The pre-credential path, in this process, on the real SQLite store. Before every
    login the chokepoint (`Authenticator._precheck`) builds the `Attempt` (the account
    and login-free password fingerprints: keyed HMACs) and runs `Defense.precheck`
    (one `defense_lookup` on the read-only connection of `open_reader`); a failed login
    then runs `record_failure` on the writer, a successful one `record_success`.
    The store is first filled by the real engine with a simulated day (injected clock,
    the gateway's once-a-minute `maintain()`): 23 hours of ordinary logins (every
    account twice from its home address, 5 % with a stale password first), then an
    hour of attack from the --sources pool (default 100,000 addresses): 99 % of them
    try once (credential stuffing, or a common password sprayed over the accounts),
    1 % brute-force 50 targeted accounts with 40 guesses each. Refused attempts are
    not recorded (as in the gateway), so the counters hold what a real day leaves.
    Then, per round: N prechecks of a mix (a third each: account owners from their home
    networks, addresses of the attack, new addresses), timed per call (p50/p99, wall)
    and as thread CPU (prechecks per second per core); `record_failure` for new
    failures and `record_success` for owners, each call its own write transaction
    (the gateway batches successes, so that figure is an upper bound).
    Interleaved with it, round by round: the gateway's CPU per login (16 clients log in
    with alice's app password back to back, /proc/PID/stat), as in bench/gateway.py.
                         Goal: attempt + precheck CPU < 5 % of a login's gateway CPU.
(b) A real user under attack. alice logs in sequentially from 127.0.0.1 (connect +
    TLS + greeting + LOGIN with her app password + LOGOUT), in windows that alternate
    round by round: no attack, attack, no attack, attack, ... In an attack window a
    separate process (uvloop) keeps --attack-connections connections busy from 500
    addresses 127.N.x.y (250 /24 networks, fresh ones every attack window, so every
    window shows the whole arc: free guesses, delays, blocks), each connection making
    as many LOGIN attempts as the gateway allows (max_auth_failures) and then
    reconnecting: half of the addresses guess alice's password (a new wrong password
    every time), half spray 10 common passwords over 5,000 other accounts. The
    attack rate, and how many attempts were refused at once ("blocked:" reasons in the
    audit log's `auth` events), delayed (their `delay` field) or checked, come from the
    gateway's audit log for the measured window; how many reached Dovecot from its
    log (its own auth penalty, auth_failure_delay 2 s per failure and client address,
    applies only to those; Dovecot logs a failure only after that delay, so this is
    counted over the whole attack). With app passwords only, a wrong password is refused by
    the gateway without asking Dovecot; --with-password adds "password+totp" to the
    methods, so wrong passwords are checked by logging in to Dovecot as the user.
    Figures: alice's p50 and p99 per window, medians over rounds, and the median of
    the per-round ratios attack / no attack.
                         Goal: report; alice is never refused (every login must succeed).

The box is shared: CPU used during a measurement by processes that are not part of the
benchmark ("foreign load") is printed per measurement; above --max-foreign cores the
measurement is repeated, at most --retries times (as in bench/gateway.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import random
import signal
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from tests.dovecot import DOVEADM_BINARY, DOVECOT_BINARY, DovecotServer

from bench._common import (
    CLIENT_ERRORS,
    BenchError,
    LoginRun,
    Row,
    Summary,
    argument_parser,
    benchmark_window,
    check_prerequisites,
    describe_source,
    helper_process,
    login_command,
    measure_logins,
    median,
    pct,
    quiet_attempt,
    report,
    run_params,
    start,
    start_dovecot,
    stopped,
    uvloop_runner,
    verdict,
    wait_dovecot_sessions,
    wait_quiet,
    wait_ready,
    work_directory,
)
from bench._imap import ImapConn, client_ssl_context, connect
from bench._procs import cpu_seconds, group_cpu_seconds, raise_nofile
from bench.gateway import BenchGateway, _certificate_summary
from imapguard.config import AuthConfig, LimitsConfig
from imapguard.defense import Action, Defense, DefenseSettings, FailureKind, Fingerprinter
from imapguard.secret import Secret
from imapguard.state.sqlite import SqliteStore, open_reader, open_store

GOAL_PRECHECK_SHARE = 0.05

USER = "alice"
LEGIT_SOURCE = "127.0.0.1"
LISTENER = "imaps"
TIMEOUT = 15.0
# An attacker's LOGIN may wait for a defense delay (< 25 s) plus the failure floor.
ATTACK_TIMEOUT = 45.0
# The gateway's product defaults, not the test fixture's 0.05 s: what a guesser waits for.
FAILURE_DELAY = float(AuthConfig.model_fields["failure_delay"].default)
FAILURE_JITTER = float(AuthConfig.model_fields["failure_jitter"].default)
ATTEMPTS_PER_CONNECTION = int(LimitsConfig.model_fields["max_auth_failures"].default)
# Raised so that connection limits do not stop the attack before the defense does.
MAX_PREAUTH_PER_SOURCE = 1000
MAX_PREAUTH_TOTAL = 100_000
ATTACK_ADDRESSES = 500
SPRAY_PASSWORDS = 10
SPRAY_ACCOUNTS = 5000

# The simulated day of (a): it ends at DAY_END (any fixed time; the fingerprint epoch
# and the buckets are computed from it as in production).
DAY_END = 1_800_000_000.0
HOUR = 3600.0
POPULATION_BATCH = 200  # engine calls per write transaction while filling the store
HEAVY_SHARE = 0.01  # attacking addresses that brute-force (the others try once)
HEAVY_GUESSES = 40
TARGETED_ACCOUNTS = 50
COMMON_PASSWORDS = 1000
SPRAY_SHARE = 0.25  # of the one-shot addresses; the rest stuff credentials


@dataclass(frozen=True)
class Params:
    rounds: int
    sources: int
    accounts: int
    prechecks: int
    records: int
    login_seconds: float
    login_concurrency: int
    login_max: int
    warmup_logins: int
    attack_rounds: int
    window_seconds: float
    attack_ramp: float
    attack_connections: int
    settle_timeout: float
    with_password: bool = False
    retries: int = 2
    max_foreign: float = 0.15

    @classmethod
    def full(cls) -> Params:
        return cls(
            rounds=3,
            sources=100_000,
            accounts=10_000,
            prechecks=20_000,
            records=2_000,
            login_seconds=6.0,
            login_concurrency=16,
            login_max=20_000,
            warmup_logins=64,
            attack_rounds=4,
            window_seconds=10.0,
            attack_ramp=3.0,
            attack_connections=2000,
            settle_timeout=40.0,
        )

    @classmethod
    def quick(cls) -> Params:
        return cls(
            rounds=1,
            sources=10_000,
            accounts=1_000,
            prechecks=5_000,
            records=300,
            login_seconds=2.0,
            login_concurrency=16,
            login_max=5_000,
            warmup_logins=16,
            attack_rounds=1,
            window_seconds=4.0,
            attack_ramp=1.5,
            attack_connections=2000,
            settle_timeout=15.0,
            retries=0,  # stay under a minute on a busy box
        )


# --------------------------------------------------------------------------- (a) in process


class SimClock:
    """The injected wall clock of the simulated day."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _address(n: int) -> str:
    return f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def _home(account: int) -> str:
    """An account owner's address: 172.16.0.0/12, a few accounts per /24."""
    return f"172.{16 + account % 16}.{account // 16 % 256}.{1 + account // 4096 % 250}"


def _account(n: int) -> str:
    return f"u{n:06d}@example.org"


def _owner_secret(n: int) -> Secret:
    return Secret(f"owner-app-password-{n}")


@dataclass
class Population:
    store: SqliteStore
    reader: SqliteStore
    defense: Defense
    clock: SimClock
    path: Path
    accounts: int
    pool: list[str]  # the attack's addresses
    common: list[str]  # the sprayed passwords
    stats: dict[str, Any]

    def close(self) -> None:
        self.reader.close()
        self.store.close()


def _table_rows(path: Path) -> dict[str, int]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {
            table: int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
            for table in ("defense_counters", "defense_members", "defense_blocks", "defense_values")
        }
    finally:
        db.close()


def populate(base: Path, sources: int, accounts: int, seed: int = 20261202) -> Population:
    """A simulated day through the real engine (see the module docstring, (a))."""
    rng = random.Random(seed)
    base.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{base / 'state.db'}"
    store = open_store(url)
    reader = open_reader(url)
    settings = DefenseSettings()
    clock = SimClock(DAY_END - 24 * HOUR)
    defense = Defense(
        settings,
        store,
        clock=clock,
        rng=random.Random(seed + 1),
        fingerprints=Fingerprinter(
            Secret(rng.randbytes(32)), epoch_seconds=settings.fingerprint_epoch
        ),
        reader=reader,
    )
    # (time, kind, address, account, password)
    events: list[tuple[float, str, str, str, Secret]] = []
    start = DAY_END - 24 * HOUR
    for n in range(accounts):
        for _ in range(2):
            t = start + rng.uniform(0, 23 * HOUR)
            if rng.random() < 0.05:
                events.append((t - 1.0, "stale", _home(n), _account(n), Secret(f"old-{n}")))
            events.append((t, "owner", _home(n), _account(n), _owner_secret(n)))
    pool = [_address(x) for x in rng.sample(range(0x01000000, 0x64000000), sources)]
    common = [f"{w}{y}!" for w in ("Summer", "Winter", "Passw0rd", "Welcome") for y in range(250)]
    targeted = [_account(rng.randrange(accounts)) for _ in range(TARGETED_ACCOUNTS)]
    attack_start = DAY_END - HOUR
    heavy = max(1, int(sources * HEAVY_SHARE))
    for ip in pool[:heavy]:
        victim = rng.choice(targeted)
        for _ in range(HEAVY_GUESSES):
            password = Secret(f"guess-{rng.getrandbits(48):012x}")
            events.append((attack_start + rng.uniform(0, HOUR), "attack", ip, victim, password))
    for ip in pool[heavy:]:
        t = attack_start + rng.uniform(0, HOUR)
        if rng.random() < SPRAY_SHARE:
            user, password = _account(rng.randrange(accounts)), Secret(rng.choice(common))
        else:  # stuffing: breached pairs, most of them for names that are no account here
            user = _account(rng.randrange(3 * accounts))
            password = Secret(f"breach-{rng.getrandbits(48):012x}")
        events.append((t, "attack", ip, user, password))
    events.sort(key=lambda e: e[0])

    counts: collections.Counter[str] = collections.Counter()
    recorded_sources: set[str] = set()
    next_maintain = start + 60.0
    t0 = time.perf_counter()
    for i in range(0, len(events), POPULATION_BATCH):
        with store.batch():
            for t, kind, ip, user, password in events[i : i + POPULATION_BATCH]:
                while next_maintain <= t:
                    clock.now = next_maintain
                    defense.maintain()
                    next_maintain += 60.0
                clock.now = t
                attempt = defense.attempt(ip, user, password, method="login", listener=LISTENER)
                v = defense.precheck(attempt)
                if v.action is Action.BLOCKED:
                    counts[f"{kind}: blocked"] += 1
                    continue
                if v.action is Action.DELAY:
                    counts[f"{kind}: delayed"] += 1
                if kind == "owner":
                    defense.record_success(attempt)
                    counts["owner: ok"] += 1
                else:
                    defense.record_failure(attempt, FailureKind.CREDENTIAL, v.familiar)
                    counts[f"{kind}: failure recorded"] += 1
                    if kind == "attack":
                        recorded_sources.add(ip)
    clock.now = DAY_END
    defense.maintain()
    seconds = time.perf_counter() - t0
    db = base / "state.db"
    wal = base / "state.db-wal"
    blocks = collections.Counter(b.target.kind.value for b in defense.blocks())
    stats: dict[str, Any] = {
        "accounts": accounts,
        "attack_addresses": sources,
        "attack_addresses_with_counters": len(recorded_sources),
        "engine_calls": len(events),
        "outcomes": dict(sorted(counts.items())),
        "rows": _table_rows(db),
        "db_mib": round(db.stat().st_size / 2**20, 1),
        "wal_mib": round(wal.stat().st_size / 2**20, 1) if wal.exists() else 0.0,
        "active_blocks": dict(sorted(blocks.items())),
        "posture": defense.posture().value,
        "seconds": round(seconds, 1),
        "us_per_engine_call": round(seconds / max(len(events), 1) * 1e6, 1),
    }
    return Population(store, reader, defense, clock, db, accounts, pool, common, stats)


@dataclass
class PathRun:
    prechecks: int
    attempt_us: list[float]  # Defense.attempt (fingerprints)
    lookup_us: list[float]  # Defense.precheck (the store read)
    total_us: list[float]
    cpu_us: float  # thread CPU per attempt + precheck
    actions: dict[str, int]
    failure_us: list[float]
    failure_cpu_us: float
    success_us: list[float]
    success_cpu_us: float
    foreign_cores: float = 0.0

    @property
    def per_core(self) -> float:
        return 1e6 / self.cpu_us if self.cpu_us > 0 else float("nan")


def measure_path(pop: Population, p: Params, rng: random.Random) -> PathRun:
    defense, clock = pop.defense, pop.clock
    fresh_base = 0x65000000  # 101.0.0.0 up: addresses the attack did not use

    def owner() -> tuple[str, str, Secret]:
        n = rng.randrange(pop.accounts)
        return _home(n), _account(n), _owner_secret(n)

    def attacker() -> tuple[str, str, Secret]:
        if rng.random() < 0.5:
            return (
                rng.choice(pop.pool),
                _account(rng.randrange(pop.accounts)),
                Secret(rng.choice(pop.common)),
            )
        return (
            rng.choice(pop.pool),
            _account(rng.randrange(3 * pop.accounts)),
            Secret(f"breach-{rng.getrandbits(48):012x}"),
        )

    def newcomer() -> tuple[str, str, Secret]:
        return (
            _address(fresh_base + rng.randrange(1 << 24)),
            _account(rng.randrange(pop.accounts)),
            Secret(f"new-{rng.getrandbits(48):012x}"),
        )

    kinds = (owner, attacker, newcomer)
    inputs = [kinds[i % 3]() for i in range(p.prechecks)]
    rng.shuffle(inputs)

    clock.now += 1.0
    ns = time.perf_counter_ns
    attempt_us: list[float] = []
    lookup_us: list[float] = []
    total_us: list[float] = []
    actions: collections.Counter[str] = collections.Counter()
    cpu0 = time.thread_time()
    for ip, user, secret in inputs:
        t0 = ns()
        attempt = defense.attempt(ip, user, secret, method="login", listener=LISTENER)
        t1 = ns()
        v = defense.precheck(attempt)
        t2 = ns()
        attempt_us.append((t1 - t0) / 1e3)
        lookup_us.append((t2 - t1) / 1e3)
        total_us.append((t2 - t0) / 1e3)
        actions[v.action.value] += 1
    cpu_us = (time.thread_time() - cpu0) / len(inputs) * 1e6

    # Writes, each its own transaction as on the gateway's store thread.
    failure_us: list[float] = []
    failure_cpu = 0.0
    for _ in range(p.records):
        clock.now += 0.01
        ip, user, secret = newcomer() if rng.random() < 0.5 else attacker()
        attempt = defense.attempt(ip, user, secret, method="login", listener=LISTENER)
        v = defense.precheck(attempt)
        if v.action is Action.BLOCKED:
            continue  # refused before any check: the gateway records nothing
        c0, t0 = time.thread_time(), ns()
        defense.record_failure(attempt, FailureKind.CREDENTIAL, v.familiar)
        failure_us.append((ns() - t0) / 1e3)
        failure_cpu += time.thread_time() - c0
    success_us: list[float] = []
    success_cpu = 0.0
    for _ in range(p.records):
        clock.now += 0.01
        ip, user, secret = owner()
        attempt = defense.attempt(ip, user, secret, method="login", listener=LISTENER)
        defense.precheck(attempt)
        c0, t0 = time.thread_time(), ns()
        defense.record_success(attempt)
        success_us.append((ns() - t0) / 1e3)
        success_cpu += time.thread_time() - c0
    return PathRun(
        prechecks=len(inputs),
        attempt_us=attempt_us,
        lookup_us=lookup_us,
        total_us=total_us,
        cpu_us=cpu_us,
        actions=dict(actions),
        failure_us=failure_us,
        failure_cpu_us=failure_cpu / max(len(failure_us), 1) * 1e6,
        success_us=success_us,
        success_cpu_us=success_cpu / max(len(success_us), 1) * 1e6,
    )


# --------------------------------------------------------------------------- IMAP clients


async def connect_from(port: int, tls: ssl.SSLContext, source: str, secs: float) -> ImapConn:
    """`bench._imap.connect` from a given local address (127.0.0.0/8 is all ours)."""
    loop = asyncio.get_running_loop()
    conn = ImapConn()
    async with asyncio.timeout(secs):
        await loop.create_connection(
            lambda: conn,
            "127.0.0.1",
            port,
            ssl=tls,
            server_hostname="localhost",
            local_addr=(source, 0),
        )
    try:
        await conn.greeting(secs)
    except BaseException:
        if conn.transport is not None:
            conn.transport.abort()
        raise
    return conn


async def login_once(port: int, ctx: ssl.SSLContext, command: bytes) -> None:
    """One whole login (the load of the CPU-per-login measurement)."""
    conn = await connect(port, ctx, TIMEOUT)
    try:
        await conn.command(b"a", command, TIMEOUT)
        await conn.command(b"b", b"LOGOUT", TIMEOUT)
    finally:
        conn.close()
    await conn.closed(5.0)


@dataclass
class LegitRun:
    latencies_ms: list[float]
    refused: list[str]  # a NO to alice's LOGIN
    errors: list[str]  # a timeout, a lost connection


async def legit_login(port: int, ctx: ssl.SSLContext, command: bytes, run: LegitRun) -> None:
    """One login of alice's (connect + TLS + greeting + LOGIN + LOGOUT), added to `run`."""
    clock = time.perf_counter
    t0 = clock()
    conn: ImapConn | None = None
    try:
        conn = await connect(port, ctx, TIMEOUT)
        line = await conn.command(b"a", command, TIMEOUT, ok=False)
        if line.startswith(b"a OK"):
            await conn.command(b"b", b"LOGOUT", TIMEOUT)
            run.latencies_ms.append((clock() - t0) * 1e3)
        else:
            run.refused.append(line[:200].decode("ascii", "replace").strip())
    except CLIENT_ERRORS as exc:
        run.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if conn is not None:
            conn.close()
            await conn.closed(5.0)


async def legit_logins(port: int, command: bytes, seconds: float) -> LegitRun:
    """alice logs in, back to back, one login at a time, for `seconds`."""
    ctx = client_ssl_context()
    run = LegitRun([], [], [])
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        await legit_login(port, ctx, command, run)
    return run


# --------------------------------------------------------------------------- the attack process


@dataclass(frozen=True)
class AttackSpec:
    """What the attack process does, as plain data."""

    port: int
    sources: tuple[str, ...]
    connections: int
    per_connection: int
    target: str  # the legitimate user's account (brute-forced)
    spray_passwords: tuple[str, ...]
    spray_accounts: int
    tag: str  # makes this window's guesses unique

    def guess(self, slot: int, n: int) -> tuple[str, str]:
        """The n-th (user, password) of connection slot `slot`: the first half of the
        addresses guesses the target's password, the second half sprays."""
        index = slot % len(self.sources)
        if index < len(self.sources) // 2:
            return self.target, f"{self.tag}-{slot}-{n}"
        password = self.spray_passwords[index % len(self.spray_passwords)]
        return f"user{(slot * 7919 + n) % self.spray_accounts:05d}", password


def attack_sources(window: int) -> tuple[str, ...]:
    """500 addresses in 250 /24 networks of 127.(10 + window).0.0/16: fresh ones for
    every attack window (the legitimate user is 127.0.0.1)."""
    second = 10 + window % 240
    return tuple(f"127.{second}.{1 + i // 2}.{1 + i % 2}" for i in range(ATTACK_ADDRESSES))


def _attack_process(spec: AttackSpec, stop: Event, out: Connection) -> None:
    """Sends ("ready", None) once about every connection had an answer, then
    ("done", result) after `stop` is set."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops this process
    raise_nofile()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(_attack(spec, stop, out))
    out.send(("done", result))
    out.close()


async def _attack(spec: AttackSpec, stop: Event, out: Connection) -> dict[str, Any]:
    ctx = client_ssl_context()
    answered: list[float] = []  # time.monotonic() of every answered LOGIN
    connected: list[float] = []
    accepted = 0  # LOGIN answered OK: must stay 0
    errors: collections.Counter[str] = collections.Counter()
    first_error: list[str] = []
    loop_errors: collections.Counter[str] = collections.Counter()

    def quietly(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Thousands of connections cut at once (the gateway's BYE, our own stop):
        # "Fatal error on SSL protocol", futures failed by a lost connection. Count them.
        loop_errors[str(context.get("message", "?"))[:60]] += 1

    asyncio.get_running_loop().set_exception_handler(quietly)

    async def slot(i: int) -> None:
        nonlocal accepted
        source = spec.sources[i % len(spec.sources)]
        await asyncio.sleep(i / spec.connections)  # spread the first handshakes over 1 s
        n = 0
        while True:
            conn: ImapConn | None = None
            try:
                conn = await connect_from(spec.port, ctx, source, ATTACK_TIMEOUT)
                connected.append(time.monotonic())
                for k in range(spec.per_connection):
                    user, password = spec.guess(i, n)
                    n += 1
                    tag = b"a%d" % k
                    line = await conn.command(
                        tag, login_command(user, password), ATTACK_TIMEOUT, ok=False
                    )
                    answered.append(time.monotonic())
                    if line.startswith(tag + b" OK"):
                        accepted += 1
                        break
            except CLIENT_ERRORS as exc:
                errors[type(exc).__name__] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
            finally:
                if conn is not None:
                    conn.close()

    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(slot(i)) for i in range(spec.connections)]
        ready = False
        while not stop.is_set():
            if not ready and (
                len(answered) >= spec.connections // 2 or time.monotonic() - started > 20.0
            ):
                out.send(("ready", None))
                ready = True
            await asyncio.sleep(0.02)
        for task in tasks:
            task.cancel()
    return {
        "answered": answered,
        "connected": connected,
        "accepted": accepted,
        "errors": dict(errors),
        "first_error": first_error[0] if first_error else None,
        "loop_errors": dict(loop_errors),
    }


# --------------------------------------------------------------------------- environment


@dataclass
class Env:
    base: Path
    dovecot: DovecotServer
    gateway: BenchGateway
    app_password: str
    methods: tuple[str, ...]

    @property
    def login(self) -> bytes:
        return login_command(USER, self.app_password)

    def gateway_pid(self) -> int:
        return self.gateway.running_pid()

    def measure_foreign(self) -> Callable[[], float]:
        """Start a window; the returned function gives the CPU (in cores) used during
        it by processes that are not part of this benchmark (other users of the box)."""
        return benchmark_window(self.dovecot, self.gateway_pid())


def _gateway_config(text: str) -> str:
    old = "failure_jitter = 0.01\n"
    if text.count(old) != 1:
        raise BenchError("generated gateway configuration: expected one failure_jitter")
    return text.replace(old, f"failure_jitter = {FAILURE_JITTER}\n")


@contextlib.contextmanager
def environment(keep: bool, with_password: bool) -> Iterator[Env]:
    with work_directory(keep, "igbench-defense-") as (base, stack):
        dovecot = start_dovecot(base / "dovecot", stack)
        methods: tuple[str, ...] = ("app-password",)
        if with_password:
            methods += ("password+totp",)
        gateway = BenchGateway.create(
            base / "gateway",
            dovecot,
            login="master",
            methods=methods,
            upstream_tls="none",
            failure_delay=FAILURE_DELAY,
            extra_toml=(
                "[limits]\n"
                f"max_preauth_per_source = {MAX_PREAUTH_PER_SOURCE}\n"
                f"max_preauth_total = {MAX_PREAUTH_TOTAL}\n"
                "drain_timeout = 1.0\n"
            ),
        )
        assert isinstance(gateway, BenchGateway)
        gateway.config_path.write_text(_gateway_config(gateway.config_path.read_text()))
        app_password = gateway.create_app_password(USER, "bench")
        stack.callback(gateway.stop)
        gateway.start()
        yield Env(base, dovecot, gateway, app_password, methods)


def _familiar(env: Env) -> bool:
    """Has alice's successful login made 127.0.0.0/24 familiar to her account?"""
    db = sqlite3.connect(f"{(env.gateway.base / 'state.db').as_uri()}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT 1 FROM defense_values WHERE name = ? AND (expires IS NULL OR expires > ?)",
            (f"fam:{USER}|127.0.0.0/24", time.time()),
        ).fetchone()
    finally:
        db.close()
    return row is not None


def _sanity(runner: asyncio.Runner, env: Env) -> None:
    """alice logs in once (so her source is familiar); the audit log must agree."""
    run = LegitRun([], [], [])
    runner.run(legit_login(env.gateway.implicit_port, client_ssl_context(), env.login, run))
    if run.refused or run.errors or not run.latencies_ms:
        raise BenchError(f"alice's first login failed: {run.refused or run.errors}")
    deadline = time.monotonic() + 10.0
    while not _familiar(env):  # record_success is written behind, in batches
        if time.monotonic() > deadline:
            raise BenchError("alice's source did not become familiar after her login")
        time.sleep(0.1)
    events = env.gateway.events("auth")
    if not events or (events[-1].get("result"), events[-1].get("factor")) != ("ok", "app-password"):
        raise BenchError(f"alice's first login: audit log says {events[-1:]}")


# --------------------------------------------------------------------------- (a) phase


@dataclass
class LoginCpuRun:
    login: LoginRun
    foreign_cores: float = 0.0


def phase_path(
    runner: asyncio.Runner, env: Env, pop: Population, p: Params
) -> tuple[list[PathRun], list[LoginCpuRun]]:
    print(
        f"\n## (a) pre-credential path: {p.prechecks:,} prechecks and {p.records:,} writes of"
        f" each kind per round, in process; gateway CPU per login: {p.login_concurrency}"
        f" clients x {p.login_seconds:.0f} s (alice, app password); {p.rounds} interleaved"
        " round(s)",
        flush=True,
    )
    port = env.gateway.implicit_port
    ctx = client_ssl_context()
    pid = env.gateway_pid()
    warm = runner.run(
        measure_logins(
            "warm-up", lambda: login_once(port, ctx, env.login), pid, 16, 30.0, p.warmup_logins
        )
    )
    if warm.errors:
        raise BenchError(f"warm-up logins failed: {warm.first_error}")
    rng = random.Random(7)
    paths: list[PathRun] = []
    logins: list[LoginCpuRun] = []
    for r in range(p.rounds):

        def path() -> PathRun:
            return measure_path(pop, p, rng)

        run = quiet_attempt(env, path, "precheck", p)
        paths.append(run)
        print(
            f"  r{r + 1} precheck   attempt+precheck p50={pct(run.total_us, 50):.1f} us"
            f" p99={pct(run.total_us, 99):.1f} us (attempt p50 {pct(run.attempt_us, 50):.1f},"
            f" precheck p50 {pct(run.lookup_us, 50):.1f}) CPU {run.cpu_us:.1f} us"
            f" = {run.per_core:,.0f}/s per core  verdicts {run.actions}"
            f" | record_failure p50={pct(run.failure_us, 50):.0f} p99={pct(run.failure_us, 99):.0f}"
            f" us (CPU {run.failure_cpu_us:.0f}) record_success p50={pct(run.success_us, 50):.0f}"
            f" p99={pct(run.success_us, 99):.0f} us (CPU {run.success_cpu_us:.0f})"
            f"  foreign load {run.foreign_cores:.2f} cores",
            flush=True,
        )

        def gateway_logins() -> LoginCpuRun:
            wait_dovecot_sessions(env.dovecot, 8, 10.0)
            return LoginCpuRun(
                runner.run(
                    measure_logins(
                        "imapguard",
                        lambda: login_once(port, ctx, env.login),
                        pid,
                        p.login_concurrency,
                        p.login_seconds,
                        p.login_max,
                    )
                )
            )

        lrun = quiet_attempt(env, gateway_logins, "gateway logins", p)
        if lrun.login.errors:
            raise BenchError(f"gateway logins failed: {lrun.login.first_error}")
        logins.append(lrun)
        lr = lrun.login
        print(
            f"  r{r + 1} gateway    {lr.rate:6.1f} logins/s ok={lr.ok} p50={lr.p50_ms:.1f} ms"
            f" p99={lr.p99_ms:.1f} ms  gateway CPU {lr.cpu_us_per_login or 0:.0f} us/login"
            f"  -> precheck share {run.cpu_us / (lr.cpu_us_per_login or math.inf):.2%}"
            f"  foreign load {lrun.foreign_cores:.2f} cores",
            flush=True,
        )
    return paths, logins


# --------------------------------------------------------------------------- (b) phase


@dataclass
class AuditStats:
    attack_auth: int = 0
    blocked: int = 0
    delayed: int = 0
    delay_seconds: float = 0.0
    attack_ok: int = 0
    legit_auth: int = 0
    legit_not_ok: list[str] = field(default_factory=list)
    blocks: dict[str, int] = field(default_factory=dict)  # defense_block by target kind
    spray_alerts: int = 0
    posture: list[str] = field(default_factory=list)
    tls_failed: int = 0
    limit_refusals: int = 0

    @property
    def checked(self) -> int:
        """Attack attempts that went on to the credential check without a delay."""
        return self.attack_auth - self.blocked - self.delayed


def _lines(path: Path, start: int, end: int) -> list[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(max(0, end - start))
    lines = data.split(b"\n")
    return lines[:-1]  # the last piece is empty or a line still being written


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def audit_stats(path: Path, start: int, end: int) -> AuditStats:
    s = AuditStats()
    blocks: collections.Counter[str] = collections.Counter()
    for raw in _lines(path, start, end):
        try:
            e = json.loads(raw)
        except ValueError:
            continue
        kind = e.get("event")
        if kind == "auth":
            if e.get("src") == LEGIT_SOURCE:
                s.legit_auth += 1
                if e.get("result") != "ok" and len(s.legit_not_ok) < 5:
                    s.legit_not_ok.append(f"{e.get('result')}: {e.get('reason')}")
                continue
            s.attack_auth += 1
            if str(e.get("reason", "")).startswith("blocked:"):
                s.blocked += 1
            elif e.get("delay") is not None:
                s.delayed += 1
                s.delay_seconds += float(e["delay"])
            if e.get("result") == "ok":
                s.attack_ok += 1
        elif kind == "defense_block":
            blocks[str(e.get("target_kind"))] += 1
        elif kind == "spray_alert":
            s.spray_alerts += 1
        elif kind == "posture":
            s.posture.append(f"{e.get('before')} -> {e.get('after')}")
        elif kind == "tls_failed":
            s.tls_failed += 1
        elif kind == "close" and "pre-auth limit" in str(e.get("reason", "")):
            s.limit_refusals += 1
    s.blocks = dict(sorted(blocks.items()))
    return s


@dataclass
class DovecotStats:
    failures: int  # passdb lookups that failed: a wrong password or an unknown user
    logins: int


def dovecot_stats(path: Path, start: int, end: int) -> DovecotStats:
    failures = logins = 0
    for line in _lines(path, start, end):
        if b"Password mismatch" in line or b"unknown user" in line:
            failures += 1
        elif b"imap-login: Login: user=<" in line:
            logins += 1
    return DovecotStats(failures, logins)


@dataclass
class AttackStats:
    connections: int
    attempts_answered: int  # in the measured window, as the attacker saw them
    attempts_total: int
    accepted: int
    errors: dict[str, int]
    first_error: str | None
    cores: float  # the attack process's CPU during the window
    loop_errors: dict[str, int]
    # The whole attack, from the process's start until it stopped (the measured
    # window is its middle): what the gateway decided, and how long it ran.
    whole: AuditStats
    whole_dovecot: DovecotStats
    whole_seconds: float


@dataclass
class WindowRun:
    kind: str  # "no attack" | "attack"
    legit: LegitRun
    seconds: float
    gateway_cores: float
    dovecot_cores: float
    audit: AuditStats
    dovecot: DovecotStats
    started: float = 0.0  # time.monotonic()
    ended: float = 0.0
    attack: AttackStats | None = None
    foreign_cores: float = 0.0

    @property
    def attack_rate(self) -> float:
        return self.audit.attack_auth / self.seconds if self.seconds > 0 else 0.0

    def p(self, q: float) -> float:
        return pct(self.legit.latencies_ms, q)


def _window(runner: asyncio.Runner, env: Env, kind: str, seconds: float) -> WindowRun:
    audit_path, dovecot_log = env.gateway.audit_path, env.dovecot.log_path
    gw, dv = env.gateway_pid(), env.dovecot.pid
    assert dv is not None
    a0, d0 = _size(audit_path), _size(dovecot_log)
    g0, v0, w0 = cpu_seconds(gw), group_cpu_seconds(dv), time.monotonic()
    legit = runner.run(legit_logins(env.gateway.implicit_port, env.login, seconds))
    g1, v1, w1 = cpu_seconds(gw), group_cpu_seconds(dv), time.monotonic()
    a1, d1 = _size(audit_path), _size(dovecot_log)
    return WindowRun(
        kind=kind,
        legit=legit,
        seconds=w1 - w0,
        gateway_cores=(g1 - g0) / (w1 - w0),
        dovecot_cores=(v1 - v0) / (w1 - w0),
        audit=audit_stats(audit_path, a0, a1),
        dovecot=dovecot_stats(dovecot_log, d0, d1),
        started=w0,
        ended=w1,
    )


def _settle(env: Env, timeout: float) -> None:
    """Wait until the gateway is idle again (an attack's delayed attempts wake up to
    25 s later) and Dovecot's sessions have exited."""
    pid = env.gateway_pid()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0 = cpu_seconds(pid)
        time.sleep(0.5)
        if (cpu_seconds(pid) - c0) / 0.5 < 0.05:
            break
    wait_dovecot_sessions(env.dovecot, 8, 10.0)


def _attack_window(runner: asyncio.Runner, env: Env, p: Params, number: int) -> WindowRun:
    spec = AttackSpec(
        port=env.gateway.implicit_port,
        sources=attack_sources(number),
        connections=p.attack_connections,
        per_connection=ATTEMPTS_PER_CONNECTION,
        target=USER,
        spray_passwords=tuple(f"Autumn{2026 - k}!w{number}" for k in range(SPRAY_PASSWORDS)),
        spray_accounts=SPRAY_ACCOUNTS,
        tag=f"w{number}",
    )
    audit_path, dovecot_log = env.gateway.audit_path, env.dovecot.log_path
    a0, d0, t0 = _size(audit_path), _size(dovecot_log), time.monotonic()
    with helper_process(_attack_process, (spec,), "bench-attack") as (proc, stop, reader):
        attacker = proc.pid
        assert attacker is not None
        wait_ready(reader, "the attack process did not start in 60 s", "attack process")
        time.sleep(p.attack_ramp)
        c0 = cpu_seconds(attacker)
        run = _window(runner, env, "attack", p.window_seconds)
        cores = (cpu_seconds(attacker) - c0) / run.seconds
        w0, w1 = run.started, run.ended
        stop.set()
        if not reader.poll(ATTACK_TIMEOUT + 30.0):
            raise BenchError("the attack process sent no result")
        _, result = reader.recv()
        proc.join(10.0)
        a1, d1, t1 = _size(audit_path), _size(dovecot_log), time.monotonic()
    run.attack = AttackStats(
        connections=sum(1 for t in result["connected"] if w0 <= t <= w1),
        attempts_answered=sum(1 for t in result["answered"] if w0 <= t <= w1),
        attempts_total=len(result["answered"]),
        accepted=int(result["accepted"]),
        errors=dict(result["errors"]),
        first_error=result["first_error"],
        cores=cores,
        loop_errors=dict(result["loop_errors"]),
        whole=audit_stats(audit_path, a0, a1),
        whole_dovecot=dovecot_stats(dovecot_log, d0, d1),
        whole_seconds=t1 - t0,
    )
    return run


def _decisions(a: AuditStats) -> str:
    return (
        f"blocked {a.blocked}, delayed {a.delayed}"
        + (f" (mean {a.delay_seconds / a.delayed:.1f} s)" if a.delayed else "")
        + f", checked {a.checked}"
    )


def _print_window(r: int, run: WindowRun) -> None:
    legit = run.legit
    problems = legit.refused + legit.errors
    line = (
        f"  r{r + 1} {run.kind:9s} alice n={len(legit.latencies_ms)} p50={run.p(50):.1f} ms"
        f" p99={run.p(99):.1f} ms max={max(legit.latencies_ms, default=math.nan):.0f} ms"
        f" refused={len(legit.refused)} failed={len(legit.errors)}"
        f" | gateway {run.gateway_cores:.2f} cores, Dovecot {run.dovecot_cores:.2f}"
    )
    a = run.audit
    if run.attack is not None:
        k = run.attack
        line += (
            f" | attack {run.attack_rate:.0f} attempts/s decided (attacker saw"
            f" {k.attempts_answered / run.seconds:.0f}/s, {k.connections / run.seconds:.0f}"
            f" connections/s, {k.cores:.2f} cores): {_decisions(a)}"
        )
    line += f" | foreign load {run.foreign_cores:.2f} cores"
    if problems:
        line += f" | first problem: {problems[0]}"
        if a.legit_not_ok:
            line += f" (audit: {a.legit_not_ok[0]})"
    print(line, flush=True)
    if run.attack is not None:
        k = run.attack
        w = k.whole
        print(
            f"     whole attack ({k.whole_seconds:.1f} s): {w.attack_auth} decided,"
            f" {_decisions(w)}; reached Dovecot {k.whole_dovecot.failures};"
            f" blocks placed {w.blocks or '{}'}, spray alerts {w.spray_alerts}"
            + (f", posture {'; '.join(w.posture)}" if w.posture else "")
            + f"; attacker saw {k.attempts_total} answers"
            + (f"; attacker errors {k.errors} (first: {k.first_error})" if k.errors else "")
            + (f"; client loop errors {sum(k.loop_errors.values())}" if k.loop_errors else "")
            + (f"; TLS failed {w.tls_failed}" if w.tls_failed else "")
            + (f"; refused by limits {w.limit_refusals}" if w.limit_refusals else "")
            + (f"; ATTACKER LOGGED IN {k.accepted}x" if k.accepted else ""),
            flush=True,
        )


def phase_attack(runner: asyncio.Runner, env: Env, p: Params) -> dict[str, list[WindowRun]]:
    print(
        f"\n## (b) alice logs in sequentially from {LEGIT_SOURCE} (familiar),"
        f" {p.window_seconds:.0f} s per window; attack windows: {p.attack_connections}"
        f" connections from {ATTACK_ADDRESSES} addresses (fresh per window),"
        f" {ATTEMPTS_PER_CONNECTION} LOGINs per connection, half guessing alice's password,"
        f" half spraying; measured after a"
        f" {p.attack_ramp:.1f} s ramp; {p.attack_rounds} interleaved round(s)",
        flush=True,
    )
    runs: dict[str, list[WindowRun]] = {"no attack": [], "attack": []}
    number = 0
    for r in range(p.attack_rounds):

        def settle() -> None:
            _settle(env, p.settle_timeout)

        def quiet() -> WindowRun:
            return _window(runner, env, "no attack", p.window_seconds)

        run = quiet_attempt(env, quiet, "no attack", p, settle)
        runs["no attack"].append(run)
        _print_window(r, run)

        def attacked() -> WindowRun:
            nonlocal number
            number += 1
            return _attack_window(runner, env, p, number)

        run = quiet_attempt(env, attacked, "attack", p, settle)
        runs["attack"].append(run)
        _print_window(r, run)
    _settle(env, p.settle_timeout)
    return runs


# --------------------------------------------------------------------------- report


def _ratio(a: list[float], b: list[float]) -> float:
    return median([x / y for x, y in zip(a, b, strict=True) if y > 0])


def summarize(
    pop: Population | None,
    paths: list[PathRun] | None,
    logins: list[LoginCpuRun] | None,
    windows: dict[str, list[WindowRun]] | None,
) -> Summary:
    s = Summary()
    if paths and logins and pop is not None:
        login_cpu = [r.login.cpu_us_per_login or math.nan for r in logins]
        shares = [pr.cpu_us / lc for pr, lc in zip(paths, login_cpu, strict=True)]
        share = median(shares)
        cpu = median([r.cpu_us for r in paths])
        gw = median(login_cpu)
        rate = median([r.login.rate for r in logins])
        p50 = median([pct(r.total_us, 50) for r in paths])
        p99 = median([pct(r.total_us, 99) for r in paths])
        a50 = median([pct(r.attempt_us, 50) for r in paths])
        l50 = median([pct(r.lookup_us, 50) for r in paths])
        f50 = median([pct(r.failure_us, 50) for r in paths])
        f99 = median([pct(r.failure_us, 99) for r in paths])
        fcpu = median([r.failure_cpu_us for r in paths])
        o50 = median([pct(r.success_us, 50) for r in paths])
        o99 = median([pct(r.success_us, 99) for r in paths])
        ocpu = median([r.success_cpu_us for r in paths])
        rows = sum(pop.stats["rows"].values())
        ok = share < GOAL_PRECHECK_SHARE
        s.values["a"] = {
            "attempt_precheck_p50_us": p50,
            "attempt_precheck_p99_us": p99,
            "attempt_p50_us": a50,
            "precheck_p50_us": l50,
            "cpu_us_per_precheck": cpu,
            "prechecks_per_second_per_core": 1e6 / cpu,
            "gateway_cpu_us_per_login": gw,
            "gateway_logins_per_second": rate,
            "share_of_login_cpu": share,
            "share_per_round": shares,
            "record_failure_us": {"p50": f50, "p99": f99, "cpu": fcpu},
            "record_success_us": {"p50": o50, "p99": o99, "cpu": ocpu},
            "verdicts": [r.actions for r in paths],
            "goal_share": GOAL_PRECHECK_SHARE,
            "pass": ok,
        }
        s.rows += [
            Row(
                "a",
                f"attempt + precheck, us p50 / p99 (SQLite, {rows:,} defense rows)",
                f"{p50:.1f} / {p99:.1f}",
                f"attempt (HMACs) p50 {a50:.1f}; precheck (store read) p50 {l50:.1f}",
                "",
                "info",
                "",
            ),
            Row(
                "a'",
                "prechecks per second per core (thread CPU)",
                f"{1e6 / cpu:,.0f}",
                f"{cpu:.1f} us CPU each",
                "",
                "info",
                "",
            ),
            Row(
                "a''",
                "pre-credential CPU / gateway CPU per login",
                f"{cpu:.1f} us",
                f"gateway {gw:,.0f} us per login (16 clients, {rate:.0f}/s)",
                f"{share:.3f}",
                f"< {GOAL_PRECHECK_SHARE:.2f}",
                verdict(ok),
            ),
            Row(
                "a3",
                "record_failure, us p50 / p99 (own transaction)",
                f"{f50:.0f} / {f99:.0f}",
                f"CPU {fcpu:.0f} us = {fcpu / gw:.1%} of a login",
                "",
                "info",
                "",
            ),
            Row(
                "a4",
                "record_success, us p50 / p99 (own transaction)",
                f"{o50:.0f} / {o99:.0f}",
                f"CPU {ocpu:.0f} us = {ocpu / gw:.1%} of a login (gateway: batched)",
                "",
                "info",
                "",
            ),
        ]
    if windows and windows["attack"]:
        quiet, attack = windows["no attack"], windows["attack"]
        values: dict[str, Any] = {}
        for label, q in (("p50", 50.0), ("p99", 99.0)):
            qv = [r.p(q) for r in quiet]
            av = [r.p(q) for r in attack]
            values[label] = {
                "no_attack_ms": median(qv),
                "attack_ms": median(av),
                "ratio": _ratio(av, qv),
                "per_round_no_attack_ms": qv,
                "per_round_attack_ms": av,
            }
        logins_total = sum(len(r.legit.latencies_ms) for r in quiet + attack)
        refused = sum(len(r.legit.refused) for r in quiet + attack)
        failed = sum(len(r.legit.errors) for r in quiet + attack)
        under = sum(len(r.legit.latencies_ms) for r in attack)
        decided = sum(r.audit.attack_auth for r in attack)
        blocked = sum(r.audit.blocked for r in attack)
        delayed = sum(r.audit.delayed for r in attack)
        checked = sum(r.audit.checked for r in attack)
        reached = sum(r.dovecot.failures for r in attack)
        wholes = [r.attack for r in attack if r.attack is not None]
        w_decided = sum(k.whole.attack_auth for k in wholes)
        w_blocked = sum(k.whole.blocked for k in wholes)
        w_delayed = sum(k.whole.delayed for k in wholes)
        w_checked = sum(k.whole.checked for k in wholes)
        w_reached = sum(k.whole_dovecot.failures for k in wholes)
        w_blocks: collections.Counter[str] = collections.Counter()
        for k in wholes:
            w_blocks.update(k.whole.blocks)
        accepted = sum(r.attack.accepted for r in attack if r.attack is not None)
        rate = median([r.attack_rate for r in attack])
        gw_cores = median([r.gateway_cores for r in attack])
        ak_cores = median([r.attack.cores for r in attack if r.attack is not None])
        ok = refused == 0 and failed == 0 and accepted == 0
        values.update(
            {
                "attack_attempts_per_second": rate,
                "attack_attempts_decided": decided,
                "blocked": blocked,
                "delayed": delayed,
                "checked": checked,
                "reached_dovecot": reached,
                "whole_attacks": {
                    "decided": w_decided,
                    "blocked": w_blocked,
                    "delayed": w_delayed,
                    "checked": w_checked,
                    "reached_dovecot": w_reached,
                    "blocks_placed": dict(w_blocks),
                    "spray_alerts": sum(k.whole.spray_alerts for k in wholes),
                },
                "attacker_logged_in": accepted,
                "gateway_cores_under_attack": gw_cores,
                "attack_process_cores": ak_cores,
                "legit_logins": logins_total,
                "legit_logins_under_attack": under,
                "legit_refused": refused,
                "legit_failed": failed,
                "pass": ok,
            }
        )
        s.values["b"] = values
        for key, label in (("b", "p50"), ("b'", "p99")):
            v = values[label]
            s.rows.append(
                Row(
                    key,
                    f"alice's login {label} (ms), under attack",
                    f"{v['attack_ms']:.1f}",
                    f"no attack {v['no_attack_ms']:.1f}",
                    f"{v['ratio']:.2f}",
                    "report",
                    "",
                )
            )

        def part(n: int, of: int) -> str:
            return f"{n / of:.0%}" if of else "n/a"

        s.rows += [
            Row(
                "b''",
                f"attack attempts/s decided ({ATTACK_ADDRESSES} addresses), measured windows",
                f"{rate:,.0f}",
                f"blocked {part(blocked, decided)}, delayed {part(delayed, decided)}, checked"
                f" {part(checked, decided)}; gateway {gw_cores:.2f} cores, attacker"
                f" {ak_cores:.2f}",
                "",
                "info",
                "",
            ),
            Row(
                "b3",
                "whole attacks (ramp included): attempts decided",
                f"{w_decided:,}",
                f"blocked {part(w_blocked, w_decided)}, delayed {part(w_delayed, w_decided)},"
                f" checked {part(w_checked, w_decided)}; reached Dovecot {w_reached};"
                f" blocks placed {dict(sorted(w_blocks.items()))}",
                "",
                "info",
                "",
            ),
            Row(
                "b4",
                "alice refused or failed (attacker logged in)",
                f"{refused + failed} ({accepted})",
                f"of {logins_total} logins, {under} under attack",
                "",
                "0 (0)",
                verdict(ok),
            ),
        ]
    return s


def foreign_load(
    paths: list[PathRun] | None,
    logins: list[LoginCpuRun] | None,
    windows: dict[str, list[WindowRun]] | None,
) -> dict[str, tuple[float, float]]:
    """(median, max) CPU cores used by other processes on the box, per phase."""
    out: dict[str, tuple[float, float]] = {}
    xs = [r.foreign_cores for r in paths or []] + [r.foreign_cores for r in logins or []]
    if xs:
        out["a"] = (median(xs), max(xs))
    ys = [r.foreign_cores for v in (windows or {}).values() for r in v]
    if ys:
        out["b"] = (median(ys), max(ys))
    return out


# --------------------------------------------------------------------------- main


def _check_prerequisites() -> None:
    check_prerequisites("dovecot-imapd", (DOVECOT_BINARY, DOVEADM_BINARY))


def _raw(
    paths: list[PathRun] | None,
    logins: list[LoginCpuRun] | None,
    windows: dict[str, list[WindowRun]] | None,
) -> dict[str, Any]:
    def path(r: PathRun) -> dict[str, Any]:
        d = asdict(r)
        for key in ("attempt_us", "lookup_us", "total_us", "failure_us", "success_us"):
            xs = d.pop(key)
            d[key] = {"n": len(xs), "p50": pct(xs, 50), "p99": pct(xs, 99), "max": max(xs)}
        return d

    def window(r: WindowRun) -> dict[str, Any]:
        d = asdict(r)
        d["legit"]["p50_ms"], d["legit"]["p99_ms"] = r.p(50), r.p(99)
        d["attack_rate"] = r.attack_rate
        return d

    return {
        "paths": [path(r) for r in paths or []],
        "logins": [{**asdict(r.login), "foreign_cores": r.foreign_cores} for r in logins or []],
        "windows": {k: [window(r) for r in v] for k, v in (windows or {}).items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser("python -m bench.defense", __doc__, ["a", "b"])
    ap.add_argument("--sources", type=int, help="attacking addresses of the simulated day in (a)")
    ap.add_argument("--attack-connections", type=int, help="concurrent attack connections in (b)")
    ap.add_argument(
        "--with-password",
        action="store_true",
        help="also enable password+totp, so that wrong passwords are checked upstream",
    )
    args = ap.parse_args(argv)
    if args.src is not None:
        BenchGateway.src_override = args.src.resolve()
    _check_prerequisites()
    p = run_params(
        Params.quick() if args.quick else Params.full(),
        args,
        sources=args.sources,
        attack_connections=args.attack_connections,
        with_password=args.with_password,
    )
    only = set(args.only or ["a", "b"])
    info = start("defense", args.quick, p, nginx=False)
    started = time.monotonic()
    pop: Population | None = None
    paths: list[PathRun] | None = None
    logins: list[LoginCpuRun] | None = None
    windows: dict[str, list[WindowRun]] | None = None
    try:
        with (
            environment(args.keep, p.with_password) as env,
            uvloop_runner() as runner,
            contextlib.ExitStack() as stack,
        ):
            info["imapguard"] = describe_source(env.gateway.imported_from())
            info["gateway"] = (
                f"methods {', '.join(env.methods)}; login master, upstream tls none;"
                f" failure_delay {FAILURE_DELAY:g} s + jitter {FAILURE_JITTER:g} s;"
                f" max_auth_failures {ATTEMPTS_PER_CONNECTION}; max_preauth_per_source"
                f" {MAX_PREAUTH_PER_SOURCE}, max_preauth_total {MAX_PREAUTH_TOTAL};"
                " [defense] defaults"
            )
            info["certificates"] = (
                f"imapguard {_certificate_summary(env.gateway.base / 'gateway.pem')};"
                " Dovecot master password {PLAIN}"
            )
            for key in ("imapguard", "gateway", "certificates"):
                print(f"#   {key}: {info[key]}", flush=True)
            _sanity(runner, env)
            if "a" in only:
                print(
                    f"#   filling the store of (a): a simulated day, {p.accounts:,} accounts,"
                    f" {p.sources:,} attacking addresses ...",
                    flush=True,
                )
                pop = populate(env.base / "population", p.sources, p.accounts)
                stack.callback(pop.close)
                info["population"] = pop.stats
                print(f"#   population: {json.dumps(pop.stats)}", flush=True)
            wait_quiet(env, args.wait_quiet)
            if pop is not None:
                paths, logins = phase_path(runner, env, pop, p)
            if "b" in only:
                windows = phase_attack(runner, env, p)
    except (KeyboardInterrupt, BenchError) as exc:
        return stopped(exc)
    summary = summarize(pop, paths, logins, windows)
    foreign = foreign_load(paths, logins, windows)
    return report(
        summary, foreign, started, info, p, args.json, lambda: _raw(paths, logins, windows)
    )


if __name__ == "__main__":
    sys.exit(main())

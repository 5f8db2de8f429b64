"""Pieces the benchmarks share (bench/gateway.py, bench/logins.py, bench/defense.py):
percentiles, the login-rate loop, and the rules for a shared machine (repeat a
measurement that other processes disturbed; wait for Dovecot's session processes to
exit; tell this benchmark's CPU from everybody else's)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from tests.dovecot import DovecotServer

from bench._imap import ImapError
from bench._procs import (
    children,
    count_processes,
    cpu_seconds,
    groups_cpu_seconds,
    machine_busy_seconds,
    self_cpu_seconds,
)

__all__ = [
    "CLIENT_ERRORS",
    "ForeignMeter",
    "LoginRun",
    "Measured",
    "RetryPolicy",
    "benchmark_cpu_seconds",
    "measure_logins",
    "median",
    "pct",
    "quiet_attempt",
    "verdict",
    "wait_dovecot_sessions",
    "wait_quiet",
]

CLIENT_ERRORS = (ImapError, OSError, TimeoutError, ssl.SSLError, EOFError)


# --------------------------------------------------------------------------- statistics


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


# --------------------------------------------------------------------------- login rate


@dataclass
class LoginRun:
    target: str
    ok: int
    errors: int
    wall: float
    rate: float
    p50_ms: float
    p99_ms: float
    proxy_cpu: float | None
    others_cpu: float  # all cores minus this (client) process
    first_error: str | None = None
    foreign_cores: float = 0.0

    @property
    def cpu_us_per_login(self) -> float | None:
        return None if self.proxy_cpu is None or not self.ok else self.proxy_cpu / self.ok * 1e6


async def measure_logins(
    name: str,
    login: Callable[[], Awaitable[None]],
    pid: int | None,
    concurrency: int,
    seconds: float,
    max_logins: int,
) -> LoginRun:
    """`concurrency` clients, each calling `login` (one whole login) back to back for
    `seconds` or until `max_logins` were started; `pid` is the proxy whose CPU is read."""
    latencies: list[float] = []
    errors: list[str] = []
    started = 0

    async def worker(end: float) -> None:
        nonlocal started
        while time.perf_counter() < end and started < max_logins:
            started += 1
            t0 = time.perf_counter()
            try:
                await login()
            except CLIENT_ERRORS as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t0)

    cpu0 = cpu_seconds(pid) if pid else 0.0
    busy0, self0 = machine_busy_seconds(), self_cpu_seconds()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(t0 + seconds) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    others = (machine_busy_seconds() - busy0) - (self_cpu_seconds() - self0)
    proxy_cpu = cpu_seconds(pid) - cpu0 if pid else None
    return LoginRun(
        target=name,
        ok=len(latencies),
        errors=len(errors),
        wall=wall,
        rate=len(latencies) / wall,
        p50_ms=pct(latencies, 50) * 1e3,
        p99_ms=pct(latencies, 99) * 1e3,
        proxy_cpu=proxy_cpu,
        others_cpu=others,
        first_error=errors[0] if errors else None,
    )


# --------------------------------------------------------------------------- a shared machine


class ForeignMeter(Protocol):
    def measure_foreign(self) -> Callable[[], float]:
        """Start a window; the returned function gives the CPU (in cores) used during
        it by processes that are not part of the benchmark."""
        ...


class RetryPolicy(Protocol):
    @property
    def retries(self) -> int: ...

    @property
    def max_foreign(self) -> float: ...


class Measured(Protocol):
    foreign_cores: float


M = TypeVar("M", bound=Measured)


def quiet_attempt(
    env: ForeignMeter,
    measure: Callable[[], M],
    what: str,
    p: RetryPolicy,
    prepare: Callable[[], None] | None = None,
) -> M:
    """Run one measurement (after `prepare`, which is not part of it); repeat both (at most
    `p.retries` times) while processes outside the benchmark used more than
    `p.max_foreign` cores during the measurement."""
    for attempt in range(p.retries + 1):
        if prepare is not None:
            prepare()
        stop = env.measure_foreign()
        run = measure()
        run.foreign_cores = stop()
        if run.foreign_cores <= p.max_foreign or attempt == p.retries:
            return run
        print(
            f"    ({what}: other processes used {run.foreign_cores:.2f} cores; measuring again)",
            flush=True,
        )
        time.sleep(2.0)
    raise AssertionError("unreachable")


def wait_quiet(env: ForeignMeter, budget: float) -> None:
    """Report (and with a budget, wait for) CPU load from processes outside the benchmark."""
    deadline = time.monotonic() + budget
    while True:
        stop = env.measure_foreign()
        time.sleep(3.0)
        load = stop()
        print(f"#   CPU load from other processes: {load:.2f} cores", flush=True)
        if load < 0.1 or time.monotonic() >= deadline:
            return


def benchmark_cpu_seconds(groups: set[int]) -> float:
    """CPU seconds used so far by this benchmark: this process, its children that run
    (a load process) or were reaped, and the process groups `groups` (servers started
    in their own sessions: Dovecot, gateways; their members are counted there, not
    as children). The difference over a window, subtracted from the machine's busy
    CPU, is the foreign load."""
    live = 0.0
    for pid in children(os.getpid()):
        if pid not in groups:
            with contextlib.suppress(OSError):
                live += cpu_seconds(pid)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        self_cpu_seconds() + reaped.ru_utime + reaped.ru_stime + live + groups_cpu_seconds(groups)
    )


def wait_dovecot_sessions(dovecot: DovecotServer, at_most: int, timeout: float = 60.0) -> int:
    """Wait until at most `at_most` Dovecot `imap` processes are left (sessions that
    ended are still exiting); return how many are left."""
    pgid = dovecot.pid
    if pgid is None:
        return 0
    deadline = time.monotonic() + timeout
    n = count_processes(pgid, "imap")
    while n > at_most and time.monotonic() < deadline:
        time.sleep(0.25)
        n = count_processes(pgid, "imap")
    return n

"""Pieces the benchmarks share (bench/gateway.py, bench/logins.py, bench/defense.py,
bench/portal.py): percentiles, the login-rate loop, the rules for a shared machine
(repeat a measurement that other processes disturbed; wait for Dovecot's session
processes to exit; tell this benchmark's CPU from everybody else's), Dovecot with its
master password {PLAIN}, helper processes, and the frame of a run (command line,
prerequisites, machine facts, results table, exit code)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import multiprocessing
import os
import platform
import resource
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from tests.dovecot import DOVECOT_BINARY, DovecotServer
from tests.gateway import GatewayProcess

from bench._imap import ImapError
from bench._procs import (
    NGINX_BINARY,
    children,
    count_processes,
    cpu_seconds,
    groups_cpu_seconds,
    machine_busy_seconds,
    raise_nofile,
    self_cpu_seconds,
)

__all__ = [
    "CLIENT_ERRORS",
    "LOGIN_USERS",
    "BenchError",
    "ForeignMeter",
    "LoginRun",
    "Measured",
    "RetryPolicy",
    "Row",
    "Summary",
    "argument_parser",
    "benchmark_cpu_seconds",
    "benchmark_window",
    "check_prerequisites",
    "describe_source",
    "foreign_window",
    "helper_process",
    "login_command",
    "machine",
    "make_app_passwords",
    "measure_logins",
    "median",
    "pct",
    "plain_master_password",
    "print_table",
    "quiet_attempt",
    "report",
    "run_params",
    "source_state",
    "start",
    "start_dovecot",
    "stopped",
    "verdict",
    "wait_dovecot_sessions",
    "wait_quiet",
    "wait_ready",
    "work_directory",
]

CLIENT_ERRORS = (ImapError, OSError, TimeoutError, ssl.SSLError, EOFError)


class BenchError(Exception):
    """The benchmark itself went wrong (a process did not answer, a login failed, a
    precondition failed, a factor was not the one meant)."""


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


def foreign_window(ours: Callable[[], tuple[float, float, float]]) -> Callable[[], float]:
    """Start a window; the returned function gives the CPU (in cores) used during it by
    processes that are not part of this benchmark (other users of the box). `ours` reads
    (clock, busy CPU of the machine, CPU of this benchmark's processes)."""
    t0, busy0, ours0 = ours()

    def stop() -> float:
        t1, busy1, ours1 = ours()
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0)

    return stop


def benchmark_window(dovecot: DovecotServer, *pids: int | None) -> Callable[[], float]:
    """foreign_window for a benchmark whose servers are Dovecot and the processes
    `pids` (gateways; None for one that is not running): their process groups, this
    process and its children are ours (benchmark_cpu_seconds)."""
    groups = {pid for pid in (dovecot.pid, *pids) if pid is not None}
    return foreign_window(
        lambda: (time.perf_counter(), machine_busy_seconds(), benchmark_cpu_seconds(groups))
    )


# --------------------------------------------------------------------------- Dovecot


def plain_master_password(dovecot: DovecotServer) -> None:
    """Store the master password as {PLAIN}, like the users' (the fixture uses SHA512-CRYPT,
    which would make every imapguard login cost Dovecot ~1-2 ms more than an nginx one)."""
    path = dovecot.masters_file
    tmp = path.with_name(path.name + ".bench")
    tmp.write_text(f"{dovecot.master_user}:{{PLAIN}}{dovecot.master_password}\n")
    shutil.chown(tmp, "root", "dovecot")
    tmp.chmod(0o640)
    os.replace(tmp, path)


#: Accounts the login-rate benchmarks log in to, in turn. All their clients come from
#: 127.0.0.1, and the gateway lets one login of an (address, account) pair run at a
#: time (`auth/gate.py`, across workers): with the fixture's three accounts, 32 clients
#: measured the queue of three pairs, not the gateway. A real server's logins come
#: from many accounts; 128 keeps every client's login on a pair of its own.
LOGIN_USERS = 128


def start_dovecot(
    base: Path,
    stack: contextlib.ExitStack,
    plain_master: bool = True,
    sessions: int | None = None,
    users: int = 0,
) -> DovecotServer:
    """Dovecot under `base` (its master password {PLAIN} unless not `plain_master`; its
    limits sized for `sessions` concurrent sessions if given; `users` accounts
    `benchNNN` beside the fixture's), started, and stopped when `stack` unwinds."""
    dovecot = DovecotServer.create(base, sessions=sessions)
    if plain_master:
        plain_master_password(dovecot)
    if users:
        dovecot.add_users({f"bench{n:03d}": secrets.token_urlsafe(12) for n in range(users)})
    stack.callback(dovecot.stop)
    dovecot.start()
    return dovecot


# --------------------------------------------------------------------------- IMAP commands


def _quoted(text: str) -> bytes:
    if any(c in text for c in '"\\\r\n'):
        raise ValueError(f"{text!r} cannot be sent as a quoted string")
    return b'"' + text.encode() + b'"'


def login_command(user: str, password: str) -> bytes:
    return b"LOGIN " + _quoted(user) + b" " + _quoted(password)


# --------------------------------------------------------------------------- helper processes


@contextlib.contextmanager
def helper_process(
    target: Callable[..., None], args: tuple[Any, ...], name: str
) -> Iterator[tuple[BaseProcess, Event, Connection]]:
    """Start `target(*args, stop, out)` in a spawned daemon process; yield it, `stop` and
    the end of the pipe it writes to. On exit: `stop` is set, the process terminated if
    it is still alive, the pipe closed."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, stop, writer), name=name, daemon=True)
    proc.start()
    writer.close()
    try:
        yield proc, stop, reader
    finally:
        stop.set()
        if proc.is_alive():
            proc.terminate()
            proc.join(5.0)
        reader.close()


def wait_ready(reader: Connection, late: str, what: str) -> None:
    """Wait (60 s at most) for a helper process's ("ready", None)."""
    if not reader.poll(60.0):
        raise BenchError(late)
    kind, _ = reader.recv()
    if kind != "ready":
        raise BenchError(f"{what}: unexpected message {kind!r}")


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    key: str
    metric: str
    imapguard: str
    reference: str
    ratio: str
    goal: str
    result: str


@dataclass
class Summary:
    rows: list[Row] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


def print_table(s: Summary) -> None:
    headers = Row("#", "metric", "imapguard", "reference", "ratio", "goal", "result")
    rows = [headers, *s.rows]
    cols = list(asdict(headers))
    widths = {c: max(len(getattr(r, c)) for r in rows) for c in cols}
    print()
    for i, r in enumerate(rows):
        print("  ".join(getattr(r, c).ljust(widths[c]) for c in cols).rstrip())
        if i == 0:
            print("  ".join("-" * widths[c] for c in cols))


def machine() -> dict[str, str]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(*cmd: str) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
        except OSError:
            return "?"
        return (out.stdout + out.stderr).strip().splitlines()[0] if out.stdout + out.stderr else "?"

    with open("/proc/meminfo", encoding="ascii") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} x {model}",
        "memory": f"{mem_kib / 2**20:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "uvloop": importlib.metadata.version("uvloop"),
        "nginx": version(str(NGINX_BINARY), "-v"),
        "dovecot": version(str(DOVECOT_BINARY), "--version"),
    }


def source_state(imported_from: str) -> str:
    """Which imapguard was measured: the git commit of its checkout and whether the
    source tree had uncommitted changes (read-only git commands)."""
    src = Path(imported_from).resolve().parent.parent  # .../src
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"git {head}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def describe_source(imported_from: str) -> str:
    """Where imapguard was imported from and which commit that is."""
    return f"{imported_from} ({source_state(imported_from)})"


# --------------------------------------------------------------------------- main


def argument_parser(
    prog: str,
    doc: str,
    only: list[str],
    before_src: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """The options every benchmark has; `before_src` adds its own ones before --src."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--only", choices=only, action="append", help="run only these")
    ap.add_argument("--json", type=Path, help="write all results to this JSON file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    if before_src is not None:
        before_src(ap)
    ap.add_argument(
        "--src",
        type=Path,
        help="benchmark the imapguard package under this directory (default: this checkout's src)",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before measuring, wait up to this long for other processes to leave the CPU idle",
    )
    ap.add_argument(
        "--max-foreign",
        type=float,
        default=0.15,
        metavar="CORES",
        help="repeat a measurement when other processes used more CPU than this during it",
    )
    ap.add_argument(
        "--retries", type=int, help="how often to repeat a disturbed measurement (default 2)"
    )
    return ap


def check_prerequisites(packages: str, paths: Iterable[Path], also: Iterable[str] = ()) -> None:
    """Exit with a message unless `paths` exist, nothing in `also` is missing and this
    runs as root; `packages` is the apt-get install line."""
    missing = [str(p) for p in paths if not p.exists()] + list(also)
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (apt-get install {packages})")
    if os.geteuid() != 0:
        sys.exit("run as root (Dovecot switches users)")


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

P = TypeVar("P", bound="DataclassInstance")


def run_params(base: P, args: argparse.Namespace, **given: Any) -> P:
    """`base` with the command line's --max-foreign, --retries if given, and each of
    `given` (field: option value) that is not None."""
    given = {"retries": args.retries, **given}
    changes = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(base, max_foreign=args.max_foreign, **changes)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start(title: str, quick: bool, params: object, nginx: bool = True) -> dict[str, Any]:
    """Raise RLIMIT_NOFILE, turn SIGTERM into KeyboardInterrupt, print the header and
    the machine facts (without nginx's version unless `nginx`); return the facts."""
    nofile = raise_nofile()
    signal.signal(signal.SIGTERM, _interrupt)
    info: dict[str, Any] = machine()
    if not nginx:
        info.pop("nginx", None)
    print(f"# imapguard {title} benchmark" + (" (--quick)" if quick else ""))
    for k, v in info.items():
        print(f"#   {k}: {v}")
    print(f"#   RLIMIT_NOFILE: {nofile}; params: {params}", flush=True)
    return info


@contextlib.contextmanager
def work_directory(keep: bool, prefix: str) -> Iterator[tuple[Path, contextlib.ExitStack]]:
    """A temporary directory (removed at the end unless `keep`) and an ExitStack that
    is unwound before it is removed."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    with contextlib.ExitStack() as stack:
        if keep:
            print(f"# work directory (kept): {base}")
        else:
            stack.callback(shutil.rmtree, base, True)
        yield base, stack


def uvloop_runner() -> asyncio.Runner:
    import uvloop

    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def stopped(exc: BaseException) -> int:
    """The exit code for a run that was interrupted or went wrong, after saying so."""
    if isinstance(exc, BenchError):
        print(f"\nBENCHMARK ERROR (everything stopped): {exc}", file=sys.stderr)
        return 2
    print("\ninterrupted; everything stopped", file=sys.stderr)
    return 130


def report(
    summary: Summary,
    foreign: dict[str, tuple[float, float]],
    started: float,
    info: dict[str, Any],
    params: Any,
    json_path: Path | None,
    raw: Callable[[], dict[str, Any]],
) -> int:
    """Print the results table, the foreign load and the run time; write the JSON file
    (`raw` gives its raw figures); return the exit code (1 if a goal was missed)."""
    summary.values["foreign_load_cores"] = foreign
    print_table(summary)
    print(
        "\n# CPU used by other processes on this machine during the measurements (cores,"
        " median/max): " + ", ".join(f"({k}) {m:.2f}/{x:.2f}" for k, (m, x) in foreign.items())
    )
    if any(m > 0.1 for m, _ in foreign.values()):
        print("# WARNING: the machine was not quiet; absolute figures and ratios are disturbed")
    print(f"\n# total {time.monotonic() - started:.0f} s")
    if json_path:
        document = {
            "machine": info,
            "params": asdict(params),
            "summary": summary.values,
            "rows": [asdict(r) for r in summary.rows],
            "raw": raw(),
        }
        json_path.write_text(json.dumps(document, indent=2, default=str))
    failed = any(r.result == "FAIL" for r in summary.rows)
    return 1 if failed else 0


def make_app_passwords(gateway: GatewayProcess, users: Iterable[str]) -> dict[str, str]:
    """An app password for each of `users` (the CLI, four at a time: one start of
    `imapguard` costs about 0.6 s of CPU)."""
    names = list(users)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        made = pool.map(lambda u: gateway.create_app_password(u, "bench"), names)
        return dict(zip(names, made, strict=True))

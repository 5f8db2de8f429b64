"""imapguard vs nginx's mail proxy vs Dovecot direct, in one interleaved run.

Run by hand (needs root, Debian dovecot-imapd, nginx + libnginx-mod-mail)::

    .venv/bin/python -m bench.gateway            # full run, about 4-6 minutes
    .venv/bin/python -m bench.gateway --quick    # smoke run, under a minute

Options: --only a|bc|d (repeatable), --json FILE (all figures), --src DIR (benchmark
another imapguard source tree, e.g. a `git archive` of a commit), --wait-quiet SECONDS,
--max-foreign CORES / --retries N (see below), --keep (keep the temporary directory).

Everything runs on 127.0.0.1, on free ports, under a temporary directory, and is
stopped at the end (also on Ctrl-C, SIGTERM or an exception):

* Dovecot (tests.dovecot.DovecotServer): plain port (the upstream of both proxies)
  and its own implicit-TLS port. The fixture's master password is stored as
  SHA512-CRYPT; the benchmark rewrites it as {PLAIN} (like the users' passwords) so
  that a master login and a user login cost Dovecot the same
  (``--master-scheme sha512-crypt`` keeps the fixture's hash).
* imapguard (`imapguard serve` via tests.gateway.GatewayProcess): login = "master",
  app passwords, upstream tls = "none" to Dovecot's plain loopback port.
* nginx's mail proxy: 1 worker, implicit TLS, `auth_http` answered by an nginx
  location (Auth-Status OK, Auth-Server/Port = Dovecot's plain port); nginx logs in
  to Dovecot with the user's own password.
* imapguard and nginx use the same ECDSA P-256 certificate (trustme's default key
  type); Dovecot's own TLS port also has an ECDSA P-256 certificate.

The same uvloop client (bench/_imap.py, in this process) measures every target;
targets alternate round by round (A B C A B C ...) and medians are reported ((a) and
(b) ratios: median of the per-round ratios; (c): percentiles of all rounds' samples
pooled per target). MB = 10^6 bytes.

The box is shared: CPU used during a measurement by processes that are not part of
the benchmark ("foreign load" = all busy CPU minus this process, Dovecot, nginx and
imapguard) is printed per measurement; above --max-foreign cores (0.15) the
measurement is repeated, at most --retries times (2).

(a) logins/s, 16 concurrent clients, each connect + TLS + greeting + LOGIN + LOGOUT
    (imapguard with an app password, the others with the user's password); proxy
    CPU per login from /proc/PID/stat.          Goal: imapguard >= 0.90 x nginx.
(b) FETCH BODY.PEEK[] of a 5 MiB message, several per round.
                                                Goal: imapguard >= 0.95 x Dovecot plain.
(c) NOOP round trip on a logged-in session, concurrency 1; added latency =
    p50/p99 through the proxy - p50/p99 direct to Dovecot plain.
                                                Goal: imapguard <= 1.5 x nginx (p50; p99 too).
(d) PSS per idle IDLE session with N = 1,000 open (proxy restarted before each
    round, warmed up, then PSS delta / N).      Goal: <= 48 KiB per session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import ssl
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from tests.dovecot import DOVEADM_BINARY, DOVECOT_BINARY, DovecotServer, free_port
from tests.gateway import GatewayProcess

from bench._common import (
    LOGIN_USERS,
    BenchError,
    LoginRun,
    Row,
    Summary,
    argument_parser,
    check_prerequisites,
    describe_source,
    foreign_window,
    make_app_passwords,
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
    work_directory,
)
from bench._imap import ImapError, client_ssl_context, connect, open_idle
from bench._procs import (
    NGINX_BINARY,
    NGINX_MAIL_MODULE,
    NginxMailProxy,
    cpu_seconds,
    group_cpu_seconds,
    groups_cpu_seconds,
    machine_busy_seconds,
    memory_kib,
    self_cpu_seconds,
)

GOAL_LOGIN_RATIO = 0.90
GOAL_FETCH_RATIO = 0.95
GOAL_LATENCY_RATIO = 1.5
GOAL_KIB_PER_SESSION = 48.0

MESSAGE_SIZE = 5 * 1024 * 1024
TIMEOUT = 15.0


@dataclass(frozen=True)
class Params:
    rounds: int
    login_seconds: float
    login_concurrency: int
    login_max: int
    warmup_logins: int
    session_rounds: int
    noops: int
    fetches: int
    idle_rounds: int
    idle_sessions: int
    idle_concurrency: int
    idle_setup_seconds: float
    retries: int = 2
    max_foreign: float = 0.15

    @classmethod
    def full(cls) -> Params:
        return cls(
            rounds=3,
            login_seconds=8.0,
            login_concurrency=16,
            login_max=20_000,
            warmup_logins=100,
            session_rounds=5,
            noops=2000,
            fetches=30,
            idle_rounds=3,
            idle_sessions=1000,
            idle_concurrency=16,
            idle_setup_seconds=180.0,
        )

    @classmethod
    def quick(cls) -> Params:
        return cls(
            rounds=2,
            login_seconds=2.0,
            login_concurrency=16,
            login_max=5_000,
            warmup_logins=32,
            session_rounds=2,
            noops=300,
            fetches=4,
            idle_rounds=1,
            idle_sessions=100,
            idle_concurrency=16,
            idle_setup_seconds=60.0,
        )


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    tls: bool
    credentials: Callable[[str], bytes]  # user -> password to send
    pid: Callable[[], int | None]  # the proxy process whose CPU/memory is read


# --------------------------------------------------------------------------- measurements


async def login_once(t: Target, ctx: ssl.SSLContext, user: str) -> None:
    conn = await connect(t.port, ctx if t.tls else None, TIMEOUT)
    try:
        await conn.command(b"a", b"LOGIN " + user.encode() + b" " + t.credentials(user), TIMEOUT)
        await conn.command(b"b", b"LOGOUT", TIMEOUT)
    finally:
        conn.close()
    await conn.closed(5.0)


async def login_rate(
    t: Target, user: str, concurrency: int, seconds: float, max_logins: int
) -> LoginRun:
    ctx = client_ssl_context()
    return await measure_logins(
        t.name, lambda: login_once(t, ctx, user), t.pid(), concurrency, seconds, max_logins
    )


@dataclass
class SessionRun:
    target: str
    noop_us: list[float]
    fetch_mbps: float
    fetch_bytes: int
    fetch_wall: float
    proxy_cpu: float | None
    client_cpu: float
    backend_cpu: float  # Dovecot, all processes
    foreign_cores: float = 0.0


async def session_bench(
    t: Target, user: str, noops: int, fetches: int, backend_pgid: int
) -> SessionRun:
    """One logged-in session: NOOP round trips, then `fetches` x FETCH 1 BODY.PEEK[]."""
    conn = await connect(t.port, client_ssl_context() if t.tls else None, TIMEOUT)
    try:
        await conn.command(b"a", b"LOGIN " + user.encode() + b" " + t.credentials(user), TIMEOUT)
        await conn.command(b"s", b"SELECT INBOX", TIMEOUT)
        for _ in range(50):  # warm-up
            await conn.command(b"n", b"NOOP", TIMEOUT)
        samples: list[float] = []
        clock = time.perf_counter
        for _ in range(noops):
            t0 = clock()
            await conn.command(b"n", b"NOOP", TIMEOUT)
            samples.append((clock() - t0) * 1e6)
        await conn.command(b"w", b"FETCH 1 BODY.PEEK[]", 60.0)  # warm-up (page cache)
        pid = t.pid()
        cpu0 = cpu_seconds(pid) if pid else 0.0
        self0, backend0 = self_cpu_seconds(), group_cpu_seconds(backend_pgid)
        before = conn.literal_bytes
        t0 = clock()
        for i in range(fetches):
            await conn.command(f"f{i}".encode(), b"FETCH 1 BODY.PEEK[]", 60.0)
        dt = clock() - t0
        got = conn.literal_bytes - before
        proxy_cpu = cpu_seconds(pid) - cpu0 if pid else None
        client_cpu = self_cpu_seconds() - self0
        backend_cpu = group_cpu_seconds(backend_pgid) - backend0
        if got < fetches * MESSAGE_SIZE:
            raise ImapError(f"{t.name}: FETCH returned {got} bytes, expected >= {MESSAGE_SIZE}")
        await conn.command(b"z", b"LOGOUT", TIMEOUT)
    finally:
        conn.close()
    await conn.closed(5.0)
    return SessionRun(t.name, samples, got / dt / 1e6, got, dt, proxy_cpu, client_cpu, backend_cpu)


@dataclass
class IdleRun:
    target: str
    sessions: int
    errors: int
    setup_s: float
    pss_before_kib: int
    pss_after_kib: int
    rss_before_kib: int
    rss_after_kib: int
    first_error: str | None = None
    foreign_cores: float = 0.0

    @property
    def pss_per_session(self) -> float:
        return (self.pss_after_kib - self.pss_before_kib) / max(self.sessions, 1)

    @property
    def rss_per_session(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(self.sessions, 1)


async def idle_sessions(
    t: Target, users: list[str], n: int, concurrency: int, budget: float, pid: int
) -> IdleRun:
    """Open `n` sessions (LOGIN, SELECT INBOX, IDLE), read the proxy's PSS, close them."""
    ctx = client_ssl_context()
    await asyncio.sleep(1.0)
    pss0, rss0 = memory_kib(pid)
    opened = None
    try:
        opened = await open_idle(
            t.port,
            ctx if t.tls else None,
            lambda user: user.encode() + b" " + t.credentials(user),
            users,
            n,
            concurrency,
            budget,
            TIMEOUT,
        )
        errors = opened.errors
        await asyncio.sleep(3.0)
        pss1, rss1 = memory_kib(pid)
        # Every session must still be there when memory is read.
        alive = opened.alive()
        if alive != len(opened.conns):
            errors.append(f"{len(opened.conns) - alive} sessions closed before the reading")
    finally:
        if opened is not None:
            await opened.close()
    return IdleRun(
        t.name,
        alive,
        len(errors),
        opened.setup_s,
        pss0,
        pss1,
        rss0,
        rss1,
        errors[0] if errors else None,
    )


# --------------------------------------------------------------------------- environment


class BenchGateway(GatewayProcess):
    """GatewayProcess that can run another source tree (`--src`) than this checkout's."""

    src_override: ClassVar[Path | None] = None

    def _env(self) -> dict[str, str]:
        env = super()._env()
        if self.src_override is not None:
            env["PYTHONPATH"] = f"{self.src_override}{os.pathsep}{env['PYTHONPATH']}"
        return env

    def running_pid(self) -> int:
        if self.proc is None:
            raise BenchError("imapguard serve is not running")
        return self.proc.pid

    def imported_from(self) -> str:
        out = subprocess.run(
            [sys.executable, "-c", "import imapguard; print(imapguard.__file__)"],
            capture_output=True,
            text=True,
            env=self._env(),
            check=False,
            timeout=30,
        )
        return out.stdout.strip() or out.stderr.strip()[-200:]


@dataclass
class Env:
    base: Path
    dovecot: DovecotServer
    gateway: BenchGateway
    nginx: NginxMailProxy
    app_passwords: dict[str, str]
    master_scheme: str

    @property
    def users(self) -> list[str]:
        return sorted(self.dovecot.users)

    def gateway_pid(self) -> int | None:
        return self.gateway.proc.pid if self.gateway.proc is not None else None

    def _ours(self) -> tuple[float, float, float]:
        groups = {p.pid for p in (self.gateway.proc, self.nginx.proc) if p is not None} | (
            {self.dovecot.pid} if self.dovecot.pid is not None else set()
        )
        return (
            time.perf_counter(),
            machine_busy_seconds(),
            (self_cpu_seconds() + groups_cpu_seconds(groups)),
        )

    def measure_foreign(self) -> Callable[[], float]:
        """Start a window; the returned function gives the CPU (in cores) used during
        it by processes that are not part of this benchmark (other users of the box)."""
        return foreign_window(self._ours)

    def targets(self) -> dict[str, Target]:
        dv = self.dovecot

        def own(user: str) -> bytes:
            return dv.users[user].encode()

        def app(user: str) -> bytes:
            return self.app_passwords[user].encode()

        return {
            "imapguard": Target(
                "imapguard", self.gateway.implicit_port, True, app, self.gateway_pid
            ),
            "nginx": Target("nginx", self.nginx.port, True, own, self.nginx.worker_pid),
            "dovecot-tls": Target("dovecot-tls", dv.imaps_port, True, own, lambda: None),
            "dovecot-plain": Target("dovecot-plain", dv.imap_port, False, own, lambda: None),
        }


def _message(size: int) -> bytes:
    rng = random.Random(20251125)
    alphabet = string.ascii_letters + string.digits + "+/"
    head = (
        b"From: Bench <bench@example.org>\r\nTo: alice@example.org\r\n"
        b"Subject: 5 MiB benchmark message\r\nDate: Tue, 25 Nov 2025 12:00:00 +0000\r\n"
        b"Message-ID: <bench-5mib@example.org>\r\nContent-Type: text/plain\r\n\r\n"
    )
    lines = [head]
    total = len(head)
    while total < size:
        line = "".join(rng.choices(alphabet, k=76)).encode() + b"\r\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)


@contextlib.contextmanager
def environment(keep: bool, master_scheme: str) -> Iterator[Env]:
    with work_directory(keep, "igbench-") as (base, stack):
        dovecot = start_dovecot(
            base / "dovecot", stack, master_scheme == "plain", users=LOGIN_USERS
        )
        dovecot.deliver("alice", _message(MESSAGE_SIZE))

        gateway = BenchGateway.create(base / "gateway", dovecot, upstream_tls="none")
        assert isinstance(gateway, BenchGateway)
        app_passwords = make_app_passwords(gateway, dovecot.users)
        stack.callback(gateway.stop)
        gateway.start()

        nginx = NginxMailProxy(
            prefix=base / "nginx",
            port=free_port(),
            auth_port=free_port(),
            upstream_port=dovecot.imap_port,
            certificate=gateway.base / "gateway.pem",
            private_key=gateway.base / "gateway.key",
        )
        nginx.write_config()
        stack.callback(nginx.stop)
        nginx.start()
        yield Env(base, dovecot, gateway, nginx, app_passwords, master_scheme)


def _wait_dovecot_sessions(env: Env, at_most: int, timeout: float = 60.0) -> int:
    return wait_dovecot_sessions(env.dovecot, at_most, timeout)


def _certificate_summary(path: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    return type(key).__name__


# --------------------------------------------------------------------------- phases


def phase_logins(runner: asyncio.Runner, env: Env, p: Params) -> dict[str, list[LoginRun]]:
    order = ["imapguard", "nginx", "dovecot-tls", "dovecot-plain"]
    targets = env.targets()
    user = env.users[0]
    print(
        f"\n## (a) login rate: {p.login_concurrency} clients x {p.login_seconds:.0f} s per target,"
        f" {p.rounds} interleaved rounds (user {user})",
        flush=True,
    )
    for name in order:  # warm-up, not counted
        runner.run(login_rate(targets[name], user, p.login_concurrency, 30.0, p.warmup_logins))
    runs: dict[str, list[LoginRun]] = {name: [] for name in order}
    for r in range(p.rounds):
        for name in order:

            def measure(t: Target = targets[name]) -> LoginRun:
                _wait_dovecot_sessions(env, 8, 10.0)
                return runner.run(
                    login_rate(t, user, p.login_concurrency, p.login_seconds, p.login_max)
                )

            run = quiet_attempt(env, measure, name, p)
            runs[name].append(run)
            cpu = run.cpu_us_per_login
            print(
                f"  r{r + 1} {name:14s} {run.rate:7.1f} logins/s  ok={run.ok} err={run.errors}"
                f"  p50={run.p50_ms:.1f} ms p99={run.p99_ms:.1f} ms"
                + (f"  proxy CPU {cpu:.0f} us/login" if cpu is not None else "")
                + f"  box CPU excl. client {run.others_cpu / max(run.ok, 1) * 1e6:.0f} us/login"
                + f"  foreign load {run.foreign_cores:.2f} cores"
                + (f"  first error: {run.first_error}" if run.first_error else ""),
                flush=True,
            )
    return runs


def phase_sessions(runner: asyncio.Runner, env: Env, p: Params) -> dict[str, list[SessionRun]]:
    order = ["dovecot-plain", "imapguard", "nginx", "dovecot-tls"]
    targets = env.targets()
    user = "alice"
    pgid = env.dovecot.pid
    assert pgid is not None
    print(
        f"\n## (b)+(c) one session per target and round: {p.noops} NOOPs, then {p.fetches} x"
        f" FETCH of a {MESSAGE_SIZE >> 20} MiB message; {p.session_rounds} interleaved rounds",
        flush=True,
    )
    runs: dict[str, list[SessionRun]] = {name: [] for name in order}
    for r in range(p.session_rounds):
        for name in order:

            def measure(t: Target = targets[name]) -> SessionRun:
                return runner.run(session_bench(t, user, p.noops, p.fetches, pgid))

            run = quiet_attempt(env, measure, name, p)
            runs[name].append(run)
            cpu = (
                f" proxy {run.proxy_cpu / run.fetch_wall:4.0%}"
                f" ({run.fetch_bytes / 1e6 / run.proxy_cpu:.0f} MB per proxy-core-s)"
                if run.proxy_cpu
                else ""
            )
            print(
                f"  r{r + 1} {name:14s} FETCH {run.fetch_mbps:6.0f} MB/s  CPU: client"
                f" {run.client_cpu / run.fetch_wall:4.0%} Dovecot"
                f" {run.backend_cpu / run.fetch_wall:4.0%}{cpu} |"
                f"  NOOP p50={pct(run.noop_us, 50):.0f} us p99={pct(run.noop_us, 99):.0f} us"
                f" | foreign load {run.foreign_cores:.2f} cores",
                flush=True,
            )
    return runs


def _restart(env: Env, name: str) -> int:
    if name == "imapguard":
        env.gateway.stop()
        env.gateway.start()
        pid = env.gateway_pid()
    else:
        env.nginx.stop()
        env.nginx.start()
        pid = env.nginx.worker_pid()
    if pid is None:
        raise RuntimeError(f"{name}: no process to measure")
    return pid


def phase_idle(runner: asyncio.Runner, env: Env, p: Params) -> dict[str, list[IdleRun]]:
    order = ["imapguard", "nginx"]
    targets = env.targets()
    print(
        f"\n## (d) memory: {p.idle_sessions} idle sessions (LOGIN, SELECT INBOX, IDLE) per target,"
        f" {p.idle_rounds} interleaved rounds; proxy restarted and warmed up before each",
        flush=True,
    )
    runs: dict[str, list[IdleRun]] = {name: [] for name in order}
    for r in range(p.idle_rounds):
        for name in order:
            pids: list[int] = []

            def prepare(t: Target = targets[name], pids: list[int] = pids) -> None:
                left = _wait_dovecot_sessions(env, 8)
                if left > 8:
                    print(f"  warning: {left} Dovecot imap processes still running", flush=True)
                pids[:] = [_restart(env, t.name)]
                runner.run(login_rate(t, env.users[0], 16, 30.0, 64))  # warm-up

            def measure(t: Target = targets[name], pids: list[int] = pids) -> IdleRun:
                return runner.run(
                    idle_sessions(
                        t,
                        env.users,
                        p.idle_sessions,
                        p.idle_concurrency,
                        p.idle_setup_seconds,
                        pids[0],
                    )
                )

            run = quiet_attempt(env, measure, name, p, prepare)
            runs[name].append(run)
            print(
                f"  r{r + 1} {name:10s} N={run.sessions} err={run.errors}"
                f"  PSS {run.pss_before_kib / 1024:.1f} -> {run.pss_after_kib / 1024:.1f} MiB"
                f" = {run.pss_per_session:.1f} KiB/session"
                f"  (RSS {run.rss_per_session:.1f} KiB/session; setup {run.setup_s:.1f} s)"
                f"  foreign load {run.foreign_cores:.2f} cores"
                + (f"  first error: {run.first_error}" if run.first_error else ""),
                flush=True,
            )
    _wait_dovecot_sessions(env, 8)
    return runs


# --------------------------------------------------------------------------- report


def _per_round_ratio(a: list[float], b: list[float]) -> float:
    return median([x / y for x, y in zip(a, b, strict=True) if y > 0])


def summarize(
    logins: dict[str, list[LoginRun]] | None,
    sessions: dict[str, list[SessionRun]] | None,
    idle: dict[str, list[IdleRun]] | None,
) -> Summary:
    s = Summary()
    if logins:
        rate = {n: [r.rate for r in runs] for n, runs in logins.items()}
        ratio = _per_round_ratio(rate["imapguard"], rate["nginx"])
        ratio_tls = _per_round_ratio(rate["imapguard"], rate["dovecot-tls"])
        cpu = {
            n: median([c for r in runs if (c := r.cpu_us_per_login) is not None])
            for n, runs in logins.items()
            if n in ("imapguard", "nginx")
        }
        box = {
            n: median([r.others_cpu / max(r.ok, 1) * 1e6 for r in runs])
            for n, runs in logins.items()
        }
        med = {n: median(v) for n, v in rate.items()}
        s.values["a"] = {
            "median_rate": med,
            "ratio_vs_nginx": ratio,
            "ratio_vs_dovecot_tls": ratio_tls,
            "proxy_cpu_us_per_login": cpu,
            "box_cpu_us_per_login_excl_client": box,
            "errors": {n: sum(r.errors for r in runs) for n, runs in logins.items()},
        }
        s.rows.append(
            Row(
                "a",
                "logins/s, 16 clients (TLS+LOGIN+LOGOUT)",
                f"{med['imapguard']:.0f}",
                f"nginx {med['nginx']:.0f}; Dovecot TLS {med['dovecot-tls']:.0f}",
                f"{ratio:.2f}",
                f">= {GOAL_LOGIN_RATIO:.2f}",
                verdict(ratio >= GOAL_LOGIN_RATIO),
            )
        )
        s.rows.append(
            Row(
                "a'",
                "proxy CPU per login (us)",
                f"{cpu['imapguard']:.0f}",
                f"nginx {cpu['nginx']:.0f}",
                f"{cpu['imapguard'] / cpu['nginx']:.2f}",
                "info",
                "",
            )
        )
    if sessions:
        mbps = {n: [r.fetch_mbps for r in runs] for n, runs in sessions.items()}
        ratio = _per_round_ratio(mbps["imapguard"], mbps["dovecot-plain"])
        med = {n: median(v) for n, v in mbps.items()}
        pooled = {n: [x for r in runs for x in r.noop_us] for n, runs in sessions.items()}
        p50 = {n: pct(v, 50) for n, v in pooled.items()}
        p99 = {n: pct(v, 99) for n, v in pooled.items()}
        added50 = {n: p50[n] - p50["dovecot-plain"] for n in pooled}
        added99 = {n: p99[n] - p99["dovecot-plain"] for n in pooled}

        def lat_ratio(added: dict[str, float]) -> float | None:
            return added["imapguard"] / added["nginx"] if added["nginx"] > 0 else None

        r50, r99 = lat_ratio(added50), lat_ratio(added99)

        def ms_per_mb(runs: list[SessionRun], what: str) -> float:
            cpu = [getattr(r, what) for r in runs if getattr(r, what) is not None]
            mb = [r.fetch_bytes / 1e6 for r in runs if getattr(r, what) is not None]
            return sum(cpu) / sum(mb) * 1e3 if mb else float("nan")

        def busy(runs: list[SessionRun]) -> float:
            return median(
                [(r.client_cpu + r.backend_cpu + (r.proxy_cpu or 0.0)) / r.fetch_wall for r in runs]
            )

        cost = {
            n: {w: ms_per_mb(runs, w) for w in ("client_cpu", "proxy_cpu", "backend_cpu")}
            for n, runs in sessions.items()
        }
        s.values["b"] = {
            "median_mbps": med,
            "ratio_vs_dovecot_plain": ratio,
            "cpu_ms_per_mb": cost,
            "cpu_busy_cores": {n: busy(runs) for n, runs in sessions.items()},
        }
        s.values["c"] = {
            "p50_us": p50,
            "p99_us": p99,
            "added_p50_us": added50,
            "added_p99_us": added99,
            "ratio_p50": r50,
            "ratio_p99": r99,
        }
        s.rows.append(
            Row(
                "b",
                f"FETCH {MESSAGE_SIZE >> 20} MiB BODY.PEEK[] (MB/s)",
                f"{med['imapguard']:.0f}",
                f"Dovecot plain {med['dovecot-plain']:.0f}; nginx {med['nginx']:.0f};"
                f" Dovecot TLS {med['dovecot-tls']:.0f}",
                f"{ratio:.2f}",
                f">= {GOAL_FETCH_RATIO:.2f}",
                verdict(ratio >= GOAL_FETCH_RATIO),
            )
        )
        ig, ng = cost["imapguard"]["proxy_cpu"], cost["nginx"]["proxy_cpu"]
        s.rows.append(
            Row(
                "b'",
                "proxy CPU per MB fetched (ms); cores busy (client+proxy+Dovecot)",
                f"{ig:.2f}; {s.values['b']['cpu_busy_cores']['imapguard']:.2f}",
                f"nginx {ng:.2f}; {s.values['b']['cpu_busy_cores']['nginx']:.2f}"
                f" (Dovecot plain: {s.values['b']['cpu_busy_cores']['dovecot-plain']:.2f})",
                f"{ig / ng:.2f}",
                "info",
                "",
            )
        )
        for key, label, added, r in (
            ("c", "p50", added50, r50),
            ("c'", "p99", added99, r99),
        ):
            s.rows.append(
                Row(
                    key,
                    f"NOOP added latency {label} (us, vs Dovecot plain"
                    f" {(p50 if label == 'p50' else p99)['dovecot-plain']:.0f})",
                    f"{added['imapguard']:+.0f}",
                    f"nginx {added['nginx']:+.0f}; Dovecot TLS {added['dovecot-tls']:+.0f}",
                    "n/a" if r is None else f"{r:.2f}",
                    f"<= {GOAL_LATENCY_RATIO:.1f}",
                    verdict(None if r is None else r <= GOAL_LATENCY_RATIO),
                )
            )
    if idle:
        per = {n: median([r.pss_per_session for r in runs]) for n, runs in idle.items()}
        rss = {n: median([r.rss_per_session for r in runs]) for n, runs in idle.items()}
        s.values["d"] = {
            "pss_kib_per_session": per,
            "rss_kib_per_session": rss,
            "rounds": {n: [r.pss_per_session for r in runs] for n, runs in idle.items()},
            "sessions": {n: [r.sessions for r in runs] for n, runs in idle.items()},
        }
        s.rows.append(
            Row(
                "d",
                "PSS per idle IDLE session (KiB)",
                f"{per['imapguard']:.1f}",
                f"nginx {per['nginx']:.1f}",
                f"{per['imapguard'] / per['nginx']:.2f}" if per["nginx"] > 0 else "n/a",
                f"<= {GOAL_KIB_PER_SESSION:.0f} KiB",
                verdict(per["imapguard"] <= GOAL_KIB_PER_SESSION),
            )
        )
    return s


def foreign_load(
    logins: dict[str, list[LoginRun]] | None,
    sessions: dict[str, list[SessionRun]] | None,
    idle: dict[str, list[IdleRun]] | None,
) -> dict[str, tuple[float, float]]:
    """(median, max) CPU cores used by other processes on the box, per phase."""
    out: dict[str, tuple[float, float]] = {}
    for key, runs in (("a", logins), ("b+c", sessions), ("d", idle)):
        if runs:
            xs = [r.foreign_cores for v in runs.values() for r in v]
            out[key] = (median(xs), max(xs))
    return out


# --------------------------------------------------------------------------- main


def _check_prerequisites() -> None:
    check_prerequisites(
        "dovecot-imapd nginx libnginx-mod-mail",
        (DOVECOT_BINARY, DOVEADM_BINARY, NGINX_BINARY, NGINX_MAIL_MODULE),
    )


def _sanity(runner: asyncio.Runner, env: Env) -> None:
    for t in env.targets().values():
        runner.run(login_once(t, client_ssl_context(), "alice"))


def main(argv: list[str] | None = None) -> int:
    def master_scheme(ap: argparse.ArgumentParser) -> None:
        ap.add_argument(
            "--master-scheme",
            choices=["plain", "sha512-crypt"],
            default="plain",
            help="how Dovecot stores the master password (default: plain, like the users')",
        )

    ap = argument_parser("python -m bench.gateway", __doc__, ["a", "bc", "d"], master_scheme)
    args = ap.parse_args(argv)
    if args.src is not None:
        BenchGateway.src_override = args.src.resolve()
    _check_prerequisites()
    p = run_params(Params.quick() if args.quick else Params.full(), args)
    only = set(args.only or ["a", "bc", "d"])
    info = start("gateway", args.quick, p)
    started = time.monotonic()
    logins = sessions = idle = None
    try:
        with (
            environment(args.keep, args.master_scheme) as env,
            uvloop_runner() as runner,
        ):
            cert = _certificate_summary(env.gateway.base / "gateway.pem")
            dcert = _certificate_summary(env.dovecot.base / "server-chain.pem")
            print(
                f"#   certificates: imapguard and nginx {cert}; Dovecot {dcert};"
                f" Dovecot master password {{{args.master_scheme.upper()}}}",
                flush=True,
            )
            info["imapguard"] = describe_source(env.gateway.imported_from())
            print(f"#   imapguard: {info['imapguard']}", flush=True)
            wait_quiet(env, args.wait_quiet)
            _sanity(runner, env)
            if "a" in only:
                logins = phase_logins(runner, env, p)
            if "bc" in only:
                sessions = phase_sessions(runner, env, p)
            if "d" in only:
                idle = phase_idle(runner, env, p)
    except KeyboardInterrupt as exc:
        return stopped(exc)
    summary = summarize(logins, sessions, idle)

    def raw() -> dict[str, Any]:
        return {
            "logins": {n: [asdict(r) for r in v] for n, v in (logins or {}).items()},
            "sessions": {
                n: [{**asdict(r), "noop_us": None} for r in v] for n, v in (sessions or {}).items()
            },
            "idle": {n: [asdict(r) for r in v] for n, v in (idle or {}).items()},
        }

    foreign = foreign_load(logins, sessions, idle)
    return report(summary, foreign, started, info, p, args.json, raw)


if __name__ == "__main__":
    sys.exit(main())

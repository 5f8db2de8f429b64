"""imapguard at scale against nginx's mail proxy, in one interleaved run.

Run by hand (needs root, Debian dovecot-imapd, nginx + libnginx-mod-mail)::

    .venv/bin/python -m bench.scale             # all phases, ~14 minutes
    .venv/bin/python -m bench.scale --only logins --only cpu    # ~5 minutes
    .venv/bin/python -m bench.scale --quick     # 1,000 sessions, short rounds, ~3 minutes

Options: --only memory|logins|cpu (repeatable; the phases are listed in PHASES),
--sessions N, --rounds N (memory), --workers N (memory: the gateway's `[server]
workers` and nginx's `worker_processes`; default: each server's default, nginx 1;
logins and cpu choose theirs), --json FILE, --src DIR, --keep, --wait-quiet /
--max-foreign / --retries (as bench/gateway.py; memory is not repeated by default,
a login measurement twice).

Everything runs on 127.0.0.1, on free ports, under a temporary directory, and is
stopped at the end (also on Ctrl-C, SIGTERM or an exception):

* Dovecot (tests.dovecot.DovecotServer) with its limits sized for the sessions
  (`sessions=N`: 50 sessions per `imap` process, mail_max_userip_connections N+1000,
  its master's RLIMIT_NOFILE raised); the plain port is both proxies' upstream.
* imapguard (`imapguard serve`, tests.gateway.GatewayProcess): login = "master", app
  passwords, upstream tls = "none"; the per-source pre-auth limit is the client's
  concurrency's (all sessions come from 127.0.0.1).
* nginx's mail proxy (bench._procs.NginxMailProxy): implicit TLS, `auth_http`
  answered by itself, the same certificate as imapguard.
* This process raises its own RLIMIT_NOFILE (bench._common.start); the servers inherit it.

memory: N (10,000; --quick 1,000) idle authenticated sessions (TLS, LOGIN, SELECT
    INBOX, IDLE; 16 opened at a time) opened right after the server starts, with no
    warm-up batch; RSS and PSS summed over ALL the server's processes (the process
    started and every descendant: workers, helpers; for nginx master and workers),
    read before the first session and 3 s after the last; per session = delta / N.
    The server is restarted before each round; targets alternate round by round.
                                                Goal: imapguard RSS <= 40 KiB per session.

logins: login rate, C (32) clients of this process back to back, each login connect +
    TLS (full handshake, no session resumption) + greeting + LOGIN (an app password;
    nginx: the user's own) + LOGOUT, the users in turn; imapguard with `[server]
    workers` 1 and all cores, nginx with worker_processes 1 and all cores; each
    server restarted before its measurement and warmed up (2 s, until every worker
    took logins; not counted); targets alternate round by round (3 rounds of 8 s),
    medians of the per-round ratios.
                                                Goals: imapguard workers 2 / workers 1
                                                >= 1.7; imapguard / nginx with all
                                                cores >= 1.0.
    The load generator and Dovecot run on the same cores: every login costs the
    machine its server's CPU plus Dovecot's plus the client's, so no server can go
    beyond cores / (the machine's CPU per login); printed as the ceiling of the
    workers' ratio, and each run prints the CPU per login of the server (summed over
    its process tree), Dovecot, the client and the whole machine.
cpu: CPU seconds per login of all the server's processes (the serve process and its
    workers; nginx's master and workers: /proc/PID/stat of each, utime + stime +
    the reaped children's), all cores for both, 8 clients (below saturation, so that
    queueing does not change the cost), interleaved rounds as above.
                                                Goal: imapguard <= 1.5 x nginx.

Phases plug into PHASES (a function of (runner, env, params) returning its runs) and
its summary function.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import re
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.dovecot import DOVEADM_BINARY, DOVECOT_BINARY, DovecotServer, free_port

from bench._common import (
    LOGIN_USERS,
    BenchError,
    Row,
    Summary,
    argument_parser,
    check_prerequisites,
    describe_source,
    foreign_window,
    make_app_passwords,
    measure_logins,
    median,
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
from bench._imap import client_ssl_context, open_idle
from bench._procs import (
    NGINX_BINARY,
    NGINX_MAIL_MODULE,
    NginxMailProxy,
    children,
    cpu_seconds,
    group_cpu_seconds,
    groups_cpu_seconds,
    machine_busy_seconds,
    self_cpu_seconds,
    tree_cpu_seconds,
    tree_memory_kib,
    tree_pids,
)
from bench.gateway import BenchGateway, Target, _per_round_ratio, login_once

GOAL_RSS_KIB_PER_SESSION = 40.0
GOAL_WORKERS_RATIO = 1.7
GOAL_NGINX_RATE_RATIO = 1.0
GOAL_CPU_RATIO = 1.5
TIMEOUT = 30.0
CONCURRENCY = 16


@dataclass(frozen=True)
class Params:
    rounds: int
    sessions: int
    concurrency: int
    setup_budget_s: float
    settle_s: float
    workers: int | None = None
    # logins and cpu: `login_rounds` interleaved rounds of `login_seconds` per target,
    # each after a restart and `warmup_s` of logins that are not counted.
    login_rounds: int = 3
    login_seconds: float = 8.0
    login_concurrency: int = 32
    cpu_concurrency: int = 8
    warmup_s: float = 2.0
    login_retries: int = 2
    # Memory is what is measured, and other processes' CPU does not change it: a busy
    # machine is reported, not waited out (--retries and --max-foreign change this).
    retries: int = 0
    max_foreign: float = 0.15

    @classmethod
    def full(cls) -> Params:
        return cls(
            rounds=2, sessions=10_000, concurrency=CONCURRENCY, setup_budget_s=600, settle_s=3
        )

    @classmethod
    def quick(cls) -> Params:
        return cls(
            rounds=1,
            sessions=1_000,
            concurrency=CONCURRENCY,
            setup_budget_s=120,
            settle_s=3,
            login_rounds=1,
            login_seconds=4.0,
        )


# --------------------------------------------------------------------------- environment


@dataclass
class Server:
    """One measured proxy: how to (re)start it, its root process, its port and the
    LOGIN arguments it wants for a user."""

    name: str
    port: int
    restart: Callable[[], int]  # returns the root pid of the fresh server
    login: Callable[[str], bytes]


@dataclass
class Env:
    base: Path
    dovecot: DovecotServer
    gateway: BenchGateway
    nginx: NginxMailProxy
    app_passwords: dict[str, str]
    root_pids: dict[str, int] = field(default_factory=dict)

    @property
    def users(self) -> list[str]:
        return sorted(self.dovecot.users)

    def _ours(self) -> tuple[float, float, float]:
        roots = {p.pid for p in (self.gateway.proc, self.nginx.proc) if p is not None}
        # Every process of the servers' trees leads or joins a group counted as
        # ours: the gateway's workers start sessions of their own (children.py),
        # so the gateway's group alone left them out, counted as foreign load.
        groups = {pid for root in roots for pid in tree_pids(root)} | (
            {self.dovecot.pid} if self.dovecot.pid is not None else set()
        )
        return (
            time.perf_counter(),
            machine_busy_seconds(),
            self_cpu_seconds() + groups_cpu_seconds(groups),
        )

    def measure_foreign(self) -> Callable[[], float]:
        return foreign_window(self._ours)

    def restart_gateway(self, workers: int) -> int:
        """Restart `imapguard serve` with `[server] workers = workers`; return its pid.
        With workers, the parent binds the sockets before the workers run: a worker
        may still be starting (the warm-up of `_rate_round` waits for each)."""
        gw = self.gateway
        gw.stop()
        text = gw.config_path.read_text()
        gw.config_path.write_text(
            re.sub(r"(?m)^workers = \d+$", f"workers = {workers}", text, count=1)
        )
        gw.start(timeout=60.0)
        return gw.running_pid()

    def restart_nginx(self, workers: int) -> int:
        """Restart nginx with `worker_processes workers`; return its master's pid."""
        self.nginx.stop()
        self.nginx.workers = workers
        self.nginx.write_config()
        self.nginx.start()
        if self.nginx.proc is None:
            raise BenchError("nginx did not start")
        return self.nginx.proc.pid

    def servers(self, workers: int) -> dict[str, Server]:
        """The two proxies, each restarted with `workers` processes."""
        dv = self.dovecot
        return {
            "imapguard": Server(
                "imapguard",
                self.gateway.implicit_port,
                lambda: self.restart_gateway(workers),
                lambda u: u.encode() + b" " + self.app_passwords[u].encode(),
            ),
            "nginx": Server(
                "nginx",
                self.nginx.port,
                lambda: self.restart_nginx(workers),
                lambda u: u.encode() + b" " + dv.users[u].encode(),
            ),
        }


def _gateway_toml(p: Params) -> str:
    # All sessions come from 127.0.0.1: let its pre-auth slots cover the clients'
    # concurrency (the default is 20).
    most = max(p.concurrency, p.login_concurrency, p.cpu_concurrency)
    return f"\n[limits]\nmax_preauth_per_source = {max(20, most * 2)}\n"


@contextlib.contextmanager
def environment(keep: bool, p: Params) -> Iterator[Env]:
    with work_directory(keep, "igscale-") as (base, stack):
        dovecot = start_dovecot(base / "dovecot", stack, sessions=p.sessions, users=LOGIN_USERS)
        gateway = BenchGateway.create(
            base / "gateway",
            dovecot,
            upstream_tls="none",
            extra_toml=_gateway_toml(p),
            workers=p.workers or 1,
        )
        assert isinstance(gateway, BenchGateway)
        app_passwords = make_app_passwords(gateway, dovecot.users)
        stack.callback(gateway.stop)
        nginx = NginxMailProxy(
            prefix=base / "nginx",
            port=free_port(),
            auth_port=free_port(),
            upstream_port=dovecot.imap_port,
            certificate=gateway.base / "gateway.pem",
            private_key=gateway.base / "gateway.key",
            workers=p.workers or 1,
            connections=2 * p.sessions + 1000,
        )
        nginx.write_config()
        stack.callback(nginx.stop)
        yield Env(base, dovecot, gateway, nginx, app_passwords)


# --------------------------------------------------------------------------- memory


@dataclass
class MemoryRun:
    target: str
    sessions: int
    errors: int
    setup_s: float
    processes: int
    pss_before_kib: int
    pss_after_kib: int
    rss_before_kib: int
    rss_after_kib: int
    first_error: str | None = None
    foreign_cores: float = 0.0

    @property
    def rss_per_session(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(self.sessions, 1)

    @property
    def pss_per_session(self) -> float:
        return (self.pss_after_kib - self.pss_before_kib) / max(self.sessions, 1)


async def idle_memory(s: Server, root: int, users: list[str], p: Params) -> MemoryRun:
    """Right after the server started: its memory, `p.sessions` idle sessions, its memory."""
    pss0, rss0, _ = tree_memory_kib(root)
    opened = None
    try:
        opened = await open_idle(
            s.port,
            client_ssl_context(),
            s.login,
            users,
            p.sessions,
            p.concurrency,
            p.setup_budget_s,
            TIMEOUT,
            max_errors=max(50, p.sessions // 50),
        )
        await asyncio.sleep(p.settle_s)
        pss1, rss1, processes = tree_memory_kib(root)
        alive = opened.alive()
        errors = opened.errors
        if alive != len(opened.conns):
            errors.append(f"{len(opened.conns) - alive} sessions closed before the reading")
        return MemoryRun(
            s.name,
            alive,
            len(errors),
            opened.setup_s,
            processes,
            pss0,
            pss1,
            rss0,
            rss1,
            errors[0] if errors else None,
        )
    finally:
        if opened is not None:
            await opened.close()


def phase_memory(runner: asyncio.Runner, env: Env, p: Params) -> dict[str, list[MemoryRun]]:
    servers = env.servers(p.workers or 1)
    order = ["imapguard", "nginx"]
    print(
        f"\n## memory: {p.sessions} idle sessions (TLS, LOGIN, SELECT INBOX, IDLE) per target,"
        f" {p.rounds} interleaved rounds; each server freshly started, no warm-up",
        flush=True,
    )
    runs: dict[str, list[MemoryRun]] = {name: [] for name in order}
    for r in range(p.rounds):
        for name in order:
            roots: list[int] = []

            def prepare(s: Server = servers[name], roots: list[int] = roots) -> None:
                left = wait_dovecot_sessions(env.dovecot, 8, 120.0)
                if left > 8:
                    print(f"  warning: {left} Dovecot imap processes still running", flush=True)
                roots[:] = [s.restart()]

            def measure(s: Server = servers[name], roots: list[int] = roots) -> MemoryRun:
                return runner.run(idle_memory(s, roots[0], env.users, p))

            run = quiet_attempt(env, measure, name, p, prepare)
            runs[name].append(run)
            print(
                f"  r{r + 1} {name:10s} N={run.sessions} err={run.errors}"
                f" processes={run.processes}"
                f"  RSS {run.rss_before_kib / 1024:.1f} -> {run.rss_after_kib / 1024:.1f} MiB"
                f" = {run.rss_per_session:.1f} KiB/session"
                f"  (PSS {run.pss_per_session:.1f} KiB/session; setup {run.setup_s:.1f} s,"
                f" {run.sessions / max(run.setup_s, 1e-9):.0f}/s)"
                f"  foreign load {run.foreign_cores:.2f} cores"
                + (f"  first error: {run.first_error}" if run.first_error else ""),
                flush=True,
            )
            # nginx loses about 0.6 % of its logins at this rate ("connection closed");
            # per session is per session alive at the reading, so a few may be missing.
            if run.sessions < p.sessions * 0.98:
                raise BenchError(
                    f"{name}: only {run.sessions} of {p.sessions} sessions opened"
                    f" ({run.first_error})"
                )
    wait_dovecot_sessions(env.dovecot, 8, 120.0)
    return runs


def summarize_memory(runs: dict[str, list[MemoryRun]], s: Summary) -> None:
    rss = {n: median([r.rss_per_session for r in v]) for n, v in runs.items()}
    pss = {n: median([r.pss_per_session for r in v]) for n, v in runs.items()}
    s.values["memory"] = {
        "rss_kib_per_session": rss,
        "pss_kib_per_session": pss,
        "sessions": {n: [r.sessions for r in v] for n, v in runs.items()},
        "rounds_rss": {n: [r.rss_per_session for r in v] for n, v in runs.items()},
    }
    n = median([r.sessions for r in runs["imapguard"]])
    s.rows.append(
        Row(
            "memory",
            f"RSS per idle IDLE session, {n:.0f} open, no warm-up (KiB)",
            f"{rss['imapguard']:.1f}",
            f"nginx {rss['nginx']:.1f}",
            f"{rss['imapguard'] / rss['nginx']:.2f}" if rss["nginx"] > 0 else "n/a",
            f"<= {GOAL_RSS_KIB_PER_SESSION:.0f} KiB",
            verdict(rss["imapguard"] <= GOAL_RSS_KIB_PER_SESSION),
        )
    )
    s.rows.append(
        Row(
            "memory'",
            "PSS per idle IDLE session, same sessions (KiB)",
            f"{pss['imapguard']:.1f}",
            f"nginx {pss['nginx']:.1f}",
            f"{pss['imapguard'] / pss['nginx']:.2f}" if pss["nginx"] > 0 else "n/a",
            "info",
            "",
        )
    )


# --------------------------------------------------------------------------- logins and cpu


@dataclass
class RateRun:
    """One measurement of back-to-back logins against one server (its processes are
    `workers` workers; nginx: worker_processes) with CPU read over the window."""

    target: str
    workers: int
    concurrency: int
    ok: int
    errors: int
    wall: float
    rate: float
    p50_ms: float
    p99_ms: float
    server_cpu: float  # the server's whole process tree
    dovecot_cpu: float  # Dovecot's process group (its login and imap processes)
    client_cpu: float  # this process: the load generator
    machine_cpu: float  # every core's busy time
    first_error: str | None = None
    foreign_cores: float = 0.0

    def per_login_us(self, cpu: float) -> float:
        return cpu / max(self.ok, 1) * 1e6

    @property
    def server_us(self) -> float:
        return self.per_login_us(self.server_cpu)


def _target(env: Env, name: str) -> Target:
    dv = env.dovecot
    if name == "imapguard":
        return Target(
            name,
            env.gateway.implicit_port,
            True,
            lambda u: env.app_passwords[u].encode(),
            lambda: None,
        )
    return Target(name, env.nginx.port, True, lambda u: dv.users[u].encode(), lambda: None)


async def login_rate(
    env: Env, name: str, workers: int, root: int, concurrency: int, seconds: float
) -> RateRun:
    """`concurrency` clients of this process logging in back to back for `seconds` (the
    users in turn), each login connect + TLS + greeting + LOGIN + LOGOUT; CPU of the
    server's process tree, Dovecot, this process and the machine over the window."""
    t = _target(env, name)
    ctx = client_ssl_context()
    users = itertools.cycle(env.users)
    pgid = env.dovecot.pid or 0
    server0, dovecot0 = tree_cpu_seconds(root), group_cpu_seconds(pgid)
    client0, machine0 = self_cpu_seconds(), machine_busy_seconds()
    run = await measure_logins(
        name, lambda: login_once(t, ctx, next(users)), None, concurrency, seconds, 10**9
    )
    return RateRun(
        target=f"{name}-w{workers}",
        workers=workers,
        concurrency=concurrency,
        ok=run.ok,
        errors=run.errors,
        wall=run.wall,
        rate=run.rate,
        p50_ms=run.p50_ms,
        p99_ms=run.p99_ms,
        server_cpu=tree_cpu_seconds(root) - server0,
        dovecot_cpu=group_cpu_seconds(pgid) - dovecot0,
        client_cpu=self_cpu_seconds() - client0,
        machine_cpu=machine_busy_seconds() - machine0,
        first_error=run.first_error,
    )


@dataclass(frozen=True)
class _Policy:
    retries: int
    max_foreign: float


def _rate_round(
    runner: asyncio.Runner,
    env: Env,
    name: str,
    workers: int,
    concurrency: int,
    p: Params,
) -> RateRun:
    """Restart `name` with `workers` processes, warm it up (`p.warmup_s` of logins, not
    counted: imports, caches, the verified-password cache of each worker), measure."""
    roots: list[int] = []

    def prepare() -> None:
        wait_dovecot_sessions(env.dovecot, 8, 60.0)
        restart = env.restart_gateway if name == "imapguard" else env.restart_nginx
        root = restart(workers)
        roots[:] = [root]
        # Warm up until every worker took logins (each one's CPU grew): connections
        # wait in a worker's own SO_REUSEPORT queue while it is still starting.
        for _ in range(10):
            # nginx's master and imapguard's parent with workers serve no IMAP.
            procs = children(root) or [root]
            cpu0 = {pid: cpu_seconds(pid) for pid in procs}
            warm = runner.run(login_rate(env, name, workers, root, concurrency, p.warmup_s))
            if warm.ok == 0:
                raise BenchError(f"{name}-w{workers}: no login ({warm.first_error})")
            if len(procs) == workers and all(cpu_seconds(q) - c > 0.05 for q, c in cpu0.items()):
                break
        else:
            raise BenchError(f"{name}-w{workers}: not every worker took logins")
        wait_dovecot_sessions(env.dovecot, 8, 60.0)

    def measure() -> RateRun:
        return runner.run(login_rate(env, name, workers, roots[0], concurrency, p.login_seconds))

    run = quiet_attempt(
        env, measure, f"{name}-w{workers}", _Policy(p.login_retries, p.max_foreign), prepare
    )
    print(
        f"  {run.target:13s} {run.rate:7.1f} logins/s  ok={run.ok} err={run.errors}"
        f"  p50={run.p50_ms:.1f} ms p99={run.p99_ms:.1f} ms"
        f"  CPU/login: server {run.server_us:.0f} us,"
        f" Dovecot {run.per_login_us(run.dovecot_cpu):.0f} us,"
        f" client {run.per_login_us(run.client_cpu):.0f} us,"
        f" machine {run.per_login_us(run.machine_cpu):.0f} us"
        f"  foreign load {run.foreign_cores:.2f} cores"
        + (f"  first error: {run.first_error}" if run.first_error else ""),
        flush=True,
    )
    if run.ok == 0 or run.errors > run.ok // 100:
        raise BenchError(f"{run.target}: {run.errors} failed logins ({run.first_error})")
    return run


def all_cores() -> int:
    return os.cpu_count() or 1


def phase_logins(runner: asyncio.Runner, env: Env, p: Params) -> dict[str, list[RateRun]]:
    cores = all_cores()
    order = [("imapguard", 1), ("nginx", 1), ("imapguard", cores), ("nginx", cores)]
    print(
        f"\n## logins: {p.login_concurrency} clients x {p.login_seconds:.0f} s per target,"
        f" {p.login_rounds} interleaved rounds; workers 1 and {cores} (nginx: worker_processes);"
        f" each server restarted and warmed up ({p.warmup_s:.0f} s) before its measurement",
        flush=True,
    )
    runs: dict[str, list[RateRun]] = {f"{n}-w{w}": [] for n, w in order}
    for r in range(p.login_rounds):
        print(f"  round {r + 1}", flush=True)
        for name, workers in order:
            run = _rate_round(runner, env, name, workers, p.login_concurrency, p)
            runs[run.target].append(run)
    return runs


def phase_cpu(runner: asyncio.Runner, env: Env, p: Params) -> dict[str, list[RateRun]]:
    cores = all_cores()
    print(
        f"\n## cpu: CPU per login of each server's process tree, {cores} workers each,"
        f" {p.cpu_concurrency} clients (below saturation) x {p.login_seconds:.0f} s,"
        f" {p.login_rounds} interleaved rounds",
        flush=True,
    )
    runs: dict[str, list[RateRun]] = {f"{n}-w{cores}": [] for n in ("imapguard", "nginx")}
    for r in range(p.login_rounds):
        print(f"  round {r + 1}", flush=True)
        for name in ("imapguard", "nginx"):
            run = _rate_round(runner, env, name, cores, p.cpu_concurrency, p)
            runs[run.target].append(run)
    return runs


def summarize_logins(runs: dict[str, list[RateRun]], s: Summary) -> None:
    cores = all_cores()
    rate = {n: [r.rate for r in v] for n, v in runs.items()}
    med = {n: median(v) for n, v in rate.items()}
    ig1, igN, ng1, ngN = "imapguard-w1", f"imapguard-w{cores}", "nginx-w1", f"nginx-w{cores}"
    scaling = _per_round_ratio(rate[igN], rate[ig1])
    ng_scaling = _per_round_ratio(rate[ngN], rate[ng1])
    vs_nginx = _per_round_ratio(rate[igN], rate[ngN])
    # What the shared cores allow: with all cores, every login costs the server,
    # Dovecot and the load generator together `machine_us` of CPU, and other users
    # of the machine took `foreign` cores, so no server can exceed (cores -
    # foreign) / machine_us logins/s here; the workers' ratio cannot exceed that
    # bound over the rate with one.
    machine_us = median(
        [r.per_login_us(r.server_cpu + r.dovecot_cpu + r.client_cpu) for r in runs[igN]]
    )
    free = max(cores - median([r.foreign_cores for r in runs[igN]]), 0.01)
    bound = free / (machine_us / 1e6)
    s.values["logins"] = {
        "rate_median": med,
        "rounds": rate,
        "workers_ratio": scaling,
        "nginx_workers_ratio": ng_scaling,
        "vs_nginx_all_cores": vs_nginx,
        "machine_us_per_login_all_cores": machine_us,
        "machine_bound_rate": bound,
        "free_cores": free,
    }
    s.rows.append(
        Row(
            "logins",
            f"logins/s, workers {cores} / workers 1",
            f"{med[igN]:.0f} / {med[ig1]:.0f} = {scaling:.2f}",
            f"nginx {med[ngN]:.0f} / {med[ng1]:.0f} = {ng_scaling:.2f}",
            f"{scaling:.2f}",
            f">= {GOAL_WORKERS_RATIO}",
            verdict(scaling >= GOAL_WORKERS_RATIO),
        )
    )
    s.rows.append(
        Row(
            "logins'",
            f"ceiling of that ratio on these shared cores ({free:.2f} of {cores} cores left"
            f" by other processes / {machine_us:.0f} us per login of server + Dovecot"
            f" + client = {bound:.0f}/s)",
            f"{bound / med[ig1]:.2f}",
            "",
            "",
            "info",
            "",
        )
    )
    s.rows.append(
        Row(
            "logins''",
            f"logins/s with all {cores} cores, imapguard vs nginx",
            f"{med[igN]:.0f}",
            f"nginx {med[ngN]:.0f}",
            f"{vs_nginx:.2f}",
            f">= {GOAL_NGINX_RATE_RATIO}",
            verdict(vs_nginx >= GOAL_NGINX_RATE_RATIO),
        )
    )


def summarize_cpu(runs: dict[str, list[RateRun]], s: Summary) -> None:
    cores = all_cores()
    ig, ng = f"imapguard-w{cores}", f"nginx-w{cores}"
    us = {n: [r.server_us for r in v] for n, v in runs.items()}
    ratio = _per_round_ratio(us[ig], us[ng])
    s.values["cpu"] = {
        "server_us_per_login": {n: median(v) for n, v in us.items()},
        "rounds": us,
        "ratio": ratio,
        "dovecot_us_per_login": {
            n: median([r.per_login_us(r.dovecot_cpu) for r in v]) for n, v in runs.items()
        },
    }
    s.rows.append(
        Row(
            "cpu",
            f"CPU per login, all the server's processes, {cores} workers (us)",
            f"{median(us[ig]):.0f}",
            f"nginx {median(us[ng]):.0f}",
            f"{ratio:.2f}",
            f"<= {GOAL_CPU_RATIO} x",
            verdict(ratio <= GOAL_CPU_RATIO),
        )
    )


# --------------------------------------------------------------------------- main

# name -> (run the phase, add its rows to the summary).
PHASES: dict[
    str,
    tuple[
        Callable[[asyncio.Runner, Env, Params], dict[str, list[Any]]],
        Callable[[dict[str, list[Any]], Summary], None],
    ],
] = {
    "memory": (phase_memory, summarize_memory),
    "logins": (phase_logins, summarize_logins),
    "cpu": (phase_cpu, summarize_cpu),
}


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sessions", type=int, help="idle sessions per target (10000; quick 1000)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (2; quick 1)")
    ap.add_argument(
        "--workers",
        type=int,
        help="imapguard's [server] workers and nginx's worker_processes (default: unset, 1)",
    )


def _raise_hard_nofile(wanted: int) -> None:
    """Root may raise its hard RLIMIT_NOFILE (up to fs.nr_open): 10,000 sessions are
    20,000 descriptors in a proxy, beyond some machines' default hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))


def _sessions_that_fit() -> int:
    """Sessions a proxy can hold with the descriptors this process may give it: two
    sockets each, and 1,000 for everything else (listeners, logs, state, nginx's auth
    requests)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return sys.maxsize
    return (hard - 1000) // 2 // 100 * 100


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser("python -m bench.scale", __doc__, list(PHASES), _options)
    args = ap.parse_args(argv)
    if args.src is not None:
        BenchGateway.src_override = args.src.resolve()
    check_prerequisites(
        "dovecot-imapd nginx libnginx-mod-mail",
        (DOVECOT_BINARY, DOVEADM_BINARY, NGINX_BINARY, NGINX_MAIL_MODULE),
    )
    p = run_params(
        Params.quick() if args.quick else Params.full(),
        args,
        sessions=args.sessions,
        rounds=args.rounds,
        workers=args.workers,
        login_retries=args.retries,
    )
    only = args.only or list(PHASES)
    _raise_hard_nofile(65536)
    fit = _sessions_that_fit()
    if p.sessions > fit:
        print(
            f"# NOTE: RLIMIT_NOFILE (hard limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]},"
            f" not raisable here) lets a proxy hold {fit} sessions (two descriptors each):"
            f" measuring {fit} instead of {p.sessions}",
            flush=True,
        )
        p = dataclasses.replace(p, sessions=fit)
    info = start("scale", args.quick, p)
    started = time.monotonic()
    results: dict[str, dict[str, list[Any]]] = {}
    try:
        with environment(args.keep, p) as env, uvloop_runner() as runner:
            info["imapguard"] = describe_source(env.gateway.imported_from())
            print(f"#   imapguard: {info['imapguard']}", flush=True)
            wait_quiet(env, args.wait_quiet)
            for name in only:
                results[name] = PHASES[name][0](runner, env, p)
    except (KeyboardInterrupt, BenchError) as exc:
        return stopped(exc)
    summary = Summary()
    for name, runs in results.items():
        PHASES[name][1](runs, summary)
    foreign = {
        name: (median(xs), max(xs))
        for name, runs in results.items()
        if (xs := [r.foreign_cores for v in runs.values() for r in v])
    }

    def raw() -> dict[str, Any]:
        return {
            name: {n: [asdict(r) for r in v] for n, v in runs.items()}
            for name, runs in results.items()
        }

    return report(summary, foreign, started, info, p, args.json, raw)


if __name__ == "__main__":
    sys.exit(main())

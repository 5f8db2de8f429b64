"""imapguard at scale against nginx's mail proxy, in one interleaved run.

Run by hand (needs root, Debian dovecot-imapd, nginx + libnginx-mod-mail)::

    .venv/bin/python -m bench.scale             # 10,000 sessions per target, ~8 minutes
    .venv/bin/python -m bench.scale --quick     # 1,000 sessions, ~1-2 minutes

Options: --only memory (repeatable; the phases are listed in PHASES), --sessions N,
--rounds N, --workers N (the gateway's `[server] workers` and nginx's
`worker_processes`; default: each server's default, nginx 1), --json FILE, --src DIR,
--keep, --wait-quiet / --max-foreign / --retries (as bench/gateway.py).

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

Phases to come plug into PHASES (a function of (runner, env, params) returning its
runs) and `summarize`: login rate with `[server] workers` 1 and 2 and against nginx
given the same cores (`worker_processes`), and CPU per login against nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.dovecot import DOVEADM_BINARY, DOVECOT_BINARY, DovecotServer, free_port

from bench._common import (
    BenchError,
    Row,
    Summary,
    argument_parser,
    check_prerequisites,
    describe_source,
    foreign_window,
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
    groups_cpu_seconds,
    machine_busy_seconds,
    self_cpu_seconds,
    tree_memory_kib,
)
from bench.gateway import BenchGateway

GOAL_RSS_KIB_PER_SESSION = 40.0
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
            rounds=1, sessions=1_000, concurrency=CONCURRENCY, setup_budget_s=120, settle_s=3
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
        groups = {p.pid for p in (self.gateway.proc, self.nginx.proc) if p is not None} | (
            {self.dovecot.pid} if self.dovecot.pid is not None else set()
        )
        return (
            time.perf_counter(),
            machine_busy_seconds(),
            self_cpu_seconds() + groups_cpu_seconds(groups),
        )

    def measure_foreign(self) -> Callable[[], float]:
        return foreign_window(self._ours)

    def _restart_gateway(self) -> int:
        self.gateway.stop()
        self.gateway.start(timeout=60.0)
        return self.gateway.running_pid()

    def _restart_nginx(self) -> int:
        self.nginx.stop()
        self.nginx.start()
        if self.nginx.proc is None:
            raise BenchError("nginx did not start")
        return self.nginx.proc.pid

    def servers(self) -> dict[str, Server]:
        dv = self.dovecot
        return {
            "imapguard": Server(
                "imapguard",
                self.gateway.implicit_port,
                self._restart_gateway,
                lambda u: u.encode() + b" " + self.app_passwords[u].encode(),
            ),
            "nginx": Server(
                "nginx",
                self.nginx.port,
                self._restart_nginx,
                lambda u: u.encode() + b" " + dv.users[u].encode(),
            ),
        }


def _gateway_toml(p: Params) -> str:
    # All sessions come from 127.0.0.1: let its pre-auth slots cover the client's
    # concurrency (the default, 20, does already; said here so that it stays so).
    return f"\n[limits]\nmax_preauth_per_source = {max(20, p.concurrency * 2)}\n"


@contextlib.contextmanager
def environment(keep: bool, p: Params) -> Iterator[Env]:
    with work_directory(keep, "igscale-") as (base, stack):
        dovecot = start_dovecot(base / "dovecot", stack, sessions=p.sessions)
        gateway = BenchGateway.create(
            base / "gateway",
            dovecot,
            upstream_tls="none",
            extra_toml=_gateway_toml(p),
            workers=p.workers or 1,
        )
        assert isinstance(gateway, BenchGateway)
        app_passwords = {u: gateway.create_app_password(u, "bench") for u in dovecot.users}
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
    servers = env.servers()
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


# --------------------------------------------------------------------------- main

# name -> (run the phase, add its rows to the summary). Login rate (workers 1 vs 2 vs
# nginx) and CPU per login are to be added here with their own Params fields.
PHASES: dict[
    str,
    tuple[
        Callable[[asyncio.Runner, Env, Params], dict[str, list[Any]]],
        Callable[[dict[str, list[Any]], Summary], None],
    ],
] = {"memory": (phase_memory, summarize_memory)}


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

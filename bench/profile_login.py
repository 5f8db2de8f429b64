"""Where the gateway's CPU per login goes: `imapguard serve` (one process, no workers)
under cProfile while this process logs in back to back, then its top functions.

Run by hand (needs root and Debian dovecot-imapd)::

    .venv/bin/python -m bench.profile_login                 # 3,000 logins, 16 clients
    .venv/bin/python -m bench.profile_login --logins 1000 --top 40 --out prof.pstats

The setting of bench/scale.py's `logins` phase: Dovecot's plain loopback port as the
upstream (login = "master"), an app password per user, the users in turn, each login
connect + TLS + greeting + LOGIN + LOGOUT. The profile covers the whole life of the
process (its start and the first login of each user, whose app password is verified
with its hash before the verified cache answers, are a small part of thousands of
logins). cProfile (on the process's CPU clock) sees the event loop's thread only
and slows Python code, not OpenSSL's C code: read shares, not absolute times.
`perf record -g -p PID` on the same run (`--pause` prints the pid and waits) tells
how much is in libssl/libcrypto, the interpreter and the kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import pstats
import statistics
import sys
import time
from pathlib import Path

import tests.gateway
from tests.dovecot import DOVEADM_BINARY, DOVECOT_BINARY

from bench._common import (
    LOGIN_USERS,
    check_prerequisites,
    make_app_passwords,
    measure_logins,
    start_dovecot,
    uvloop_runner,
    work_directory,
)
from bench._imap import client_ssl_context
from bench._procs import tree_cpu_seconds
from bench.gateway import BenchGateway, Target, login_once

# `python -m cProfile` times with the wall clock: a process that is switched out
# (a send on loopback wakes the peer, which may take this core) would charge the
# wait to whatever function made the system call. The CPU clock of the process
# charges only what it ran.
_PROFILED = """
import cProfile, runpy, sys, time
p = cProfile.Profile(time.process_time)
p.enable()
try:
    runpy.run_module("imapguard.cli", run_name="__main__")
except SystemExit:
    pass
finally:
    p.disable()
    p.dump_stats({out!r})
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_login", description=__doc__)
    ap.add_argument("--logins", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--top", type=int, default=30, help="functions to print")
    ap.add_argument("--out", type=Path, help="also keep the pstats file here")
    ap.add_argument("--no-profile", action="store_true", help="the same run without cProfile")
    ap.add_argument("--pause", action="store_true", help="print the pid, wait for Enter")
    ap.add_argument("--src", type=Path, help="the imapguard package under this directory")
    ap.add_argument(
        "--against",
        type=Path,
        metavar="SRC",
        help="no profile: this checkout and the imapguard package under SRC side by side",
    )
    args = ap.parse_args(argv)
    if args.src is not None:
        BenchGateway.src_override = args.src.resolve()
    check_prerequisites("dovecot-imapd", (DOVECOT_BINARY, DOVEADM_BINARY))
    if args.against is not None:
        return paired(args.against.resolve(), args.logins, args.concurrency)
    with work_directory(False, "igprof-") as (base, stack):
        dovecot = start_dovecot(base / "dovecot", stack, users=LOGIN_USERS)
        gw = BenchGateway.create(
            base / "gateway",
            dovecot,
            upstream_tls="none",
            extra_toml="\n[limits]\nmax_preauth_per_source = 64\n",
        )
        assert isinstance(gw, BenchGateway)
        passwords = make_app_passwords(gw, dovecot.users)
        stats = base / "serve.pstats"
        command = tests.gateway.IMAPGUARD
        if not args.no_profile:
            tests.gateway.IMAPGUARD = [sys.executable, "-c", _PROFILED.format(out=str(stats))]
        stack.callback(gw.stop)
        try:
            gw.start(timeout=60.0)
        finally:
            tests.gateway.IMAPGUARD = command
        pid = gw.running_pid()
        if args.pause:
            input(f"imapguard serve: pid {pid}; Enter to start the logins ")
        target = Target(
            "imapguard", gw.implicit_port, True, lambda u: passwords[u].encode(), lambda: None
        )
        users = itertools.cycle(sorted(dovecot.users))
        ctx = client_ssl_context()
        cpu0 = tree_cpu_seconds(pid)
        with uvloop_runner() as runner:
            run = runner.run(
                measure_logins(
                    "imapguard",
                    lambda: login_once(target, ctx, next(users)),
                    None,
                    args.concurrency,
                    3600.0,
                    args.logins,
                )
            )
        cpu = tree_cpu_seconds(pid) - cpu0
        print(
            f"{run.ok} logins ({run.errors} errors) in {run.wall:.1f} s: {run.rate:.0f}/s,"
            f" serve CPU {cpu / max(run.ok, 1) * 1e6:.0f} us per login"
            + (" (under cProfile)" if not args.no_profile else "")
        )
        gw.stop()
        if args.no_profile:
            return 0
        for _ in range(100):
            if stats.exists():
                break
            time.sleep(0.1)
        p = pstats.Stats(str(stats))
        if args.out is not None:
            with contextlib.suppress(OSError):
                args.out.write_bytes(stats.read_bytes())
        total = p.total_tt  # type: ignore[attr-defined]
        print(f"profiled time {total:.2f} s; by own time (tottime), then cumulative:")
        p.sort_stats("tottime").print_stats(args.top)
        p.sort_stats("cumulative").print_stats(args.top)
    return 0


def _password(passwords: dict[str, str], user: str) -> bytes:
    return passwords[user].encode()


def paired(other: Path, logins: int, concurrency: int, blocks: int = 5) -> int:
    """This checkout's gateway and the one under `other`, both running, the same
    client alternating its logins between them: whatever else loads the machine
    loads both alike, which a before/after of two separate runs cannot promise on
    a shared machine. Prints each one's CPU per login per block of logins."""

    class Other(BenchGateway):
        src_override = other

    with work_directory(False, "igpair-") as (base, stack):
        dovecot = start_dovecot(base / "dovecot", stack, users=LOGIN_USERS)
        toml = "\n[limits]\nmax_preauth_per_source = 64\n"
        gateways = {
            "this": BenchGateway.create(
                base / "this", dovecot, upstream_tls="none", extra_toml=toml
            ),
            "other": Other.create(base / "other", dovecot, upstream_tls="none", extra_toml=toml),
        }
        targets: list[Target] = []
        pids: dict[str, int] = {}
        for name, gw in gateways.items():
            assert isinstance(gw, BenchGateway)
            passwords = make_app_passwords(gw, dovecot.users)
            stack.callback(gw.stop)
            gw.start(timeout=60.0)
            pids[name] = gw.running_pid()
            targets.append(
                Target(
                    name,
                    gw.implicit_port,
                    True,
                    functools.partial(_password, passwords),
                    lambda: None,
                )
            )
        print(f"this: {BenchGateway.src_override or 'this checkout'}; other: {other}")
        users = itertools.cycle(sorted(dovecot.users))
        turn = itertools.cycle(targets)
        ctx = client_ssl_context()
        ratios = []
        with uvloop_runner() as runner:
            for block in range(blocks + 1):  # the first block warms both up
                cpu0 = {n: tree_cpu_seconds(pid) for n, pid in pids.items()}
                run = runner.run(
                    measure_logins(
                        "both",
                        lambda: login_once(next(turn), ctx, next(users)),
                        None,
                        concurrency,
                        3600.0,
                        logins,
                    )
                )
                us = {
                    n: (tree_cpu_seconds(pid) - cpu0[n]) / (run.ok / 2) * 1e6
                    for n, pid in pids.items()
                }
                if block == 0:
                    continue
                ratios.append(us["this"] / us["other"])
                print(
                    f"block {block}: {run.ok} logins ({run.errors} errors), {run.rate:.0f}/s;"
                    f" CPU per login: this {us['this']:.0f} us, other {us['other']:.0f} us,"
                    f" this/other {ratios[-1]:.3f}",
                    flush=True,
                )
        print(f"median this/other: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

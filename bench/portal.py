"""The portal must not slow the gateway: IMAP with and without portal sign-ins, in one
run, and the portal's page latency under 20 signed-in users.

Run by hand (needs root, Debian dovecot-imapd)::

    .venv/bin/python -m bench.portal            # full run, about 4 minutes
    .venv/bin/python -m bench.portal --quick    # smoke run, about a minute

Options: --only ab|pages (repeatable), --json FILE (all figures), --sign-in-interval
SECONDS (pace arm B's sign-ins instead of back to back), --src DIR (benchmark another
imapguard source tree), --wait-quiet SECONDS, --max-foreign CORES / --retries N (as in
bench/gateway.py), --keep (keep the temporary directory).

Everything runs on 127.0.0.1 (and other loopback addresses), on free ports, under a
temporary directory, and is stopped at the end (also on Ctrl-C, SIGTERM or an exception):

* Dovecot (tests.dovecot.DovecotServer), plain port = the gateway's upstream; the master
  password stored as {PLAIN} like the users' (as bench/gateway.py does). Besides alice,
  a pool of accounts (pb000, pb001, ...) each with its own password.
* One `imapguard serve` (tests.gateway.GatewayProcess) with `[portal]`: the gateway and
  the portal in one process, on one event loop, the case measured. login = "master",
  upstream tls = "none", methods app-password and password+totp. Every pool account has
  TOTP enrolled through the CLI (`imapguard totp enroll U --json`, its entry point
  called once per account in one child process); alice has an app password.
* The defense enforces its defaults; `[defense] trusted_networks = ["127.0.0.0/8"]`
  makes the benchmark's sources familiar to every account (still counted, never
  refused as unfamiliar). The benchmark makes no failed attempt: any failed login or
  sign-in stops it, and at the end no block may exist. `[portal]
  max_sign_ins_per_minute` = 100 (its maximum) and the sign-ins rotate over 32 source
  addresses (127.0.2.x), so the portal's per-source limit does not throttle the load.

(ab) Arms A and B, interleaved round by round (A B A B ...):
    A  the portal idle;
    B  a separate process signs portal users in continuously (bench/_portal_web.py):
       GET /signin, POST the password (a real password check: a login to Dovecot as the
       user), GET /signin/code, POST the TOTP code, GET /, POST /signout, then the next
       account, back to back, each sign-in on a new TLS connection (a new browser).
       It rotates over the pool because a TOTP code is accepted once per step.
    In each arm: login rate (16 concurrent clients, each connect + TLS + greeting +
    LOGIN with alice's app password + LOGOUT), then NOOP latency (4 established
    sessions through imapguard, each sending a NOOP every 5 ms, paced so that a stall
    is sampled as often as a quiet moment, each followed by one on a session straight
    to Dovecot's plain port: the box's own reference).
    Ratios B/A: login rate (median of the per-round ratios), NOOP p50 and p99 through
    imapguard (samples pooled per arm).
                          Goal: B/A login rate >= 0.90; NOOP p50 and p99 B/A <= 1.10.
    On a 2-core machine the load process's own TLS and HTTP work competes for the same
    cores as the gateway and the clients: B/A is an upper bound of the portal's cost.
(pages) 20 users, each signed in (both steps) with its own session, fetch the portal's
    pages in turn, back to back, on one kept-alive connection each (a minimal HTTP/1.1
    client: httpx would cost this process more CPU than the portal), for a fixed time
    after a warm-up: /, /security, /app-passwords, /devices, /sign-ins, those that
    answer 200 in the tree run (the others are left out and named). p50/p99 per page
    and over all, requests per second, the gateway's CPU.          (info, no goal)

The box is shared: CPU used during a measurement by processes that are not part of the
benchmark ("foreign load") is printed per measurement; above --max-foreign cores the
measurement is repeated, at most --retries times (as in bench/gateway.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from tests.dovecot import DOVEADM_BINARY, DOVECOT_BINARY, DovecotServer, free_port

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
    work_directory,
)
from bench._imap import ImapConn
from bench._portal_web import (
    Codes,
    PageRun,
    Portal,
    SignerResult,
    SignerSpec,
    SignInError,
    TotpUser,
    page_load,
    sign_out,
    signed_in_client,
    signer_process,
)
from bench._procs import children, cpu_seconds, self_cpu_seconds
from bench.gateway import (
    BenchGateway,
    _certificate_summary,
    _per_round_ratio,
)
from bench.logins import LoginSpec, _close, _probe, _session, login_once

GOAL_LOGIN_RATIO = 0.90
GOAL_NOOP_RATIO = 1.10

USER = "alice"
PAGES = ("/", "/security", "/app-passwords", "/devices", "/sign-ins")
SIGNER_SOURCES = [f"127.0.2.{n}" for n in range(1, 33)]
PAGE_SOURCE = "127.0.3.{n}"
TRUSTED = "127.0.0.0/8"
MAX_SIGN_INS_PER_MINUTE = 100
TIMEOUT = 15.0


@dataclass(frozen=True)
class Params:
    rounds: int
    login_seconds: float
    login_concurrency: int
    login_max: int
    warmup_logins: int
    noop_seconds: float
    noop_sessions: int
    noop_interval: float
    signer_accounts: int
    page_users: int
    page_seconds: float
    page_warmup: float
    sign_in_interval: float = 0.0  # arm B's pace; 0: back to back
    retries: int = 2
    max_foreign: float = 0.15

    @classmethod
    def full(cls) -> Params:
        return cls(
            rounds=4,
            login_seconds=6.0,
            login_concurrency=16,
            login_max=20_000,
            warmup_logins=64,
            noop_seconds=6.0,
            noop_sessions=4,
            noop_interval=0.005,
            signer_accounts=400,
            page_users=20,
            page_seconds=20.0,
            page_warmup=2.0,
        )

    @classmethod
    def quick(cls) -> Params:
        return cls(
            rounds=1,
            login_seconds=2.0,
            login_concurrency=16,
            login_max=5_000,
            warmup_logins=16,
            noop_seconds=2.0,
            noop_sessions=4,
            noop_interval=0.005,
            signer_accounts=100,
            page_users=20,
            page_seconds=4.0,
            page_warmup=1.0,
            retries=1,
        )


# --------------------------------------------------------------------------- environment


@dataclass
class Env:
    base: Path
    dovecot: DovecotServer
    gateway: BenchGateway
    portal: Portal
    app_password: str
    signers: list[TotpUser]  # arm B's pool
    page_users: list[TotpUser]  # the page phase's (and the sanity check's) pool
    last_steps: dict[str, int]  # the TOTP step each account last used

    def measure_foreign(self) -> Callable[[], float]:
        return benchmark_window(self.dovecot, self.gateway.running_pid(), self.portal_pid())

    def portal_pid(self) -> int:
        """The portal's process: `imapguard serve` runs it as its one child (in a
        process group of its own, so it is named here, not found by group)."""
        found = children(self.gateway.running_pid())
        if len(found) != 1:
            raise BenchError(f"imapguard serve should have one portal process, has {found}")
        return found[0]

    def login_spec(self) -> LoginSpec:
        return LoginSpec(
            "imapguard", self.gateway.implicit_port, True, login_command(USER, self.app_password)
        )


_ENROLL = """\
import contextlib, io, json, sys
from imapguard.cli import main
config = sys.argv[1]
for user in sys.argv[2:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["totp", "enroll", user, "--json", "--config", config])
    if code != 0:
        sys.exit(f"imapguard totp enroll {user}: exit {code}")
    print(json.dumps({"user": user, "secret": json.loads(out.getvalue())["secret"]}))
"""


def _enroll_totp(gw: BenchGateway, users: list[str]) -> dict[str, str]:
    """`imapguard totp enroll U --json` for every user: the CLI's entry point, called
    in one child process (one process per user would take minutes)."""
    out = subprocess.run(
        [sys.executable, "-c", _ENROLL, str(gw.config_path), *users],
        capture_output=True,
        text=True,
        env=gw._env(),  # the gateway's own environment (--src)
        check=False,
        timeout=600,
    )
    if out.returncode != 0:
        raise BenchError(f"enrolling TOTP: {out.stderr.strip()[-500:]}")
    secrets_by_user: dict[str, str] = {}
    for line in out.stdout.splitlines():
        record = json.loads(line)
        secrets_by_user[record["user"]] = record["secret"]
    return secrets_by_user


def _portal_toml(port: int) -> str:
    return f"""
[portal]
listen = "127.0.0.1:{port}"
url = "https://localhost:{port}"
max_sign_ins_per_minute = {MAX_SIGN_INS_PER_MINUTE}

[defense]
trusted_networks = ["{TRUSTED}"]

[limits]
drain_timeout = 1.0
"""


def _wait_accepts(gw: BenchGateway, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not gw.accepts(port):
        if time.monotonic() > deadline:
            raise BenchError(f"the portal does not listen on {port}: {gw.log_text()[-500:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def environment(keep: bool, p: Params) -> Iterator[Env]:
    with work_directory(keep, "igbench-portal-") as (base, stack):
        dovecot = start_dovecot(base / "dovecot", stack)
        pool = [f"pb{i:03d}" for i in range(p.signer_accounts + p.page_users + 1)]
        for name in pool[:-1]:
            dovecot.users[name] = secrets.token_urlsafe(12)
        dovecot.add_user(pool[-1], secrets.token_urlsafe(12))  # writes the file once

        port = free_port()
        gw = BenchGateway.create(
            base / "gateway",
            dovecot,
            methods=("app-password", "password+totp"),
            upstream_tls="none",
            extra_toml=_portal_toml(port),
        )
        assert isinstance(gw, BenchGateway)
        app_password = gw.create_app_password(USER, "bench")
        t0 = time.monotonic()
        enrolled = _enroll_totp(gw, pool)
        print(
            f"#   TOTP enrolled for {len(enrolled)} accounts in {time.monotonic() - t0:.0f} s",
            flush=True,
        )
        users = [TotpUser(u, dovecot.users[u], enrolled[u]) for u in pool]
        stack.callback(gw.stop)
        gw.start()
        _wait_accepts(gw, port)
        yield Env(
            base=base,
            dovecot=dovecot,
            gateway=gw,
            portal=Portal(port, str(gw.ca_cert)),
            app_password=app_password,
            signers=users[: p.signer_accounts],
            page_users=users[p.signer_accounts :],
            last_steps={},
        )


def _portal_auth(gw: BenchGateway) -> list[dict[str, Any]]:
    return [e for e in gw.events("auth") if e.get("listener") == "portal"]


def _sanity(runner: asyncio.Runner, env: Env) -> None:
    """One IMAP login; one whole portal sign-in, which the audit log must show as the
    two steps of a real sign-in (the password checked, then the code)."""
    spec = env.login_spec()
    try:
        runner.run(login_once(spec, spec.ssl_context()))
    except CLIENT_ERRORS as exc:
        raise BenchError(f"IMAP login with the app password: {type(exc).__name__}: {exc}") from exc
    codes = Codes(env.page_users, env.last_steps)
    user, cookies = _sign_in_one(env, codes, "127.0.3.100")
    with env.portal.client(env.portal.ssl_context(), "127.0.3.100") as web:
        web.cookies = cookies
        sign_out(web, user)
    env.last_steps.update(codes.last_steps)
    steps = [(e.get("mechanism"), e.get("result")) for e in _portal_auth(env.gateway)]
    if steps[-2:] != [("PORTAL-PASSWORD", "ok"), ("PORTAL-TOTP", "ok")]:
        raise BenchError(f"a portal sign-in: the audit log says {steps[-2:]}")


def _sign_in_one(env: Env, codes: Codes, source: str) -> tuple[TotpUser, httpx.Cookies]:
    try:
        return signed_in_client(env.portal, env.portal.ssl_context(), codes, source)
    except (SignInError, httpx.HTTPError) as exc:
        raise BenchError(f"portal sign-in: {type(exc).__name__}: {exc}") from exc


def _final_checks(env: Env) -> dict[str, Any]:
    """Nothing was refused: no block exists and no portal step failed."""
    blocks = json.loads(env.gateway.cli("blocks", "list", "--json").stdout)
    events = _portal_auth(env.gateway)
    failed = [e for e in events if e.get("result") != "ok"]
    codes_ok = sum(1 for e in events if e.get("mechanism") == "PORTAL-TOTP")
    if blocks or failed:
        raise BenchError(f"the defense refused the benchmark: blocks {blocks}; failed {failed[:3]}")
    return {"blocks": len(blocks), "portal_sign_ins_in_audit_log": codes_ok}


# --------------------------------------------------------------------------- (ab)


@dataclass
class ArmRun:
    arm: str  # "A" (portal idle) or "B" (portal sign-ins)
    login: LoginRun
    noop_us: list[float]  # through imapguard
    direct_us: list[float]  # straight to Dovecot
    window: float  # seconds, login + NOOP windows
    gateway_cores: float  # imapguard serve's CPU over the window
    portal_cores: float  # its portal process's CPU over the window
    sign_ins: int = 0  # completed inside the window
    sign_in_p50_ms: float = float("nan")
    sign_in_p99_ms: float = float("nan")
    signer_cores: float = 0.0
    signer_waited: float = 0.0
    foreign_cores: float = 0.0

    @property
    def sign_in_rate(self) -> float:
        return self.sign_ins / self.window if self.window > 0 else 0.0


Sessions = list[tuple[ImapConn, ImapConn]]


async def _noops(sessions: Sessions, p: Params) -> tuple[list[float], list[float]]:
    results = await asyncio.gather(
        *(_probe(g, d, p.noop_seconds, p.noop_interval) for g, d in sessions)
    )
    return [x for g, _ in results for x in g], [x for _, d in results for x in d]


def _windows(
    runner: asyncio.Runner, env: Env, sessions: Sessions, p: Params, arm: str
) -> tuple[ArmRun, float, float]:
    """The login window, then the NOOP window; (run, start, end) on the monotonic clock."""
    spec = env.login_spec()
    ctx = spec.ssl_context()
    pid, portal = env.gateway.running_pid(), env.portal_pid()
    w0, cpu0, pcpu0 = time.monotonic(), cpu_seconds(pid), cpu_seconds(portal)
    login = runner.run(
        measure_logins(
            arm,
            lambda: login_once(spec, ctx),
            pid,
            p.login_concurrency,
            p.login_seconds,
            p.login_max,
        )
    )
    if login.errors:
        raise BenchError(
            f"arm {arm}: {login.errors} IMAP logins failed, first: {login.first_error}"
        )
    through, straight = runner.run(_noops(sessions, p))
    w1, cpu1, pcpu1 = time.monotonic(), cpu_seconds(pid), cpu_seconds(portal)
    span = w1 - w0
    run = ArmRun(arm, login, through, straight, span, (cpu1 - cpu0) / span, (pcpu1 - pcpu0) / span)
    return run, w0, w1


def _arm_b(runner: asyncio.Runner, env: Env, sessions: Sessions, p: Params) -> ArmRun:
    spec = SignerSpec(
        env.portal, env.signers, dict(env.last_steps), SIGNER_SOURCES, p.sign_in_interval
    )
    with helper_process(signer_process, (spec,), "bench-portal-signer") as (proc, stop, reader):
        if not reader.poll(60.0):
            raise BenchError("the portal sign-in load did not finish a sign-in in 60 s")
        kind, early = reader.recv()
        if kind != "ready":
            raise BenchError(f"the portal sign-in load failed: {early.errors[:3]}")
        assert proc.pid is not None
        s0 = cpu_seconds(proc.pid)
        run, w0, w1 = _windows(runner, env, sessions, p, "B")
        s1 = cpu_seconds(proc.pid)
        stop.set()
        if not reader.poll(TIMEOUT + 60.0):
            raise BenchError("the portal sign-in load sent no result")
        _, result = reader.recv()
        proc.join(10.0)
    assert isinstance(result, SignerResult)
    env.last_steps.update(result.last_steps)
    if result.errors:
        raise BenchError(f"portal sign-ins failed: {result.errors[:3]}")
    inside = [s for t, s in result.finished if w0 <= t <= w1]
    run.sign_ins = len(inside)
    run.sign_in_p50_ms = pct(inside, 50) * 1e3
    run.sign_in_p99_ms = pct(inside, 99) * 1e3
    run.signer_cores = (s1 - s0) / run.window
    run.signer_waited = result.waited
    return run


def _print_arm(r: int, run: ArmRun) -> None:
    lr, g, d = run.login, run.noop_us, run.direct_us
    load = (
        f" | portal {run.sign_in_rate:.1f} sign-ins/s (p50 {run.sign_in_p50_ms:.0f} ms,"
        f" p99 {run.sign_in_p99_ms:.0f} ms), load process {run.signer_cores:.2f} cores"
        + (f", waited {run.signer_waited:.1f} s for TOTP steps" if run.signer_waited else "")
        if run.arm == "B"
        else ""
    )
    print(
        f"  r{r + 1} {run.arm}  {lr.rate:6.1f} logins/s (p50 {lr.p50_ms:.1f} ms)"
        f" | NOOP p50 {pct(g, 50) / 1e3:.2f} ms p99 {pct(g, 99) / 1e3:.2f} ms"
        f" (direct p50 {pct(d, 50) / 1e3:.2f} p99 {pct(d, 99) / 1e3:.2f}, n={len(g)})"
        f" | gateway {run.gateway_cores:.2f} cores, portal process {run.portal_cores:.2f}{load}"
        f" | foreign load {run.foreign_cores:.2f} cores",
        flush=True,
    )


def phase_ab(runner: asyncio.Runner, env: Env, p: Params) -> dict[str, list[ArmRun]]:
    print(
        f"\n## (ab) {p.login_concurrency} clients logging in for {p.login_seconds:.0f} s, then"
        f" NOOP every {p.noop_interval * 1e3:.0f} ms on {p.noop_sessions} sessions for"
        f" {p.noop_seconds:.0f} s; A = portal idle, B = portal users signing in back to back"
        f" ({len(env.signers)} accounts); {p.rounds} interleaved round(s)",
        flush=True,
    )
    spec = env.login_spec()
    warm = measure_logins(
        "warm-up", lambda: login_once(spec, spec.ssl_context()), None, 16, 30.0, p.warmup_logins
    )
    if runner.run(warm).errors:
        raise BenchError("warm-up IMAP logins failed")
    gateway_login = login_command(USER, env.app_password)
    direct_login = login_command(USER, env.dovecot.users[USER])
    sessions: Sessions = []
    for _ in range(p.noop_sessions):
        sessions.append(
            (
                runner.run(_session(env.gateway.implicit_port, True, gateway_login)),
                runner.run(_session(env.dovecot.imap_port, False, direct_login)),
            )
        )
    runs: dict[str, list[ArmRun]] = {"A": [], "B": []}
    settle_at = 2 * p.noop_sessions + 8

    def settle() -> None:
        wait_dovecot_sessions(env.dovecot, settle_at, 20.0)

    try:
        for r in range(p.rounds):

            def arm_a() -> ArmRun:
                return _windows(runner, env, sessions, p, "A")[0]

            def arm_b() -> ArmRun:
                return _arm_b(runner, env, sessions, p)

            for arm, measure in (("A", arm_a), ("B", arm_b)):
                run = quiet_attempt(env, measure, f"arm {arm}", p, settle)
                runs[arm].append(run)
                _print_arm(r, run)
    finally:
        runner.run(_close(tuple(c for pair in sessions for c in pair)))
    return runs


# --------------------------------------------------------------------------- (pages)


def _page_users(env: Env, p: Params) -> list[tuple[TotpUser, httpx.Cookies, str]]:
    codes = Codes(env.page_users, env.last_steps)
    signed: list[tuple[TotpUser, httpx.Cookies, str]] = []
    for n in range(1, p.page_users + 1):
        source = PAGE_SOURCE.format(n=n)
        user, cookies = _sign_in_one(env, codes, source)
        signed.append((user, cookies, source))
    env.last_steps.update(codes.last_steps)
    return signed


def _answering_pages(env: Env, signed: tuple[TotpUser, httpx.Cookies, str]) -> list[str]:
    """The pages of PAGES that answer 200 in this tree; the others are named."""
    user, cookies, source = signed
    found: list[str] = []
    with env.portal.client(env.portal.ssl_context(), source) as web:
        web.cookies = cookies
        for path in PAGES:
            r = web.get(path)
            if r.status_code == 200 and user.name in r.text:
                found.append(path)
            else:
                print(f"#   {path}: {r.status_code}, left out", flush=True)
    if "/" not in found:
        raise BenchError("GET / as a signed-in user does not answer 200")
    return found


def phase_pages(runner: asyncio.Runner, env: Env, p: Params) -> tuple[list[str], PageRun]:
    signed = _page_users(env, p)
    pages = _answering_pages(env, signed[0])
    print(
        f"\n## (pages) {p.page_users} signed-in users fetching {', '.join(pages)} back to back"
        f" for {p.page_seconds:.0f} s (after {p.page_warmup:.0f} s warm-up)",
        flush=True,
    )
    ctx = env.portal.ssl_context()

    def measure() -> PageRun:
        pid = env.portal_pid()  # the pages are served by the portal's process
        g0, c0 = cpu_seconds(pid), self_cpu_seconds()
        run = runner.run(page_load(env.portal, ctx, signed, pages, p.page_seconds, p.page_warmup))
        span = run.wall + p.page_warmup
        run.gateway_cpu = (cpu_seconds(pid) - g0) / span
        run.client_cpu = (self_cpu_seconds() - c0) / span
        return run

    run = quiet_attempt(env, measure, "pages", p)
    if run.errors:
        raise BenchError(f"page requests failed: {run.errors[:3]}")
    every = [x for v in run.latencies.values() for x in v]
    for path, xs in run.latencies.items():
        print(
            f"  {path:15s} n={len(xs):5d}  p50 {pct(xs, 50) * 1e3:6.1f} ms"
            f"  p99 {pct(xs, 99) * 1e3:6.1f} ms",
            flush=True,
        )
    print(
        f"  all             n={len(every):5d}  p50 {pct(every, 50) * 1e3:6.1f} ms"
        f"  p99 {pct(every, 99) * 1e3:6.1f} ms  {run.requests / run.wall:.0f} requests/s"
        f" | portal process {run.gateway_cpu:.2f} cores, client {run.client_cpu:.2f} cores"
        f" | foreign load {run.foreign_cores:.2f} cores",
        flush=True,
    )
    with contextlib.suppress(SignInError, httpx.HTTPError):
        for user, cookies, source in signed:
            with env.portal.client(ctx, source) as web:
                web.cookies = cookies
                sign_out(web, user)
    return pages, run


# --------------------------------------------------------------------------- report


def summarize(
    ab: dict[str, list[ArmRun]] | None, pages: tuple[list[str], PageRun] | None
) -> Summary:
    s = Summary()
    if ab:
        a, b = ab["A"], ab["B"]
        rate_a, rate_b = [r.login.rate for r in a], [r.login.rate for r in b]
        login_ratio = _per_round_ratio(rate_b, rate_a)
        noop = {arm: [x for r in runs for x in r.noop_us] for arm, runs in ab.items()}
        direct = {arm: [x for r in runs for x in r.direct_us] for arm, runs in ab.items()}
        ratios = {q: pct(noop["B"], q) / pct(noop["A"], q) for q in (50, 99)}
        direct_ratios = {q: pct(direct["B"], q) / pct(direct["A"], q) for q in (50, 99)}
        s.values["ab"] = {
            "login_rate": {"A": median(rate_a), "B": median(rate_b), "ratio": login_ratio},
            "noop_us": {
                arm: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for arm, v in noop.items()
            },
            "noop_ratio": {f"p{q}": v for q, v in ratios.items()},
            "direct_noop_ratio": {f"p{q}": v for q, v in direct_ratios.items()},
            "sign_ins_per_s": median([r.sign_in_rate for r in b]),
            "sign_in_p50_ms": median([r.sign_in_p50_ms for r in b]),
            "gateway_cores": {
                arm: median([r.gateway_cores for r in runs]) for arm, runs in ab.items()
            },
            "portal_process_cores": {
                arm: median([r.portal_cores for r in runs]) for arm, runs in ab.items()
            },
            "load_process_cores": median([r.signer_cores for r in b]),
            "gateway_cpu_ms_per_sign_in": median(
                [
                    (rb.gateway_cores - ra.gateway_cores) / rb.sign_in_rate * 1e3
                    for ra, rb in zip(a, b, strict=True)
                    if rb.sign_in_rate > 0
                ]
            ),
            "goal_login_ratio": GOAL_LOGIN_RATIO,
            "goal_noop_ratio": GOAL_NOOP_RATIO,
        }
        s.rows.append(
            Row(
                "ab",
                "IMAP logins/s, 16 clients: B (portal sign-ins) / A (idle)",
                f"{median(rate_b):.0f}",
                f"{median(rate_a):.0f}",
                f"{login_ratio:.2f}",
                f">= {GOAL_LOGIN_RATIO:.2f}",
                verdict(login_ratio >= GOAL_LOGIN_RATIO),
            )
        )
        for q in (50, 99):
            s.rows.append(
                Row(
                    "ab'",
                    f"NOOP p{q} through imapguard (ms): B / A"
                    f" (direct to Dovecot: {direct_ratios[q]:.2f})",
                    f"{pct(noop['B'], q) / 1e3:.2f}",
                    f"{pct(noop['A'], q) / 1e3:.2f}",
                    f"{ratios[q]:.2f}",
                    f"<= {GOAL_NOOP_RATIO:.2f}",
                    verdict(ratios[q] <= GOAL_NOOP_RATIO),
                )
            )
        added = {
            arm: [t - d for r in runs for t, d in zip(r.noop_us, r.direct_us, strict=True)]
            for arm, runs in ab.items()
        }
        s.values["ab"]["added_noop_us"] = {
            arm: {"p50": pct(v, 50), "p99": pct(v, 99)} for arm, v in added.items()
        }
        s.rows.append(
            Row(
                "ab'",
                "imapguard's own NOOP time p50 / p99 (ms): through minus direct, same tick",
                f"{pct(added['B'], 50) / 1e3:.2f} / {pct(added['B'], 99) / 1e3:.2f}",
                f"{pct(added['A'], 50) / 1e3:.2f} / {pct(added['A'], 99) / 1e3:.2f}",
                f"{pct(added['B'], 50) / pct(added['A'], 50):.2f}",
                "info",
                "",
            )
        )
        v = s.values["ab"]
        s.rows.append(
            Row(
                'ab"',
                "B's load: portal sign-ins/s (p50 ms); gateway cores B / A (extra CPU"
                " per sign-in); load process cores",
                f"{v['sign_ins_per_s']:.1f} ({v['sign_in_p50_ms']:.0f} ms);"
                f" {v['gateway_cores']['B']:.2f}",
                f"{v['gateway_cores']['A']:.2f} ({v['gateway_cpu_ms_per_sign_in']:.1f} ms);"
                f" load {v['load_process_cores']:.2f}",
                "",
                "info",
                "",
            )
        )
    if pages:
        paths, run = pages
        every = [x for xs in run.latencies.values() for x in xs]
        s.values["pages"] = {
            "pages": paths,
            "p50_ms": {k: pct(v, 50) * 1e3 for k, v in run.latencies.items()},
            "p99_ms": {k: pct(v, 99) * 1e3 for k, v in run.latencies.items()},
            "all_p50_ms": pct(every, 50) * 1e3,
            "all_p99_ms": pct(every, 99) * 1e3,
            "requests_per_s": run.requests / run.wall,
            "gateway_cores": run.gateway_cpu,
            "client_cores": run.client_cpu,
        }
        for path, xs in [*run.latencies.items(), ("all pages", every)]:
            s.rows.append(
                Row(
                    "pages",
                    f"page latency p50 / p99 (ms), 20 users: {path}",
                    f"{pct(xs, 50) * 1e3:.1f} / {pct(xs, 99) * 1e3:.1f}",
                    f"{len(xs)} requests"
                    if path != "all pages"
                    else f"{run.requests / run.wall:.0f} requests/s",
                    "",
                    "info",
                    "",
                )
            )
    return s


def foreign_load(
    ab: dict[str, list[ArmRun]] | None, pages: tuple[list[str], PageRun] | None
) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    if ab:
        xs = [r.foreign_cores for v in ab.values() for r in v]
        out["ab"] = (median(xs), max(xs))
    if pages:
        out["pages"] = (pages[1].foreign_cores, pages[1].foreign_cores)
    return out


def _pin(env: Env) -> None:
    """Every thread of the gateway on CPU 0; this process (and the load processes
    it starts later), the portal process and Dovecot's processes on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError("--pin-gateway needs two CPUs")
    gateway, rest = {cpus[0]}, set(cpus[1:])
    gw = env.gateway.running_pid()
    for task in os.listdir(f"/proc/{gw}/task"):
        os.sched_setaffinity(int(task), gateway)
    others = [os.getpid(), env.portal_pid(), *_group(env.dovecot.pid)]
    for pid in others:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            for task in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(task), rest)
    print(f"#   pinned: gateway on CPU {cpus[0]}, the rest on {sorted(rest)}", flush=True)


def _group(pgid: int | None) -> list[int]:
    """The processes of process group `pgid` (Dovecot's master and its children)."""
    if pgid is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry)) == pgid:
                    found.append(int(entry))
    return found


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    def pace(ap: argparse.ArgumentParser) -> None:
        ap.add_argument(
            "--sign-in-interval",
            type=float,
            metavar="SECONDS",
            help="arm B: start a portal sign-in at most this often (default 0: back to back)",
        )
        ap.add_argument(
            "--pin-gateway",
            action="store_true",
            help="the gateway process on CPU 0, everything else (clients, load, portal,"
            " Dovecot) on the other CPUs: the portal's effect on the gateway, not on the machine",
        )

    ap = argument_parser("python -m bench.portal", __doc__, ["ab", "pages"], pace)
    args = ap.parse_args(argv)
    if args.src is not None:
        BenchGateway.src_override = args.src.resolve()
    check_prerequisites("dovecot-imapd", (DOVECOT_BINARY, DOVEADM_BINARY))
    p = run_params(
        Params.quick() if args.quick else Params.full(),
        args,
        sign_in_interval=args.sign_in_interval,
    )
    only = set(args.only or ["ab", "pages"])
    info = start("portal", args.quick, p, nginx=False)
    started = time.monotonic()
    ab: dict[str, list[ArmRun]] | None = None
    pages: tuple[list[str], PageRun] | None = None
    try:
        with uvloop_runner() as runner, environment(args.keep, p) as env:
            info["imapguard"] = describe_source(env.gateway.imported_from())
            info["setup"] = (
                f"gateway and portal in one `imapguard serve`; certificate"
                f" {_certificate_summary(env.gateway.base / 'gateway.pem')}; defense enforcing"
                f" its defaults, trusted_networks [{TRUSTED}] (counted, familiar, not blocked);"
                f" portal max_sign_ins_per_minute {MAX_SIGN_INS_PER_MINUTE}, sign-ins from"
                f" {len(SIGNER_SOURCES)} source addresses; Dovecot master password {{PLAIN}}"
            )
            for k in ("imapguard", "setup"):
                print(f"#   {k}: {info[k]}", flush=True)
            wait_quiet(env, args.wait_quiet)
            if args.pin_gateway:
                _pin(env)
            _sanity(runner, env)
            if "ab" in only:
                ab = phase_ab(runner, env, p)
            if "pages" in only:
                pages = phase_pages(runner, env, p)
            info["checks"] = _final_checks(env)
            print(f"#   checks: {info['checks']}", flush=True)
    except (KeyboardInterrupt, BenchError) as exc:
        return stopped(exc)
    summary = summarize(ab, pages)

    def raw() -> dict[str, Any]:
        return {
            "ab": {
                arm: [
                    {
                        **asdict(r),
                        "noop_us": None,
                        "direct_us": None,
                        "noop_p50_us": pct(r.noop_us, 50),
                        "noop_p99_us": pct(r.noop_us, 99),
                        "direct_p50_us": pct(r.direct_us, 50),
                        "direct_p99_us": pct(r.direct_us, 99),
                    }
                    for r in runs
                ]
                for arm, runs in (ab or {}).items()
            },
            "pages": (
                {
                    **asdict(pages[1]),
                    "latencies": {k: len(v) for k, v in pages[1].latencies.items()},
                }
                if pages
                else None
            ),
        }

    return report(summary, foreign_load(ab, pages), started, info, p, args.json, raw)


if __name__ == "__main__":
    sys.exit(main())

"""Logins per second per method through imapguard against the same logins straight to
Dovecot, and how responsive an already relaying session stays while logins are verified.

Run by hand (needs root, Debian dovecot-imapd, Node.js with tests/oidc's node_modules)::

    .venv/bin/python -m bench.logins            # full run, about 5 minutes
    .venv/bin/python -m bench.logins --quick    # smoke run, under a minute

Options: --only a|b (repeatable), --json FILE (all figures), --src DIR (benchmark another
imapguard source tree), --wait-quiet SECONDS, --max-foreign CORES / --retries N (as in
bench/gateway.py), --keep (keep the temporary directory).

Everything runs on 127.0.0.1, on free ports, under a temporary directory, and is stopped
at the end (also on Ctrl-C, SIGTERM or an exception):

* Dovecot (tests.dovecot.DovecotServer): its plain port is the gateways' upstream and
  baseline (g), its implicit-TLS port baseline (f). The master password is stored as
  {PLAIN} like the users' (as bench/gateway.py does), so a master login and a user
  login cost Dovecot the same.
* An OpenID provider (tests.oidc_provider.OidcProvider, oidc-provider on Node.js) mints
  one access token for alice@example.org with amr ["pwd", "mfa"]; a mail client reuses
  its token until it expires, so every OAuth login here sends the same one. The gateway
  fetches the JWKS once (warm-up) and then verifies signatures from its cache.
* Two `imapguard serve` (tests.gateway.GatewayProcess), identical but for
  `[auth] verified_cache_seconds`: 300 (the default) and 0. login = "master", upstream
  tls = "none" to Dovecot's plain port, methods = app-password, password+totp,
  oauthbearer, xoauth2, client-cert; `[oauth]` names the provider (require_amr mfa);
  `[tls] client_ca` is a trustme CA that issued alice's device certificate (so every
  handshake carries a CertificateRequest, as in a deployment with client-cert on).
  `[limits] max_preauth_per_source` is raised from 20 to 200: the 50 concurrent logins
  of (b) all come from 127.0.0.1. Each gateway has its own app password and TOTP
  secret for alice (`imapguard totp enroll alice --json`); the bench logs in once with
  password + current code from 127.0.0.1 to make that a trusted device.

(a) Logins per second, 16 concurrent clients, each connect + TLS + greeting + login +
    LOGOUT, targets interleaved round by round, medians (ratios: median of the per-round
    ratios). Gateway CPU per login from /proc/PID/stat; Dovecot CPU per login from its
    process group (including the exited `imap` processes, accounted to their parent).
      app-password     LOGIN alice <app password>                      (cache 300)
      totp/cache300    LOGIN alice <password><stale code>: what a mail client sends on
      totp/cache0        every reconnect after the code was typed once; the device is
                         trusted. cache 300: the password was verified recently, the
                         upstream session is a master login; cache 0: the password is
                         checked by logging in upstream as the user, that session is used.
      oauthbearer      AUTHENTICATE OAUTHBEARER <initial response> (SASL-IR)  (cache 300)
      xoauth2          AUTHENTICATE XOAUTH2 <initial response> (SASL-IR)      (cache 300)
      client-cert      AUTHENTICATE EXTERNAL = with alice's device certificate (cache 300)
      dovecot-tls      Dovecot's implicit-TLS port, LOGIN alice <password>
      dovecot-plain    Dovecot's plain port, LOGIN alice <password>
    Every login must succeed (a failure means the benchmark is wrong: it stops), and the
    gateway's audit log must show the factor the method is meant to prove.
(b) Responsiveness: one session through the cache-0 gateway (app password, SELECT
    INBOX) and one straight to Dovecot's plain port (the reference) stay open for the
    whole phase. NOOPs are sent one at a time, paced every --probe-interval (5 ms) so
    that a stall is sampled as often as a quiet moment, alternately on the two
    sessions. Each round and load: an idle window (nothing else running), then a window
    with 50 concurrent clients logging in back to back in a separate process (so that
    their TLS work does not delay this process's event loop): password+TOTP on the
    cache-0 gateway (a real upstream password check each), then OAUTHBEARER on it.
    Added latency = NOOP round trip under load - idle (pooled over rounds, p50 and p99).
                                                   Goal: added p99 < 20 ms.

The box is shared: CPU used during a measurement by processes that are not part of the
benchmark ("foreign load") is printed per measurement; above --max-foreign cores the
measurement is repeated, at most --retries times (as in bench/gateway.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import trustme
from tests.dovecot import DOVEADM_BINARY, DOVECOT_BINARY, DovecotServer
from tests.oidc_provider import OIDC_DIR, OidcProvider

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
from bench._procs import cpu_seconds, group_cpu_seconds
from bench.gateway import (
    BenchGateway,
    _certificate_summary,
    _per_round_ratio,
)

GOAL_ADDED_P99_MS = 20.0

USER = "alice"
EMAIL = "alice@example.org"
METHODS = ("app-password", "password+totp", "oauthbearer", "xoauth2", "client-cert")
CACHES = (300, 0)  # [auth] verified_cache_seconds of the two gateways
# The default (20) would refuse most of (b)'s 50 concurrent logins from 127.0.0.1.
MAX_PREAUTH_PER_SOURCE = 200
TOKEN_TTL = 4 * 3600  # longer than any run: every OAuth login sends the same token
TIMEOUT = 15.0


@dataclass(frozen=True)
class Params:
    rounds: int
    login_seconds: float
    login_concurrency: int
    login_max: int
    warmup_logins: int
    load_rounds: int
    load_concurrency: int
    idle_seconds: float
    probe_seconds: float
    probe_interval: float
    load_ramp: float
    retries: int = 2
    max_foreign: float = 0.15

    @classmethod
    def full(cls) -> Params:
        return cls(
            rounds=3,
            login_seconds=6.0,
            login_concurrency=16,
            login_max=20_000,
            warmup_logins=64,
            load_rounds=3,
            load_concurrency=50,
            idle_seconds=4.0,
            probe_seconds=10.0,
            probe_interval=0.005,
            load_ramp=1.0,
        )

    @classmethod
    def quick(cls) -> Params:
        return cls(
            rounds=1,
            login_seconds=2.0,
            login_concurrency=16,
            login_max=5_000,
            warmup_logins=16,
            load_rounds=1,
            load_concurrency=50,
            idle_seconds=1.5,
            probe_seconds=3.0,
            probe_interval=0.005,
            load_ramp=0.5,
            retries=1,  # stay under a minute on a busy box
        )


# --------------------------------------------------------------------------- logins


@dataclass(frozen=True)
class LoginSpec:
    """One way to log in, as plain data (it is sent to the load process)."""

    name: str
    port: int
    tls: bool
    command: bytes  # the login command after its tag
    client_cert: str | None = None  # PEM file: private key and certificate chain

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = client_ssl_context()
        if self.client_cert is not None:
            ctx.load_cert_chain(self.client_cert)
        return ctx


async def login_once(spec: LoginSpec, ctx: ssl.SSLContext | None) -> None:
    conn = await connect(spec.port, ctx, TIMEOUT)
    try:
        await conn.command(b"a", spec.command, TIMEOUT)
        await conn.command(b"b", b"LOGOUT", TIMEOUT)
    finally:
        conn.close()
    await conn.closed(5.0)


def oauthbearer_command(user: str, token: str) -> bytes:
    """RFC 7628 section 3.1 client response as a SASL-IR initial response."""
    payload = f"n,a={user},\x01host=localhost\x01port=993\x01auth=Bearer {token}\x01\x01"
    return b"AUTHENTICATE OAUTHBEARER " + base64.b64encode(payload.encode())


def xoauth2_command(user: str, token: str) -> bytes:
    payload = f"user={user}\x01auth=Bearer {token}\x01\x01"
    return b"AUTHENTICATE XOAUTH2 " + base64.b64encode(payload.encode())


@dataclass(frozen=True)
class Target:
    spec: LoginSpec
    label: str
    gateway: BenchGateway | None
    factor: str | None  # what the gateway's audit log must say the login proved

    @property
    def name(self) -> str:
        return self.spec.name

    def pid(self) -> int | None:
        proc = self.gateway.proc if self.gateway is not None else None
        return proc.pid if proc is not None else None


# --------------------------------------------------------------------------- environment


@dataclass
class Env:
    base: Path
    dovecot: DovecotServer
    idp: OidcProvider
    gateways: dict[int, BenchGateway]  # by verified_cache_seconds
    app_passwords: dict[int, str]
    totp_typed: dict[int, str]  # password + the code typed once, per gateway
    token: str
    client_cert: Path

    def measure_foreign(self) -> Callable[[], float]:
        """Start a window; the returned function gives the CPU (in cores) used during
        it by processes that are not part of this benchmark (other users of the box):
        ours are this process, the gateways' and Dovecot's process groups, this
        process's other children while they run (the OpenID provider, the load
        process) and once they were reaped."""
        procs = [gw.proc for gw in self.gateways.values()]
        return benchmark_window(self.dovecot, *(p.pid for p in procs if p is not None))

    def targets(self) -> dict[str, Target]:
        dv, gw = self.dovecot, self.gateways
        own = login_command(USER, dv.users[USER])

        def on(cache: int, name: str, command: bytes, cert: str | None = None) -> LoginSpec:
            return LoginSpec(name, gw[cache].implicit_port, True, command, cert)

        targets = [
            Target(
                on(300, "app-password", login_command(USER, self.app_passwords[300])),
                "app password (LOGIN)",
                gw[300],
                "app-password",
            ),
            *(
                Target(
                    on(cache, f"totp/cache{cache}", login_command(USER, self.totp_typed[cache])),
                    f"password + stale TOTP code, trusted device (LOGIN), cache {cache} s",
                    gw[cache],
                    "trusted-device",
                )
                for cache in CACHES
            ),
            Target(
                on(300, "oauthbearer", oauthbearer_command(EMAIL, self.token)),
                "OAUTHBEARER, token with amr mfa (SASL-IR)",
                gw[300],
                "oauth-mfa",
            ),
            Target(
                on(300, "xoauth2", xoauth2_command(EMAIL, self.token)),
                "XOAUTH2, token with amr mfa (SASL-IR)",
                gw[300],
                "oauth-mfa",
            ),
            Target(
                on(300, "client-cert", b"AUTHENTICATE EXTERNAL =", str(self.client_cert)),
                "EXTERNAL, client certificate",
                gw[300],
                "client-cert",
            ),
            Target(
                LoginSpec("dovecot-tls", dv.imaps_port, True, own),
                "Dovecot direct, implicit TLS (LOGIN)",
                None,
                None,
            ),
            Target(
                LoginSpec("dovecot-plain", dv.imap_port, False, own),
                "Dovecot direct, plain (LOGIN)",
                None,
                None,
            ),
        ]
        return {t.name: t for t in targets}

    def load_specs(self) -> dict[str, LoginSpec]:
        """What (b)'s 50 clients send: the costliest logins, on the cache-0 gateway."""
        port = self.gateways[0].implicit_port
        return {
            "totp/cache0": LoginSpec(
                "totp/cache0", port, True, login_command(USER, self.totp_typed[0])
            ),
            "oauthbearer": LoginSpec(
                "oauthbearer", port, True, oauthbearer_command(EMAIL, self.token)
            ),
        }


def _gateway_config(text: str, cache: int, client_ca: Path, idp: OidcProvider) -> str:
    """Put what GatewayProcess.create does not write into its configuration."""
    for old, new in (
        ("[tls]\n", f'[tls]\nclient_ca = "{client_ca}"\nclient_cert_user = "email-local"\n'),
        ("[auth]\n", f"[auth]\nverified_cache_seconds = {cache}\n"),
    ):
        if text.count(old) != 1:
            raise RuntimeError(f"generated gateway configuration: expected one {old.strip()}")
        text = text.replace(old, new)
    return text + "\n".join(
        [
            "[oauth]",
            f'issuer = "{idp.issuer}"',
            'audience = "imap"',
            'require_amr = ["mfa"]',
            f'ca_file = "{idp.ca_file}"',
            "",
        ]
    )


def _enroll_totp(gw: BenchGateway, user: str) -> str:
    out = gw.cli("totp", "enroll", user, "--json")
    document: dict[str, Any] = json.loads(out.stdout)
    return str(document["secret"])


@contextlib.contextmanager
def environment(keep: bool, runner: asyncio.Runner) -> Iterator[Env]:
    import pyotp

    with work_directory(keep, "igbench-logins-") as (base, stack):
        dovecot = start_dovecot(base / "dovecot", stack)

        idp = OidcProvider(base / "oidc")
        stack.callback(idp.stop)
        idp.start()
        token = idp.mint(EMAIL, amr=["pwd", "mfa"], ttl=TOKEN_TTL)

        devices = trustme.CA(organization_name="imapguard bench devices")
        client_ca = base / "devices-ca.pem"
        devices.cert_pem.write_to_path(str(client_ca))
        client_cert = base / "alice-device.pem"
        devices.issue_cert(EMAIL).private_key_and_cert_chain_pem.write_to_path(str(client_cert))

        gateways: dict[int, BenchGateway] = {}
        app_passwords: dict[int, str] = {}
        totp_secrets: dict[int, str] = {}
        for cache in CACHES:
            gw = BenchGateway.create(
                base / f"gateway-cache{cache}",
                dovecot,
                login="master",
                methods=METHODS,
                upstream_tls="none",
                extra_toml=(
                    "[limits]\n"
                    f"max_preauth_per_source = {MAX_PREAUTH_PER_SOURCE}\n"
                    "drain_timeout = 1.0\n"
                ),
            )
            assert isinstance(gw, BenchGateway)
            gw.config_path.write_text(
                _gateway_config(gw.config_path.read_text(), cache, client_ca, idp)
            )
            app_passwords[cache] = gw.create_app_password(USER, "bench")
            totp_secrets[cache] = _enroll_totp(gw, USER)
            stack.callback(gw.stop)
            gw.start()
            gateways[cache] = gw

        # Type the code once from this address: the device (127.0.0.0/24, no IMAP ID)
        # becomes trusted, and what was typed is what the mail client sends from then on.
        password = dovecot.users[USER]
        typed: dict[int, str] = {}
        for cache, gw in gateways.items():
            typed[cache] = password + pyotp.TOTP(totp_secrets[cache]).now()
            spec = LoginSpec("trust", gw.implicit_port, True, login_command(USER, typed[cache]))
            runner.run(login_once(spec, spec.ssl_context()))
            event = _last_auth(gw, 1)
            if (event.get("result"), event.get("factor")) != ("ok", "password+totp"):
                raise BenchError(f"trusting the device on cache {cache}: {event}")
        yield Env(base, dovecot, idp, gateways, app_passwords, typed, token, client_cert)


def _last_auth(gw: BenchGateway, at_least: int, timeout: float = 10.0) -> dict[str, Any]:
    """The newest `auth` audit event, once there are at least `at_least` of them."""
    deadline = time.monotonic() + timeout
    while True:
        events = gw.events("auth")
        if len(events) >= at_least:
            return events[-1]
        if time.monotonic() > deadline:
            raise BenchError(f"no auth event in {gw.audit_path} after {timeout:.0f} s")
        time.sleep(0.05)


def _last_refusal(gw: BenchGateway | None) -> str:
    if gw is None:
        return ""
    refused = [e for e in gw.events("auth") if e.get("result") != "ok"]
    return f"; last refusal in the gateway's audit log: {refused[-1]}" if refused else ""


def _sanity(runner: asyncio.Runner, env: Env) -> None:
    """One login per target; the gateway must say it proved the intended factor."""
    for t in env.targets().values():
        before = len(t.gateway.events("auth")) if t.gateway is not None else 0
        try:
            runner.run(login_once(t.spec, t.spec.ssl_context()))
        except CLIENT_ERRORS as exc:
            raise BenchError(
                f"{t.name}: {type(exc).__name__}: {exc}{_last_refusal(t.gateway)}"
            ) from exc
        if t.gateway is not None:
            event = _last_auth(t.gateway, before + 1)
            if (event.get("result"), event.get("factor")) != ("ok", t.factor):
                raise BenchError(f"{t.name}: expected factor {t.factor}, audit log says {event}")


# --------------------------------------------------------------------------- (a) login rate


@dataclass
class MethodRun:
    login: LoginRun
    dovecot_cpu: float
    foreign_cores: float = 0.0

    @property
    def dovecot_us_per_login(self) -> float:
        return self.dovecot_cpu / max(self.login.ok, 1) * 1e6


async def _rate(t: Target, p: Params, seconds: float, max_logins: int) -> LoginRun:
    ctx = t.spec.ssl_context()
    return await measure_logins(
        t.name,
        lambda: login_once(t.spec, ctx),
        t.pid(),
        p.login_concurrency,
        seconds,
        max_logins,
    )


def _check(t: Target, run: LoginRun) -> None:
    if run.errors:
        raise BenchError(
            f"{t.name}: {run.errors} of {run.ok + run.errors} logins failed, first:"
            f" {run.first_error}{_last_refusal(t.gateway)}"
        )


def phase_logins(runner: asyncio.Runner, env: Env, p: Params) -> dict[str, list[MethodRun]]:
    targets = env.targets()
    dovecot_pgid = env.dovecot.pid
    assert dovecot_pgid is not None
    print(
        f"\n## (a) login rate: {p.login_concurrency} clients x {p.login_seconds:.0f} s per"
        f" method, {p.rounds} interleaved round(s) (user {USER})",
        flush=True,
    )
    for t in targets.values():  # warm-up (the gateway's first JWKS fetch, caches), not counted
        _check(t, runner.run(_rate(t, p, 30.0, p.warmup_logins)))
    runs: dict[str, list[MethodRun]] = {name: [] for name in targets}
    for r in range(p.rounds):
        for name, t in targets.items():

            def measure(t: Target = t) -> MethodRun:
                wait_dovecot_sessions(env.dovecot, 8, 10.0)
                d0 = group_cpu_seconds(dovecot_pgid)
                login = runner.run(_rate(t, p, p.login_seconds, p.login_max))
                return MethodRun(login, group_cpu_seconds(dovecot_pgid) - d0)

            run = quiet_attempt(env, measure, name, p)
            _check(t, run.login)
            runs[name].append(run)
            lr = run.login
            cpu = lr.cpu_us_per_login
            print(
                f"  r{r + 1} {name:14s} {lr.rate:7.1f} logins/s  ok={lr.ok} err={lr.errors}"
                f"  p50={lr.p50_ms:.1f} ms p99={lr.p99_ms:.1f} ms"
                + (f"  gateway CPU {cpu:.0f} us/login" if cpu is not None else "")
                + f"  Dovecot CPU {run.dovecot_us_per_login:.0f} us/login"
                + f"  foreign load {run.foreign_cores:.2f} cores",
                flush=True,
            )
    return runs


# --------------------------------------------------------------------------- (b) responsiveness


@dataclass
class ProbeRun:
    load: str  # "idle" or the load's name
    gateway_us: list[float]  # NOOP round trips through imapguard
    direct_us: list[float]  # NOOP round trips straight to Dovecot (plain)
    window: float
    gateway_cores: float  # the gateway's CPU during the window, in cores
    logins: int = 0  # logins the load completed inside the window
    login_errors: int = 0
    login_p50_ms: float = float("nan")
    login_p99_ms: float = float("nan")
    first_error: str | None = None
    foreign_cores: float = 0.0

    @property
    def login_rate(self) -> float:
        return self.logins / self.window if self.window > 0 else 0.0


async def _session(port: int, tls: bool, command: bytes) -> ImapConn:
    conn = await connect(port, client_ssl_context() if tls else None, TIMEOUT)
    await conn.command(b"a", command, TIMEOUT)
    await conn.command(b"s", b"SELECT INBOX", TIMEOUT)
    for _ in range(50):  # warm-up
        await conn.command(b"n", b"NOOP", TIMEOUT)
    return conn


async def _close(conns: tuple[ImapConn, ...]) -> None:
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.closed(5.0) for c in conns))


async def _probe(
    gateway: ImapConn, direct: ImapConn, seconds: float, interval: float
) -> tuple[list[float], list[float]]:
    """Every `interval`: one NOOP through the gateway, then one straight to Dovecot.
    Paced, not back to back, so that slow moments are not sampled less often."""
    clock = time.perf_counter
    through: list[float] = []
    straight: list[float] = []
    end = clock() + seconds
    due = clock()
    while (now := clock()) < end:
        if now < due:
            await asyncio.sleep(due - now)
        t0 = clock()
        await gateway.command(b"n", b"NOOP", TIMEOUT)
        t1 = clock()
        await direct.command(b"n", b"NOOP", TIMEOUT)
        t2 = clock()
        through.append((t1 - t0) * 1e6)
        straight.append((t2 - t1) * 1e6)
        due = t0 + interval
    return through, straight


def _load_process(spec: LoginSpec, concurrency: int, stop: Event, out: Connection) -> None:
    """The load: `concurrency` clients logging in back to back until `stop` is set.
    Sends ("ready", None) once every client finished a login, then ("done", result)."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops this process
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(_load(spec, concurrency, stop, out))
    out.send(("done", result))
    out.close()


async def _load(spec: LoginSpec, concurrency: int, stop: Event, out: Connection) -> dict[str, Any]:
    ctx = spec.ssl_context()
    finished: list[tuple[float, float]] = []  # (monotonic end, seconds)
    errors: list[str] = []
    running = True

    async def client() -> None:
        while running:
            t0 = time.monotonic()
            try:
                await login_once(spec, ctx)
            except CLIENT_ERRORS as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            t1 = time.monotonic()
            finished.append((t1, t1 - t0))

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(client())
        ready = False
        while not stop.is_set():
            if not ready and len(finished) >= concurrency:
                out.send(("ready", None))
                ready = True
            await asyncio.sleep(0.02)
        running = False  # in-flight logins finish; no new ones start
    return {"finished": finished, "errors": len(errors), "first_error": errors[:1]}


def _loaded_probe(
    runner: asyncio.Runner,
    env: Env,
    spec: LoginSpec,
    sessions: tuple[ImapConn, ImapConn],
    p: Params,
) -> ProbeRun:
    pid = env.gateways[0].proc.pid if env.gateways[0].proc is not None else None
    assert pid is not None
    load = helper_process(_load_process, (spec, p.load_concurrency), f"bench-load-{spec.name}")
    with load as (proc, stop, reader):
        wait_ready(
            reader,
            f"load {spec.name}: not every client finished a login in 60 s",
            f"load {spec.name}",
        )
        time.sleep(p.load_ramp)
        cpu0, w0 = cpu_seconds(pid), time.monotonic()
        through, straight = runner.run(_probe(*sessions, p.probe_seconds, p.probe_interval))
        cpu1, w1 = cpu_seconds(pid), time.monotonic()
        stop.set()
        if not reader.poll(TIMEOUT + 30.0):
            raise BenchError(f"load {spec.name}: no result")
        _, result = reader.recv()
        proc.join(10.0)
    inside = [s for t, s in result["finished"] if w0 <= t <= w1]
    first = result["first_error"]
    return ProbeRun(
        load=spec.name,
        gateway_us=through,
        direct_us=straight,
        window=w1 - w0,
        gateway_cores=(cpu1 - cpu0) / (w1 - w0),
        logins=len(inside),
        login_errors=int(result["errors"]),
        login_p50_ms=pct(inside, 50) * 1e3,
        login_p99_ms=pct(inside, 99) * 1e3,
        first_error=str(first[0]) if first else None,
    )


def _idle_probe(
    runner: asyncio.Runner, env: Env, sessions: tuple[ImapConn, ImapConn], p: Params
) -> ProbeRun:
    proc = env.gateways[0].proc
    assert proc is not None
    cpu0, w0 = cpu_seconds(proc.pid), time.monotonic()
    through, straight = runner.run(_probe(*sessions, p.idle_seconds, p.probe_interval))
    cpu1, w1 = cpu_seconds(proc.pid), time.monotonic()
    return ProbeRun("idle", through, straight, w1 - w0, (cpu1 - cpu0) / (w1 - w0))


def _print_probe(r: int, run: ProbeRun) -> None:
    g, d = run.gateway_us, run.direct_us
    load = (
        f"  load {run.logins / run.window:6.1f} logins/s err={run.login_errors}"
        f" (login p50={run.login_p50_ms:.0f} ms p99={run.login_p99_ms:.0f} ms)"
        if run.load != "idle"
        else ""
    )
    print(
        f"  r{r + 1} {run.load:12s} NOOP via imapguard p50={pct(g, 50) / 1e3:.2f} ms"
        f" p99={pct(g, 99) / 1e3:.2f} ms max={max(g, default=0.0) / 1e3:.1f} ms"
        f" | direct p50={pct(d, 50) / 1e3:.2f} p99={pct(d, 99) / 1e3:.2f} ms"
        f" | n={len(g)}  gateway CPU {run.gateway_cores:.2f} cores{load}"
        f"  foreign load {run.foreign_cores:.2f} cores",
        flush=True,
    )


def phase_responsiveness(runner: asyncio.Runner, env: Env, p: Params) -> dict[str, list[ProbeRun]]:
    loads = env.load_specs()
    print(
        f"\n## (b) responsiveness: NOOP every {p.probe_interval * 1e3:.0f} ms on a relaying"
        f" session (cache-0 gateway) and on a direct Dovecot session; {p.idle_seconds:.0f} s"
        f" idle, then {p.probe_seconds:.0f} s while {p.load_concurrency} clients log in"
        f" ({', '.join(loads)}); {p.load_rounds} round(s)",
        flush=True,
    )
    gw = env.gateways[0]
    sessions = (
        runner.run(_session(gw.implicit_port, True, login_command(USER, env.app_passwords[0]))),
        runner.run(
            _session(env.dovecot.imap_port, False, login_command(USER, env.dovecot.users[USER]))
        ),
    )
    runs: dict[str, list[ProbeRun]] = {"idle": [], **{name: [] for name in loads}}
    try:
        for r in range(p.load_rounds):
            for name, spec in loads.items():

                def settle() -> None:
                    wait_dovecot_sessions(env.dovecot, 8, 20.0)

                def idle() -> ProbeRun:
                    return _idle_probe(runner, env, sessions, p)

                run = quiet_attempt(env, idle, "idle", p, settle)
                runs["idle"].append(run)
                _print_probe(r, run)

                def loaded(spec: LoginSpec = spec) -> ProbeRun:
                    return _loaded_probe(runner, env, spec, sessions, p)

                run = quiet_attempt(env, loaded, name, p, settle)
                if run.login_errors:
                    raise BenchError(
                        f"load {name}: {run.login_errors} logins failed, first:"
                        f" {run.first_error}{_last_refusal(gw)}"
                    )
                runs[name].append(run)
                _print_probe(r, run)
    finally:
        runner.run(_close(sessions))
    return runs


# --------------------------------------------------------------------------- report


def summarize(
    env: Env, logins: dict[str, list[MethodRun]] | None, probes: dict[str, list[ProbeRun]] | None
) -> Summary:
    s = Summary()
    targets = env.targets()
    if logins:
        rate = {n: [r.login.rate for r in runs] for n, runs in logins.items()}
        med = {n: median(v) for n, v in rate.items()}
        gw_cpu = {
            n: median([c for r in runs if (c := r.login.cpu_us_per_login) is not None])
            for n, runs in logins.items()
            if targets[n].gateway is not None
        }
        dv_cpu = {n: median([r.dovecot_us_per_login for r in runs]) for n, runs in logins.items()}
        ratios = {
            n: {
                "dovecot-tls": _per_round_ratio(rate[n], rate["dovecot-tls"]),
                "dovecot-plain": _per_round_ratio(rate[n], rate["dovecot-plain"]),
            }
            for n in rate
        }
        s.values["a"] = {
            "median_rate": med,
            "ratio": ratios,
            "gateway_cpu_us_per_login": gw_cpu,
            "dovecot_cpu_us_per_login": dv_cpu,
            "errors": {n: sum(r.login.errors for r in runs) for n, runs in logins.items()},
        }
        ref = f"Dovecot TLS {med['dovecot-tls']:.0f}; plain {med['dovecot-plain']:.0f}"
        for n in gw_cpu:
            s.rows.append(
                Row(
                    "a",
                    f"logins/s: {targets[n].label}",
                    f"{med[n]:.0f}",
                    ref,
                    f"{ratios[n]['dovecot-tls']:.2f} TLS; {ratios[n]['dovecot-plain']:.2f} plain",
                    "info",
                    "",
                )
            )
        dref = f"TLS {dv_cpu['dovecot-tls']:.0f}, plain {dv_cpu['dovecot-plain']:.0f}"
        for n in gw_cpu:
            s.rows.append(
                Row(
                    "a'",
                    f"gateway CPU per login (us): {n}",
                    f"{gw_cpu[n]:.0f}",
                    f"Dovecot {dv_cpu[n]:.0f} (direct logins: {dref})",
                    "",
                    "info",
                    "",
                )
            )
    if probes:
        idle_g = [x for r in probes["idle"] for x in r.gateway_us]
        idle_d = [x for r in probes["idle"] for x in r.direct_us]
        values: dict[str, Any] = {
            "idle": {
                "gateway_p50_us": pct(idle_g, 50),
                "gateway_p99_us": pct(idle_g, 99),
                "direct_p50_us": pct(idle_d, 50),
                "direct_p99_us": pct(idle_d, 99),
                "samples": len(idle_g),
            }
        }
        for name, runs in probes.items():
            if name == "idle":
                continue
            g = [x for r in runs for x in r.gateway_us]
            d = [x for r in runs for x in r.direct_us]
            added = {
                "gateway_p50_us": pct(g, 50) - pct(idle_g, 50),
                "gateway_p99_us": pct(g, 99) - pct(idle_g, 99),
                "direct_p50_us": pct(d, 50) - pct(idle_d, 50),
                "direct_p99_us": pct(d, 99) - pct(idle_d, 99),
            }
            ok = added["gateway_p99_us"] / 1e3 < GOAL_ADDED_P99_MS
            values[name] = {
                "gateway_p50_us": pct(g, 50),
                "gateway_p99_us": pct(g, 99),
                "gateway_max_us": max(g, default=float("nan")),
                "direct_p50_us": pct(d, 50),
                "direct_p99_us": pct(d, 99),
                "added": added,
                "samples": len(g),
                "login_rate": median([r.login_rate for r in runs]),
                "gateway_cores": median([r.gateway_cores for r in runs]),
                "goal_added_p99_ms": GOAL_ADDED_P99_MS,
                "pass": ok,
            }
            rate = values[name]["login_rate"]
            cores = values[name]["gateway_cores"]
            s.rows.append(
                Row(
                    "b",
                    f"NOOP added p99 (ms), {probes_label(name)}",
                    f"{added['gateway_p99_us'] / 1e3:+.2f} (p99 {pct(g, 99) / 1e3:.2f},"
                    f" idle {pct(idle_g, 99) / 1e3:.2f})",
                    f"Dovecot direct {added['direct_p99_us'] / 1e3:+.2f}"
                    f" (p99 {pct(d, 99) / 1e3:.2f}, idle {pct(idle_d, 99) / 1e3:.2f})",
                    "",
                    f"< {GOAL_ADDED_P99_MS:.0f} ms",
                    verdict(ok),
                )
            )
            s.rows.append(
                Row(
                    "b'",
                    f"NOOP added p50 (ms); logins/s under load; gateway cores, {name}",
                    f"{added['gateway_p50_us'] / 1e3:+.2f} (p50 {pct(g, 50) / 1e3:.2f});"
                    f" {rate:.0f}/s; {cores:.2f}",
                    f"Dovecot direct {added['direct_p50_us'] / 1e3:+.2f}"
                    f" (p50 {pct(d, 50) / 1e3:.2f})",
                    "",
                    "info",
                    "",
                )
            )
        s.values["b"] = values
    return s


def probes_label(name: str) -> str:
    return {
        "totp/cache0": "50 logins in flight: password+TOTP, cache 0",
        "oauthbearer": "50 logins in flight: OAUTHBEARER",
    }.get(name, name)


def foreign_load(
    logins: dict[str, list[MethodRun]] | None, probes: dict[str, list[ProbeRun]] | None
) -> dict[str, tuple[float, float]]:
    """(median, max) CPU cores used by other processes on the box, per phase."""
    out: dict[str, tuple[float, float]] = {}
    if logins:
        xs = [r.foreign_cores for v in logins.values() for r in v]
        out["a"] = (median(xs), max(xs))
    if probes:
        xs = [r.foreign_cores for v in probes.values() for r in v]
        out["b"] = (median(xs), max(xs))
    return out


# --------------------------------------------------------------------------- main


def _check_prerequisites() -> None:
    also = []
    if shutil.which("node") is None:
        also.append("node")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        also.append(f"{OIDC_DIR}/node_modules (npm ci there)")
    check_prerequisites("dovecot-imapd nodejs npm", (DOVECOT_BINARY, DOVEADM_BINARY), also)


def _facts(env: Env) -> dict[str, str]:
    node = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=False, timeout=10
    ).stdout.strip()
    package = OIDC_DIR / "node_modules" / "oidc-provider" / "package.json"
    provider = json.loads(package.read_text()).get("version", "?")
    header = json.loads(base64.urlsafe_b64decode(env.token.split(".")[0] + "=="))
    gw = env.gateways[300]
    return {
        "node": f"{node}, oidc-provider {provider}; token alg {header.get('alg')}",
        "certificates": (
            f"imapguard {_certificate_summary(gw.base / 'gateway.pem')};"
            f" Dovecot {_certificate_summary(env.dovecot.base / 'server-chain.pem')};"
            f" alice's device {_certificate_summary(env.client_cert)};"
            " Dovecot master password {PLAIN}"
        ),
        "gateways": (
            f"methods {', '.join(METHODS)}; verified_cache_seconds "
            + " and ".join(str(c) for c in CACHES)
            + f"; max_preauth_per_source {MAX_PREAUTH_PER_SOURCE}; upstream tls none"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser("python -m bench.logins", __doc__, ["a", "b"])
    ap.add_argument(
        "--probe-interval",
        type=float,
        metavar="SECONDS",
        help="NOOP pacing in (b) (default 0.005)",
    )
    args = ap.parse_args(argv)
    if args.src is not None:
        BenchGateway.src_override = args.src.resolve()
    _check_prerequisites()
    p = run_params(
        Params.quick() if args.quick else Params.full(), args, probe_interval=args.probe_interval
    )
    only = set(args.only or ["a", "b"])
    info = start("login", args.quick, p, nginx=False)
    started = time.monotonic()
    logins: dict[str, list[MethodRun]] | None = None
    probes: dict[str, list[ProbeRun]] | None = None
    try:
        with (
            uvloop_runner() as runner,
            environment(args.keep, runner) as env,
        ):
            facts = _facts(env)
            facts["imapguard"] = describe_source(env.gateways[300].imported_from())
            for k, v in facts.items():
                print(f"#   {k}: {v}", flush=True)
            info.update(facts)
            wait_quiet(env, args.wait_quiet)
            _sanity(runner, env)
            if "a" in only:
                logins = phase_logins(runner, env, p)
            if "b" in only:
                probes = phase_responsiveness(runner, env, p)
            summary = summarize(env, logins, probes)
    except (KeyboardInterrupt, BenchError) as exc:
        return stopped(exc)

    def raw() -> dict[str, Any]:
        return {
            "logins": {
                n: [{**asdict(r.login), "dovecot_cpu": r.dovecot_cpu} for r in v]
                for n, v in (logins or {}).items()
            },
            "probes": {
                n: [
                    {
                        **asdict(r),
                        "gateway_us": None,
                        "direct_us": None,
                        "gateway_p99_us": pct(r.gateway_us, 99),
                        "direct_p99_us": pct(r.direct_us, 99),
                    }
                    for r in v
                ]
                for n, v in (probes or {}).items()
            },
        }

    foreign = foreign_load(logins, probes)
    return report(summary, foreign, started, info, p, args.json, raw)


if __name__ == "__main__":
    sys.exit(main())

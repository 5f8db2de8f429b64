"""Faults a node must survive, each with the metrics scraped (and parsed by
prometheus_client's parser) before and after: a new certificate by SIGHUP and a
broken configuration by SIGHUP while sessions relay in two workers; SIGTERM
while sessions relay in two workers; PostgreSQL and Redis killed (SIGKILL)
during a burst of logins and a relaying session; Dovecot killed (SIGKILL) and
started again. No process crashes, no descriptor leaks, and the node recovers
by itself.

Source network: 127.0.217.0/24."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess, reissue_certificate
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway, wait_for
from tests.metrics_scrape import Scrape, delta, scrape
from tests.postgres import PostgresServer, pg_url, postgres
from tests.redis_server import RedisServer, redis_server

__all__ = ["pg_url", "postgres", "redis_server"]

pytestmark = pytest.mark.dovecot

UNAVAILABLE = b"NO [UNAVAILABLE]"
BYE_SHUTDOWN = b"* BYE [UNAVAILABLE] Gateway shutting down, reconnect shortly."
BYE_LOST = b"* BYE [UNAVAILABLE] Connection to the mail server lost."
LOGINS = "imapguard_logins_total"
CONNECTIONS = "imapguard_connections"


def _src(n: int) -> str:
    return f"127.0.217.{n}"


# -- processes --------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _group(pgid: int) -> set[int]:
    """The live (not zombie) processes of process group `pgid`."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[0] != "Z" and int(stat[2]) == pgid:
                out.add(int(entry.name))
    return out


def _children(pids: set[int]) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[0] != "Z" and int(stat[1]) in pids:
                out.add(int(entry.name))
    return out


def _gateway_pids(gw: GatewayProcess) -> set[int]:
    """`serve` and its workers (each in a session of its own, so: by parent)."""
    assert gw.proc is not None
    return {gw.proc.pid} | _children({gw.proc.pid})


def _workers(gw: GatewayProcess) -> set[int]:
    assert gw.proc is not None
    return _gateway_pids(gw) - {gw.proc.pid}


def _running_config(*configs: Path) -> set[int]:
    """Live processes whose command line names one of `configs` (a stray worker
    would: the workers name the parent's copy of the file, `_worker_configs`)."""
    out = set()
    needles = [str(config).encode() for config in configs]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = _proc_stat(int(entry.name))
                alive = stat is not None and stat[0] != "Z"
                cmdline = (entry / "cmdline").read_bytes()
                if alive and any(needle in cmdline for needle in needles):
                    out.add(int(entry.name))
    return out


def _worker_configs(gw: GatewayProcess) -> set[Path]:
    """The configuration files the workers read (`--config`: the parent's copy)."""
    paths = set()
    for pid in _workers(gw):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        paths.add(Path(argv[argv.index(b"--config") + 1].decode()))
    return paths


def _fds(pids: set[int]) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


def _no_descriptor_leak(pids: set[int], before: int, *, slack: int) -> None:
    """Within seconds the processes hold at most `slack` descriptors more than
    `before` (connections re-opened to a store that came back), whatever the
    number of logins in between."""
    try:
        wait_for(lambda: _fds(pids) <= before + slack, 10, "descriptors")
    except AssertionError:
        raise AssertionError(f"descriptors: {before} before, {_fds(pids)} now") from None


def _socket_inode(port: int, client_port: int) -> int | None:
    """The inode of the server's side of the TCP connection (port, client_port)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            return int(fields[9])
    return None


def _worker_of(gw: GatewayProcess, client: RawClient) -> int:
    """The worker process that holds `client`'s connection to the implicit listener."""
    inode = wait_for(
        lambda: _socket_inode(gw.implicit_port, client.local_port), what="the accepted socket"
    )
    target = f"socket:[{inode}]"

    def holder() -> int | None:
        for pid in _workers(gw):
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                            return pid
        return None

    found: int = wait_for(holder, what="the worker holding the connection")
    return found


# -- certificates -----------------------------------------------------------------


def _fingerprint(client: RawClient) -> str:
    assert isinstance(client.sock, ssl.SSLSocket)
    der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _file_fingerprint(chain: Path) -> str:
    first = re.search(
        r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", chain.read_text(), re.S
    )
    assert first is not None
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first.group(0))).hexdigest()


def _reissue(gw: GatewayProcess) -> ssl.SSLContext:
    """A new certificate (from a new CA) in the gateway's files; a context trusting it
    (and the gateway's `client_ssl` from now on)."""
    gw.ca_cert = reissue_certificate(gw)  # gw.client_ssl() trusts the new one from now on
    return gw.client_ssl()


# -- clients ----------------------------------------------------------------------


def _login(client: RawClient, password: str, user: str = "alice", tag: bytes = b"l") -> bytes:
    return client.command(tag, f'LOGIN {user} "{password}"'.encode())[-1]


def _relaying(
    port: int, src: str, ctx: ssl.SSLContext, password: str, stack: contextlib.ExitStack
) -> RawClient:
    """A logged-in session with INBOX selected, closed with `stack`."""
    client = stack.enter_context(RawClient(port, src, tls=ctx, timeout=15))
    client.line()
    assert _login(client, password).startswith(b"l OK "), "the relaying session's login"
    assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK ")
    return client


def _one_login(gw: GatewayProcess, src: str, password: str, ctx: ssl.SSLContext) -> bytes:
    with RawClient(gw.implicit_port, src, tls=ctx) as client:
        client.line()
        return _login(client, password)


def _metrics_toml(port: int) -> str:
    return f'\n[metrics]\naddress = "127.0.0.1:{port}"\n'


def _settled(port: int, *, relay: int) -> Scrape:
    """A scrape once `relay` sessions are on the gauge: a burst's clients hang up
    right after their login, and their sessions take a moment to close."""
    found: Scrape = wait_for(
        lambda: (s := scrape(port)).value(CONNECTIONS, phase="relay") == relay and s,
        5,
        f"{relay} relaying session(s) on the gauge",
    )
    return found


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


# -- SIGHUP and SIGTERM with two workers ------------------------------------------


class _Password:
    """Makes alice's app password before the gateway starts (`before_start`): the
    CLI then has the cores to itself instead of racing the starting workers."""

    value = ""

    def __call__(self, gw: GatewayProcess) -> None:
        self.value = gw.create_app_password("alice", "faults")


@dataclass
class TwoWorkers:
    gw: GatewayProcess
    password: str  # alice's app password
    metrics_port: int


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[Callable[[], TwoWorkers]]:
    """A gateway with `[server] workers = 2` shared by the tests of this module
    (starting one costs seconds of both cores): calling it gives the running one,
    or starts a new one if a test stopped it (SIGTERM)."""
    with contextlib.ExitStack() as stack:
        current: list[TwoWorkers] = []

        def get() -> TwoWorkers:
            if current and current[-1].gw.proc is not None:
                return current[-1]
            port, password = free_port(), _Password()
            gw = stack.enter_context(
                running_gateway(
                    tmp_path_factory.mktemp("two-workers"),
                    dovecot,
                    workers=2,
                    edit=lambda text: (
                        text.replace("drain_timeout = 1.0", "drain_timeout = 2.0")
                        + _metrics_toml(port)
                    ),
                    before_start=password,
                )
            )
            wait_for(lambda: len(_workers(gw)) == 2, 20, "two worker processes")
            current.append(TwoWorkers(gw, password.value, port))
            return current[-1]

        yield get


def _sessions_in_both_workers(
    gw: GatewayProcess, password: str, stack: contextlib.ExitStack, first_src: int
) -> dict[int, list[RawClient]]:
    """Relaying sessions until each worker holds at least one (the kernel picks)."""
    by_worker: dict[int, list[RawClient]] = {}
    for n in range(first_src, first_src + 24):
        client = _relaying(gw.implicit_port, _src(n), gw.client_ssl(), password, stack)
        by_worker.setdefault(_worker_of(gw, client), []).append(client)
        if len(by_worker) == 2:
            return by_worker
    raise AssertionError("24 connections all went to one worker")


def test_sighup_new_certificate_reaches_new_handshakes_in_every_worker_old_sessions_relay_on(
    two_workers: Callable[[], TwoWorkers],
) -> None:
    """Two workers, a session relaying in each: after SIGHUP with a new certificate
    every worker's new handshakes present it, the old sessions go on (with the old
    one), and the metrics say so; a broken configuration by SIGHUP is refused and
    the running one keeps serving, metrics included."""
    node = two_workers()
    gw, password, metrics_port = node.gw, node.password, node.metrics_port
    good = gw.config_path.read_text()
    with contextlib.ExitStack() as stack:
        stack.callback(gw.config_path.write_text, good)
        old_ctx = gw.client_ssl()
        reloads = len([e for e in gw.events("reload") if e["result"] == "ok"])
        old_print = _file_fingerprint(gw.base / "gateway.pem")
        sessions = _sessions_in_both_workers(gw, password, stack, 1)
        relaying = [c for clients in sessions.values() for c in clients]
        pids = _gateway_pids(gw)
        before = _settled(metrics_port, relay=len(relaying))

        new_ctx = _reissue(gw)
        new_print = _file_fingerprint(gw.base / "gateway.pem")
        assert new_print != old_print
        gw.signal(signal.SIGHUP)
        wait_for(
            lambda: len([e for e in gw.events("reload") if e["result"] == "ok"]) >= reloads + 2,
            10,
            "both workers reloaded",
        )
        # New handshakes, until both workers have answered: the new certificate.
        seen: dict[int, set[str]] = {}
        fresh_logins = 0
        for n in range(40, 80):
            with RawClient(gw.implicit_port, _src(n), tls=new_ctx) as fresh:
                fresh.line()
                seen.setdefault(_worker_of(gw, fresh), set()).add(_fingerprint(fresh))
                assert _login(fresh, password).startswith(b"l OK ")
                fresh_logins += 1
            if len(seen) == 2 and fresh_logins >= 4:
                break
        assert set(seen) == set(sessions), "new handshakes did not reach both workers"
        assert all(prints == {new_print} for prints in seen.values()), seen
        with pytest.raises(ssl.SSLCertVerificationError):
            RawClient(gw.implicit_port, _src(90), tls=old_ctx)
        # The old sessions, in both workers, relay on with the certificate they had.
        for n, client in enumerate(relaying):
            assert client.command(b"n%d" % n, b"NOOP")[-1].startswith(b"n%d OK" % n)
            assert _fingerprint(client) == old_print
        after = _settled(metrics_port, relay=len(relaying))
        assert delta(before, after, LOGINS, result="ok") == fresh_logins
        assert delta(before, after, "imapguard_tls_failures_total") >= 1  # the old CA's
        assert _gateway_pids(gw) == pids  # nothing restarted, nothing crashed

        # A broken configuration: refused once (by the parent); everything serves on.
        gw.config_path.write_text(good + "\n[bogus]\n")
        gw.signal(signal.SIGHUP)
        wait_for(
            lambda: [e for e in gw.events("reload") if "bogus" in (e.get("reason") or "")],
            10,
            "the refused reload",
        )
        refused = _settled(metrics_port, relay=len(relaying))
        assert _one_login(gw, _src(91), password, new_ctx).startswith(b"l OK ")
        for n, client in enumerate(relaying):
            assert client.command(b"m%d" % n, b"NOOP")[-1].startswith(b"m%d OK" % n)
        last = scrape(metrics_port)
        assert delta(refused, last, LOGINS, result="ok") == 1
        failed = [e for e in gw.events("reload") if e["result"] == "failed"]
        assert len(failed) == 1
        assert _gateway_pids(gw) == pids


def test_sigterm_with_sessions_relaying_in_two_workers_ends_them_cleanly_and_every_process(
    two_workers: Callable[[], TwoWorkers],
) -> None:
    """SIGTERM: /health turns 503, a session that logs out meanwhile finishes, the
    others get the shutdown BYE at drain_timeout, the relay gauge follows them,
    and serve and both workers exit 0 with no process left behind."""
    node = two_workers()
    gw, password, metrics_port = node.gw, node.password, node.metrics_port
    with contextlib.ExitStack() as stack:
        sessions = _sessions_in_both_workers(gw, password, stack, 100)
        relaying = [c for clients in sessions.values() for c in clients]
        before = _settled(metrics_port, relay=len(relaying))
        assert gw.proc is not None
        configs = {gw.config_path, *_worker_configs(gw)}
        assert _running_config(*configs) == _gateway_pids(gw)

        gw.signal(signal.SIGTERM)
        wait_for(lambda: _health(metrics_port) == 503, 5, "/health reporting the drain")
        leaving, staying = relaying[0], relaying[1:]
        assert leaving.command(b"o", b"LOGOUT")[-1].startswith(b"o OK")
        leaving.close()  # as a client does after LOGOUT
        # Still scraped while draining: one session fewer relaying.
        draining = _settled(metrics_port, relay=len(staying))
        assert delta(before, draining, LOGINS) == 0
        for client in staying:
            rest = client.rest_until_closed(10)
            assert rest.endswith(BYE_SHUTDOWN + b"\r\n"), rest
        assert gw.proc.wait(15) == 0
        wait_for(lambda: not _running_config(*configs), 5, "every gateway process gone")
        with pytest.raises(urllib.error.URLError):
            scrape(metrics_port, timeout=2)
        gw.proc = None
    mine = {c.src for c in relaying}
    closes = [e for e in gw.events("close") if e.get("src") in mine]
    assert [e["reason"] for e in closes] == ["relay ended"] * len(relaying)
    assert {e["pid"] for e in gw.events("stop")} >= set(sessions)


# -- the stores killed during a burst of logins -----------------------------------


def _kill_postgres(server: PostgresServer) -> None:
    """SIGKILL the postmaster and every process it started (each backend leads a
    process group of its own), as a crash of the machine's PostgreSQL would."""
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    everyone = {pid} | _children({pid})
    for victim in everyone:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not any(_alive(p) for p in everyone), 10, "PostgreSQL gone")
    # The orphans are reaped by whatever init the machine runs; until then they
    # are zombies, and PostgreSQL takes a zombie's PID in its lock files for a
    # live server. A dead server's locks are stale: remove them as init would.
    (server.data / "postmaster.pid").unlink(missing_ok=True)
    (server.base / f".s.PGSQL.{server.port}.lock").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _kill_redis(server: RedisServer) -> None:
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    server.stop()  # forgets the process


def test_stores_killed_during_a_burst_of_logins_fail_closed_and_recover_without_leaks(
    tmp_path: Path,
    dovecot: DovecotServer,
    postgres: PostgresServer,
    pg_url: str,
    redis_server: RedisServer,
) -> None:
    """PostgreSQL and Redis SIGKILLed while four clients log in as fast as they can
    and a session relays: every answer is OK or NO [UNAVAILABLE] (never a wrong
    password, never a dropped connection), the session relays on, no worker
    crashes, the node logs in again by itself once both are back, and the
    gateway processes hold no more descriptors than before."""
    metrics_port = free_port()
    made = _Password()
    state = (
        f'url = "{pg_url}"\npassword_file = "{postgres.password_file}"\n'
        f'counters_url = "{redis_server.url}"\n'
        f'counters_password_file = "{redis_server.password_file}"'
    )
    with (
        running_gateway(
            tmp_path,
            dovecot,
            state=state,
            workers=2,
            limits="max_preauth_per_source = 200\n",
            edit=lambda text: text + _metrics_toml(metrics_port),
            before_start=made,
        ) as gw,
        contextlib.ExitStack() as stack,
    ):
        wait_for(lambda: len(_workers(gw)) == 2, 20, "two worker processes")
        password = made.value
        relaying = _relaying(gw.implicit_port, _src(150), gw.client_ssl(), password, stack)
        for _ in range(4):  # every worker's pools warm
            assert _one_login(gw, _src(151), password, gw.client_ssl()).startswith(b"l OK ")
        pids = _gateway_pids(gw)
        fds_before = _fds(pids)
        before = scrape(metrics_port)

        answers: list[bytes] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def burst(n: int) -> None:
            while not stop.is_set():
                try:
                    answers.append(_one_login(gw, _src(160 + n), password, gw.client_ssl()))
                except BaseException as exc:
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(answers) >= 8, 20, "the burst under way")
            _kill_postgres(postgres)
            _kill_redis(redis_server)
            down = len(answers)
            wait_for(
                lambda: sum(1 for a in answers[down:] if a.startswith(b"l " + UNAVAILABLE)) >= 8,
                20,
                "logins refused as unavailable during the outage",
            )
            assert relaying.command(b"r1", b"NOOP")[-1].startswith(b"r1 OK")
            outage = _settled(metrics_port, relay=1)
        finally:
            try:
                postgres.resume()
            finally:
                redis_server.start()
        try:
            back = len(answers)
            wait_for(
                lambda: any(a.startswith(b"l OK ") for a in answers[back:]),
                30,
                "logins back by themselves",
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert not errors, errors
        odd = [a for a in answers if not a.startswith((b"l OK ", b"l " + UNAVAILABLE))]
        assert not odd, odd[:5]
        assert not any(a.endswith(AUTH_FAILED) for a in answers)
        assert relaying.command(b"r2", b"SELECT INBOX")[-1].startswith(b"r2 OK ")
        assert _one_login(gw, _src(152), password, gw.client_ssl()).startswith(b"l OK ")
        after = _settled(metrics_port, relay=1)

        # The metrics: the outage's refusals by their reason, the session on the
        # gauge all along, ok logins again after it.
        assert delta(before, outage, LOGINS, result="unavailable", reason="state store") >= 8
        assert delta(outage, after, LOGINS, result="ok") >= 2
        assert after.value(LOGINS, result="invalid") == 0
        assert _gateway_pids(gw) == pids, "a gateway process died or was replaced"
        _no_descriptor_leak(pids, fds_before, slack=8)  # two workers' new pool connections


# -- Dovecot killed and started again ---------------------------------------------


def _started(dovecot: DovecotServer) -> None:
    if dovecot.pid is None:
        dovecot.start()


def test_dovecot_killed_sessions_get_bye_logins_unavailable_then_recover_after_restart(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    """Dovecot SIGKILLed (master and children) under a relaying session: the client
    gets the BYE, new logins are NO [UNAVAILABLE], the relay gauge drops to 0; once
    Dovecot is started again logins work with no restart of the gateway and no
    descriptor left behind. (The session's shared Dovecot: started again on the
    same ports and files, whatever happens here, for the tests after this one.)"""
    metrics_port = free_port()
    made = _Password()
    with (
        running_gateway(
            tmp_path / "gw",
            dovecot,
            edit=lambda text: text + _metrics_toml(metrics_port),
            before_start=made,
        ) as gw,
        contextlib.ExitStack() as stack,
    ):
        password = made.value
        assert _one_login(gw, _src(200), password, gw.client_ssl()).startswith(b"l OK ")
        relaying = _relaying(gw.implicit_port, _src(201), gw.client_ssl(), password, stack)
        pids = _gateway_pids(gw)
        fds_before = _fds(pids)
        before = _settled(metrics_port, relay=1)

        assert dovecot.pid is not None
        stack.callback(_started, dovecot)
        os.killpg(dovecot.pid, signal.SIGKILL)
        dovecot.stop()  # reaps what is left of its process group
        rest = relaying.rest_until_closed(10)
        assert rest.endswith(BYE_LOST + b"\r\n"), rest
        relaying.close()  # as a client does after a BYE (the gateway waits 5 s for it)
        for n in range(3):
            answer = _one_login(gw, _src(202), password, gw.client_ssl())
            assert answer.startswith(b"l " + UNAVAILABLE), (n, answer)
        down = _settled(metrics_port, relay=0)
        assert delta(before, down, LOGINS, result="unavailable") == 3
        assert delta(before, down, LOGINS, result="ok") == 0

        _started(dovecot)
        assert _one_login(gw, _src(203), password, gw.client_ssl()).startswith(b"l OK ")
        again = _relaying(gw.implicit_port, _src(204), gw.client_ssl(), password, stack)
        after = _settled(metrics_port, relay=1)
        assert delta(down, after, LOGINS, result="ok") == 2
        assert again.command(b"n", b"NOOP")[-1].startswith(b"n OK")
        again.command(b"o", b"LOGOUT")
        assert _gateway_pids(gw) == pids
        _no_descriptor_leak(pids, fds_before, slack=4)

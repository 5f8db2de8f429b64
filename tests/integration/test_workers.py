"""`[server] workers = 2`: `imapguard serve` as the parent of two gateway
processes on the same ports, against real Dovecot: logins work through both,
the metrics add up across them, a killed worker is replaced, SIGHUP reaches
them (a broken configuration is refused once, by the parent), SIGTERM drains
them all, and a second `serve` on the same state is refused. A SIGHUP while
they start ends none of them, /health tells while a worker is down, and a
local user squatting the address lock's name cannot stop `serve`."""

from __future__ import annotations

import contextlib
import imaplib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dovecot import DovecotServer, free_port
from tests.gateway import IMAPGUARD, GatewayProcess
from tests.integration.conftest import AUTH_FAILED, guesses_at_once

pytestmark = pytest.mark.dovecot


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def _workers(gw: GatewayProcess) -> set[int]:
    """The serve process's children that run `imapguard worker`."""
    assert gw.proc is not None
    found = set()
    for pid in _children(gw.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmdline:
            found.add(pid)
    return found


def _wait(what: str, check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _login(gw: GatewayProcess, password: str) -> None:
    session = imaplib.IMAP4_SSL("127.0.0.1", gw.implicit_port, ssl_context=gw.client_ssl())
    try:
        session.login("alice", password)
        session.select("INBOX")
    finally:
        session.logout()


def _logins_ok(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "imapguard_logins_total" and s.labels.get("result") == "ok"
    )


def test_two_workers_serve_restart_reload_and_drain(tmp_path: Path, dovecot: DovecotServer) -> None:
    metrics_port = free_port()
    gw = GatewayProcess.create(
        tmp_path,
        dovecot,
        workers=2,
        extra_toml=f'[metrics]\naddress = "127.0.0.1:{metrics_port}"\n',
    )
    gw.start()
    try:
        _wait("two worker processes", lambda: len(_workers(gw)) == 2)
        first = _workers(gw)
        password = gw.create_app_password("alice")
        for _ in range(6):
            _login(gw, password)
        # Counted by whichever worker served each login, summed by the parent.
        _wait("the workers' logins in the metrics", lambda: _logins_ok(metrics_port) == 6, 10)

        # A worker killed outright is replaced; logins go on meanwhile.
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(3):
            _login(gw, password)
        _wait("a new worker", lambda: len(_workers(gw)) == 2 and victim not in _workers(gw))
        _login(gw, password)
        assert _logins_ok(metrics_port) == 10  # the dead worker's counts stay

        # SIGHUP: every worker reloads; a broken file is refused once, by the parent.
        reloads = len(gw.events("reload"))
        gw.signal(signal.SIGHUP)
        _wait(
            "both workers reloaded",
            lambda: len([e for e in gw.events("reload") if e["result"] == "ok"]) >= 2,
        )
        good = gw.config_path.read_text()
        gw.config_path.write_text(good + "\n[bogus]\n")
        gw.signal(signal.SIGHUP)
        _wait(
            "the refused reload",
            lambda: any("bogus" in e.get("reason", "") for e in gw.events("reload")),
        )
        time.sleep(1)
        failed = [
            e for e in gw.events("reload") if e["result"] == "failed" and "bogus" in e["reason"]
        ]
        assert len(failed) == 1
        assert len(gw.events("reload")) >= reloads + 3
        gw.config_path.write_text(good)
        _login(gw, password)

        # A second serve on the same state (other ports) is refused in one line.
        other = tmp_path / "second.toml"
        other.write_text(
            good.replace(str(gw.implicit_port), str(free_port()))
            .replace(str(gw.starttls_port), str(free_port()))
            .replace(str(metrics_port), str(free_port()))
        )
        second = subprocess.run(
            [*IMAPGUARD, "serve", "--config", str(other)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2
        assert f"another imapguard serve (pid {gw.proc.pid if gw.proc else 0})" in second.stderr
        assert second.stderr.count("\n") == 1

        # SIGTERM: the parent and both workers end, exit 0.
        workers = _workers(gw)
        gw.signal(signal.SIGTERM)
        assert gw.proc is not None
        assert gw.proc.wait(30) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text()


def _catches_sighup(pid: int) -> bool:
    """The process has a handler for SIGHUP (SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    (mask,) = (line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & (1 << (signal.SIGHUP - 1)))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_sighup_during_start_neither_kills_serve_nor_a_worker(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    # A `systemctl reload` (logrotate) while serve or a worker is still importing
    # and opening: SIGHUP's default action would end it, and systemd counts that
    # as a clean exit, so the gateway would stay down.
    gw = GatewayProcess.create(tmp_path, dovecot, workers=2)
    done = threading.Event()
    workers_hit: set[int] = set()
    sent = {"serve": 0, "workers": 0}

    def hang_up() -> None:
        while gw.proc is None and not done.is_set():
            time.sleep(0.001)
        if gw.proc is None:
            return
        serve = gw.proc.pid
        # The interpreter's own start, before any imapguard code, is not
        # covered by anything a program can do; from its first line on it is
        # (tens of milliseconds in; the imports and the start take seconds).
        deadline = time.monotonic() + 1.0
        while not _catches_sighup(serve) and time.monotonic() < deadline:
            time.sleep(0.001)
        while not done.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(serve, signal.SIGHUP)
                sent["serve"] += 1
            for pid in _workers(gw):  # from their first moment (fork) on
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)
                    sent["workers"] += 1
                    workers_hit.add(pid)
            time.sleep(0.05)

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        try:
            gw.start(timeout=60)
            _wait("two worker processes", lambda: len(_workers(gw)) == 2, 60)
            _wait(
                "both workers started",
                lambda: {e["pid"] for e in gw.events("start")} >= _workers(gw),
                60,
            )
            time.sleep(0.5)
        finally:
            done.set()
            thread.join()
        assert gw.proc is not None
        assert gw.proc.poll() is None, gw.log_text()
        assert sent["serve"] > 5
        assert sent["workers"] > 5
        workers = _workers(gw)
        # Every worker that got a SIGHUP is one of the two running now: none died.
        assert workers_hit == workers
        assert all(_alive(pid) for pid in workers)
        password = gw.create_app_password("alice")
        for _ in range(4):
            _login(gw, password)
        assert _workers(gw) == workers
        assert gw.proc.poll() is None
        assert "exited" not in gw.log_text()
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text()


def _health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_is_503_while_a_worker_is_down_and_ok_once_restarted(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    metrics_port = free_port()
    gw = GatewayProcess.create(
        tmp_path,
        dovecot,
        workers=2,
        extra_toml=f'[metrics]\naddress = "127.0.0.1:{metrics_port}"\n',
    )
    gw.start(timeout=60)
    try:
        _wait("two worker processes", lambda: len(_workers(gw)) == 2, 60)
        _wait("health ok", lambda: _health(metrics_port) == (200, "ok\n"), 20)
        # Stopped is not down: it still holds its socket and comes back.
        stopped = sorted(_workers(gw))[1]
        os.kill(stopped, signal.SIGSTOP)
        try:
            assert _health(metrics_port)[0] == 200
        finally:
            os.kill(stopped, signal.SIGCONT)

        victim = sorted(_workers(gw))[0]
        os.kill(victim, signal.SIGKILL)
        answers: list[tuple[int, str]] = []
        deadline = time.monotonic() + 30
        # The parent starts it again after a pause (children.RESTART_FIRST):
        # /health tells meanwhile, and is ok again once it runs.
        while time.monotonic() < deadline:
            answers.append(_health(metrics_port))
            if answers[-1][0] == 200 and any(code == 503 for code, _ in answers):
                break
            time.sleep(0.05)
        down = [body for code, body in answers if code == 503]
        assert down, answers[-3:]
        assert {body.strip() for body in down} == {"worker 0 not running"} or {
            body.strip() for body in down
        } == {"worker 1 not running"}
        assert answers[-1] == (200, "ok\n")
        assert len(_workers(gw)) == 2
        assert victim not in _workers(gw)
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text()


SQUAT = """
import socket, sys, time
lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lock.bind(sys.argv[1].encode().replace(b"@", b"\\0", 1))
lock.listen(1)
print("held", flush=True)
time.sleep(120)
"""


def test_listen_lock_held_by_another_user_does_not_stop_serve(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    gw = GatewayProcess.create(tmp_path, dovecot, workers=2)
    # Another local user takes the lock's name first (an abstract socket: any
    # user may bind any name), listening, so that it even answers the probe;
    # serve runs as root here (CI), the squatter as nobody.
    squatter = subprocess.Popen(
        [
            # setpriv execs the command itself: killing it kills the squatter.
            *("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"),
            *("/usr/bin/python3", "-c", SQUAT),
            f"@imapguard-listen:127.0.0.1:{gw.implicit_port}",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )  # fmt: skip
    try:
        assert squatter.stdout is not None
        assert squatter.stdout.readline() == "held\n"
        gw.start(timeout=60)
        try:
            _wait("two worker processes", lambda: len(_workers(gw)) == 2, 60)
            password = gw.create_app_password("alice")
            _login(gw, password)
            assert "served by another imapguard" not in gw.log_text()
            assert (
                f"listen[0].address: the lock of 127.0.0.1:{gw.implicit_port} is held by "
                "user id" in gw.log_text()
            )
        finally:
            gw.stop()
    finally:
        squatter.kill()
        squatter.communicate()


def test_a_restarted_worker_runs_the_accepted_configuration_not_an_unreloaded_edit(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    """An edit of the file that nobody reloaded yet (here: app passwords no longer
    accepted) must not reach a worker that restarts after a crash: it would serve
    another configuration than its siblings (an edit half made, or one weakening
    what they enforce). The children read the copy the parent last accepted; the
    edit takes effect with the SIGHUP, on every worker at once."""
    gw = GatewayProcess.create(tmp_path, dovecot, workers=2)
    gw.start()
    try:
        _wait("two worker processes", lambda: len(_workers(gw)) == 2)
        password = gw.create_app_password("alice")
        text = gw.config_path.read_text()
        edited = text.replace('methods = ["app-password"]', 'methods = ["password+totp"]')
        assert edited != text
        gw.config_path.write_text(edited)
        crashed = _workers(gw)
        # The copy the workers read, not the file; a cleaner of old temporary
        # files takes it away before the crash: the restart must not fail.
        argv = Path(f"/proc/{min(crashed)}/cmdline").read_bytes().split(b"\0")
        copy = Path(argv[argv.index(b"--config") + 1].decode())
        assert copy != gw.config_path
        assert copy.read_text() == text
        assert oct(copy.stat().st_mode & 0o777) == oct(0o600)
        assert oct(copy.parent.stat().st_mode & 0o777) == oct(0o700)
        shutil.rmtree(copy.parent)
        for pid in crashed:
            os.kill(pid, signal.SIGKILL)
        _wait(
            "two new workers",
            lambda: len(_workers(gw)) == 2 and not (_workers(gw) & crashed),
            30,
        )
        for _ in range(8):  # spread over both workers by SO_REUSEPORT
            _login(gw, password)
        gw.signal(signal.SIGHUP)
        _wait(
            "both workers reloaded",
            lambda: len([e for e in gw.events("reload") if e["result"] == "ok"]) >= 2,
        )
        for _ in range(4):
            with pytest.raises(imaplib.IMAP4.error):
                _login(gw, password)
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text()


def test_guesses_sent_at_once_over_two_workers_on_sqlite_reach_the_check_at_most_pair_block_times(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    """40 wrong passwords for one account from one address at the same instant,
    spread by the kernel over two workers sharing the SQLite state: each worker's
    precheck would read the same counts, so without the gate all 40 would reach
    the password check. The turn of a pair is a byte-range lock here
    (`state/sqlite/turns.py`), across the two processes: at most `pair_block` (10,
    the default) are checked, the rest are blocked."""
    gw = GatewayProcess.create(
        tmp_path,
        dovecot,
        workers=2,
        # Room for all 40 on one worker: SO_REUSEPORT spreads them by a hash. Short
        # delays: the pair's guesses wait out each other's (test_cluster_redis too).
        extra_toml=(
            "[limits]\nmax_preauth_per_source = 64\n[defense]\ndelay_base = 0.05\ndelay_max = 0.2\n"
        ),
    )
    gw.start()
    try:
        _wait("two worker processes", lambda: len(_workers(gw)) == 2)
        user = f"wg{secrets.token_hex(3)}"
        dovecot.add_user(user, secrets.token_urlsafe(12))
        attacker = "127.0.218.1"
        answers = guesses_at_once([gw], attacker, user, 40)
        assert answers == [b"a " + AUTH_FAILED] * 40
        reasons = [e["reason"] for e in gw.events("auth") if e.get("src") == attacker]
        assert len(reasons) == 40
        checked = [r for r in reasons if not r.startswith("blocked:")]
        assert 1 <= len(checked) <= 10, checked
        assert (gw.base / "state.db-turns").exists()  # the turns were byte-range locks
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text()

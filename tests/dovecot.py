"""A private, throw-away Dovecot (Debian ``dovecot-imapd`` 2.3) instance for integration tests.

Usage::

    from tests.dovecot import dovecot  # noqa: F401  (session-scoped pytest fixture)

    def test_something(dovecot: DovecotServer) -> None:
        dovecot.deliver("alice", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        ...

or, outside pytest, ``DovecotServer.create(base)`` followed by ``start()`` / ``stop()``.

What one instance looks like:

* Three listeners on 127.0.0.1: ``imap_port`` (plain, STARTTLS offered), ``imaps_port``
  (implicit TLS) and ``haproxy_port`` (``haproxy = yes``: every connection *must* start with
  a PROXY v1/v2 header). ``127.0.0.0/8`` is in ``login_trusted_networks`` and
  ``haproxy_trusted_networks``, so a client on localhost may forward the real client address
  with ``ID ("x-originating-ip" "...")`` or a PROXY header. The login log line records it
  as ``rip=...`` (see ``login_log_format_elements``). ``create(haproxy_tls=True)`` adds
  ``haproxy_tls_port``: implicit TLS after the PROXY header.
* TLS material comes from ``trustme``: ``ca_cert`` is the CA to verify against; the server
  certificate is valid for ``localhost`` and ``127.0.0.1``.
* Users live in a ``passwd-file`` (plain-text passwords, ``users``); :meth:`add_user`
  rewrites it and Dovecot re-reads it on change. A master user (``master_user``,
  ``master_password``) may log in as anybody, either as ``alice*imapguard`` or via SASL
  PLAIN with authzid ``alice`` and authcid ``imapguard``.
* Mail is stored as Maildir under ``base/mail/<user>``, owned by ``nobody:nogroup``.
* Limits are raised (``default_client_limit = 4000``, ``service imap { process_limit =
  2000 }``, ``mail_max_userip_connections = 1000``) so benchmarks with ~1,000 concurrent
  sessions work; imap-login runs in "high-performance" mode (``service_count = 0``).
  ``DovecotServer.create(base, sessions=N)`` sizes them for N concurrent logged-in
  sessions instead (several sessions per ``imap`` process, ``client_limit``), for
  benchmarks with ~10,000; the default keeps the figures above.

Things that bite:

* **Auth failure penalty.** Dovecot (anvil) delays every authentication from a client IP that
  recently failed to authenticate (up to 15 s, doubling per failure), on top of the fixed
  ``auth_failure_delay`` of 2 s for the failing attempt itself. The IP it uses is the one it
  *sees*: the TCP peer, or the address forwarded by ``ID x-originating-ip`` / PROXY. Tests
  that deliberately fail a login should therefore forward a fake address first (e.g. from
  192.0.2.0/24) so the penalty does not land on 127.0.0.1 and slow down every later test
  that shares this session-scoped server.
* Must run as root (Dovecot switches to the ``dovecot``, ``dovenull`` and ``nobody`` users).
  The users and ``nobody`` must be able to traverse to ``base``, so :meth:`DovecotServer.create`
  adds the ``o+x`` bit to every ancestor of ``base`` that lacks it (pytest's
  ``/tmp/pytest-of-root`` is 0700; pytest resets that mode itself on its next run).
* The users/masters files must be readable by group ``dovecot``, otherwise every login is
  answered with ``NO [UNAVAILABLE]``.
* ``stop()`` takes a few seconds: the master waits for its children to exit.
* The server is also stopped from ``atexit``; when started from the main thread the master
  additionally gets ``SIGTERM`` if the test process dies (``setpriv --pdeathsig``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

__all__ = ["DOVEADM_BINARY", "DOVECOT_BINARY", "DovecotServer", "dovecot", "free_port"]

DOVECOT_BINARY = Path("/usr/sbin/dovecot")
DOVEADM_BINARY = Path("/usr/bin/doveadm")

#: Soft RLIMIT_NOFILE wanted for the Dovecot master (capped by the hard limit).
_WANTED_NOFILE = 65536
#: Longest base_dir we put sockets into (sun_path is 108 bytes; Dovecot adds e.g.
#: "/login/imap-urlauth-worker" and "token-login/..." below it).
_MAX_BASE_DIR_LEN = 60
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 15.0
_BIND_ERRORS = ("Address already in use", "EADDRINUSE")
#: With ``sessions`` given, logged-in sessions per ``imap`` process: one process per
#: session (Dovecot's default) would cost ~10,000 processes for a 10,000-session benchmark.
_SESSIONS_PER_IMAP_PROCESS = 50


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _three_free_ports() -> tuple[int, int, int]:
    ports: list[int] = []
    while len(ports) < 3:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports[0], ports[1], ports[2]


def _make_traversable(path: Path) -> None:
    """Make ``path`` 0755 and give every ancestor lacking it the ``o+x`` bit."""
    path.chmod(0o755)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _check_credential(what: str, value: str) -> None:
    if not value or any(c in value for c in ":\r\n\0"):
        raise ValueError(f"{what} {value!r} cannot be stored in a passwd-file")


@dataclass(kw_only=True, eq=False)
class DovecotServer:
    """One private Dovecot instance; build it with :meth:`create`."""

    base: Path
    imap_port: int
    imaps_port: int
    haproxy_port: int
    ca_cert: Path
    server_name: str = "localhost"
    master_user: str = "imapguard"
    master_password: str
    users: dict[str, str]
    log_path: Path
    haproxy_tls_port: int | None = None
    #: Concurrent logged-in sessions the limits are sized for (None: the defaults above).
    sessions: int | None = None

    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _run_dir: Path | None = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls, base: Path, *, haproxy_tls: bool = False, sessions: int | None = None
    ) -> DovecotServer:
        """Generate certificates, password files and config under ``base``; do not start.

        ``haproxy_tls`` adds a fourth listener, ``haproxy_tls_port``: implicit TLS after
        a PROXY header (``ssl = yes`` and ``haproxy = yes``). ``sessions``: size the
        limits for that many concurrent logged-in sessions."""
        if os.geteuid() != 0:
            raise RuntimeError("the Dovecot test server must run as root")
        base = base.resolve()
        base.mkdir(parents=True, exist_ok=True)
        _make_traversable(base)

        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        ca_cert = base / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_cert))
        with (base / "server-chain.pem").open("wb") as fh:
            for blob in leaf.cert_chain_pems:
                fh.write(blob.bytes())
        key_path = base / "server-key.pem"
        leaf.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)

        mail = base / "mail"
        mail.mkdir(exist_ok=True)
        shutil.chown(mail, "nobody", "nogroup")
        mail.chmod(0o750)
        (base / "state").mkdir(mode=0o750, exist_ok=True)

        imap_port, imaps_port, haproxy_port = _three_free_ports()
        server = cls(
            base=base,
            imap_port=imap_port,
            imaps_port=imaps_port,
            haproxy_port=haproxy_port,
            ca_cert=ca_cert,
            master_password=secrets.token_urlsafe(18),
            users={name: secrets.token_urlsafe(12) for name in ("alice", "bob", "carol")},
            log_path=base / "dovecot.log",
            haproxy_tls_port=free_port() if haproxy_tls else None,
            sessions=sessions,
        )
        server._write_masters_file()
        server._write_users_file()
        server._write_config()
        return server

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.base / "dovecot.conf"

    @property
    def stdout_path(self) -> Path:
        return self.base / "dovecot.stdout"

    @property
    def users_file(self) -> Path:
        return self.base / "users.passwd"

    @property
    def masters_file(self) -> Path:
        return self.base / "masters.passwd"

    @property
    def pid(self) -> int | None:
        """PID of the running master process, if any."""
        return None if self._proc is None else self._proc.pid

    # ------------------------------------------------------------------ files

    def _base_dir(self) -> Path:
        if self._run_dir is None:
            candidate = self.base / "run"
            if len(str(candidate)) <= _MAX_BASE_DIR_LEN:
                candidate.mkdir(mode=0o755, exist_ok=True)
            else:
                candidate = Path(tempfile.mkdtemp(prefix="dovecot-", dir="/tmp"))
                candidate.chmod(0o755)
            self._run_dir = candidate
        return self._run_dir

    def _write_protected(self, path: Path, text: str) -> None:
        """Atomically replace ``path``, readable by root and group dovecot only."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(text, encoding="utf-8")
        shutil.chown(tmp, "root", "dovecot")
        tmp.chmod(0o640)
        with contextlib.suppress(FileNotFoundError):
            # Dovecot notices a change by (whole-second mtime, size): make the mtime move.
            old_mtime = int(path.stat().st_mtime)
            new_mtime = max(int(time.time()), old_mtime + 1)
            os.utime(tmp, (new_mtime, new_mtime))
        os.replace(tmp, path)

    def _write_masters_file(self) -> None:
        _check_credential("master user", self.master_user)
        _check_credential("master password", self.master_password)
        hashed = subprocess.run(
            [str(DOVEADM_BINARY), "pw", "-s", "SHA512-CRYPT", "-p", self.master_password],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self._write_protected(self.masters_file, f"{self.master_user}:{hashed}\n")

    def _write_users_file(self) -> None:
        lines = []
        for name, password in self.users.items():
            _check_credential("user name", name)
            _check_credential("password", password)
            lines.append(f"{name}:{{PLAIN}}{password}\n")
        self._write_protected(self.users_file, "".join(lines))

    def _session_limits(self) -> tuple[str, int]:
        """The ``service imap`` settings and ``mail_max_userip_connections``."""
        if self.sessions is None:
            return "process_limit = 2000", 1000
        per = _SESSIONS_PER_IMAP_PROCESS
        processes = -(-self.sessions // per) + 100
        # service_count = 0: a process keeps serving (imap's default, 1, would end it
        # after its first session whatever client_limit says).
        settings = f"process_limit = {processes}\n  client_limit = {per}\n  service_count = 0"
        return settings, self.sessions + 1000

    def _write_config(self) -> None:
        base = self.base
        imap_service, userip = self._session_limits()
        chain = base / "server-chain.pem"
        key = base / "server-key.pem"
        config = f"""\
# Generated by tests/dovecot.py -- private test instance.
instance_name = imapguard-test-{self.imap_port}
base_dir = {self._base_dir()}
state_dir = {base / "state"}
log_path = {self.log_path}
info_log_path = {self.log_path}
listen = 127.0.0.1
protocols = imap

ssl = yes
ssl_cert = <{chain}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2

disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_verbose = yes
auth_master_user_separator = *
login_trusted_networks = 127.0.0.0/8
haproxy_trusted_networks = 127.0.0.0/8
login_log_format_elements = user=<%u> method=%m rip=%r lip=%l mpid=%e %c \
session=<%{{session}}> orig_user=<%{{orig_user}}>

mail_location = maildir:~/Maildir
first_valid_uid = 100

default_process_limit = 2000
default_client_limit = 4000
default_vsz_limit = 1G

passdb {{
  driver = passwd-file
  master = yes
  args = scheme=SHA512-CRYPT {self.masters_file}
  result_success = continue
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {self.users_file}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={base / "mail"}/%n
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
    ssl = yes
  }}
  inet_listener imap_haproxy {{
    address = 127.0.0.1
    port = {self.haproxy_port}
    haproxy = yes
  }}
{self._haproxy_tls_listener()}  service_count = 0
  process_min_avail = 2
  process_limit = 64
  client_limit = 4000
}}
service imap {{
  {imap_service}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
  }}
}}
protocol imap {{
  mail_max_userip_connections = {userip}
}}
"""
        self.config_path.write_text(config, encoding="utf-8")

    def _haproxy_tls_listener(self) -> str:
        if self.haproxy_tls_port is None:
            return ""
        return (
            "  inet_listener imaps_haproxy {\n    address = 127.0.0.1\n"
            f"    port = {self.haproxy_tls_port}\n    ssl = yes\n    haproxy = yes\n  }}\n"
        )

    def add_users(self, users: Mapping[str, str]) -> None:
        """Add (or change) several users with one write of the passwd-file (and one
        wait for the next wall-clock second, as :meth:`add_user`)."""
        for name, password in users.items():
            _check_credential("user name", name)
            _check_credential("password", password)
        self.users.update(users)
        written = int(time.time())
        self._write_users_file()
        while int(time.time()) <= written:
            time.sleep(0.02)

    def add_user(self, name: str, password: str) -> None:
        """Add (or change) a user; Dovecot notices the changed passwd-file by itself.

        Blocks until the next wall-clock second (up to 1 s), see the comment below.
        """
        _check_credential("user name", name)
        _check_credential("password", password)
        self.users[name] = password
        written = int(time.time())
        self._write_users_file()
        # The auth process stat()s the file at most once per second (and serves its cached
        # copy otherwise), so a lookup in the second of the write may still miss the change.
        while int(time.time()) <= written:
            time.sleep(0.02)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start ``dovecot -F`` and wait until the IMAP and IMAPS ports accept connections."""
        if self._proc is not None:
            raise RuntimeError("Dovecot test server already started")
        try:
            self._start_once()
        except _BindError:
            # Someone grabbed one of our ports between free_port() and bind(): retry once.
            self.imap_port, self.imaps_port, self.haproxy_port = _three_free_ports()
            self._write_config()
            self._start_once()

    def _command(self) -> list[str]:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = _WANTED_NOFILE if hard == resource.RLIM_INFINITY else min(_WANTED_NOFILE, hard)
        nofile = max(nofile, soft)
        command = [
            "/bin/sh",
            "-c",
            f'ulimit -Sn {nofile} 2>/dev/null; exec "$@"',
            "sh",
            str(DOVECOT_BINARY),
            "-F",
            "-c",
            str(self.config_path),
        ]
        return command

    def _start_once(self) -> None:
        self._proc = launch_dovecot(self.config_path, self.stdout_path, self._command())
        atexit.register(self.stop)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                output = self._diagnostics()
                self._reap()
                if any(marker in output for marker in _BIND_ERRORS):
                    raise _BindError(output)
                raise RuntimeError(f"Dovecot exited during start-up:\n{output}")
            if self._imap_greets() and self._accepts(self.imaps_port):
                return
            if time.monotonic() > deadline:
                output = self._diagnostics()
                self.stop()
                raise RuntimeError(
                    f"Dovecot did not listen on {self.imap_port}/{self.imaps_port} "
                    f"within {_START_TIMEOUT:.0f} s:\n{output}"
                )
            time.sleep(0.05)

    def _imap_greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.imap_port), timeout=1) as sock:
                greeting = sock.recv(4096)
                with contextlib.suppress(OSError):
                    sock.sendall(b"a LOGOUT\r\n")
                return greeting.startswith(b"* OK")
        except OSError:
            return False

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def _diagnostics(self) -> str:
        stdout = ""
        with contextlib.suppress(OSError):
            stdout = self.stdout_path.read_text(encoding="utf-8", errors="replace")
        return f"--- {self.stdout_path}\n{stdout}\n--- {self.log_path}\n{self.log_text()}"

    def stop(self) -> None:
        """SIGTERM the master, wait for it (SIGKILL after 15 s) and for all its children."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._reap()

    def _reap(self) -> None:
        """Kill whatever is left of the master's process group and forget the master."""
        proc = self._proc
        if proc is None:
            return
        proc.wait()
        pgid = proc.pid  # start_new_session=True: the master leads its own process group
        deadline = time.monotonic() + 5.0
        while _group_members(pgid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                break
            time.sleep(0.05)
        self._proc = None
        atexit.unregister(self.stop)
        if self._run_dir is not None and not self._run_dir.is_relative_to(self.base):
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    # ------------------------------------------------------------------ helpers for tests

    def deliver(self, user: str, message: bytes) -> None:
        """Append ``message`` to ``user``'s INBOX with ``doveadm save``."""
        result = subprocess.run(
            [str(DOVEADM_BINARY), "-c", str(self.config_path), "save", "-u", user],
            input=message,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"doveadm save -u {user} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')}"
            )

    def log_text(self) -> str:
        """The Dovecot log so far ("" if nothing was logged yet)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def launch_dovecot(
    config_path: Path, stdout_path: Path, command: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Check the configuration (``dovecot -n``), then start the master (by default
    ``dovecot -F -c config_path``) in a session of its own, output appended to
    ``stdout_path``; from the main thread it also gets SIGTERM if we die."""
    check = subprocess.run(
        [str(DOVECOT_BINARY), "-c", str(config_path), "-n"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise RuntimeError(f"invalid Dovecot configuration:\n{check.stderr}")
    if command is None:
        command = [str(DOVECOT_BINARY), "-F", "-c", str(config_path)]
    setpriv = shutil.which("setpriv")
    if setpriv is not None and threading.current_thread() is threading.main_thread():
        # PR_SET_PDEATHSIG fires when the *thread* that forked exits; only safe from main.
        command = [setpriv, "--pdeathsig", "TERM", *command]
    with stdout_path.open("ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class _BindError(RuntimeError):
    pass


def _group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in process group ``pgid``."""
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path("/proc", entry, "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." -- comm may contain spaces and parentheses.
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotServer]:
    """One Dovecot instance shared by the whole test session."""
    if not DOVECOT_BINARY.exists():
        pytest.fail(
            f"{DOVECOT_BINARY} is missing: run `bash .ci/run` or install dovecot-imapd "
            "(apt-get install dovecot-imapd)",
            pytrace=False,
        )
    server = DovecotServer.create(tmp_path_factory.mktemp("dovecot"))
    server.start()
    try:
        yield server
    finally:
        server.stop()

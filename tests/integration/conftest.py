"""Shared pieces of the gateway integration tests: clients bound to a source address,
a running-gateway context manager, a session-wide master-mode gateway, a TCP
forwarder that can be killed, and audit/Dovecot log lookups.

Source addresses (`source_address(n)`, 127.0.1.n): Dovecot's auth penalty and the
gateway's per-source limits are per address, so every test that connects uses its
own n. Allocation, one block per file (keep it that way when adding tests):

    10-29 test_gateway_dovecot   30-39 test_clients        40-44 test_starttls_injection
    45-49 test_literal_bomb      50-54 test_login_before_tls  55-64 test_preauth_flood
    65-79 test_garbage           80-89 test_upstream_down  90-99 test_tls_policy
    100-109 test_upstream_mitm   110-119 test_slow_reader  215-219 test_slow_store
    130-149 test_oauth_gateway   150-169 test_oauth_token_confusion  170-189 test_client_cert
    190-199 test_policy_gateway  230-234 test_starttls_injection  235-239 test_preauth_flood
    240-244 test_state_permissions  245-249 test_cli_hostile_text  250-254 test_portal_serving
    225-229 test_startup_failures  220-224 test_audit_disk_full
    Networks of their own: 127.0.20-59 (totp tests), 127.0.60-99 (brute force),
    127.0.104.0/21 (failure timing), 127.0.120-129 (posture), 127.0.200-206 (the
    attacks of issue 9: lockout notices, names, penalty timing, device forgery),
    127.0.210.0/24 (the browser tests, tests/e2e/portal.py source_address),
    127.0.211.0/24 (test_portal_admin), 127.0.212.0/24 (test_portal_spray),
    127.0.213.0/24 (test_postgres_state), 127.0.214.0/24 (test_cluster_postgres),
    127.0.215.0/24 and 127.0.216.0/24 (test_proxy_protocol: clients, HAProxy)
    127.0.217.0/24 (test_faults), 127.0.241.0/24 (test_cluster_haproxy),
    127.0.218.0/24 (test_workers), 127.0.219.0/24 (test_portal_signin)
    (test_preauth_slot_exhaustion uses a network namespace of its own, tests/netns.py)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import imaplib
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess

__all__ = [
    "AUTH_FAILED",
    "GatewayIMAP4",
    "GatewayIMAP4SSL",
    "RawClient",
    "TcpForwarder",
    "dovecot_lines",
    "guesses_at_once",
    "message",
    "running_gateway",
    "session_of",
    "wait_for",
]

#: The one answer to every authentication failure, whatever failed.
AUTH_FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed."

#: Added to every gateway the integration tests start: a stopped gateway must not
#: wait the default 30 s for relayed sessions a test left open.
_QUICK_DRAIN = "drain_timeout = 1.0\n"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- gateways -------------------------------------------------------------------


@contextlib.contextmanager
def running_gateway(
    base: Path,
    dovecot: DovecotServer,
    *,
    limits: str = "",
    edit: Callable[[str], str] | None = None,
    before_start: Callable[[GatewayProcess], None] | None = None,
    **kwargs: Any,
) -> Iterator[GatewayProcess]:
    """Start `imapguard serve` (see GatewayProcess.create for kwargs), stop it after.

    `limits` is extra `[limits]` TOML lines; `edit` may rewrite the generated
    configuration text and `before_start` change files before the start. On the way
    out the gateway must still be running (no crash) unless the test stopped it, and
    its log must hold no traceback."""
    gw = GatewayProcess.create(
        base, dovecot, extra_toml="[limits]\n" + _QUICK_DRAIN + limits, **kwargs
    )
    if edit is not None:
        gw.config_path.write_text(edit(gw.config_path.read_text()))
    if before_start is not None:
        before_start(gw)
    gw.start()
    try:
        yield gw
        # A test that stopped the gateway itself checks its exit status.
        assert gw.proc is None or gw.proc.poll() is None, f"the gateway died:\n{gw.log_text()}"
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()


@pytest.fixture(scope="session")
def gw(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    """One gateway for the session: login = "master", methods = ["app-password"],
    upstream STARTTLS to the Dovecot fixture, default limits."""
    with running_gateway(tmp_path_factory.mktemp("gw-master"), dovecot, login="master") as gw:
        yield gw


@pytest.fixture(scope="session")
def alice_password(gw: GatewayProcess) -> str:
    """An app password of alice on the session gateway."""
    return gw.create_app_password("alice", "integration")


# -- log lookups ----------------------------------------------------------------


def session_of(gw: GatewayProcess, src: str, port: int) -> str:
    """The gateway session id of the connection from (src, port), from its audit log."""

    def find() -> str | None:
        for event in gw.events("connect"):
            if event.get("src") == src and event.get("src_port") == port:
                return str(event["session"])
        return None

    found: str = wait_for(find, 5.0, f"connect event of {src}:{port}")
    return found


def dovecot_lines(dovecot: DovecotServer, needle: str) -> list[str]:
    return [line for line in dovecot.log_text().splitlines() if needle in line]


# -- clients --------------------------------------------------------------------


def client_context(gw: GatewayProcess) -> ssl.SSLContext:
    return gw.client_ssl()


def _connect(port: int, src: str, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout, source_address=(src, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class RawClient:
    """A line-oriented IMAP client on a plain socket from a chosen source address.

    `tls` wraps the socket right away (implicit TLS); `starttls()` wraps it later.
    Reads time out after `timeout` seconds (socket.timeout then propagates)."""

    def __init__(
        self,
        port: int,
        src: str,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        sock: socket.socket | None = None,
    ) -> None:
        self.src = src
        # `sock`: already connected (e.g. from inside a network namespace, tests.netns).
        self.sock: socket.socket = sock if sock is not None else _connect(port, src, timeout)
        self.local_port: int = self.sock.getsockname()[1]
        self.buf = b""
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def line(self) -> bytes:
        """The next line without CRLF; raises EOFError when the server closed."""
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed; unterminated data {self.buf[:200]!r}")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def until_tagged(self, tag: bytes) -> list[bytes]:
        """Lines up to and including the tagged response of `tag`."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def starttls(self, ctx: ssl.SSLContext) -> None:
        assert not self.buf, f"unread data before the handshake: {self.buf!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def quiet(self, seconds: float) -> bytes:
        """Whatever arrives within `seconds` (b"" if nothing does); EOF ends it early."""
        old = self.sock.gettimeout()
        self.sock.settimeout(seconds)
        got = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                got += data
        except (TimeoutError, ssl.SSLWantReadError):
            pass
        finally:
            self.sock.settimeout(old)
        return self.buf + got

    def rest_until_closed(self, timeout: float = 5.0) -> bytes:
        """Read until the server closes; fails if it does not within `timeout`."""
        deadline = time.monotonic() + timeout
        got = self.buf
        self.buf = b""
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return got
            except TimeoutError:
                raise AssertionError(
                    f"the server did not close the connection; got {got[-300:]!r}"
                ) from None
            if not data:
                return got
            got += data


def guesses_at_once(
    gateways: Sequence[GatewayProcess], src: str, user: str, count: int
) -> list[bytes]:
    """`count` wrong passwords for `user` from `src`, sent at the same instant over
    connections opened beforehand (spread over `gateways` in turn); the tagged
    answers, in order."""
    clients = []
    for n in range(count):
        gw = gateways[n % len(gateways)]
        client = RawClient(gw.implicit_port, src, tls=gw.client_ssl(), timeout=60)
        client.line()
        clients.append(client)
    barrier = threading.Barrier(count)

    def guess(client: RawClient) -> bytes:
        with client:
            barrier.wait(30)
            return client.command(b"a", f'LOGIN "{user}" "{secrets.token_hex(8)}"'.encode())[-1]

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(guess, clients))


class GatewayIMAP4(imaplib.IMAP4):
    """imaplib on plain TCP (for STARTTLS) from a chosen source address."""

    def __init__(self, port: int, src: str, timeout: float = 30.0) -> None:
        self._src = src
        super().__init__("127.0.0.1", port, timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return _connect(self.port, self._src, timeout or 30.0)


class GatewayIMAP4SSL(imaplib.IMAP4_SSL):
    """imaplib over implicit TLS from a chosen source address."""

    def __init__(
        self, port: int, src: str, ssl_context: ssl.SSLContext, timeout: float = 30.0
    ) -> None:
        self._src = src
        super().__init__("127.0.0.1", port, ssl_context=ssl_context, timeout=timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = _connect(self.port, self._src, timeout or 30.0)
        wrapped: socket.socket = self.ssl_context.wrap_socket(sock, server_hostname="localhost")
        return wrapped


def open_imap(gw: GatewayProcess, listener: str, src: str, timeout: float = 30.0) -> imaplib.IMAP4:
    """imaplib connected to the gateway's `implicit` or `starttls` listener, with TLS up."""
    if listener == "implicit":
        return GatewayIMAP4SSL(gw.implicit_port, src, gw.client_ssl(), timeout)
    conn = GatewayIMAP4(gw.starttls_port, src, timeout)
    conn.host = "localhost"  # imaplib verifies the certificate against self.host
    typ, _ = conn.starttls(ssl_context=gw.client_ssl())
    assert typ == "OK"
    return conn


def close_imap(conn: imaplib.IMAP4) -> None:
    try:
        conn.logout()
    except (imaplib.IMAP4.error, OSError):
        with contextlib.suppress(OSError):
            conn.shutdown()


# -- a TCP forwarder the tests can kill -----------------------------------------


class TcpForwarder:
    """Listens on 127.0.0.1:`port` and pipes every connection to `target`.

    `kill()` closes the listener and every piped connection: to the gateway that
    looks like the mail server going away. `make_listener` creates the listening
    socket (e.g. inside a network namespace, tests.netns); the connections to
    `target` are made from this process's own namespace."""

    def __init__(
        self,
        port: int,
        target: tuple[str, int],
        make_listener: Callable[[], socket.socket] | None = None,
    ) -> None:
        self.port = port
        self.target = target
        self._make_listener = make_listener
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.accepted = 0

    def start(self) -> None:
        if self._make_listener is not None:
            listener = self._make_listener()
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, 5.0)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self.accepted += 1
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                thread.start()
                self._threads.append(thread)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def kill(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            # shutdown() wakes the pump blocked in recv(); close() alone would not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5.0)
        self._threads = []


class FakeUpstream:
    """A scripted "mail server" on 127.0.0.1:`port` (0: any free port): every
    accepted connection is handed to `handler` (which may be replaced at any time)
    in its own thread."""

    def __init__(self, handler: Callable[[socket.socket], None], port: int = 0) -> None:
        self.handler = handler
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self.received: list[bytes] = []
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(10.0)
            self.handler(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._thread.join(5.0)

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def set_upstream(config: str, port: int, **settings: float) -> str:
    """Point a generated gateway configuration at 127.0.0.1:`port`, and set other
    [upstream] keys (e.g. login_timeout=1.0)."""
    config, count = re.subn(
        r'(?m)^(\[upstream\]\naddress = )"[^"]*"', rf'\1"127.0.0.1:{port}"', config
    )
    assert count == 1, config
    extra = "".join(f"{key} = {value}\n" for key, value in settings.items())
    return config.replace("[upstream]\n", "[upstream]\n" + extra, 1)


_CAPS_CODE = re.compile(rb"\[CAPABILITY ([^\]]*)\]")


def capability_code(text: bytes) -> list[str]:
    match = _CAPS_CODE.search(text)
    assert match is not None, text
    return match.group(1).decode().split()


def message(subject: str, body: bytes = b"Hello.\r\n", extra_headers: str = "") -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    head = (
        "From: sender@example.org\r\nTo: rcpt@example.org\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n{extra_headers}\r\n"
    )
    return head.encode() + body

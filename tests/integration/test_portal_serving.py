"""The portal served for real: `imapguard serve` with `[portal]` (and `imapguard
portal` alone) over TLS on a loopback port, its headers, its TLS policy, its
certificate reload, the connection guard on the pinned uvicorn, and a port in
use named in one line.

No Dovecot is needed: the gateway starts without asking its upstream anything."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from imapguard.portal.headers import SECURITY_HEADERS
from imapguard.portal.serve import MAX_PER_SOURCE, REQUEST_DEADLINE
from tests.dovecot import free_port
from tests.gateway import IMAPGUARD, source_address

# Source addresses 250-254 (tests/integration/conftest.py).
GUARD_SOURCE = source_address(250)


def _issue(base: Path) -> Path:
    """A new CA and a localhost certificate from it in base/portal.{pem,key}; the CA's path."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_path = base / f"ca-{secrets.token_hex(4)}.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(base / "portal.key"))
    (base / "portal.key").chmod(0o600)
    with open(base / "portal.pem", "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return ca_path


@dataclass
class Served:
    base: Path
    config: Path
    ca: Path
    portal_port: int
    imap_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://localhost:{self.portal_port}"

    @property
    def log(self) -> str:
        return (self.base / "imapguard.log").read_text(errors="replace")

    def run(self, command: str, *, wait_for: tuple[int, ...]) -> None:
        log = open(self.base / "imapguard.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [*IMAPGUARD, command, "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while not all(_accepts(port) for port in wait_for):
            if self.proc.poll() is not None:
                raise AssertionError(f"imapguard {command} exited:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"imapguard {command} did not listen:\n{self.log}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def client(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        return httpx.Client(base_url=self.url, verify=ctx, timeout=10.0)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _configure(base: Path, *, portal_port: int | None = None) -> Served:
    base.mkdir(parents=True, exist_ok=True)
    ca = _issue(base)
    server_key = base / "server.key"
    server_key.write_bytes(secrets.token_bytes(32))
    server_key.chmod(0o600)
    master = base / "master.secret"
    master.write_text("unused\n")
    master.chmod(0o600)
    served = Served(base, base / "imapguard.toml", ca, portal_port or free_port(), free_port())
    served.config.write_text(
        f"""
[state]
url = "sqlite:///{base}/state.db"
key_file = "{server_key}"

[server]
workers = 1

[[listen]]
address = "127.0.0.1:{served.imap_port}"
tls = "implicit"

[tls]
certificate = "{base}/portal.pem"
private_key = "{base}/portal.key"

[upstream]
address = "127.0.0.1:{free_port()}"
tls = "none"
login = "master"
master_user = "imapguard"
master_password_file = "{master}"

[audit]
path = "{base}/audit.jsonl"

[limits]
drain_timeout = 1.0

[portal]
listen = "127.0.0.1:{served.portal_port}"
url = "{served.url}"
"""
    )
    return served


@contextlib.contextmanager
def serving(base: Path, command: str = "serve") -> Iterator[Served]:
    served = _configure(base)
    waits = (served.portal_port, served.imap_port) if command == "serve" else (served.portal_port,)
    served.run(command, wait_for=waits)
    try:
        yield served
        assert served.proc is not None
        assert served.proc.poll() is None, served.log
    finally:
        code = served.stop()
    assert code == 0, served.log
    assert "Traceback" not in served.log, served.log


def _assert_signin_page(served: Served) -> None:
    with served.client() as client:
        page = client.get("/signin")
    assert page.status_code == 200
    assert "<h1>Sign in</h1>" in page.text
    for name, value in SECURITY_HEADERS:
        assert page.headers[name] == value
    assert page.headers["cache-control"] == "no-store"
    assert "server" not in page.headers
    assert page.headers["set-cookie"].startswith("__Host-imapguard-pre=")


def test_serve_with_a_portal_section_serves_sign_in_over_tls(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        _assert_signin_page(served)
        assert _accepts(served.imap_port)  # the gateway listens beside it
        with served.client() as client:
            assert client.get("/static/portal.css").status_code == 200
            # A state change without a token, over the real server: refused.
            refused = client.post("/signout", headers={"Origin": served.url})
            assert refused.status_code == 403
            # Another host name for the same address (DNS rebinding): refused.
            assert client.get("/signin", headers={"Host": "evil.test"}).status_code == 400
        # The ASGI app saw the real peer: the audit line of the refusal names it.
        assert '"src":"127.0.0.1"' in (tmp_path / "audit.jsonl").read_text()


def test_tls_below_1_2_is_refused(tmp_path: Path) -> None:
    def old_client() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        return ctx

    # The client can speak TLS 1.1: a permissive server on such a certificate takes it.
    assert _permissive_version(tmp_path / "probe", old_client()) in ("TLSv1", "TLSv1.1")

    with serving(tmp_path / "portal") as served:
        with (
            pytest.raises((ssl.SSLError, ConnectionResetError)),
            socket.create_connection(("127.0.0.1", served.portal_port), 5) as raw,
            old_client().wrap_socket(raw),
        ):
            pass
        tls12 = ssl.create_default_context(cafile=str(served.ca))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with (
            socket.create_connection(("127.0.0.1", served.portal_port), 5) as raw,
            tls12.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.version() == "TLSv1.2"
            cipher = tls.cipher()
            assert cipher is not None
            assert cipher[0].startswith("ECDHE-")
            assert tls.selected_alpn_protocol() is None  # we offered none


def _permissive_version(base: Path, client: ssl.SSLContext) -> str | None:
    """The version `client` gets from a server that takes TLS 1.0 and up."""
    base.mkdir()
    _issue(base)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.TLSv1
    server.set_ciphers("ALL:@SECLEVEL=0")
    server.load_cert_chain(base / "portal.pem", base / "portal.key")
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()[:2], 5) as raw,
    ):
        conn, _ = listener.accept()
        conn.settimeout(5)
        handshake = threading.Thread(target=_handshake, args=(server, conn), daemon=True)
        handshake.start()
        with client.wrap_socket(raw) as tls:
            version = tls.version()
        handshake.join(5)
    return version


def _handshake(ctx: ssl.SSLContext, conn: socket.socket) -> None:
    with contextlib.suppress(ssl.SSLError, OSError), ctx.wrap_socket(conn, server_side=True):
        pass


def test_imapguard_portal_serves_the_portal_alone(tmp_path: Path) -> None:
    with serving(tmp_path, "portal") as served:
        _assert_signin_page(served)
        assert not _accepts(served.imap_port)  # no gateway in this process


@pytest.mark.parametrize("command", ["serve", "portal"])
def test_a_port_in_use_is_one_line_naming_portal_listen(tmp_path: Path, command: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        served = _configure(tmp_path, portal_port=taken.getsockname()[1])
        result = subprocess.run(
            [*IMAPGUARD, command, "--config", str(served.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if "portal.listen" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("config error: portal.listen: cannot listen on 127.0.0.1:")
    # The gateway did not start listening either.
    assert not _accepts(served.imap_port)


def test_sighup_reloads_the_portal_certificate(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        _assert_signin_page(served)
        new_ca = _issue(tmp_path)
        assert served.proc is not None
        served.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                with httpx.Client(
                    verify=ssl.create_default_context(cafile=str(new_ca)), timeout=5
                ) as client:
                    assert client.get(served.url + "/signin").status_code == 200
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, served.log
                time.sleep(0.1)
        with pytest.raises(httpx.ConnectError), served.client() as client:
            client.get("/signin")  # the old CA no longer matches


def test_a_slowloris_source_holds_few_connections_and_none_for_long(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        ctx = ssl.create_default_context(cafile=str(served.ca))

        def connect() -> ssl.SSLSocket:
            raw = socket.create_connection(
                ("127.0.0.1", served.portal_port), 5, source_address=(GUARD_SOURCE, 0)
            )
            return ctx.wrap_socket(raw, server_hostname="localhost")

        held = [connect() for _ in range(MAX_PER_SOURCE)]
        try:
            for sock in held:
                sock.sendall(b"GET /signin HTTP/1.1\r\nHost: localhost\r\n")  # never finished
            started = time.monotonic()
            with connect() as extra:
                extra.settimeout(5)
                assert extra.recv(1024) == b""  # one too many: closed at once
            # Another source is served meanwhile.
            _assert_signin_page(served)
            # The trickling requests are cut at the deadline.
            for sock in held:
                sock.settimeout(REQUEST_DEADLINE + 5)
                with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                    assert sock.recv(1024) == b""
            assert time.monotonic() - started < REQUEST_DEADLINE + 5
            with connect() as later:  # the source's slots are free again
                later.sendall(
                    b"GET /signin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                )
                later.settimeout(5)
                assert later.recv(64).startswith(b"HTTP/1.1 200")
        finally:
            for sock in held:
                sock.close()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_crashed_portal_process_is_started_again_and_the_gateway_goes_on(
    tmp_path: Path,
) -> None:
    # The portal's work runs in a process of its own (it must not slow the
    # gateway's event loop); its crash must cost neither the gateway nor the portal.
    with serving(tmp_path) as served:
        assert served.proc is not None
        parent = served.proc.pid
        child = _portal_process(parent)
        os.kill(child, signal.SIGKILL)
        _wait(
            lambda: bool(_children(parent)) and _children(parent) != [child],
            f"no new portal process:\n{served.log}",
        )
        _wait(lambda: _serves_signin(served), f"the new portal does not serve:\n{served.log}")
        assert _accepts(served.imap_port)
        assert "the portal process exited" in served.log
        assert '"reason":"the portal process exited (-9)"' in (tmp_path / "audit.jsonl").read_text()


def test_a_killed_gateway_takes_its_portal_process_along(tmp_path: Path) -> None:
    # No orphan keeps serving the portal (and holding its port) after its
    # gateway died without a chance to stop it.
    with _gateway_and_portal(tmp_path) as (served, child):
        assert served.proc is not None
        served.proc.kill()
        served.proc.wait()
        _wait(lambda: not _alive(child), "the portal process outlived its gateway")
        assert not _accepts(served.portal_port)


def test_sigterm_stops_the_portal_process_with_the_gateway(tmp_path: Path) -> None:
    with _gateway_and_portal(tmp_path) as (served, child):
        assert served.stop() == 0, served.log
        assert not _alive(child)
        assert "Traceback" not in served.log, served.log


@contextlib.contextmanager
def _gateway_and_portal(base: Path) -> Iterator[tuple[Served, int]]:
    """`imapguard serve` and its portal process; both are gone afterwards, however
    the test ended (a failed test must not leave them running)."""
    served = _configure(base)
    served.run("serve", wait_for=(served.portal_port, served.imap_port))
    assert served.proc is not None
    gateway = served.proc.pid
    seen: set[int] = set()
    try:
        child = _portal_process(gateway)
        seen.add(child)
        yield served, child
    finally:
        seen.update(_children(gateway))
        served.stop()
        for pid in seen:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _portal_process(gateway: int) -> int:
    """The portal process `gateway` started (the port accepts before it runs:
    the gateway's process binds it)."""
    _wait(lambda: len(_children(gateway)) == 1, "no portal process")
    (child,) = _children(gateway)
    return child


def _serves_signin(served: Served) -> bool:
    with contextlib.suppress(httpx.HTTPError), served.client() as client:
        return client.get("/signin").status_code == 200
    return False

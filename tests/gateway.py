"""Run the real `imapguard serve` as a child process in front of a test Dovecot.

Usage::

    gw = GatewayProcess.create(tmp_path, dovecot, login="master")
    gw.start()
    password = gw.create_app_password("alice", "phone")
    with imaplib.IMAP4_SSL("127.0.0.1", gw.implicit_port, ssl_context=gw.client_ssl()) as m:
        m.login("alice", password)
    gw.stop()

The gateway gets its own certificate from a trustme CA (`ca_cert`, names localhost
and 127.0.0.1), its own server key, state database and audit log under `base`,
one implicit-TLS and one STARTTLS listener on free loopback ports, and an upstream
pointing at the Dovecot fixture (STARTTLS by default, verified against Dovecot's CA).
`extra_toml` is appended to the generated configuration for test-specific limits.
With `netns` (tests.netns.NetNamespace) the gateway runs inside that network
namespace, listening on `listen_host` there (e.g. "::1"); its upstream address must
then be reachable from inside (a forwarder whose listener was created there).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

from imapguard.audit import read_events
from tests.dovecot import DovecotServer, free_port
from tests.netns import NetNamespace

__all__ = ["GatewayProcess", "source_address"]

IMAPGUARD = [sys.executable, "-m", "imapguard.cli"]


def source_address(n: int) -> str:
    """A distinct loopback source address (127.0.1.n) for one test: Dovecot's
    auth penalty and the gateway's per-source limits are per address."""
    return f"127.0.1.{n}"


@dataclass(kw_only=True, eq=False)
class GatewayProcess:
    base: Path
    config_path: Path
    implicit_port: int
    starttls_port: int
    ca_cert: Path
    audit_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    listen_host: str = "127.0.0.1"
    netns: NetNamespace | None = None

    def __post_init__(self) -> None:
        self.log_path = self.base / "gateway.log"

    @classmethod
    def create(
        cls,
        base: Path,
        dovecot: DovecotServer,
        *,
        login: str = "master",
        methods: tuple[str, ...] = ("app-password",),
        upstream_tls: str = "starttls",
        failure_delay: float = 0.05,
        extra_toml: str = "",
        listen_host: str = "127.0.0.1",
        netns: NetNamespace | None = None,
        state: str | None = None,
        workers: int = 1,
    ) -> GatewayProcess:
        """`state`: the [state] keys but `key_file` (default: a SQLite file in `base`).
        `workers`: [server] workers (1: the gateway in the serve process itself)."""
        base.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        ca_cert = base / "gateway-ca.pem"
        ca.cert_pem.write_to_path(str(ca_cert))
        chain, key = base / "gateway.pem", base / "gateway.key"
        cert.private_key_pem.write_to_path(str(key))
        with open(chain, "wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())
        key.chmod(0o600)
        server_key = base / "server.key"
        server_key.write_bytes(secrets.token_bytes(32))
        server_key.chmod(0o600)
        master = base / "master.secret"
        master.write_text(dovecot.master_password + "\n")
        master.chmod(0o600)
        implicit_port, starttls_port = free_port(), free_port()
        upstream_port = dovecot.imaps_port if upstream_tls == "implicit" else dovecot.imap_port
        audit = base / "audit.jsonl"
        method_list = ", ".join(f'"{m}"' for m in methods)
        config = base / "imapguard.toml"
        host = f"[{listen_host}]" if ":" in listen_host else listen_host
        config.write_text(
            f"""
[state]
{state or f'url = "sqlite:///{base}/state.db"'}
key_file = "{server_key}"

[server]
workers = {workers}

[[listen]]
address = "{host}:{implicit_port}"
tls = "implicit"

[[listen]]
address = "{host}:{starttls_port}"
tls = "starttls"

[tls]
certificate = "{chain}"
private_key = "{key}"

[upstream]
address = "127.0.0.1:{upstream_port}"
tls = "{upstream_tls}"
ca = "{dovecot.ca_cert}"
server_name = "localhost"
login = "{login}"
master_user = "{dovecot.master_user}"
master_password_file = "{master}"

[auth]
methods = [{method_list}]
failure_delay = {failure_delay}
failure_jitter = 0.01

[audit]
path = "{audit}"
{extra_toml}
"""
        )
        return cls(
            base=base,
            config_path=config,
            implicit_port=implicit_port,
            starttls_port=starttls_port,
            ca_cert=ca_cert,
            audit_path=audit,
            listen_host=listen_host,
            netns=netns,
        )

    # -- process --------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parent.parent / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        env["IMAPGUARD_CONFIG"] = str(self.config_path)
        return env

    def start(self, timeout: float = 15.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        prefix = self.netns.exec_prefix() if self.netns is not None else []
        self.proc = subprocess.Popen(
            [*prefix, *IMAPGUARD, "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"imapguard serve exited: {self.log_text()}")
            if all(self.accepts(p) for p in (self.implicit_port, self.starttls_port)):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"imapguard serve did not start: {self.log_text()}")

    def accepts(self, port: int) -> bool:
        """A TCP connection to `port` of the gateway's host succeeds (in its namespace)."""
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        sock = (
            self.netns.tcp_socket(family)
            if self.netns is not None
            else socket.socket(family, socket.SOCK_STREAM)
        )
        with contextlib.suppress(OSError), sock:
            sock.settimeout(0.2)
            sock.connect((self.listen_host, port))
            return True
        return False

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- admin ----------------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*IMAPGUARD, *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            env=self._env(),
            check=check,
            timeout=60,
        )

    def create_app_password(self, user: str, label: str = "device") -> str:
        out = self.cli("app-password", "create", user, "--label", label, "--json")
        document: dict[str, Any] = json.loads(out.stdout)
        return str(document["password"])

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        # The audit log's own reader: a line the gateway is writing right now
        # (incomplete JSON) is not an event yet.
        try:
            records = list(read_events(str(self.audit_path)))
        except FileNotFoundError:
            return []
        return [r for r in records if event is None or r.get("event") == event]

    def client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))


def reissue_certificate(gw: GatewayProcess) -> Path:
    """A new certificate from a new CA in the gateway's files (what a SIGHUP then
    loads); the new CA's file."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    new_ca = gw.base / "new-ca.pem"
    ca.cert_pem.write_to_path(str(new_ca))
    cert.private_key_pem.write_to_path(str(gw.base / "gateway.key"))
    with open(gw.base / "gateway.pem", "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return new_ca

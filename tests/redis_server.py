"""A private, throw-away Redis (Debian ``redis-server`` 7.0) for tests.

``RedisServer.create(base)`` writes a config in ``base`` (127.0.0.1 only, a free
port, no persistence: ``save ""``, ``appendonly no``, ``requirepass`` set from a
random password kept in ``password_file``, mode 0600); ``start()`` runs it and
waits for PONG, ``stop()`` ends it (SIGTERM, then SIGKILL), ``start()`` again
brings it back on the same port. ``tls=True``: the port is a TLS port
(``--tls-port``) with a certificate from ``trustme`` valid for ``localhost``
and ``127.0.0.1`` (``ca_file``); ``client_certs=True`` makes Redis ask for a
client certificate signed by that CA (``issue_client_cert``). ``SentinelServer``
is a ``redis-server --sentinel`` watching one of them under the service name
``svc`` (down after 1 s of silence); ``replica_of=`` makes a replica for it to
promote.

Fixtures (one server per test): ``redis_server``, ``tls_redis_server``,
``mtls_redis_server``, ``sentinel``. Each stops its server in its finalizer;
the processes also get SIGTERM if the test process dies (``setpriv
--pdeathsig``). ``shared_server`` is one server for a whole session (the
conformance suite's), stopped by ``stop_shared`` from a session fixture.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import trustme

from imapguard.config.state import StateConfig
from imapguard.state.redis import open_counters
from imapguard.state.redis.counters import RedisCounterStore
from tests.dovecot import free_port

__all__ = [
    "RedisServer",
    "SentinelServer",
    "counters_address",
    "mtls_redis_server",
    "open_redis_counters",
    "redis_server",
    "sentinel",
    "shared_server",
    "stop_shared",
    "tls_redis_server",
]

STARTUP_TIMEOUT = 10.0


def _pdeathsig() -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


@dataclass
class RedisServer:
    base: Path
    port: int
    password: str
    tls: bool = False
    client_certs: bool = False
    ca: trustme.CA | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        base: Path,
        *,
        tls: bool = False,
        client_certs: bool = False,
        replica_of: RedisServer | None = None,
    ) -> RedisServer:
        """`replica_of`: a replica of that (plain) server, with its password."""
        base.mkdir(parents=True, exist_ok=True)
        password = replica_of.password if replica_of else secrets.token_urlsafe(24)
        server = cls(base, free_port(), password, tls=tls, client_certs=client_certs)
        server.password_file.write_text(server.password + "\n")
        server.password_file.chmod(0o600)
        lines = [
            "bind 127.0.0.1",
            "protected-mode yes",
            'save ""',
            "appendonly no",
            f"dir {base}",
            f"logfile {base / 'redis.log'}",
            f"requirepass {server.password}",
        ]
        if replica_of is not None:
            lines += [
                f"replicaof 127.0.0.1 {replica_of.port}",
                f"masterauth {server.password}",
            ]
        if tls:
            server.ca = trustme.CA()
            cert = server.ca.issue_cert("localhost", "127.0.0.1")
            cert.cert_chain_pems[0].write_to_path(str(base / "server.pem"))
            cert.private_key_pem.write_to_path(str(base / "server.key"))
            server.ca.cert_pem.write_to_path(str(server.ca_file))
            lines += [
                "port 0",
                f"tls-port {server.port}",
                f"tls-cert-file {base / 'server.pem'}",
                f"tls-key-file {base / 'server.key'}",
                f"tls-ca-cert-file {server.ca_file}",
                f"tls-auth-clients {'yes' if client_certs else 'no'}",
            ]
        else:
            lines.append(f"port {server.port}")
        (base / "redis.conf").write_text("\n".join(lines) + "\n")
        (base / "redis.conf").chmod(0o600)
        return server

    def issue_client_cert(self, name: str) -> tuple[Path, Path]:
        """A client certificate (and its key, 0600) from this server's CA."""
        assert self.ca is not None
        cert = self.ca.issue_cert(name)
        pem, key = self.base / f"{name}.pem", self.base / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(pem))
        cert.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return pem, key

    @property
    def password_file(self) -> Path:
        return self.base / "password"

    @property
    def ca_file(self) -> Path:
        return self.base / "ca.pem"

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://localhost:{self.port}/0"
        return f"redis://127.0.0.1:{self.port}/0"

    def state(self, **more: object) -> StateConfig:
        """A `[state]` whose counters are in this Redis."""
        keys: dict[str, object] = {
            "counters_url": self.url,
            "counters_password_file": str(self.password_file),
        }
        if self.tls:
            keys["counters_ca_file"] = str(self.ca_file)
        return StateConfig.checked({**keys, **more})

    def client(self) -> redis.Redis:
        if self.tls:
            pem, key = self.issue_client_cert("test-admin") if self.client_certs else (None, None)
            return redis.Redis(
                host="localhost",
                port=self.port,
                password=self.password,
                ssl=True,
                ssl_ca_certs=str(self.ca_file),
                ssl_certfile=None if pem is None else str(pem),
                ssl_keyfile=None if key is None else str(key),
                decode_responses=True,
            )
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, decode_responses=True
        )

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        assert redis_server is not None, (
            "redis-server is not installed (apt-get install redis-server)"
        )
        self.process = subprocess.Popen(
            [*_pdeathsig(), redis_server, str(self.base / "redis.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        client = self.client()
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    log = (self.base / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited: {log}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


@dataclass
class SentinelServer:
    """`redis-server --sentinel` watching `master` as the service `svc`."""

    base: Path
    port: int
    master: RedisServer
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    SERVICE = "svc"

    @classmethod
    def create(cls, base: Path, master: RedisServer) -> SentinelServer:
        base.mkdir(parents=True, exist_ok=True)
        sentinel = cls(base, free_port(), master)
        conf = base / "sentinel.conf"  # Sentinel rewrites it: its own, writable
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {sentinel.port}",
                    f"dir {base}",
                    f"logfile {base / 'sentinel.log'}",
                    f"sentinel monitor {cls.SERVICE} 127.0.0.1 {master.port} 1",
                    f"sentinel auth-pass {cls.SERVICE} {master.password}",
                    # A master silent for 1 s is down; a failover may take 10 s.
                    f"sentinel down-after-milliseconds {cls.SERVICE} 1000",
                    f"sentinel failover-timeout {cls.SERVICE} 10000",
                ]
            )
            + "\n"
        )
        conf.chmod(0o600)
        return sentinel

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.SERVICE}/0"

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        assert redis_server is not None
        self.process = subprocess.Popen(
            [*_pdeathsig(), redis_server, str(self.base / "sentinel.conf"), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
        try:
            while True:
                try:
                    if client.sentinel_get_master_addr_by_name(self.SERVICE):
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            process.wait(timeout=10)


def _running(server: RedisServer) -> Iterator[RedisServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from _running(RedisServer.create(tmp_path / "redis"))


@pytest.fixture
def tls_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from _running(RedisServer.create(tmp_path / "redis-tls", tls=True))


@pytest.fixture
def mtls_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from _running(RedisServer.create(tmp_path / "redis-mtls", tls=True, client_certs=True))


@pytest.fixture
def sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[SentinelServer]:
    server = SentinelServer.create(tmp_path / "sentinel", redis_server)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def counters_address(server: RedisServer, prefix: str) -> str:
    """What `open_redis_counters` opens, as one picklable string."""
    return json.dumps(
        {"url": server.url, "password_file": str(server.password_file), "prefix": prefix}
    )


def open_redis_counters(address: str) -> RedisCounterStore:
    """A new handle (its own client and pool) on the store at `address`
    (`counters_address`): what another node or process opens."""
    where = json.loads(address)
    state = StateConfig.checked(
        counters_url=where["url"],
        counters_password_file=where["password_file"],
        counters_prefix=where["prefix"],
    )
    return open_counters(state)


# A server kept for a whole session (the conformance suite's: each test its own
# key prefix), stopped by `stop_shared` from a session fixture's finalizer.
_shared: list[RedisServer] = []


def shared_server(base: Path) -> RedisServer:
    if not _shared:
        server = RedisServer.create(base)
        server.start()
        _shared.append(server)
    return _shared[0]


def stop_shared() -> None:
    while _shared:
        _shared.pop().stop()

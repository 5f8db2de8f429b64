"""A real HAProxy (Debian's `haproxy`) in TCP mode for integration tests.

    proxy = HAProxy.start(base, [Route("v2-implicit", (gateway_port,), "send-proxy-v2")],
                          source="127.0.216.1")
    ... connect to proxy.port("v2-implicit") ...
    proxy.stop()

Each route is a frontend on a free port of 127.0.0.1 whose servers are
`127.0.0.1:<port>` (round-robin) with the route's PROXY option (`send-proxy` for
v1, `send-proxy-v2`); `source` is the address HAProxy connects from, so that the
gateway sees a proxy address of the test's choosing. HAProxy runs in the
foreground (`-db`) as a child of the test and is stopped by it.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.dovecot import free_port

__all__ = ["HAPROXY_BINARY", "HAProxy", "Route", "running_haproxy"]

HAPROXY_BINARY = Path("/usr/sbin/haproxy")


@dataclass(frozen=True)
class Route:
    """A frontend `name` balancing round-robin over the servers on 127.0.0.1 at
    `server_ports`, each sent the PROXY header `proxy_option` asks for."""

    name: str
    server_ports: tuple[int, ...]
    proxy_option: str  # send-proxy | send-proxy-v2


@dataclass(eq=False)
class HAProxy:
    base: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.base / "haproxy.log"

    def port(self, route: str) -> int:
        return self.ports[route]

    @classmethod
    def start(cls, base: Path, routes: Sequence[Route], *, source: str) -> HAProxy:
        base.mkdir(parents=True, exist_ok=True)
        ports = {route.name: free_port() for route in routes}
        sections = [
            "global\n    maxconn 500\n",
            "defaults\n    mode tcp\n    timeout connect 5s\n"
            "    timeout client 60s\n    timeout server 60s\n",
        ]
        for route in routes:
            servers = "".join(
                f"    server gw{n} 127.0.0.1:{port} {route.proxy_option} source {source}\n"
                for n, port in enumerate(route.server_ports)
            )
            sections.append(
                f"frontend fe-{route.name}\n    bind 127.0.0.1:{ports[route.name]}\n"
                f"    default_backend be-{route.name}\n"
                f"backend be-{route.name}\n    balance roundrobin\n{servers}"
            )
        config = base / "haproxy.cfg"
        config.write_text("\n".join(sections))
        log = open(base / "haproxy.log", "ab")  # noqa: SIM115 - the child keeps it
        proxy = cls(base=base, ports=ports)
        proxy.proc = subprocess.Popen(
            [str(HAPROXY_BINARY), "-db", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 10.0
        while not all(_listening(p) for p in ports.values()):
            if proxy.proc.poll() is not None or time.monotonic() > deadline:
                proxy.stop()
                raise RuntimeError(f"haproxy did not start: {proxy.log_path.read_text()}")
            time.sleep(0.05)
        return proxy

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.contextmanager
def running_haproxy(base: Path, routes: Sequence[Route], *, source: str) -> Iterator[HAProxy]:
    proxy = HAProxy.start(base, routes, source=source)
    try:
        yield proxy
    finally:
        proxy.stop()

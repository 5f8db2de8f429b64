"""Serving the portal: uvicorn on the event loop that is already running (the
gateway's, or `imapguard portal`'s own), over HTTPS with our TLS context.

Rules:

* TLS is `imapguard.tls.server_context` (TLS 1.2+ at `tls.min_version`, the
  gateway's forward-secret AEAD suites, no compression, no renegotiation), with
  ALPN `http/1.1`. uvicorn never builds a context of its own: none of its
  `ssl_*` options is set; its `ssl_context_factory` hands it ours, and after
  `Config.load()` `config.ssl` must be that very object (`Server.startup`
  passes `config.ssl` to `loop.create_server`), or the portal refuses to start.
* SIGHUP (wired by `compose`) reloads the certificate and key into that same
  context (`load_cert_chain`), so the next handshake uses them; a pair that
  does not load is refused on a scratch context first and the running one kept.
* The listening socket is bound by `bind()` before anything serves: a port in
  use is a ConfigError naming `portal.listen` (one line, no traceback).
* uvicorn installs no signal handler (the process's owner does: `compose`), sends
  no `Server` header, trusts no proxy header, writes no access log (the portal
  audits) and configures no logging. Limits: `LIMIT_CONCURRENCY` connections and
  tasks (then 503), a 5 s keep-alive, request heads up to 16 KiB, and the
  connection guard of `portal.connections` (`MAX_PER_SOURCE` per source, the
  request deadline). The total is 64 times the per-source share, so a few
  sources cannot take every slot (at 200 and 32, seven could); an idle TLS
  connection costs some tens of KiB, a thousand of them some tens of MiB. The
  soft limit on open files is raised (to the hard one at most) to hold them.
* `stop()` ends it gracefully: no new connections, open requests get
  `GRACEFUL_STOP` seconds.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import ssl
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

from imapguard.config import parse_address
from imapguard.net import cannot_listen
from imapguard.portal.connections import ConnectionCounts, guarded_protocol
from imapguard.tls import server_context

__all__ = ["PortalServer", "listen_socket", "open_files", "portal_context"]

LIMIT_CONCURRENCY = 1024
KEEP_ALIVE = 5
MAX_HEAD = 16 * 1024
GRACEFUL_STOP = 5
# Open connections per source, and the time a whole request may take to arrive.
# A browser opens up to six per host, and an admin's live view holds one more.
MAX_PER_SOURCE = 16
# Files beyond the connections: the listening socket, the stores, the audit
# log, the parent's pipe, the TLS certificate when it is reloaded.
_FILES_SPARE = 64
REQUEST_DEADLINE = 10.0
_BACKLOG = 1024


def portal_context(certificate: str, private_key: str, min_version: str) -> ssl.SSLContext:
    """The portal's TLS context: the gateway's listener policy, ALPN http/1.1."""
    ctx = server_context(certificate, private_key, min_version)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the process has its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class PortalServer:
    def __init__(
        self,
        app: ASGIApp,
        *,
        listen: str,
        ssl_context: ssl.SSLContext,
        certificate: str,
        private_key: str,
    ) -> None:
        self.listen = listen
        self.host, self.port = parse_address(listen)
        self.ssl_context = ssl_context
        self._certificate = certificate
        self._private_key = private_key
        self.counts = ConnectionCounts(MAX_PER_SOURCE)
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            http=guarded_protocol(self.counts, REQUEST_DEADLINE),
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            limit_concurrency=LIMIT_CONCURRENCY,
            timeout_keep_alive=KEEP_ALIVE,
            timeout_graceful_shutdown=GRACEFUL_STOP,
            h11_max_incomplete_event_size=MAX_HEAD,
            backlog=_BACKLOG,
            ssl_context_factory=_ours(ssl_context),
        )
        config.load()
        if config.ssl is not ssl_context:
            raise RuntimeError("uvicorn did not take the portal's TLS context")
        self._server = _Server(config)
        self._socket: socket.socket | None = None

    def bind(self) -> tuple[str, int]:
        """Listen on `portal.listen` now; the address actually bound."""
        return self.adopt(listen_socket(self.listen))

    def adopt(self, sock: socket.socket) -> tuple[str, int]:
        """Serve on `sock`, already listening (bound by a parent process)."""
        self._socket = sock
        bound: tuple[str, int] = sock.getsockname()[:2]
        return bound

    async def serve(self) -> None:
        """Serve until `stop()`; `bind()` first."""
        if self._socket is None:
            raise RuntimeError("PortalServer.bind() was not called")
        open_files(LIMIT_CONCURRENCY + _FILES_SPARE)
        await self._server.serve(sockets=[self._socket])

    @property
    def started(self) -> bool:
        return self._server.started

    def stop(self) -> None:
        self._server.should_exit = True

    def reload_certificate(self) -> None:
        """Load the certificate and key files again into the live context.
        Raises OSError or ssl.SSLError (the running certificate stays)."""
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        scratch.load_cert_chain(self._certificate, self._private_key)
        self.ssl_context.load_cert_chain(self._certificate, self._private_key)


def open_files(wanted: int) -> int:
    """Raise the process's soft limit on open files to `wanted` if it is lower
    (never above the hard limit, never lowering it); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def listen_socket(listen: str) -> socket.socket:
    """A socket listening on `listen` (host:port); a port in use, or an address
    this host does not have, is a ConfigError naming `portal.listen`."""
    host, port = parse_address(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        return socket.create_server(address[:2], family=family, backlog=_BACKLOG)
    except OSError as exc:
        raise cannot_listen("portal.listen", listen, exc) from None


def _ours(
    ctx: ssl.SSLContext,
) -> Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    def factory(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return ctx

    return factory

"""Loopback receivers for notifications: a webhook endpoint and an SMTP server.

Both run their server on a thread of their own, on 127.0.0.1 and a port the
kernel picks (no guessed ports, no races), so they serve sync and async tests
alike. Both are context managers that always stop their server, and both
collect what arrives:

    with WebhookReceiver() as hook:             # hook.url
        ...
        (request,) = hook.wait_for(1)           # sync tests
        async with asyncio.timeout(5):          # async tests: the loop keeps running
            (request,) = await hook.wait_for_async(1)

    with SmtpSink(tls="starttls", auth=("notify", "pw")) as smtp:
        ...  # smtp.host, smtp.port, smtp.ca_file (the trustme CA, PEM)
        (mail,) = smtp.wait_for(1)              # mail.message is an EmailMessage

`wait_for(n)` returns the first n items once there are n, and fails the test
(AssertionError) after `timeout` seconds.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

__all__ = ["SmtpDelivery", "SmtpSink", "WebhookReceiver", "WebhookRequest"]

T = TypeVar("T")

#: A notification is a few hundred bytes; anything this big is a bug.
_MAX_BODY = 1 << 20


class _Collector(Generic[T]):
    """A thread-safe list that can be waited on."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._changed = threading.Condition()

    def add(self, item: T) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def snapshot(self) -> list[T]:
        with self._changed:
            return list(self._items)

    def wait_for(self, n: int, timeout: float, what: str) -> list[T]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._items) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {n} {what} within {timeout}s, got {len(self._items)}"
                    )
                self._changed.wait(left)
            return list(self._items[:n])

    async def wait_for_async(self, n: int) -> list[T]:
        """Polls, so the caller's event loop keeps running (the sender may be on
        it) and `asyncio.timeout()` around the call bounds the wait."""
        while True:
            with self._changed:
                if len(self._items) >= n:
                    return list(self._items[:n])
            await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------
# Webhook


@dataclass(frozen=True)
class WebhookRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every request and answers
    `status` (after `delay` seconds: for timeout tests)."""

    def __init__(self, *, status: int = 204, delay: float = 0.0, path: str = "/hook") -> None:
        self.status = status
        self.delay = delay
        self.path = path
        self._requests: _Collector[WebhookRequest] = _Collector()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("WebhookReceiver is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def requests(self) -> list[WebhookRequest]:
        return self._requests.snapshot()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[WebhookRequest]:
        return self._requests.wait_for(n, timeout, "webhook requests")

    async def wait_for_async(self, n: int) -> list[WebhookRequest]:
        return await self._requests.wait_for_async(n)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY:
                    self.send_error(413)
                    return
                body = self.rfile.read(length)
                receiver._requests.add(
                    WebhookRequest(
                        method="POST",
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                    )
                )
                # Interruptible, so stop() never waits out a slow answer.
                receiver._stopping.wait(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Join the request threads on close: nothing outlives the receiver.
        server.daemon_threads = False
        server.block_on_close = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="webhook-receiver"
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# SMTP


@dataclass(frozen=True)
class SmtpDelivery:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    login: str | None  # the AUTH identity, when the client authenticated
    tls: bool  # whether the message came over TLS (STARTTLS or implicit)


class _Handler:
    def __init__(self, sink: _Collector[SmtpDelivery], require_auth: bool) -> None:
        self._sink = sink
        self._require_auth = require_auth

    async def handle_MAIL(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Our own check rather than aiosmtpd's auth_required, which counts only
        # STARTTLS as TLS and so cannot be combined with implicit TLS quietly.
        if self._require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = BytesParser(policy=email.policy.default).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        transport = server.transport
        tls = session.ssl is not None or (
            transport is not None and transport.get_extra_info("ssl_object") is not None
        )
        self._sink.add(
            SmtpDelivery(
                mail_from=str(envelope.mail_from),
                rcpt_tos=tuple(envelope.rcpt_tos),
                message=message,
                login=login,
                tls=tls,
            )
        )
        return "250 2.0.0 OK"


class _SocketController(Controller):
    """aiosmtpd's Controller on a socket we bound ourselves to port 0: the
    stock one needs a port number up front and re-connects to it to check the
    server is up."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        self._sock = sock
        super().__init__(handler, hostname="127.0.0.1", port=sock.getsockname()[1], **kwargs)

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


_Tls = Literal["none", "starttls", "implicit"]


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 that keeps every message it accepts.

    tls="starttls" offers STARTTLS and refuses mail before it; tls="implicit"
    speaks TLS from the first byte. Either uses a trustme certificate for
    127.0.0.1 and localhost, whose CA is at `ca_file`. `auth=(user, password)`
    demands AUTH (PLAIN or LOGIN, only over TLS) with exactly those credentials.
    """

    def __init__(
        self,
        *,
        tls: _Tls = "none",
        auth: tuple[str, str] | None = None,
        ca: trustme.CA | None = None,
    ) -> None:
        if auth is not None and tls == "none":
            raise ValueError("AUTH over plaintext is not offered: use tls='starttls'")
        self.host = "127.0.0.1"
        self.tls = tls
        self.auth = auth
        self.ca = ca or trustme.CA()
        self._messages: _Collector[SmtpDelivery] = _Collector()
        self._controller: _SocketController | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ca_file: str | None = None
        self.auth_failures = 0

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("SmtpSink is not running")
        return int(self._controller.port)

    @property
    def ca_file(self) -> str:
        """The PEM file of the CA that issued the sink's certificate."""
        if self._ca_file is None:
            raise RuntimeError("SmtpSink is not running")
        return self._ca_file

    @property
    def messages(self) -> list[SmtpDelivery]:
        return self._messages.snapshot()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[SmtpDelivery]:
        return self._messages.wait_for(n, timeout, "mails")

    async def wait_for_async(self, n: int) -> list[SmtpDelivery]:
        return await self._messages.wait_for_async(n)

    def _authenticator(self) -> Callable[..., AuthResult]:
        expected = self.auth

        def check(
            server: SMTPServer,
            session: Session,
            envelope: Envelope,
            mechanism: str,
            auth_data: object,
        ) -> AuthResult:
            ok = (
                expected is not None
                and isinstance(auth_data, LoginPassword)
                and auth_data.login == expected[0].encode()
                and auth_data.password == expected[1].encode()
            )
            if not ok:
                self.auth_failures += 1
            # handled=False: aiosmtpd answers 235 / 535 itself.
            return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

        return check

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="smtp-sink-")
        ca_path = Path(self._tmp.name) / "ca.pem"
        self.ca.cert_pem.write_to_path(str(ca_path))
        self._ca_file = str(ca_path)

        server_context: ssl.SSLContext | None = None
        if self.tls != "none":
            # A plain server context: CERT_NONE, no hostname check (aiosmtpd
            # logs a warning for anything else).
            server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)

        kwargs: dict[str, Any] = {
            "server_hostname": "sink.test",  # no getfqdn() lookup per connection
            "ready_timeout": 10.0,
        }
        if self.tls == "starttls":
            kwargs.update(tls_context=server_context, require_starttls=True)
        elif self.tls == "implicit":
            kwargs.update(ssl_context=server_context)
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticator()
            # aiosmtpd's auth_require_tls means "after STARTTLS": on an
            # implicit-TLS socket AUTH must be allowed without it. (Neither
            # mode can be a plaintext AUTH: see __init__.)
            kwargs["auth_require_tls"] = self.tls == "starttls"

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((self.host, 0))
            sock.listen(16)
            handler = _Handler(self._messages, require_auth=self.auth is not None)
            controller = _SocketController(handler, sock, **kwargs)
            controller.start()
        except BaseException:
            sock.close()
            self._tmp.cleanup()
            raise
        self._controller = controller

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._ca_file = None

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""The gateway: listeners, one task per client connection, the relay.

This is the only IMAP code that touches sockets. Per connection:

    accept (take a pre-auth slot of its source, or close at once) → [implicit TLS
    handshake] → greeting → loop { PreAuth.next_action(): send / read / STARTTLS
    handshake / authenticate through the chokepoint } → relay bytes both ways → close

All protocol decisions are in `imapguard.imap.preauth` (sans-IO); all login
decisions are in `imapguard.auth.chokepoint`. Listeners accept plain TCP and
start TLS themselves, so that a source's pre-auth slots are counted before the
handshake (a slow handshake holds a slot too; a connection over a limit is closed
before it costs a handshake, a turn or a task) and the handshake has a timeout.

Signals (installed by `imapguard.compose.serve`): SIGHUP reloads the configuration and
certificates for new connections without touching established ones; SIGTERM
and SIGINT stop accepting, end pre-auth connections with a BYE and give relayed
sessions `limits.drain_timeout` seconds before closing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

from imapguard.audit import AuditLog, events
from imapguard.config import ListenConfig, parse_address
from imapguard.gateway.admission import (
    PER_SOURCE,
    Admission,
    PreauthSlots,
    Refusals,
    source_key,
)
from imapguard.gateway.connection import BYE_BUSY, BYE_SHUTDOWN, Connection, Dialogue
from imapguard.gateway.proxied import UNTRUSTED_PROXY, ProxyTrust, canonical, read_header
from imapguard.gateway.proxyproto import InvalidHeader
from imapguard.gateway.revocation import RevocationReader, RevocationWatch, Wakeups
from imapguard.gateway.runtime import Runtime
from imapguard.net import cannot_listen

__all__ = ["Gateway", "Runtime"]

log = logging.getLogger("imapguard.gateway")

# Linux caps the listen queue at net.core.somaxconn (4096 on current kernels).
_BACKLOG = 4096
# Connections taken from the kernel's queue per wake-up of the accept loop.
_ACCEPT_BATCH = 256
# How often expired defense counters are purged and the posture re-evaluated.
_MAINTENANCE_INTERVAL = 60.0
# Refused connections beyond a source's first are reported as one count this often.
_REFUSALS_INTERVAL = 10.0

_BYE_TOO_MANY = b"* BYE [UNAVAILABLE] Too many connections from your address.\r\n"


class Gateway:
    def __init__(
        self,
        runtime: Runtime,
        audit: AuditLog,
        revocations: RevocationReader | None = None,
        read_executor: Executor | None = None,
        sockets: list[socket.socket] | None = None,
        wakeups: Wakeups | None = None,
    ) -> None:
        """`read_executor`: where the revocation feed is read (None: inline,
        for the embedded store; `auth.reads`). `sockets`: one listening socket
        per `[[listen]]`, bound already (a worker's, from `serve`'s parent).
        `wakeups`: when other nodes' revocations are announced (else the feed
        is polled only)."""
        self._given = sockets
        self.runtime = runtime
        self.audit = audit
        self.revocations = (
            RevocationWatch(
                revocations, self._logged_in, audit, executor=read_executor, wakeups=wakeups
            )
            if revocations
            else None
        )
        self.listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._checking: asyncio.Task[None] | None = None
        self.bound: list[tuple[ListenConfig, tuple[str, int]]] = []
        self._tg: asyncio.TaskGroup | None = None
        self._conns: set[Connection] = set()
        self._stopping = asyncio.Event()
        self._all_closed = asyncio.Event()
        limits = runtime.config.limits
        self.admission = Admission(
            ceiling=limits.handshakes,
            trusted=runtime.trusted,
            on_change=self._admission_changed,
        )
        self.slots = PreauthSlots(
            per_source=limits.max_preauth_per_source,
            total=limits.max_preauth_total,
            reserve=limits.reserve,
            familiar=self.admission.familiar,
        )
        self._refusals = Refusals()
        self._dialogue = Dialogue(self)

    # -- lifecycle ------------------------------------------------------------

    async def serve(self, ready: Callable[[Gateway], None] | None = None) -> None:
        """Listen until `stop()`; then drain. Returns when every connection is gone."""
        await self.listen()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            maintenance = tg.create_task(self._maintain())
            admission = tg.create_task(self.admission.monitor())
            refusals = tg.create_task(self._report_refusals())
            if self.revocations is not None:
                self.revocations.start_position()
                revocations = tg.create_task(self.revocations.run())
            try:
                for sock, (listener, _) in zip(self.listeners, self.bound, strict=True):
                    trust = (
                        ProxyTrust(listener.trusted_proxies) if listener.proxy_protocol else None
                    )
                    self._accepting.append(tg.create_task(self._accept(sock, listener, trust)))
                self._start_check(self.runtime)
                if ready is not None:
                    ready(self)
                await self._stopping.wait()
            finally:
                maintenance.cancel()
                admission.cancel()
                refusals.cancel()
                if self.revocations is not None:
                    revocations.cancel()
                for task in self._accepting:
                    task.cancel()
                if self._checking is not None:
                    self._checking.cancel()
                for sock in self.listeners:
                    sock.close()
                await self._drain()
                self._emit_refusals()
            self._tg = None

    async def listen(self) -> None:
        """Bind every listener (once; `serve` calls it too). One that cannot be
        bound is a ConfigError naming its `listen[i].address`, raised before any
        task starts and with no socket left open."""
        if self.listeners:
            return
        if self._given is not None:  # bound by the parent process (workers)
            for listener, sock in zip(self.runtime.config.listen, self._given, strict=True):
                self.listeners.append(sock)
                self.bound.append((listener, sock.getsockname()[:2]))
            return
        try:
            for i, listener in enumerate(self.runtime.config.listen):
                await self._listen(i, listener)
        except BaseException:
            for sock in self.listeners:
                sock.close()
            self.listeners.clear()
            self.bound.clear()
            raise
        for listener, _ in self.bound:
            log.info("listening on %s (%s TLS)", listener.address, listener.tls)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def draining(self) -> bool:
        """True once `stop()` was called: no new connection is taken."""
        return self._stopping.is_set()

    def _logged_in(self) -> list[Connection]:
        return [conn for conn in self._conns if conn.user is not None]

    async def _maintain(self) -> None:
        """Once a minute: purge expired defense counters and let the posture
        relax even when no login arrives."""
        while True:
            await asyncio.sleep(_MAINTENANCE_INTERVAL)
            try:
                await self.runtime.authenticator.maintain()
            except Exception:  # a failed round must not end the next ones
                log.exception("defense maintenance failed")

    async def _report_refusals(self) -> None:
        while True:
            await asyncio.sleep(_REFUSALS_INTERVAL)
            self._emit_refusals()

    def _emit_refusals(self) -> None:
        for src, reason, count in self._refusals.drain():
            self.audit.emit(events.Refused(src=src, reason=reason, count=count))

    def _admission_changed(self, saturated: bool, waited: int, shed: int) -> None:
        self.audit.emit(
            events.Admission(
                state="saturated" if saturated else "normal",
                limit=self.admission.limit.value,
                waited=waited,
                shed=shed,
            )
        )

    def reload(self, runtime: Runtime) -> None:
        self.runtime = runtime
        limits = runtime.config.limits
        self.admission.configure(limits.handshakes, runtime.trusted)
        self.slots.configure(
            per_source=limits.max_preauth_per_source,
            total=limits.max_preauth_total,
            reserve=limits.reserve,
        )
        self.audit.emit(events.Reload(result="ok"))
        self._start_check(runtime)

    def _start_check(self, runtime: Runtime) -> None:
        if self._checking is not None:
            self._checking.cancel()
        if self._tg is not None:
            self._checking = self._tg.create_task(self._check_upstream(runtime))

    @staticmethod
    async def _check_upstream(runtime: Runtime) -> None:
        """Log whether the upstream answers as configured: a problem found at
        start is a warning, not a refusal (the upstream may come later). A task
        of its own (cancelled by the next reload's check before it may even
        start), so nothing it raises can end the task group."""
        if runtime.upstream_check is None:
            return
        try:
            found = await runtime.upstream_check()
        except Exception:
            log.exception("upstream check failed")
            return
        if found.ok:
            log.info("%s", found.message)
        else:
            log.warning("%s: %s", found.key, found.message)

    async def _listen(self, i: int, listener: ListenConfig) -> None:
        host, port = parse_address(listener.address)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, _, _, _, address = infos[0]
            sock = socket.create_server(address[:2], family=family, backlog=_BACKLOG)
        except OSError as exc:
            raise cannot_listen(f"listen[{i}].address", listener.address, exc) from None
        sock.setblocking(False)
        self.listeners.append(sock)
        self.bound.append((listener, sock.getsockname()[:2]))

    async def _accept(
        self, sock: socket.socket, listener: ListenConfig, trust: ProxyTrust | None
    ) -> None:
        """Accept loop of one listener. Accepting the socket ourselves (rather
        than create_server) lets a connection count against its source before the
        TLS handshake, and hands the socket to the TLS layer before any byte is
        read (uvloop starts reading right after connection_made)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, peer = await loop.sock_accept(sock)
                self._accepted(client, peer, listener, trust)
                # Drain the kernel's queue while we are here: on a saturated loop one
                # accept per wake-up lets the queue overflow, and a real user's SYN is
                # then dropped and retried only after 1 s, 3 s, 7 s.
                for _ in range(_ACCEPT_BATCH):
                    try:
                        client, peer = sock.accept()
                    except BlockingIOError:
                        break
                    except ConnectionAbortedError:
                        continue  # the client gave up while queued
                    client.setblocking(False)
                    self._accepted(client, peer, listener, trust)
            except OSError as exc:
                # EMFILE and friends: back off instead of spinning.
                log.warning("accept on %s failed: %s", listener.address, exc)
                await asyncio.sleep(0.1)
                continue

    async def _drain(self) -> None:
        timeout = self.runtime.config.limits.drain_timeout
        for conn in list(self._conns):
            if conn.phase == "preauth":
                conn.link.write(BYE_SHUTDOWN)
                conn.link.close()
        if self._conns:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), timeout)
        for conn in list(self._conns):
            conn.link.write(BYE_SHUTDOWN)
            conn.link.close()
            if conn.upstream is not None:
                conn.upstream.close()
        # A TLS close waits for the peer's close_notify; do not wait for it long.
        if self._conns:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), 1.0)
        for conn in list(self._conns):
            conn.link.abort()
            if conn.upstream is not None:
                conn.upstream.abort()

    def _accepted(
        self, sock: socket.socket, peer: Any, listener: ListenConfig, trust: ProxyTrust | None
    ) -> None:
        """A new connection: a pre-auth slot of its source, or closed right here,
        with no TLS, turn, task or session (a one-line BYE in clear on a STARTTLS
        listener; nothing on an implicit one, where the client expects TLS).
        Behind a proxy (`trust`), a peer that is not a trusted proxy is closed
        before a byte, and the slot has no source until the PROXY header names
        it (imapguard.gateway.proxied)."""
        ip = str(peer[0])
        if trust is None:
            key, refused = self.slots.take(ip)
        elif trust.trusts(ip):
            key, refused = self.slots.take_unnamed()
        else:
            self._refuse_quietly(source_key(ip), listener, UNTRUSTED_PROXY)
            sock.close()
            return
        if refused is None:
            if not self.spawn(self.handle(sock, listener, peer, key)):
                self.slots.give_back(key)
                sock.close()
            return
        self._refuse(sock, listener, key, refused)

    def _refuse(self, sock: socket.socket, listener: ListenConfig, key: str, refused: str) -> None:
        """Close a connection over a pre-auth limit (see `_accepted`)."""
        if listener.tls == "starttls":
            with contextlib.suppress(OSError):
                sock.send(_BYE_TOO_MANY if refused == PER_SOURCE else BYE_BUSY)
        sock.close()
        self._refuse_quietly(key, listener, refused)

    def _refuse_quietly(self, key: str, listener: ListenConfig, reason: str) -> None:
        """Count a refused connection: the first of (source, reason) is reported
        now, the others as one count per interval."""
        if self._refusals.note(key, reason):
            self.audit.emit(
                events.Refused(src=key, listener=listener.address, reason=reason, count=1)
            )

    def spawn(self, coro: Coroutine[Any, Any, None]) -> bool:
        if self._tg is None:
            coro.close()
            return False
        self._tg.create_task(self._guard(coro))
        return True

    @staticmethod
    async def _guard(coro: Awaitable[None]) -> None:
        # One connection's bug must never cancel the others (TaskGroup semantics).
        try:
            await coro
        except Exception:
            log.exception("connection task failed")

    # -- one connection -------------------------------------------------------

    async def handle(
        self, sock: socket.socket, listener: ListenConfig, peer: Any, key: str
    ) -> None:
        """One accepted connection holding the pre-auth slot of `key`."""
        held: str | None = key
        try:
            local = via = None
            if listener.proxy_protocol:
                try:
                    header = await read_header(sock, self.runtime.config.limits.handshake_timeout)
                except BaseException:  # cancelled at shutdown: the socket is ours still
                    sock.close()
                    raise
                via = str(peer[0])
                if isinstance(header, InvalidHeader):
                    sock.close()
                    reason = f"PROXY header: {header.reason}"
                    self._refuse_quietly(source_key(via), listener, reason)
                    return
                if header.source is not None:
                    peer, local = canonical(header.source), canonical(header.destination)
                # The slot of the source the header names (no await in between).
                self.slots.give_back(key)
                held = None
                named, refused = self.slots.take(str(peer[0]))
                if refused is not None:
                    self._refuse(sock, listener, named, refused)
                    return
                held = named
            conn = await self._dialogue.preauth_phase(sock, listener, peer, local, via)
        finally:
            if held is not None:
                self.slots.give_back(held)
        # The pre-auth phase's frame (state machine, framer, TLS setup) is gone
        # now: an idle relayed session keeps only its two links.
        if conn is not None:
            await self._dialogue.relay_until_closed(conn)

    def opened(self, conn: Connection) -> None:
        self._conns.add(conn)

    def closed(self, conn: Connection, reason: str) -> None:
        if conn.phase == "closed":
            return
        conn.phase = "closed"
        self._conns.discard(conn)
        if not self._conns:
            self._all_closed.set()
        self.audit.emit(
            events.Close(
                session=conn.session,
                src=conn.src,
                user=conn.user,
                reason=reason,
                duration=round(time.monotonic() - conn.started, 3),
                bytes_in=conn.link.bytes_in,
                bytes_out=conn.link.bytes_out,
            )
        )

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

Signals (installed by `run_gateway`): SIGHUP reloads the configuration and
certificates for new connections without touching established ones; SIGTERM
and SIGINT stop accepting, end pre-auth connections with a BYE and give relayed
sessions `limits.drain_timeout` seconds before closing them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from imapguard.audit import AuditEvent, AuditLog
from imapguard.auth.chokepoint import (
    AuthContext,
    Authenticator,
    FactorSettings,
    NoticeHook,
    Outcome,
    canonical_user,
)
from imapguard.auth.oauth import TokenVerifier
from imapguard.config import (
    Config,
    ListenConfig,
    account_names,
    load_config,
    parse_address,
)
from imapguard.defense.engine import Defense
from imapguard.defense.fingerprints import Fingerprinter
from imapguard.errors import ConfigError
from imapguard.gateway.admission import (
    PER_SOURCE,
    Admission,
    AdmissionShed,
    PreauthSlots,
    Refusals,
)
from imapguard.gateway.link import Link
from imapguard.gateway.upstream import ClientAddress, UpstreamSettings
from imapguard.imap.framing import NeedData
from imapguard.imap.preauth import (
    AuthOutcome,
    AuthRequest,
    Close,
    PreAuth,
    PreAuthSettings,
    Relay,
    Send,
    StartTlsNow,
)
from imapguard.keys import APP_PASSWORD, TOTP_SEAL, derive_key, load_server_key
from imapguard.notify import Notice, NoticeKind, Notifier
from imapguard.policy.gate import load_policy
from imapguard.secret import Secret
from imapguard.state.sqlite import SqliteStore, open_reader, open_store
from imapguard.state.writebehind import WriteBehind
from imapguard.tls import certificate_account, client_context, server_context

__all__ = ["Gateway", "Runtime", "build_runtime", "run_gateway", "run_loop", "serve_forever"]

log = logging.getLogger("imapguard.gateway")

# How long a closing TLS connection waits for the peer's close_notify (asyncio's
# default is 30 s, during which a silent client keeps its buffers).
_SSL_SHUTDOWN_TIMEOUT = 5.0

# Linux caps the listen queue at net.core.somaxconn (4096 on current kernels).
_BACKLOG = 4096
# Connections taken from the kernel's queue per wake-up of the accept loop.
_ACCEPT_BATCH = 256
# How often expired defense counters are purged and the posture re-evaluated.
_MAINTENANCE_INTERVAL = 60.0
# Refused connections beyond a source's first are reported as one count this often.
_REFUSALS_INTERVAL = 10.0

_BYE_UPSTREAM_LOST = b"* BYE [UNAVAILABLE] Connection to the mail server lost.\r\n"
_BYE_SHUTDOWN = b"* BYE [UNAVAILABLE] Gateway shutting down, reconnect shortly.\r\n"
_BYE_TOO_MANY = b"* BYE [UNAVAILABLE] Too many connections from your address.\r\n"
_BYE_BUSY = b"* BYE [UNAVAILABLE] Server busy, try later.\r\n"


@dataclass
class Runtime:
    """Everything a new connection needs; replaced as a whole on SIGHUP."""

    config: Config
    server_ssl: ssl.SSLContext
    authenticator: Authenticator
    frame_limits: Any
    mechanisms: tuple[str, ...] = ("PLAIN",)
    # Addresses that never wait for a handshake turn (defense.trusted_networks).
    trusted: Callable[[str], bool] = lambda ip: False


def build_runtime(
    config: Config,
    store: SqliteStore,
    store_executor: ThreadPoolExecutor,
    audit: AuditLog,
    *,
    reader: SqliteStore | None = None,
    bookkeeping: WriteBehind | None = None,
    notifier: Notifier | None = None,
    token_verifier: TokenVerifier | None = None,
    **authenticator_overrides: Any,
) -> Runtime:
    from imapguard.imap.framing import FrameLimits

    up = config.upstream
    host, port = parse_address(up.address)
    master_password = (
        Secret.from_file(up.master_password_file)
        if up.login == "master" and up.master_password_file
        else None
    )
    upstream = UpstreamSettings(
        host=host,
        port=port,
        tls=up.tls,
        ssl_context=client_context(up.ca) if up.tls != "none" else None,
        server_name=up.server_name or host,
        master_user=up.master_user if up.login == "master" else None,
        master_password=master_password,
        forward_client_ip=up.forward_client_ip,
        connect_timeout=up.connect_timeout,
        login_timeout=up.login_timeout,
    )
    defense = config.defense
    if not defense.enforce:
        log.warning("defense.enforce = false: blocks and delays are recorded, not enforced")
    policy, warnings = load_policy(config.policy, config.groups)
    for warning in warnings:
        log.warning("%s", warning)
    server_key = load_server_key(config.state.key_file)
    key = derive_key(server_key, APP_PASSWORD)
    a = config.auth
    factors = FactorSettings(
        sufficient=tuple(a.sufficient),
        device_trust=a.device_trust_days * 86400.0,
        totp_max_failures=a.totp_max_failures,
        totp_lockout=a.totp_lockout,
        new_device_approval=a.new_device_approval,
        verified_cache_seconds=a.verified_cache_seconds,
        approved_device_trust=a.approved_device_days * 86400.0,
        names=account_names(config),
    )
    authenticator = Authenticator(
        methods=tuple(config.auth.methods),
        store=store,
        store_executor=store_executor,
        reader=reader,
        bookkeeping=bookkeeping,
        factors=factors,
        totp_key=derive_key(server_key, TOTP_SEAL),
        on_notice=_notice_hook(notifier) if notifier is not None else None,
        token_verifier=token_verifier,
        oauth_scope=config.oauth.scope if config.oauth is not None else "openid email",
        policy=policy,
        defense=Defense(
            defense,
            store,
            fingerprints=Fingerprinter(server_key, epoch_seconds=defense.fingerprint_epoch),
            reader=reader,
        ),
        app_password_key=key,
        upstream=upstream,
        audit=audit,
        failure_delay=config.auth.failure_delay,
        failure_jitter=config.auth.failure_jitter,
        **authenticator_overrides,
    )
    limits = config.limits
    return Runtime(
        config=config,
        server_ssl=server_context(
            config.tls.certificate,
            config.tls.private_key,
            config.tls.min_version,
            config.tls.client_ca,
            client_crl=config.tls.client_crl,
            client_crl_check=config.tls.client_crl_check,
        ),
        mechanisms=_mechanisms(config.auth.methods),
        trusted=authenticator.defense.in_trusted_network
        if authenticator.defense is not None
        else lambda ip: False,
        authenticator=authenticator,
        frame_limits=FrameLimits(
            max_line=limits.max_line,
            max_literal=limits.max_literal,
            max_command=max(2 * limits.max_line, limits.max_line + limits.max_literal),
        ),
    )


def _mechanisms(methods: list[str]) -> tuple[str, ...]:
    """The SASL mechanisms to offer after TLS, from auth.methods."""
    offered = ["PLAIN"] if {"app-password", "password", "password+totp"} & set(methods) else []
    offered += [m.upper() for m in ("oauthbearer", "xoauth2") if m in methods]
    if "client-cert" in methods:
        offered.append("EXTERNAL")
        if "PLAIN" not in offered:
            offered.insert(0, "PLAIN")  # password + certificate
    return tuple(offered)


def _notice_hook(notifier: Notifier) -> NoticeHook:
    def hook(kind: str, user: str, ctx: AuthContext, device: str | None) -> None:
        notice = Notice(NoticeKind(kind), user, ctx.client.ip, time.time(), ctx.client_id, device)
        if not notifier.submit(notice):
            log.warning("notification dropped (queue full): %s for %s", kind, user)

    return hook


def _notice_limit(
    store: SqliteStore, executor: ThreadPoolExecutor, interval: float
) -> Callable[[str, str, float], Awaitable[bool]]:
    """At most one notice per account and kind per interval, in the shared store."""

    async def should_send(user: str, kind: str, now: float) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, store.claim_notice, user, kind, now, interval)

    return should_send


def _session_id() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


@dataclass(eq=False)
class _Conn:
    link: Link
    session: str
    src: str
    started: float
    phase: str = "preauth"
    user: str | None = None
    upstream: Link | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Gateway:
    def __init__(self, runtime: Runtime, audit: AuditLog) -> None:
        self.runtime = runtime
        self.audit = audit
        self.listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self.bound: list[tuple[ListenConfig, tuple[str, int]]] = []
        self._tg: asyncio.TaskGroup | None = None
        self._conns: set[_Conn] = set()
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

    # -- lifecycle ------------------------------------------------------------

    async def serve(self, ready: Callable[[Gateway], None] | None = None) -> None:
        """Listen until `stop()`; then drain. Returns when every connection is gone."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            maintenance = tg.create_task(self._maintain())
            admission = tg.create_task(self.admission.monitor())
            refusals = tg.create_task(self._report_refusals())
            try:
                for listener in self.runtime.config.listen:
                    await self._listen(listener)
                if ready is not None:
                    ready(self)
                await self._stopping.wait()
            finally:
                maintenance.cancel()
                admission.cancel()
                refusals.cancel()
                for task in self._accepting:
                    task.cancel()
                for sock in self.listeners:
                    sock.close()
                await self._drain()
                self._emit_refusals()
            self._tg = None

    def stop(self) -> None:
        self._stopping.set()

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
            fields = {"src": src, "reason": reason, "count": count}
            self.audit.emit(AuditEvent("refused", None, fields))

    def _admission_changed(self, saturated: bool, waited: int, shed: int) -> None:
        self.audit.emit(
            AuditEvent(
                "admission",
                None,
                {
                    "state": "saturated" if saturated else "normal",
                    "limit": self.admission.limit.value,
                    "waited": waited,
                    "shed": shed,
                },
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
        self.audit.emit(AuditEvent("reload", None, {"result": "ok"}))

    async def _listen(self, listener: ListenConfig) -> None:
        host, port = parse_address(listener.address)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.create_server(address[:2], family=family, backlog=_BACKLOG)
        sock.setblocking(False)
        self.listeners.append(sock)
        self.bound.append((listener, sock.getsockname()[:2]))
        if self._tg is not None:
            self._accepting.append(self._tg.create_task(self._accept(sock, listener)))

    async def _accept(self, sock: socket.socket, listener: ListenConfig) -> None:
        """Accept loop of one listener. Accepting the socket ourselves (rather
        than create_server) lets a connection count against its source before the
        TLS handshake, and hands the socket to the TLS layer before any byte is
        read (uvloop starts reading right after connection_made)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, peer = await loop.sock_accept(sock)
                self._accepted(client, peer, listener)
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
                    self._accepted(client, peer, listener)
            except OSError as exc:
                # EMFILE and friends: back off instead of spinning.
                log.warning("accept on %s failed: %s", listener.address, exc)
                await asyncio.sleep(0.1)
                continue

    async def _drain(self) -> None:
        timeout = self.runtime.config.limits.drain_timeout
        for conn in list(self._conns):
            if conn.phase == "preauth":
                conn.link.write(_BYE_SHUTDOWN)
                conn.link.close()
        if self._conns:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), timeout)
        for conn in list(self._conns):
            conn.link.write(_BYE_SHUTDOWN)
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

    def _accepted(self, sock: socket.socket, peer: Any, listener: ListenConfig) -> None:
        """A new connection: a pre-auth slot of its source, or closed right here,
        with no TLS, turn, task or session (a one-line BYE in clear on a STARTTLS
        listener; nothing on an implicit one, where the client expects TLS)."""
        ip = str(peer[0])
        key, refused = self.slots.take(ip)
        if refused is None:
            if not self.spawn(self.handle(sock, listener, peer, key)):
                self.slots.give_back(key)
                sock.close()
            return
        if listener.tls == "starttls":
            with contextlib.suppress(OSError):
                sock.send(_BYE_TOO_MANY if refused == PER_SOURCE else _BYE_BUSY)
        sock.close()
        if self._refusals.note(key, refused):
            self.audit.emit(
                AuditEvent(
                    "refused",
                    None,
                    {"src": key, "listener": listener.address, "reason": refused, "count": 1},
                )
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
        try:
            conn = await self._preauth_phase(sock, listener, peer)
        finally:
            self.slots.give_back(key)
        # The pre-auth phase's frame (state machine, framer, TLS setup) is gone
        # now: an idle relayed session keeps only its two links.
        if conn is not None:
            await self._relay_until_closed(conn)

    async def _preauth_phase(
        self, sock: socket.socket, listener: ListenConfig, peer: Any
    ) -> _Conn | None:
        """Accept → TLS → pre-auth dialogue; the connection if it goes on to relay."""
        rt = self.runtime
        limits = rt.config.limits
        loop = asyncio.get_running_loop()
        try:
            local = sock.getsockname()
        except OSError:
            sock.close()
            return None
        session = _session_id()
        client = ClientAddress(str(peer[0]), int(peer[1]), str(local[0]), int(local[1]), session)
        self.audit.emit(
            AuditEvent(
                "connect",
                session,
                {
                    "src": client.ip,
                    "src_port": client.port,
                    "listener": listener.address,
                    "tls_mode": listener.tls,
                },
            )
        )
        conn: _Conn | None = None
        reason = "client closed"
        try:
            implicit = listener.tls == "implicit"
            link = Link()
            try:
                async with self._turn(client.ip, implicit, limits.handshake_timeout):
                    # uvloop returns its own SSL protocol here, not ours: keep `link`.
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: link,
                        sock,
                        ssl=rt.server_ssl if implicit else None,
                        ssl_handshake_timeout=limits.handshake_timeout if implicit else None,
                        ssl_shutdown_timeout=_SSL_SHUTDOWN_TIMEOUT if implicit else None,
                    )
            except AdmissionShed:
                reason = "handshake not admitted: gateway saturated"
                self.audit.emit(AuditEvent("close", session, {"src": client.ip, "reason": reason}))
                sock.close()
                return None
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                self.audit.emit(
                    AuditEvent(
                        "tls_failed",
                        session,
                        {"src": client.ip, "tls_mode": "implicit", "reason": type(exc).__name__},
                    )
                )
                self.audit.emit(
                    AuditEvent(
                        "close", session, {"src": client.ip, "reason": "tls handshake failed"}
                    )
                )
                sock.close()
                return None
            conn = _Conn(link, session, client.ip, time.monotonic())
            self._conns.add(conn)
            if implicit and not self._tls_up(conn, transport, "implicit"):
                reason = "tls handshake failed"
                return None
            machine = PreAuth(
                PreAuthSettings(
                    tls=implicit,
                    starttls=listener.tls == "starttls",
                    mechanisms=rt.mechanisms,
                    frame_limits=rt.frame_limits,
                    max_commands=limits.max_preauth_commands,
                    max_bad_commands=limits.max_bad_commands,
                    max_auth_failures=limits.max_auth_failures,
                )
            )
            link.write(machine.greeting())
            try:
                async with asyncio.timeout(limits.preauth_timeout):
                    reason = await self._preauth_loop(conn, machine, client, listener, rt)
            except TimeoutError:
                machine.timed_out()
                reason = "pre-auth timeout"
                while isinstance(action := machine.next_action(), Send):
                    link.write(action.data)
        finally:
            if conn is not None and conn.phase == "preauth":
                conn.link.close()
                self._closed(conn, reason)
        if conn is not None and conn.phase == "relay":
            return conn
        return None

    def _turn(
        self, ip: str, tls: bool, timeout: float
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """A handshake turn (imapguard.gateway.admission); nothing to wait for without TLS."""
        return self.admission.turn(ip, timeout) if tls else contextlib.nullcontext()

    async def _starttls(self, conn: _Conn, machine: PreAuth, ok: bytes, rt: Runtime) -> bool:
        """STARTTLS: wait for a handshake turn, then write the tagged OK and put
        TLS on the transport with no await in between.

        The client must wait for the OK before it sends its ClientHello, so every
        byte that arrives before the OK was injected (CVE-2011-0411 class): the
        link discards and counts it, whatever the wait, and one
        `starttls_injection` event reports all of them (also those the framer
        held after the STARTTLS line). `loop.start_tls` (asyncio and uvloop alike)
        sets its TLS protocol on the transport before its first await, so no byte
        read after the OK reaches the link in clear."""
        link = conn.link
        plain = link.transport
        assert plain is not None  # noqa: S101 - a STARTTLS listener's transport
        timeout = rt.config.limits.handshake_timeout
        link.discard_input()
        reported = False

        def report_discarded() -> None:
            nonlocal reported
            if reported:
                return
            reported = True
            machine.discarded_after_starttls += link.keep_input()
            if machine.discarded_after_starttls:
                self.audit.emit(
                    AuditEvent(
                        "starttls_injection",
                        conn.session,
                        {"src": conn.src, "discarded_bytes": machine.discarded_after_starttls},
                    )
                )

        try:
            async with self._turn(conn.src, True, timeout):
                if link.closed or plain.is_closing():
                    report_discarded()
                    return self._tls_up(conn, None, "starttls")
                # No await from here until the TLS protocol is on the transport.
                report_discarded()
                link.write(ok)
                transport = await asyncio.get_running_loop().start_tls(
                    plain,
                    link,
                    rt.server_ssl,
                    server_side=True,
                    ssl_handshake_timeout=timeout,
                    ssl_shutdown_timeout=_SSL_SHUTDOWN_TIMEOUT,
                )
        except AdmissionShed:
            report_discarded()
            self.audit.emit(
                AuditEvent(
                    "tls_failed",
                    conn.session,
                    {"src": conn.src, "tls_mode": "starttls", "reason": "not admitted"},
                )
            )
            link.write(_BYE_BUSY)
            link.close()
            return False
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.audit.emit(
                AuditEvent(
                    "tls_failed",
                    conn.session,
                    {"src": conn.src, "tls_mode": "starttls", "reason": type(exc).__name__},
                )
            )
            link.abort()
            return False
        finally:
            report_discarded()  # also when the pre-auth timeout ends the wait
        return self._tls_up(conn, transport, "starttls")

    def _tls_up(self, conn: _Conn, transport: asyncio.BaseTransport | None, mode: str) -> bool:
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        if transport is None or sslobj is None or transport.is_closing():
            self.audit.emit(
                AuditEvent(
                    "tls_failed",
                    conn.session,
                    {"src": conn.src, "tls_mode": mode, "reason": "closed during handshake"},
                )
            )
            conn.link.abort()
            return False
        conn.link.transport = cast(asyncio.Transport, transport)
        cipher = sslobj.cipher()
        conn.extra["tls"] = {"version": sslobj.version(), "cipher": cipher[0] if cipher else None}
        peercert = sslobj.getpeercert()
        if peercert:
            # Only a certificate that verified against tls.client_ca gets here.
            account = certificate_account(peercert, self.runtime.config.tls.client_cert_user)
            user = canonical_user(account.encode()) if account is not None else None
            conn.extra["cert_user"] = user
            conn.extra["tls"]["client_cert"] = user or "(names no account)"
        self.audit.emit(
            AuditEvent(
                "tls", conn.session, {"src": conn.src, "tls_mode": mode, **conn.extra["tls"]}
            )
        )
        return True

    async def _preauth_loop(
        self,
        conn: _Conn,
        machine: PreAuth,
        client: ClientAddress,
        listener: ListenConfig,
        rt: Runtime,
    ) -> str:
        link = conn.link
        while True:
            action = machine.next_action()
            if isinstance(action, NeedData):
                data = await link.read()
                if not data:
                    return "client closed"
                machine.receive_data(data)
            elif isinstance(action, Send):
                link.write(action.data)
            elif isinstance(action, StartTlsNow):
                if not await self._starttls(conn, machine, action.response, rt):
                    return "tls handshake failed"
                machine.tls_established()
            elif isinstance(action, AuthRequest):
                label, name, version = _client_identity(machine.client_id)
                ctx = AuthContext(
                    client,
                    label,
                    listener.address,
                    name,
                    version,
                    conn.extra.get("cert_user"),
                )
                result = await rt.authenticator.authenticate(action.credentials, ctx, conn.session)
                if result.outcome is Outcome.OK and result.session is not None:
                    self.admission.note_success(client.ip)
                    conn.user = result.user
                    conn.upstream = result.session.link
                    conn.extra["leftover"] = result.session.leftover
                    machine.auth_finished(AuthOutcome.OK, result.session.capabilities)
                elif result.outcome is Outcome.UNAVAILABLE:
                    machine.auth_finished(AuthOutcome.UNAVAILABLE)
                else:
                    machine.auth_finished(
                        AuthOutcome.FAILED, challenge=result.challenge, alert=result.alert
                    )
            elif isinstance(action, Relay):
                upstream = conn.upstream
                assert upstream is not None  # noqa: S101 - set with AuthOutcome.OK
                trailing = action.trailing + link.take_buffer()
                if trailing:
                    upstream.write(trailing)
                leftover = conn.extra.pop("leftover", b"")
                if leftover:
                    link.write(leftover)
                upstream.bye_on_loss = _BYE_UPSTREAM_LOST
                link.join(upstream)
                upstream.join(link)
                conn.phase = "relay"
                self.audit.emit(
                    AuditEvent("relay", conn.session, {"src": conn.src, "user": conn.user})
                )
                return "relay"
            elif isinstance(action, Close):
                return action.reason

    async def _relay_until_closed(self, conn: _Conn) -> None:
        upstream = conn.upstream
        assert upstream is not None  # noqa: S101
        try:
            await conn.link.wait_closed()
            upstream.close()
            await upstream.wait_closed()
        finally:
            self._closed(conn, "relay ended")

    def _closed(self, conn: _Conn, reason: str) -> None:
        if conn.phase == "closed":
            return
        conn.phase = "closed"
        self._conns.discard(conn)
        if not self._conns:
            self._all_closed.set()
        self.audit.emit(
            AuditEvent(
                "close",
                conn.session,
                {
                    "src": conn.src,
                    "user": conn.user,
                    "reason": reason,
                    "duration": round(time.monotonic() - conn.started, 3),
                    "bytes_in": conn.link.bytes_in,
                    "bytes_out": conn.link.bytes_out,
                },
            )
        )


def _client_identity(
    params: tuple[tuple[str, str | None], ...] | None,
) -> tuple[str | None, str, str]:
    """From the client's IMAP ID: its label for the audit log ("name/version"),
    and its name and version bounded to 64 characters (they identify a device,
    and they are the client's text)."""
    fields = {k.lower(): v for k, v in params or () if v}
    name, version = fields.get("name"), fields.get("version")
    label = f"{name}/{version}" if name and version else name
    return label, (name or "")[:64], (version or "")[:64]


def run_gateway(config_path: str, *, ready: Callable[[Gateway], None] | None = None) -> None:
    """`imapguard serve`: run until SIGTERM/SIGINT, reloading on SIGHUP."""
    config = load_config(config_path)
    run_loop(serve_forever(config, config_path, ready))


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop: about 24 KiB per idle TLS connection instead of the
    default loop's 278 KiB, and 1.6 times the handshakes per core
    (research/performance.md §1.2, §2)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-Linux
        runner = asyncio.Runner()
    else:
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        runner.run(main)


async def serve_forever(
    config: Config, config_path: str | None, ready: Callable[[Gateway], None] | None
) -> None:
    store = open_store(config.state.url)
    reader = open_reader(config.state.url)
    audit = AuditLog(config.audit.path)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imapguard-state")
    bookkeeping = WriteBehind(store, executor)
    notifier: Notifier | None = None
    if config.notify is not None:
        # [notify] is read at start; changing it needs a restart.
        notifier = Notifier(
            config.notify,
            should_send=_notice_limit(store, executor, config.notify.min_interval),
        )
        await notifier.__aenter__()
    tokens: TokenVerifier | None = None
    if config.oauth is not None:
        # [oauth] is read at start; changing it needs a restart.
        tokens = TokenVerifier(config.oauth)
    shared: dict[str, Any] = {
        "reader": reader,
        "bookkeeping": bookkeeping,
        "notifier": notifier,
        "token_verifier": tokens,
    }
    try:
        gateway = Gateway(build_runtime(config, store, executor, audit, **shared), audit)
        loop = asyncio.get_running_loop()

        def reload() -> None:
            if config_path is None:
                return
            try:
                new = load_config(config_path)
                gateway.reload(build_runtime(new, store, executor, audit, **shared))
                log.info("configuration reloaded")
            except (ConfigError, OSError, ssl.SSLError, ValueError) as exc:
                log.error("reload failed, keeping the running configuration: %s", exc)
                audit.emit(AuditEvent("reload", None, {"result": "failed", "reason": str(exc)}))

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, gateway.stop)
        loop.add_signal_handler(signal.SIGINT, gateway.stop)
        audit.emit(AuditEvent("start", None, {"pid": os.getpid()}))
        await gateway.serve(ready)
        audit.emit(AuditEvent("stop", None, {"pid": os.getpid()}))
    finally:
        if tokens is not None:
            with contextlib.suppress(Exception):
                await tokens.aclose()
        if notifier is not None:
            with contextlib.suppress(Exception):
                await notifier.aclose()
        with contextlib.suppress(Exception):
            await bookkeeping.aclose()
        with contextlib.suppress(Exception):
            executor.shutdown(wait=True)
        reader.close()
        store.close()
        audit.close()

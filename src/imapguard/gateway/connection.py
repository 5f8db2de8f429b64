"""One client connection, from accept to relay: the pre-auth dialogue.

    [implicit TLS handshake, after a handshake turn] → greeting → loop {
    PreAuth.next_action(): send / read / STARTTLS (a turn, then the OK and the
    handshake with no await between) / authenticate through the auth service }
    → relay bytes both ways → close

All protocol decisions are in `imapguard.imap.preauth` (sans-IO) and all login
decisions in the auth service (`imapguard.auth`); this module moves bytes
between them and the sockets, and records each step in the audit log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from imapguard.audit import AuditLog, events
from imapguard.auth.model import AuthContext, ClientAddress, Outcome
from imapguard.config import ListenConfig
from imapguard.gateway.admission import Admission, AdmissionShed
from imapguard.gateway.link import Link
from imapguard.gateway.runtime import Runtime
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
from imapguard.names import canonical_user
from imapguard.tls import certificate_account

__all__ = ["BYE_BUSY", "BYE_SHUTDOWN", "Connection", "Dialogue", "Host"]

# How long a closing TLS connection waits for the peer's close_notify (asyncio's
# default is 30 s, during which a silent client keeps its buffers).
SSL_SHUTDOWN_TIMEOUT = 5.0

BYE_UPSTREAM_LOST = b"* BYE [UNAVAILABLE] Connection to the mail server lost.\r\n"
BYE_SHUTDOWN = b"* BYE [UNAVAILABLE] Gateway shutting down, reconnect shortly.\r\n"
BYE_BUSY = b"* BYE [UNAVAILABLE] Server busy, try later.\r\n"


def _session_id() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


@dataclass(eq=False)
class Connection:
    """One client connection's state (the gateway keeps the live ones)."""

    link: Link
    session: str
    src: str
    started: float
    phase: str = "preauth"
    user: str | None = None
    upstream: Link | None = None
    # What it logged in with, as a revocation names it (gateway.revocation).
    credential: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def end(self, bye: bytes) -> None:
        """Tell the client `bye` and close both sides (a revocation)."""
        self.link.write(bye)
        self.link.close()
        if self.upstream is not None:
            self.upstream.bye_on_loss = None  # the client has its BYE already
            self.upstream.close()


class Host(Protocol):
    """What a connection needs of its gateway."""

    runtime: Runtime
    audit: AuditLog
    admission: Admission

    def opened(self, conn: Connection) -> None:
        """A connection whose transport is up: it is drained at shutdown."""

    def closed(self, conn: Connection, reason: str) -> None:
        """A connection ended (recorded once, whatever calls it)."""


class Dialogue:
    """Runs connections for one gateway (`host`)."""

    def __init__(self, host: Host) -> None:
        self.host = host

    async def preauth_phase(
        self,
        sock: socket.socket,
        listener: ListenConfig,
        peer: Any,
        local: Any = None,
        via: str | None = None,
    ) -> Connection | None:
        """Accept → TLS → pre-auth dialogue; the connection if it goes on to relay.

        Behind a proxy, `peer` and `local` are the client's address and the one it
        connected to, from the PROXY header, and `via` is the proxy's address."""
        rt = self.host.runtime
        limits = rt.config.limits
        loop = asyncio.get_running_loop()
        try:
            local = local or sock.getsockname()
        except OSError:
            sock.close()
            return None
        session = _session_id()
        client = ClientAddress(str(peer[0]), int(peer[1]), str(local[0]), int(local[1]), session)
        self.host.audit.emit(
            events.Connect(
                session=session,
                src=client.ip,
                src_port=client.port,
                listener=listener.address,
                tls_mode=listener.tls,
                proxy=via,
            )
        )
        conn: Connection | None = None
        reason = "client closed"
        try:
            implicit = listener.tls == "implicit"
            link = Link()
            try:
                async with self._turn(client.ip, implicit, limits.handshake_timeout):
                    started = loop.time()  # admitted: the handshake itself from here
                    # uvloop returns its own SSL protocol here, not ours: keep `link`.
                    transport, tls_protocol = await loop.connect_accepted_socket(
                        lambda: link,
                        sock,
                        ssl=rt.server_ssl if implicit else None,
                        ssl_handshake_timeout=limits.handshake_timeout if implicit else None,
                        ssl_shutdown_timeout=SSL_SHUTDOWN_TIMEOUT if implicit else None,
                    )
            except AdmissionShed:
                reason = "handshake not admitted: gateway saturated"
                self.host.audit.emit(events.Close(session=session, src=client.ip, reason=reason))
                sock.close()
                return None
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                self._tls_failed(session, client.ip, "implicit", type(exc).__name__)
                self.host.audit.emit(
                    events.Close(session=session, src=client.ip, reason="tls handshake failed")
                )
                sock.close()
                return None
            conn = Connection(link, session, client.ip, time.monotonic())
            if implicit:
                link.tls_protocol = tls_protocol
            self.host.opened(conn)
            if implicit and not self._tls_up(conn, transport, "implicit", started):
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
                self.host.closed(conn, reason)
        if conn is not None and conn.phase == "relay":
            return conn
        return None

    def _turn(
        self, ip: str, tls: bool, timeout: float
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """A handshake turn (imapguard.gateway.admission); nothing to wait for without TLS."""
        return self.host.admission.turn(ip, timeout) if tls else contextlib.nullcontext()

    async def _starttls(self, conn: Connection, machine: PreAuth, ok: bytes, rt: Runtime) -> bool:
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
                self.host.audit.emit(
                    events.StartTlsInjection(
                        session=conn.session,
                        src=conn.src,
                        discarded_bytes=machine.discarded_after_starttls,
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
                started = asyncio.get_running_loop().time()
                transport = await asyncio.get_running_loop().start_tls(
                    plain,
                    link,
                    rt.server_ssl,
                    server_side=True,
                    ssl_handshake_timeout=timeout,
                    ssl_shutdown_timeout=SSL_SHUTDOWN_TIMEOUT,
                )
                link.tls_protocol = plain.get_protocol()  # the SSL protocol now
        except AdmissionShed:
            report_discarded()
            self._tls_failed(conn.session, conn.src, "starttls", "not admitted")
            link.write(BYE_BUSY)
            link.close()
            return False
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self._tls_failed(conn.session, conn.src, "starttls", type(exc).__name__)
            link.abort()
            return False
        finally:
            report_discarded()  # also when the pre-auth timeout ends the wait
        return self._tls_up(conn, transport, "starttls", started)

    def _tls_up(
        self,
        conn: Connection,
        transport: asyncio.BaseTransport | None,
        mode: str,
        started: float | None = None,
    ) -> bool:
        """Record a finished handshake (`started`: when it began, loop time)."""
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        if transport is None or sslobj is None or transport.is_closing():
            self._tls_failed(conn.session, conn.src, mode, "closed during handshake")
            conn.link.abort()
            return False
        conn.link.transport = cast(asyncio.Transport, transport)
        cipher = sslobj.cipher()
        conn.extra["tls"] = {"version": sslobj.version(), "cipher": cipher[0] if cipher else None}
        peercert = sslobj.getpeercert()
        if peercert:
            # Only a certificate that verified against tls.client_ca gets here.
            account = certificate_account(peercert, self.host.runtime.config.tls.client_cert_user)
            user = canonical_user(account.encode()) if account is not None else None
            conn.extra["cert_user"] = user
            conn.extra["tls"]["client_cert"] = user or "(names no account)"
        took = None if started is None else round(asyncio.get_running_loop().time() - started, 4)
        self.host.audit.emit(
            events.Tls(
                session=conn.session,
                src=conn.src,
                tls_mode=mode,
                handshake=took,
                **conn.extra["tls"],
            )
        )
        return True

    def _tls_failed(self, session: str, src: str, mode: str, reason: str) -> None:
        self.host.audit.emit(
            events.TlsFailed(session=session, src=src, tls_mode=mode, reason=reason)
        )

    async def _preauth_loop(
        self,
        conn: Connection,
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
                    self.host.admission.note_success(client.ip)
                    conn.user = result.user
                    conn.credential = result.credential
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
                upstream.bye_on_loss = BYE_UPSTREAM_LOST
                link.join(upstream)
                upstream.join(link)
                conn.phase = "relay"
                self.host.audit.emit(
                    events.Relay(session=conn.session, src=conn.src, user=conn.user)
                )
                return "relay"
            elif isinstance(action, Close):
                return action.reason

    async def relay_until_closed(self, conn: Connection) -> None:
        upstream = conn.upstream
        assert upstream is not None  # noqa: S101
        try:
            await conn.link.wait_closed()
            upstream.close()
            await upstream.wait_closed()
        finally:
            self.host.closed(conn, "relay ended")


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

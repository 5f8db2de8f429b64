"""What speaks on a port, learnt from what answers, never from the port number.

A cleartext greeting (`* OK`, `+OK`, `220`, ManageSieve's `"IMPLEMENTATION"`)
names the protocol; when nothing arrives within `limits.GREETING_WAIT` seconds
(or the bytes are none of these), a TLS handshake and the greeting inside it
(implicit TLS). A greeting that turns us away marks the address throttled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from imapguard.scanner import dialogs as d
from imapguard.scanner.mail import limits
from imapguard.scanner.mail.connection import (
    NETWORK_ERRORS,
    PASSING,
    Closed,
    Conn,
    ConnectTimeout,
    open_connection,
    sni_name,
)
from imapguard.scanner.model import Protocol, TlsMode
from imapguard.scanner.net import Network, Throttled


@dataclasses.dataclass(frozen=True, slots=True)
class Recognised:
    """What answered on a port."""

    protocol: Protocol
    tls_mode: TlsMode
    banner: str  # the first greeting line, CRLF stripped (printable)
    throttled: str | None = None  # why the server turned us away (421, BYE, -ERR), or None


async def recognise(
    net: Network, address: str, port: int, *, server_name: str | None
) -> Recognised | None:
    """What speaks on address:port, or None (closed, refused, silent, reset).

    One connection waits `limits.GREETING_WAIT` seconds for a cleartext greeting; if none
    comes, the same connection tries a TLS handshake and reads the greeting inside
    (implicit TLS). A port that sent bytes we do not know gets a TLS try on a fresh
    connection; one that stayed silent and refused TLS gets one more, patient,
    cleartext try (a slow greeter). A try cut short for a passing reason (a timeout
    or a reset half way) is made again, as a step of the audit is (`limits.ATTEMPTS`)."""
    for run in range(1, limits.ATTEMPTS + 1):
        try:
            return await _recognise_once(net, address, port, server_name)
        except ConnectTimeout:
            break  # filtered, or no host: the usual case in a network range
        except PASSING:
            if run < limits.ATTEMPTS:
                await asyncio.sleep(net.settings.backoff)
        except NETWORK_ERRORS:
            break
    return None


async def _recognise_once(
    net: Network, address: str, port: int, server_name: str | None
) -> Recognised | None:
    sni = sni_name(server_name, address)
    try:
        async with open_connection(net, address, port) as conn:
            raw, line = await _first_line(conn, limits.GREETING_WAIT)
            if line is not None:
                found = await _identify(conn, raw, line, TlsMode.CLEARTEXT, net, address)
                if found is not None:
                    return found
                unknown = d.printable(line)
            elif raw:
                unknown = d.printable(raw)
            else:
                unknown = None
                if await conn.try_starttls(sni) is None:
                    return await _inside_tls(conn, net, address)
        if unknown is not None:
            tls = await _try_tls(net, address, port, sni)
            return tls or Recognised(Protocol.UNKNOWN, TlsMode.CLEARTEXT, unknown)
        return await _slow_greeter(net, address, port)
    except Throttled as exc:
        return Recognised(Protocol.UNKNOWN, TlsMode.CLEARTEXT, "", throttled=exc.reason)
    except ConnectionRefusedError:
        return None  # closed: nothing to try again


async def _first_line(conn: Conn, wait: float) -> tuple[bytes, bytes | None]:
    """(all bytes read, the first complete line or None). Silence for `wait`
    seconds gives up; once bytes flow, the line gets the full timeout."""
    parser = d.LineParser()
    line, raw = await conn.quiet(parser, wait)
    data = bytearray(raw)
    if line is None and raw and parser.buffered:
        with contextlib.suppress(TimeoutError, Closed, d.DialogError):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + conn.timeout
            while (line := parser.next()) is None and loop.time() < deadline:
                chunk = await conn._read(deadline - loop.time())
                if not chunk:
                    break
                data += chunk
                parser.feed(chunk)
    return bytes(data), line


async def _identify(
    conn: Conn, raw: bytes, line: bytes, mode: TlsMode, net: Network, address: str
) -> Recognised | None:
    """Read the whole greeting of the protocol `line` starts and name it."""
    protocol = d.sniff_greeting(line)
    banner = d.printable(line)
    if protocol is None:
        return None
    if protocol is Protocol.IMAP:
        imap = d.ImapParser()
        imap.feed(raw)
        greeting = await conn.receive(imap)
        throttled = greeting.shown() if greeting.status == "BYE" else None
        if throttled:
            net.mark_throttled(address, throttled)
        return Recognised(Protocol.IMAP, mode, banner, throttled)
    if protocol is Protocol.POP3:
        throttled = banner if line[:1] == b"-" else None
        if throttled:
            net.mark_throttled(address, throttled)
        return Recognised(Protocol.POP3, mode, banner, throttled)
    if protocol is Protocol.SMTP:
        smtp = d.SmtpParser()
        smtp.feed(raw)
        reply = await conn.receive(smtp)
        throttled = None if reply.code == 220 else reply.shown()
        if reply.code == 421:
            net.mark_throttled(address, reply.shown())
        return Recognised(Protocol.SMTP, mode, banner, throttled)
    # ManageSieve: capability lines up to OK; the IMPLEMENTATION names the server.
    lines = d.LineParser()
    lines.feed(raw)
    deadline = conn.deadline()
    for _ in range(limits.MAX_RESPONSES):
        sieve = await conn.receive_by(lines, deadline)
        pair = d.parse_sieve_line(sieve)
        if pair is not None and pair[0] == "IMPLEMENTATION":
            banner = d.printable(sieve)
        if pair is None:
            break
    return Recognised(Protocol.SIEVE, mode, banner)


async def _inside_tls(conn: Conn, net: Network, address: str) -> Recognised:
    """After a handshake: the greeting inside TLS names the protocol."""
    try:
        raw, line = await _first_line(conn, conn.timeout)
    except NETWORK_ERRORS:
        return Recognised(Protocol.UNKNOWN, TlsMode.IMPLICIT, "")
    if line is None:
        return Recognised(Protocol.UNKNOWN, TlsMode.IMPLICIT, d.printable(raw))
    found = await _identify(conn, raw, line, TlsMode.IMPLICIT, net, address)
    return found or Recognised(Protocol.UNKNOWN, TlsMode.IMPLICIT, d.printable(line))


async def _try_tls(net: Network, address: str, port: int, sni: str | None) -> Recognised | None:
    async with open_connection(net, address, port) as conn:
        if await conn.try_starttls(sni) is not None:
            return None
        return await _inside_tls(conn, net, address)


async def _slow_greeter(net: Network, address: str, port: int) -> Recognised | None:
    async with open_connection(net, address, port) as conn:
        raw, line = await _first_line(conn, conn.timeout)
        if line is None:
            return None
        found = await _identify(conn, raw, line, TlsMode.CLEARTEXT, net, address)
        return found or Recognised(Protocol.UNKNOWN, TlsMode.CLEARTEXT, d.printable(line))

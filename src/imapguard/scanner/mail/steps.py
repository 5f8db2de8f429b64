"""What the dialogs of IMAP, POP3 and SMTP share: the shape of a protocol's
steps (`Dialogs`), the wait for the answer to the dummy credential, one NTLM
exchange cancelled at once, and the judging of a STARTTLS injection attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from imapguard.scanner import dialogs as d
from imapguard.scanner.mail import limits
from imapguard.scanner.mail.audit import Audit
from imapguard.scanner.mail.connection import (
    NETWORK_ERRORS,
    AuthDelayed,
    Conn,
    Source,
)
from imapguard.scanner.mail.sessions import (
    ImapSession,
    MailResponse,
    Pop3Session,
    ResponseT,
    client_said,
    server_said,
)
from imapguard.scanner.model import Protocol


async def mailbox_without_tls(
    audit: Audit,
    protocol: Protocol,
    session: ImapSession | Pop3Session,
    handshake_error: str | None,
) -> None:
    """IMAP or POP3 whose STARTTLS did not work: what was seen in clear decides
    AUTH-06 and BAN-02, what needs TLS is decided by `after_starttls_unavailable`."""
    audit.after_starttls_unavailable(protocol)
    audit.judge_anonymous()
    audit.ok("BAN-02")
    if handshake_error is None:  # refused in clear: the session still speaks
        await session.bye()


@contextlib.asynccontextmanager
async def credential_answer(conn: Conn) -> AsyncIterator[None]:
    """Around the wait for the answer to the dummy credential: a timeout there is
    `AuthDelayed` (its reason says how to rerun)."""
    try:
        yield
    except AuthDelayed:
        raise
    except TimeoutError as exc:
        raise AuthDelayed(max(conn.timeout, limits.AUTH_WAIT)) from exc


CANCEL = d.smtp_command("*")  # "*" cancels a SASL exchange in all three protocols


async def ntlm_exchange(
    command: d.Command,
    ask: Callable[[d.Command], Awaitable[ResponseT]],
    challenge: Callable[[ResponseT], str | None],
    cancel: Callable[[], Awaitable[object]],
    bye: Callable[[], Awaitable[None]],
) -> tuple[str | None, list[str]]:
    """(base64 challenge or None, evidence) of one NTLM exchange, cancelled at once:
    `command` starts it, a NEGOTIATE_MESSAGE naming nothing of ours follows.
    `ask` sends a line and reads the answer; `challenge` is the base64 text of a
    continuation, None for any other answer."""
    first = await ask(command)
    if challenge(first) is None:
        return None, [client_said(command), server_said(first)]
    negotiate = d.sasl_line(d.ntlm_negotiate(), "NTLM NEGOTIATE_MESSAGE (base64)")
    second = await ask(negotiate)
    evidence = [
        client_said(command),
        server_said(first),
        client_said(negotiate),
        server_said(second),
    ]
    blob = challenge(second)
    if blob is None:
        return None, evidence
    with contextlib.suppress(*NETWORK_ERRORS):  # the challenge is in: it decides
        await cancel()
    await bye()
    return blob, evidence


def _heard(raw: bytes, response: MailResponse | None) -> str:
    return server_said(response) if response is not None else f"S: {d.printable(raw)}"


async def after_injection(
    audit: Audit,
    conn: Conn,
    parser: Source[MailResponse],
    head: Sequence[str],
    verb: str,
    *,
    inside: bool,
    restart: Callable[[], None],
    probe: Callable[[], Awaitable[list[str] | None]],
) -> list[str] | None:
    """The part of one injection attempt common to the three protocols, once the
    server accepted a STARTTLS (`verb`) written together with an injected command:
    the evidence if the server answered that command, None if it did not. `head`
    shows what we sent and the STARTTLS reply; `parser` is the cleartext one.

    Cleartext variant: any response or byte within `limits.QUIET_WAIT` convicts. TLS
    variant: the handshake (a failure passes: the server read our bytes as TLS),
    `restart`, then `probe`, which returns its evidence when the injected command
    was answered inside TLS. In both, bytes already received after the STARTTLS
    reply convict."""
    leftover = parser.buffered
    if not inside:
        extra, raw = await conn.quiet(parser, limits.QUIET_WAIT)
        if extra is not None or raw:
            return [*head, _heard(raw, extra), f"answered in cleartext after {verb}"]
    else:
        if await conn.try_starttls(audit.sni) is not None:
            return None
        restart()
        answered = await probe()
        if answered is not None:
            return [*head, "(TLS handshake)", *answered]
    if leftover:
        return [*head, f"bytes followed the {verb} reply in cleartext"]
    return None


async def second_answer(
    conn: Conn,
    parser: Source[MailResponse],
    command: d.Command,
    answer: Callable[[], Awaitable[MailResponse]],
    verdict: str,
) -> list[str] | None:
    """POP3 and SMTP inside TLS: `command`, its answer, and a second answer within
    `limits.QUIET_WAIT` (the injected command's) as evidence, or None."""
    await conn.send(command)
    first = await answer()
    second, raw = await conn.quiet(parser, limits.QUIET_WAIT)
    if second is None and not raw:
        return None
    return [client_said(command), server_said(first), _heard(raw, second), verdict]


@dataclasses.dataclass(frozen=True, slots=True)
class Dialogs:
    """The steps of one protocol, as `_audit_service` runs them."""

    main: Callable[[Audit], Awaitable[None]]  # cleartext: capabilities, STARTTLS, again
    implicit: Callable[[Audit], Awaitable[None]]  # the same inside implicit TLS
    probe: Callable[[Audit], Awaitable[None]]  # AUTH-05
    #: AUTH-07 on a fresh connection (inside STARTTLS when the flag says so).
    ntlm: Callable[[Audit, Conn, bool], Awaitable[tuple[str | None, list[str]]]]
    #: ST-07 on a fresh connection (the TLS variant when the flag says so).
    inject: Callable[[Audit, Conn, bool], Awaitable[list[str] | None]]

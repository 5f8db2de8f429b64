"""The POP3 steps: CAPA, STLS and CAPA again (or the same inside implicit TLS),
the dummy USER, the NTLM challenge and STLS injection.

POP3's rules: AUTH-03 lists USER and plaintext SASL offered before STLS; BAN-02
comes from CAPA's IMPLEMENTATION line; STLS inside TLS must get -ERR.
"""

from __future__ import annotations

from collections.abc import Sequence

from imapguard.scanner import dialogs as d
from imapguard.scanner.mail.audit import Audit
from imapguard.scanner.mail.connection import Conn
from imapguard.scanner.mail.sessions import (
    PROBE_USER,
    Pop3Session,
    client_said,
    server_said,
)
from imapguard.scanner.mail.steps import (
    CANCEL,
    Dialogs,
    after_injection,
    mailbox_without_tls,
    ntlm_exchange,
    second_answer,
)
from imapguard.scanner.mail.verdicts import (
    classify_pop3_user,
    disclosed_version,
)
from imapguard.scanner.model import Protocol


async def _pop3_capa(pop3: Pop3Session) -> tuple[d.Command, d.Pop3Response, tuple[str, ...] | None]:
    command = d.pop3_command("CAPA")
    response = await pop3.run(command, multiline=True)
    return command, response, response.lines if response.ok else None


def _pop3_implementation(audit: Audit, caps: Sequence[str], shown: Sequence[str]) -> bool:
    """BAN-02 from CAPA's IMPLEMENTATION line; True once decided."""
    line = next((c for c in caps if c.upper().startswith("IMPLEMENTATION")), None)
    if line is None:
        return False
    version = disclosed_version(line.partition(" ")[2])
    if version:
        audit.fail("BAN-02", (*shown, f"S: {line}", f"discloses {version!r}"))
    else:
        audit.ok("BAN-02")
    return True


async def _pop3_after_tls(audit: Audit, pop3: Pop3Session, where: str) -> None:
    """ST-04, ST-10, AUTH-06, AUTH-09 and (unless decided in clear) BAN-02 from
    CAPA inside TLS."""
    command, response, caps = await _pop3_capa(pop3)
    after = caps or ()
    shown = (client_said(command), server_said(response))
    audit.judge_after_tls(Protocol.POP3, after, where, (*shown, f"S: {' | '.join(after)}"))
    audit.judge_anonymous()
    if "BAN-02" not in audit.decided:
        _pop3_implementation(audit, audit.caps_after, shown)
    audit.ok("BAN-02")


async def _pop3_main(audit: Audit) -> None:
    async with audit.connection() as conn:
        pop3 = Pop3Session(conn)
        greeting = await pop3.greeting()
        audit.judge_greeting(greeting)
        command, response, caps = await _pop3_capa(pop3)
        shown = (client_said(command), server_said(response))
        audit.record_before_tls(Protocol.POP3, caps or ())
        capa = d.parse_capa(audit.caps_before)
        advertised = "STLS" in capa
        if not advertised:
            why = "STLS is not advertised" if caps is not None else "CAPA is not supported"
            audit.fail("ST-01", (*shown, why))
        if caps is None:
            audit.untested(("AUTH-03",), "the server does not answer CAPA")
        else:
            plaintext = [m for m in capa.get("SASL", ()) if m in d.PLAINTEXT_SASL]
            offered = (["USER"] if "USER" in capa else []) + [f"SASL {m}" for m in plaintext]
            if offered:
                listing = " | ".join(caps)
                audit.fail(
                    "AUTH-03", (*shown, f"S: {listing}", f"before STLS: {', '.join(offered)}")
                )
            else:
                audit.ok("AUTH-03")
        _pop3_implementation(audit, audit.caps_before, shown)
        command = d.pop3_command("STLS")
        response = await pop3.run(command)
        handshake_error = await conn.try_starttls(audit.sni) if response.ok else None
        evidence = (client_said(command), server_said(response))
        if not audit.judge_starttls(advertised, response.ok, handshake_error, evidence):
            await mailbox_without_tls(audit, Protocol.POP3, pop3, handshake_error)
            return
        pop3.restart()
        await _pop3_after_tls(audit, pop3, "after TLS")
        await pop3.bye()


async def _pop3_implicit(audit: Audit) -> None:
    async with audit.connection() as conn:
        pop3 = Pop3Session(conn)
        greeting = await pop3.greeting()
        audit.judge_greeting(greeting)
        await _pop3_after_tls(audit, pop3, "inside TLS")
        command = d.pop3_command("STLS")
        response = await pop3.run(command)
        if response.kind is d.Pop3Kind.ERR:
            audit.ok("ST-06")
            await pop3.bye()
        else:
            audit.fail(
                "ST-06",
                (
                    client_said(command),
                    server_said(response),
                    "STLS inside TLS must be refused with -ERR",
                ),
                standard="RFC 2595 §4, RFC 8314 §3.2 (by analogy with RFC 9051 §6.2.1)",
            )


async def _pop3_probe(audit: Audit) -> None:
    async with audit.connection() as conn:
        pop3 = Pop3Session(conn)
        await pop3.greeting()
        command = d.pop3_user(PROBE_USER)
        response = await pop3.run(command)
        audit.judge_probe(
            classify_pop3_user(response), (client_said(command), server_said(response))
        )
        await pop3.bye()


async def _ntlm_pop3(audit: Audit, conn: Conn, starttls: bool) -> tuple[str | None, list[str]]:
    pop3 = Pop3Session(conn)
    await pop3.greeting()
    if starttls:
        await pop3.run(d.pop3_command("STLS"))
        await conn.starttls(audit.sni)
        pop3.restart()

    def challenge(response: d.Pop3Response) -> str | None:
        return response.text if response.kind is d.Pop3Kind.CONTINUATION else None

    return await ntlm_exchange(
        d.pop3_command("AUTH NTLM"), pop3.run, challenge, lambda: pop3.run(CANCEL), pop3.bye
    )


async def _inject_pop3(audit: Audit, conn: Conn, inside: bool) -> list[str] | None:
    pop3 = Pop3Session(conn)
    await pop3.greeting()
    both = d.pop3_command("STLS") + d.pop3_command("CAPA" if inside else "NOOP")
    pop3.parser.expect(False)
    await conn.send(both)
    response = await conn.receive(pop3.parser)
    if not response.ok:
        return None

    async def probe() -> list[str] | None:
        # Both the injected CAPA (if it was kept) and ours have a body.
        pop3.parser.expect(True)
        pop3.parser.expect(True)
        return await second_answer(
            conn,
            pop3.parser,
            d.pop3_command("CAPA"),
            lambda: conn.receive(pop3.parser),
            "two answers to one CAPA: the injected one was kept",
        )

    head = (client_said(both), server_said(response))
    return await after_injection(
        audit, conn, pop3.parser, head, "STLS", inside=inside, restart=pop3.restart, probe=probe
    )


DIALOGS = Dialogs(_pop3_main, _pop3_implicit, _pop3_probe, _ntlm_pop3, _inject_pop3)

"""The SMTP steps: EHLO, STARTTLS and EHLO again (or the same inside implicit
TLS), the envelope checks (open relay, VRFY/EXPN), the dummy AUTH, the NTLM
challenge and STARTTLS injection.

SMTP's rules: port 25 is the mail-exchanger port, where RFC 3207 §4 forbids
requiring TLS, so MAIL before STARTTLS is only tested on the other ports; ST-08
sends MAIL right after the handshake, before any new EHLO; the envelope never
reaches DATA, so nothing is ever queued.
"""

from __future__ import annotations

import secrets

from imapguard.scanner import dialogs as d
from imapguard.scanner.mail import limits
from imapguard.scanner.mail.audit import Audit
from imapguard.scanner.mail.connection import (
    Conn,
    Temporary,
)
from imapguard.scanner.mail.sessions import (
    PROBE_USER,
    RELAY_PROBE_RCPT,
    SmtpSession,
    client_said,
    server_said,
)
from imapguard.scanner.mail.steps import (
    CANCEL,
    Dialogs,
    after_injection,
    credential_answer,
    ntlm_exchange,
    second_answer,
)
from imapguard.scanner.mail.verdicts import (
    classify_relay,
    classify_smtp_auth,
    classify_state_reset,
    internal_name,
    vrfy_enumerates,
)
from imapguard.scanner.model import Protocol, Severity
from imapguard.secret import Secret


def _smtp(audit: Audit, conn: Conn) -> SmtpSession:
    return SmtpSession(conn, audit.ehlo_name, audit.throttle)


def _judge_names(audit: Audit, greeting: d.SmtpReply, ehlo: d.EhloInfo) -> None:
    """BAN-03: the host names the server gives itself in its greeting and EHLO."""
    greeting_words = greeting.lines[0].split() if greeting.lines else []
    names = [("greeting", greeting_words[0])] if greeting_words else []
    names.append(("EHLO", ehlo.domain))
    evidence = [
        f"{where} names the host {name!r}: {why}"
        for where, name in names
        if (why := internal_name(name))
    ]
    if evidence:
        audit.fail("BAN-03", evidence)
    else:
        audit.ok("BAN-03")


async def _smtp_envelope(audit: Audit, smtp: SmtpSession) -> None:
    """AUTH-06 (anonymous SASL, open relay) and AUTH-08 (VRFY/EXPN enumeration)
    on a session that has said EHLO."""
    mail_command, mail = await smtp.mail_from()
    rcpt_command = d.smtp_command(f"RCPT TO:<{RELAY_PROBE_RCPT}>")
    rcpt = await smtp.run(rcpt_command) if mail.positive else None
    if mail.positive:
        await smtp.rset()
    relay: list[str] = []
    if rcpt is not None and classify_relay(mail, rcpt):
        relay = [
            client_said(mail_command),
            server_said(mail),
            client_said(rcpt_command),
            server_said(rcpt),
            "open relay: a recipient in a foreign domain was accepted without AUTH",
        ]
    audit.judge_anonymous(relay)
    unknown = f"imapguard-no-such-user-{secrets.token_hex(4)}"
    evidence: list[str] = []
    for verb in ("VRFY", "EXPN"):
        known_command = d.smtp_command(f"{verb} postmaster")
        known = await smtp.run(known_command)
        if known.code not in (250, 251, 252):
            continue
        unknown_command = d.smtp_command(f"{verb} {unknown}")
        other = await smtp.run(unknown_command)
        if vrfy_enumerates(known, other):
            evidence += [
                client_said(known_command),
                server_said(known),
                client_said(unknown_command),
                server_said(other),
            ]
    if evidence:
        audit.fail("AUTH-08", (*evidence, "existing and unknown mailboxes get different answers"))
    else:
        audit.ok("AUTH-08")


async def _smtp_after_tls(audit: Audit, smtp: SmtpSession, where: str) -> d.EhloInfo:
    """ST-04, ST-10 and AUTH-09 from EHLO inside TLS."""
    command, _, ehlo = await smtp.ehlo()
    shown = (client_said(command), f"S: extensions {' | '.join(ehlo.lines)}")
    audit.judge_after_tls(Protocol.SMTP, ehlo.lines, where, shown)
    return ehlo


async def _smtp_main(audit: Audit) -> None:
    async with audit.connection() as conn:
        smtp = _smtp(audit, conn)
        greeting = await smtp.greeting()
        audit.judge_greeting(greeting)
        command, reply, ehlo = await smtp.ehlo()
        audit.record_before_tls(Protocol.SMTP, ehlo.lines)
        _judge_names(audit, greeting, ehlo)
        shown = (
            client_said(command),
            server_said(reply),
            f"S: extensions {' | '.join(ehlo.lines)}",
        )
        advertised = "STARTTLS" in ehlo.keywords
        if not advertised:
            audit.fail("ST-01", (*shown, "STARTTLS is not advertised"))
        if ehlo.auth:
            plaintext = [m for m in ehlo.auth if m in d.PLAINTEXT_SASL]
            severity = None if plaintext else Severity.MEDIUM
            note = (
                "AUTH before STARTTLS"
                if plaintext
                else "AUTH before STARTTLS (no plaintext mechanism: severity lowered to medium)"
            )
            audit.fail("AUTH-04", (*shown, f"{note}: {' '.join(ehlo.auth)}"), severity=severity)
        else:
            audit.ok("AUTH-04")
        if audit.port != 25:
            mail_command, mail = await smtp.mail_from()
            if mail.positive:
                audit.extra_exposure += [
                    client_said(mail_command),
                    server_said(mail),
                    "MAIL accepted before STARTTLS",
                ]
                await smtp.rset()
        command = d.smtp_command("STARTTLS")
        reply = await smtp.run(command)
        accepted = reply.code == 220
        handshake_error = await conn.try_starttls(audit.sni) if accepted else None
        evidence = (client_said(command), server_said(reply))
        if not audit.judge_starttls(advertised, accepted, handshake_error, evidence):
            audit.after_starttls_unavailable(Protocol.SMTP)
            if handshake_error is None:
                await smtp.bye()
            return
        smtp.restart()
        # ST-08 first: MAIL right after the handshake, before any new EHLO.
        mail_command, mail = await smtp.mail_from()
        kept = classify_state_reset(mail)
        if kept is True:
            audit.fail(
                "ST-08",
                (
                    client_said(mail_command),
                    server_said(mail),
                    "MAIL accepted inside TLS without a new EHLO",
                ),
            )
            await smtp.rset()
        elif kept is False:
            audit.ok("ST-08")
        else:
            audit.untested(("ST-08",), f"MAIL refused for another reason: {mail.shown()}")
        await _smtp_after_tls(audit, smtp, "after TLS")
        await _smtp_envelope(audit, smtp)
        command = d.smtp_command("STARTTLS")
        reply = await smtp.run(command)
        if reply.code == 220:
            audit.fail(
                "ST-05",
                (client_said(command), server_said(reply), "a second STARTTLS was accepted"),
            )
            return  # the server now waits for a handshake inside TLS: just close
        audit.ok("ST-05")
        await smtp.bye()


async def envelope_clear(audit: Audit) -> None:
    async with audit.connection() as conn:
        smtp = _smtp(audit, conn)
        await smtp.greeting()
        await smtp.ehlo()
        await _smtp_envelope(audit, smtp)
        await smtp.bye()


async def _smtp_implicit(audit: Audit) -> None:
    async with audit.connection() as conn:
        smtp = _smtp(audit, conn)
        greeting = await smtp.greeting()
        audit.judge_greeting(greeting)
        ehlo = await _smtp_after_tls(audit, smtp, "inside TLS")
        _judge_names(audit, greeting, ehlo)
        await _smtp_envelope(audit, smtp)
        command = d.smtp_command("STARTTLS")
        reply = await smtp.run(command)
        if reply.positive:
            audit.fail(
                "ST-06",
                (client_said(command), server_said(reply), "STARTTLS inside TLS must be refused"),
                standard="RFC 3207 §4, §4.2",
            )
            return
        audit.ok("ST-06")
        await smtp.bye()


async def _smtp_probe(audit: Audit) -> None:
    async with audit.connection() as conn:
        smtp = _smtp(audit, conn)
        await smtp.greeting()
        _, _, ehlo = await smtp.ehlo()
        password = Secret(secrets.token_urlsafe(18))
        if "LOGIN" in ehlo.auth and "PLAIN" not in ehlo.auth:
            evidence, reply = await _smtp_auth_login(smtp, password)
        else:
            command = d.smtp_auth_plain(PROBE_USER, password)
            async with credential_answer(conn):
                reply = await smtp.run(command, wait=limits.AUTH_WAIT)
            evidence = [client_said(command), server_said(reply)]
            if reply.code == 334:
                # A challenge although we sent the response: cancel, cannot tell.
                await smtp.run(d.smtp_command("*"))
                audit.untested(("AUTH-05",), f"AUTH PLAIN with a response got {evidence[1]}")
                await smtp.bye()
                return
        if 400 <= reply.code < 500:  # RFC 5321 §4.2.1: transient (454: RFC 4954 §6)
            raise Temporary(server_said(reply))
        audit.judge_probe(classify_smtp_auth(reply), evidence)
        await smtp.bye()


async def _smtp_auth_login(smtp: SmtpSession, password: Secret) -> tuple[list[str], d.SmtpReply]:
    """AUTH LOGIN (user, then password, each after a 334)."""
    command = d.smtp_command("AUTH LOGIN")
    reply = await smtp.run(command)
    evidence = [client_said(command), server_said(reply)]
    if reply.code != 334:
        return evidence, reply
    user_line = d.sasl_line(PROBE_USER.encode(), f"{PROBE_USER} (base64)")
    reply = await smtp.run(user_line)
    evidence += [client_said(user_line), server_said(reply)]
    if reply.code != 334:
        return evidence, reply
    async with credential_answer(smtp.conn):
        reply = await smtp.run(
            d.sasl_line(password.reveal(), "*** (base64)"), wait=limits.AUTH_WAIT
        )
    evidence += ["C: *** (base64)", server_said(reply)]
    return evidence, reply


async def _ntlm_smtp(audit: Audit, conn: Conn, starttls: bool) -> tuple[str | None, list[str]]:
    smtp = _smtp(audit, conn)
    await smtp.greeting()
    await smtp.ehlo()
    if starttls:
        await smtp.run(d.smtp_command("STARTTLS"))
        await conn.starttls(audit.sni)
        smtp.restart()
        await smtp.ehlo()

    def challenge(reply: d.SmtpReply) -> str | None:
        return reply.lines[0] if reply.code == 334 else None

    return await ntlm_exchange(
        d.smtp_command("AUTH NTLM"), smtp.run, challenge, lambda: smtp.run(CANCEL), smtp.bye
    )


async def _inject_smtp(audit: Audit, conn: Conn, inside: bool) -> list[str] | None:
    smtp = _smtp(audit, conn)
    await smtp.greeting()
    await smtp.ehlo()
    injected = d.smtp_command(f"EHLO {audit.ehlo_name}" if inside else "NOOP")
    both = d.smtp_command("STARTTLS") + injected
    await conn.send(both)
    reply = await smtp.reply()
    if reply.code != 220:
        return None

    async def probe() -> list[str] | None:
        return await second_answer(
            conn,
            smtp.parser,
            d.smtp_command("NOOP"),
            smtp.reply,
            "two replies to one NOOP: the injected EHLO was kept",
        )

    head = (client_said(both), server_said(reply))
    return await after_injection(
        audit, conn, smtp.parser, head, "STARTTLS", inside=inside, restart=smtp.restart, probe=probe
    )


DIALOGS = Dialogs(_smtp_main, _smtp_implicit, _smtp_probe, _ntlm_smtp, _inject_smtp)

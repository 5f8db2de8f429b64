"""The IMAP steps: capabilities, STARTTLS and capabilities again (or the same
inside implicit TLS), the dummy LOGIN, the NTLM challenge and STARTTLS injection.

IMAP's rules: PREAUTH in cleartext (ST-09) leaves nothing else to try, since
STARTTLS is only valid before authentication (RFC 9051 §6.2.1); on an
implicit-TLS port STARTTLS must get a tagged BAD, in any state; BAN-02 comes
from `ID NIL` (RFC 2971).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from imapguard.scanner import dialogs as d
from imapguard.scanner.catalog import checks_for
from imapguard.scanner.mail import limits
from imapguard.scanner.mail.audit import Audit
from imapguard.scanner.mail.connection import (
    Conn,
    Temporary,
    Unexpected,
)
from imapguard.scanner.mail.sessions import (
    PROBE_USER,
    ImapSession,
    client_said,
    server_said,
)
from imapguard.scanner.mail.steps import (
    CANCEL,
    Dialogs,
    after_injection,
    credential_answer,
    mailbox_without_tls,
    ntlm_exchange,
)
from imapguard.scanner.mail.verdicts import (
    classify_imap_login,
    disclosed_version,
)
from imapguard.scanner.model import Protocol, TlsMode
from imapguard.secret import Secret


def _imap_caps(
    others: Sequence[d.ImapResponse], tagged: d.ImapResponse, greeting: d.ImapResponse | None
) -> tuple[str, ...]:
    for response in (*others, tagged):
        caps = response.capabilities()
        if caps is not None:
            return caps
    if greeting is not None and (caps := greeting.capabilities()) is not None:
        return caps
    raise Unexpected(f"no capability list in the answer to CAPABILITY: {tagged.shown()}")


async def _imap_id(audit: Audit, imap: ImapSession) -> None:
    """BAN-02 from `ID NIL` (RFC 2971): a version, OS version or versioned name."""
    command, others, _ = await imap.run("ID NIL")
    data = next((r for r in others if r.name == "ID"), None)
    if data is None:
        audit.ok("BAN-02")
        return
    try:
        fields = d.parse_imap_id(data.text) or {}
    except d.MalformedResponse as exc:
        audit.untested(("BAN-02",), f"ID response not understood ({exc})")
        return
    audit.imap_id = fields
    disclosed = [
        f"{key} {value!r}" for key in ("version", "os-version") if (value := fields.get(key))
    ]
    name_version = disclosed_version(fields.get("name") or "")
    if name_version:
        disclosed.append(f"name {name_version!r}")
    if disclosed:
        audit.fail(
            "BAN-02",
            (client_said(command), server_said(data), "ID discloses " + ", ".join(disclosed)),
        )
    else:
        audit.ok("BAN-02")


async def _imap_after_tls(
    audit: Audit, imap: ImapSession, greeting: d.ImapResponse | None, where: str
) -> None:
    """ST-04, ST-10, AUTH-06, AUTH-09 and (unless decided in clear) BAN-02 from
    CAPABILITY inside TLS. `greeting`: the implicit-TLS greeting, whose capability
    code may answer for CAPABILITY."""
    command, others, tagged = await imap.run("CAPABILITY")
    caps = _imap_caps(others, tagged, greeting)
    shown = (client_said(command), f"S: * CAPABILITY {' '.join(caps)}")
    audit.judge_after_tls(Protocol.IMAP, caps, where, shown)
    audit.judge_anonymous()
    if "BAN-02" not in audit.decided and "ID" in audit.caps_after:
        await _imap_id(audit, imap)
    audit.ok("BAN-02")


async def _imap_main(audit: Audit) -> None:
    async with audit.connection() as conn:
        imap = ImapSession(conn)
        greeting = await imap.greeting()
        audit.judge_greeting(greeting)
        if greeting.status == "PREAUTH":
            audit.fail(
                "ST-09",
                (
                    server_said(greeting),
                    "PREAUTH in cleartext: the session is authenticated before TLS",
                ),
            )
        else:
            audit.ok("ST-09")
        command, others, tagged = await imap.run("CAPABILITY")
        caps = _imap_caps(others, tagged, greeting)
        shown = (client_said(command), f"S: * CAPABILITY {' '.join(caps)}")
        audit.record_before_tls(Protocol.IMAP, caps)
        if "ID" in caps:
            await _imap_id(audit, imap)
        if greeting.status == "PREAUTH":
            # STARTTLS is valid only in the not-authenticated state (RFC 9051 §6.2.1):
            # this session can never be encrypted, whatever it advertises.
            decided = ("EXP-01", "BAN-02", "ST-01", "EXP-07")
            if "STARTTLS" not in caps:
                audit.fail("ST-01", (*shown, "STARTTLS is not advertised"))
            else:
                audit.ok("ST-01")
            audit.fail(
                "EXP-07",
                (
                    server_said(greeting),
                    "STARTTLS is only allowed before authentication (RFC 9051 §6.2.1); "
                    "a PREAUTH session stays in cleartext",
                ),
            )
            audit.untested(
                [i for i in checks_for(Protocol.IMAP, TlsMode.CLEARTEXT) if i not in decided],
                "the PREAUTH greeting makes the session authenticated: STARTTLS and "
                "login cannot be tried (see ST-09)",
            )
            audit.ok("BAN-02")
            await imap.bye()
            return
        advertised = "STARTTLS" in caps
        if not advertised:
            audit.fail("ST-01", (*shown, "STARTTLS is not advertised"))
        audit.logindisabled = "LOGINDISABLED" in caps
        if audit.logindisabled:
            audit.ok("AUTH-01")
        else:
            audit.fail("AUTH-01", (*shown, "LOGINDISABLED is missing: LOGIN is allowed in clear"))
        plaintext = [m for m in d.sasl_mechanisms(Protocol.IMAP, caps) if m in d.PLAINTEXT_SASL]
        if plaintext:
            audit.fail(
                "AUTH-02",
                (*shown, f"plaintext SASL before TLS: {' '.join('AUTH=' + m for m in plaintext)}"),
            )
        else:
            audit.ok("AUTH-02")
        command, _, tagged = await imap.run("STARTTLS")
        accepted = tagged.status == "OK"
        handshake_error = await conn.try_starttls(audit.sni) if accepted else None
        evidence = (client_said(command), server_said(tagged))
        if not audit.judge_starttls(advertised, accepted, handshake_error, evidence):
            await mailbox_without_tls(audit, Protocol.IMAP, imap, handshake_error)
            return
        imap.restart()
        await _imap_after_tls(audit, imap, None, "after TLS")
        await imap.bye()


async def _imap_implicit(audit: Audit) -> None:
    async with audit.connection() as conn:
        imap = ImapSession(conn)
        greeting = await imap.greeting()
        audit.judge_greeting(greeting)
        await _imap_after_tls(audit, imap, greeting, "inside TLS")
        # RFC 9051 §6.2.1: a tagged BAD on an implicit-TLS port, in any state
        # (so also after a PREAUTH greeting, which is fine inside TLS).
        command, _, tagged = await imap.run("STARTTLS")
        if tagged.status == "BAD":
            audit.ok("ST-06")
            await imap.bye()
        else:
            audit.fail(
                "ST-06", (client_said(command), server_said(tagged), "a tagged BAD is required")
            )


async def _imap_probe(audit: Audit) -> None:
    async with audit.connection() as conn:
        imap = ImapSession(conn)
        greeting = await imap.greeting()
        if greeting.status == "PREAUTH":
            audit.untested(("AUTH-05",), "PREAUTH greeting: no login to probe (see ST-09)")
            await imap.bye()
            return
        caps = greeting.capabilities()
        logindisabled = "LOGINDISABLED" in caps if caps is not None else audit.logindisabled
        tag = imap.tags.next()
        command = d.imap_login(tag, PROBE_USER, Secret(secrets.token_urlsafe(18)))
        await conn.send(command)
        async with credential_answer(conn):
            _, tagged = await imap.until_tagged(tag, wait=limits.AUTH_WAIT)
        if tagged.status == "NO" and tagged.code == "UNAVAILABLE":
            # RFC 5530: "temporary failure because a subsystem is down"
            raise Temporary(server_said(tagged))
        verdict = classify_imap_login(tagged, logindisabled=logindisabled)
        audit.judge_probe(verdict, (client_said(command), server_said(tagged)))
        await imap.bye()


async def _ntlm_imap(audit: Audit, conn: Conn, starttls: bool) -> tuple[str | None, list[str]]:
    imap = ImapSession(conn)
    await imap.greeting()
    if starttls:
        await imap.run("STARTTLS")
        await conn.starttls(audit.sni)
        imap.restart()
    tag = imap.tags.next()

    async def ask(command: d.Command) -> d.ImapResponse:
        await conn.send(command)
        return await conn.receive(imap.parser)

    async def cancel() -> None:
        await conn.send(CANCEL)
        await imap.until_tagged(tag)

    def challenge(response: d.ImapResponse) -> str | None:
        return response.text if response.kind is d.ImapKind.CONTINUATION else None

    return await ntlm_exchange(d.imap_authenticate(tag, "NTLM"), ask, challenge, cancel, imap.bye)


async def _inject_imap(audit: Audit, conn: Conn, inside: bool) -> list[str] | None:
    imap = ImapSession(conn)
    await imap.greeting()
    starttls_tag, starttls = imap.command("STARTTLS")
    injected_tag, injected = imap.command("NOOP")
    both = starttls + injected
    await conn.send(both)
    others, tagged = await imap.until_tagged(starttls_tag)
    early = [r for r in others if r.tag == injected_tag]
    if tagged.status != "OK":
        return None  # refused (perhaps because of the pipelined bytes): nothing to inject into
    if early:
        return [
            client_said(both),
            server_said(early[0]),
            "the injected command was answered before the STARTTLS reply",
        ]

    async def probe() -> list[str] | None:
        probe_tag, command = imap.command("NOOP")
        await conn.send(command)
        others, _ = await imap.until_tagged(probe_tag)
        answered = [r for r in others if r.tag == injected_tag]
        if not answered:
            return None
        return [
            client_said(command),
            server_said(answered[0]),
            "the injected command was answered inside TLS",
        ]

    head = (client_said(both), server_said(tagged))
    return await after_injection(
        audit, conn, imap.parser, head, "STARTTLS", inside=inside, restart=imap.restart, probe=probe
    )


DIALOGS = Dialogs(_imap_main, _imap_implicit, _imap_probe, _ntlm_imap, _inject_imap)

"""The mail checks of one recognised service, as steps, one connection each.

The main dialog (capabilities, STARTTLS, capabilities again), the dummy
credential, the two STARTTLS injection variants and, where they apply, the NTLM
probe and the SMTP envelope checks in clear; ManageSieve only gets EXP-06, and a
service turned away before it said what it is only ST-11. Which checks a
service gets is the catalog's (`checks_for`).
"""

from __future__ import annotations

from imapguard.scanner import dialogs as d
from imapguard.scanner.catalog import checks_for
from imapguard.scanner.mail import imap, pop3, smtp
from imapguard.scanner.mail.audit import Audit, MailResult, catalog_order
from imapguard.scanner.mail.recognise import Recognised
from imapguard.scanner.model import Protocol, TlsMode
from imapguard.scanner.net import Network


async def audit_mail(
    net: Network,
    address: str,
    port: int,
    rec: Recognised,
    *,
    server_name: str | None,
    ehlo_name: str = "imapguard.scan.invalid",
) -> MailResult:
    """Run the mail checks of one recognised service (see the package docstring)."""
    audit = Audit(net, address, port, rec, server_name, ehlo_name)
    protocol = rec.protocol
    if protocol is Protocol.SIEVE:
        audit.fail(
            "EXP-06",
            (f"ManageSieve answers on port {port}", f"S: {rec.banner}"),
        )
        return audit.result()
    if protocol not in _DIALOGS:
        if audit.throttled is not None:
            audit.fail(
                "ST-11",
                (
                    f"throttled: {audit.throttled}",
                    "not tested: everything (turned away before the server said what it is)",
                ),
            )
        return audit.result()
    checks = checks_for(protocol, rec.tls_mode)
    if audit.throttled is None:
        await _audit_service(audit, protocol)
        audit.judge_exposure(protocol)
    if audit.throttled is not None:
        audit.untested(checks, f"server throttled the scan ({audit.throttled})")
        skipped = sorted(audit.untested_ids, key=catalog_order)
        audit.fail(
            "ST-11",
            (
                f"throttled: {audit.throttled}",
                f"not tested: {', '.join(skipped) or '(none)'}",
            ),
        )
    return audit.result()


async def _audit_service(audit: Audit, protocol: Protocol) -> None:
    """The steps of an IMAP, POP3 or SMTP service, each on its own connection."""
    dialogs = _DIALOGS[protocol]
    if not audit.cleartext:
        await audit.run(checks_for(protocol, TlsMode.IMPLICIT), lambda: dialogs.implicit(audit))
        if audit.ntlm:
            await _ntlm_step(audit, protocol)
        return
    await audit.run(checks_for(protocol, TlsMode.CLEARTEXT), lambda: dialogs.main(audit))
    if protocol is Protocol.SMTP and audit.starttls_state != "works":
        # The envelope checks ran inside TLS when STARTTLS worked; else in clear.
        await audit.run(("AUTH-06", "AUTH-08"), lambda: smtp.envelope_clear(audit))
    if audit.ntlm:
        await _ntlm_step(audit, protocol)
    await audit.run(("AUTH-05",), lambda: dialogs.probe(audit))
    await _injection(audit, protocol)


async def _ntlm_step(audit: Audit, protocol: Protocol) -> None:
    """Ask for an NTLM challenge and read the names in it (nmap's *-ntlm-info).
    Inside TLS when NTLM is offered there, else in clear."""
    inside = "after TLS" in audit.ntlm and audit.starttls_state == "works"
    if audit.cleartext and not inside and "before TLS" not in audit.ntlm:
        return

    async def body() -> None:
        async with audit.connection() as conn:
            blob, evidence = await _DIALOGS[protocol].ntlm(audit, conn, inside)
            if blob is None:
                audit.untested(("AUTH-07",), f"no NTLM challenge: {evidence[-1]}")
                return
            challenge = d.parse_ntlm_challenge(blob)
            disclosed = challenge.disclosed()
            if disclosed:
                audit.fail("AUTH-07", (*evidence, "challenge discloses " + "; ".join(disclosed)))
            else:
                audit.ok("AUTH-07")

    await audit.run(("AUTH-07",), body)


async def _injection(audit: Audit, protocol: Protocol) -> None:
    """Both variants, each on its own connection, only when STARTTLS works."""
    if audit.starttls_state != "works":
        return  # after_starttls_unavailable() has decided ST-07 already
    inject = _DIALOGS[protocol].inject
    results: list[tuple[str, list[str] | None, str | None]] = []
    for name, inside in (("cleartext variant", False), ("TLS variant", True)):
        convicted: list[list[str] | None] = [None]

        async def body(inside: bool = inside, out: list[list[str] | None] = convicted) -> None:
            async with audit.connection() as conn:
                out[0] = await inject(audit, conn, inside)

        error = await audit.attempt(body)
        results.append((name, convicted[0], error))
    audit.judge_injection(results)


_DIALOGS = {Protocol.IMAP: imap.DIALOGS, Protocol.POP3: pop3.DIALOGS, Protocol.SMTP: smtp.DIALOGS}

"""The findings of one mail service as its steps decide them, and the step runner.

`Audit.run` runs one step (one connection) and turns what it could not decide
into not-tested findings; a step cut short for a passing reason runs again from
a clean state (`limits.ATTEMPTS` runs in all). The `judge_*` methods are the
judgements the three protocols share (banner, STARTTLS, capabilities inside
TLS, the dummy credential, STARTTLS injection, exposure).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from imapguard.scanner import dialogs as d
from imapguard.scanner.catalog import (
    CATALOG,
    exposure_check,
    finding,
    needing_starttls,
    not_tested,
)
from imapguard.scanner.mail import limits
from imapguard.scanner.mail.connection import (
    NETWORK_ERRORS,
    PASSING,
    Conn,
    Refused,
    failure_reason,
    how_to_rerun,
    open_connection,
    sni_name,
)
from imapguard.scanner.mail.recognise import Recognised
from imapguard.scanner.mail.sessions import (
    MailResponse,
    server_said,
)
from imapguard.scanner.mail.verdicts import (
    ProbeVerdict,
    capability_diff,
    disclosed_version,
    legacy_only,
)
from imapguard.scanner.model import Finding, Identified, Protocol, Severity, Status, TlsMode
from imapguard.scanner.net import Network, Throttled
from imapguard.scanner.software import identify


@dataclasses.dataclass(frozen=True, slots=True)
class MailResult:
    findings: tuple[Finding, ...]
    capabilities_before_tls: tuple[str, ...]
    capabilities_after_tls: tuple[str, ...]
    starttls_works: bool | None  # None: implicit TLS, or not tested
    banner: str
    software: Identified | None = None  # what answered, when it could be told


#: The `Audit` attributes a step changes (restored before a step runs again).
_STEP_STATE = (
    "findings",
    "decided",
    "banner",
    "caps_before",
    "caps_after",
    "starttls_works",
    "starttls_state",
    "anonymous",
    "ntlm",
    "logindisabled",
    "extra_exposure",
    "imap_id",
)


class Audit:
    """The findings of one service as they are decided, and the step runner."""

    def __init__(
        self,
        net: Network,
        address: str,
        port: int,
        rec: Recognised,
        server_name: str | None,
        ehlo_name: str,
    ) -> None:
        self.net = net
        self.address = address
        self.port = port
        self.rec = rec
        self.sni = sni_name(server_name, address)
        self.ehlo_name = ehlo_name
        self.cleartext = rec.tls_mode is TlsMode.CLEARTEXT
        self.findings: dict[str, Finding] = {}
        self.decided: set[str] = set()
        self.throttled: str | None = rec.throttled
        self.banner = rec.banner
        self.caps_before: tuple[str, ...] = ()
        self.caps_after: tuple[str, ...] = ()
        self.starttls_works: bool | None = None
        self.starttls_state = "unknown"  # "works", "absent", "broken", "unknown"
        self.anonymous: list[str] = []  # evidence of AUTH=ANONYMOUS anywhere
        self.ntlm: tuple[str, ...] = ()  # where NTLM was advertised: "before", "after"
        self.logindisabled = False
        self.extra_exposure: list[str] = []  # EXP-03's MAIL-before-TLS evidence
        self.imap_id: dict[str, str | None] | None = None  # the ID fields, for `identify`

    # -- decisions -------------------------------------------------------------

    @property
    def failed(self) -> set[str]:
        return {i for i, f in self.findings.items() if f.status is Status.FAIL}

    @property
    def untested_ids(self) -> set[str]:
        return {i for i, f in self.findings.items() if f.status is Status.NOT_TESTED}

    def fail(
        self,
        check_id: str,
        evidence: Iterable[str],
        *,
        severity: Severity | None = None,
        standard: str | None = None,
    ) -> None:
        """Record a problem; a second call for the same ID adds its evidence."""
        lines = tuple(evidence)
        old = self.findings.get(check_id)
        if old is not None and old.status is Status.FAIL:
            self.findings[check_id] = dataclasses.replace(old, evidence=old.evidence + lines)
        else:
            self.findings[check_id] = finding(check_id, lines, severity=severity, standard=standard)
        self.decided.add(check_id)

    def ok(self, *check_ids: str) -> None:
        """The check ran and found nothing (or does not apply)."""
        self.decided.update(check_ids)

    def untested(self, check_ids: Iterable[str], reason: str) -> None:
        for check_id in check_ids:
            if check_id not in self.decided:
                self.findings[check_id] = not_tested(check_id, reason)
                self.decided.add(check_id)

    def throttle(self, reason: str) -> None:
        if self.throttled is None:
            self.throttled = reason
        self.net.mark_throttled(self.address, reason)

    def _save(self) -> dict[str, Any]:
        """What a step may change, to undo a run that failed half way."""
        return {name: copy.copy(getattr(self, name)) for name in _STEP_STATE}

    def _restore(self, saved: dict[str, Any]) -> None:
        for name, value in saved.items():
            setattr(self, name, value)

    async def attempt(self, body: Callable[[], Awaitable[None]]) -> str | None:
        """Run one step; the reason it could not finish, or None. A step that fails
        for a passing reason runs again from a clean state (`limits.ATTEMPTS` runs in all,
        `backoff` seconds apart); what the last run decided before it failed stands."""
        backoff = self.net.settings.backoff
        for run in range(1, limits.ATTEMPTS + 1):
            if self.throttled is not None:
                return f"server throttled the scan ({self.throttled})"
            saved = self._save()
            try:
                await body()
            except (Throttled, Refused) as exc:
                if not isinstance(exc, Refused) or exc.throttling:
                    self.throttle(exc.reason)
                return failure_reason(exc)
            except PASSING as exc:
                if run == limits.ATTEMPTS:
                    tries = (
                        f"{limits.ATTEMPTS} tries, {backoff:g} s apart"
                        if limits.ATTEMPTS > 1
                        else "1 try"
                    )
                    return f"{failure_reason(exc)} ({tries}); {how_to_rerun(exc)}"
                self._restore(saved)
                await asyncio.sleep(backoff)
            except NETWORK_ERRORS as exc:
                return failure_reason(exc)
            else:
                return None
        raise AssertionError("unreachable: the last run returns")

    async def run(self, check_ids: Sequence[str], body: Callable[[], Awaitable[None]]) -> bool:
        """Run one step deciding `check_ids`; those it left undecided become not_tested."""
        reason = await self.attempt(body)
        if reason is not None:
            self.untested(check_ids, reason)
            return False
        return True

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A fresh connection inside the address's slot; on an implicit-TLS port
        the handshake comes first."""
        async with open_connection(self.net, self.address, self.port) as conn:
            if not self.cleartext:
                await conn.starttls(self.sni)
            yield conn

    # -- shared judgements -----------------------------------------------------

    def judge_greeting(self, greeting: MailResponse) -> None:
        """BAN-01 from the greeting, whose first line becomes the service's banner."""
        if isinstance(greeting, d.SmtpReply):
            self.banner = d.printable(greeting.raw[0]) if greeting.raw else str(greeting.code)
            text = " ".join(greeting.lines)
        else:
            self.banner = greeting.shown()
            text = greeting.text
        version = disclosed_version(text)
        if version:
            self.fail("BAN-01", (server_said(greeting), f"discloses {version!r}"))
        else:
            self.ok("BAN-01")

    def judge_starttls(
        self,
        advertised: bool,
        reply_ok: bool,
        handshake_error: str | None,
        evidence: Sequence[str],
    ) -> bool:
        """ST-01, ST-02, ST-03 and EXP-07 from one STARTTLS attempt."""
        works = reply_ok and handshake_error is None
        self.starttls_works = works
        self.starttls_state = "works" if works else ("broken" if advertised else "absent")
        outcome = list(evidence)
        if handshake_error is not None:
            outcome.append(f"TLS handshake failed: {handshake_error}")
        if advertised:
            self.ok("ST-01", "ST-03", "EXP-07")
            if works:
                self.ok("ST-02")
            else:
                self.fail("ST-02", outcome)
            return works
        self.ok("ST-02")
        if reply_ok:
            self.fail("ST-03", (*outcome, "STARTTLS answered although not advertised"))
            self.starttls_state = "works" if works else "broken"
        else:
            self.ok("ST-03")
        if works:
            self.ok("EXP-07")
        else:
            self.fail("EXP-07", (*outcome, "no STARTTLS: every command crosses in clear"))
        return works

    def after_starttls_unavailable(self, protocol: Protocol) -> None:
        """Checks that need STARTTLS: nothing to check when there is none at all,
        not tested when it is there but broken."""
        ids = needing_starttls(protocol)
        if self.starttls_state == "absent":
            self.ok(*ids)
        else:
            self.untested(ids, "STARTTLS did not work (see ST-02)")

    def record_before_tls(self, protocol: Protocol, caps: Sequence[str]) -> None:
        """The capabilities seen in clear (ST-10, AUTH-06 and AUTH-07 use them)."""
        self.caps_before = tuple(caps)
        self.note_anonymous(protocol, caps, "before TLS")

    def judge_after_tls(
        self, protocol: Protocol, caps: Sequence[str], where: str, shown: Sequence[str]
    ) -> None:
        """ST-04, ST-10 and AUTH-09 from the capabilities seen inside TLS (`where`:
        after STARTTLS, or inside implicit TLS); AUTH-06 and AUTH-07 use them too."""
        self.caps_after = after = tuple(caps)
        self.note_anonymous(protocol, after, where)
        starttls_word = "STLS" if protocol is Protocol.POP3 else "STARTTLS"
        if any(c.upper().split()[:1] == [starttls_word] for c in after):
            self.fail("ST-04", (*shown, f"{starttls_word} is still offered inside TLS"))
        else:
            self.ok("ST-04")
        mechanisms = d.sasl_mechanisms(protocol, after)
        if legacy_only(mechanisms):
            self.fail(
                "AUTH-09",
                (*shown, f"SASL mechanisms inside TLS: {' '.join(mechanisms)} (legacy only)"),
            )
        else:
            self.ok("AUTH-09")
        if self.cleartext:
            added, removed = capability_diff(self.caps_before, after)
            self.fail(
                "ST-10",
                (
                    f"before TLS: {' '.join(self.caps_before) or '(none)'}",
                    f"after TLS: {' '.join(after) or '(none)'}",
                    f"added after TLS: {' '.join(added) or '(none)'}",
                    f"removed after TLS: {' '.join(removed) or '(none)'}",
                ),
            )

    def note_anonymous(self, protocol: Protocol, caps: Sequence[str], where: str) -> None:
        mechanisms = d.sasl_mechanisms(protocol, caps)
        if "ANONYMOUS" in mechanisms:
            self.anonymous.append(f"SASL ANONYMOUS offered {where}")
        if "NTLM" in mechanisms:
            self.ntlm = (*self.ntlm, where)

    def judge_anonymous(self, extra: Sequence[str] = ()) -> None:
        evidence = [*self.anonymous, *extra]
        if evidence:
            self.fail("AUTH-06", evidence)
        else:
            self.ok("AUTH-06")

    def judge_probe(self, verdict: ProbeVerdict, evidence: Sequence[str]) -> None:
        if verdict is ProbeVerdict.REFUSED:
            self.ok("AUTH-05")
        elif verdict is ProbeVerdict.UNCLEAR:
            self.untested(("AUTH-05",), f"the answer does not say: {evidence[-1]}")
        else:
            why = (
                "the dummy credential was ACCEPTED before TLS"
                if verdict is ProbeVerdict.ACCEPTED
                else "the credential was checked before TLS: a real password would cross in clear"
            )
            self.fail("AUTH-05", (*evidence, why))

    def judge_injection(self, results: Sequence[tuple[str, list[str] | None, str | None]]) -> None:
        """ST-07 from both variants: (name, evidence if convicted, error reason)."""
        convicted = [line for _, lines, _ in results if lines for line in lines]
        if convicted:
            self.fail("ST-07", convicted)
            return
        errors = [f"{name}: {error}" for name, _, error in results if error]
        if errors:
            self.untested(("ST-07",), "; ".join(errors))
        else:
            self.ok("ST-07")

    def judge_exposure(self, protocol: Protocol) -> None:
        exposure = exposure_check(protocol)
        if not self.cleartext or exposure is None:
            return
        if protocol is Protocol.SMTP and self.port == 25:
            return
        exposure_id, inputs = exposure.id, exposure.decided_by
        failed = [i for i in inputs if i in self.failed]
        extra = self.extra_exposure if protocol is Protocol.SMTP else []
        if failed or extra:
            evidence = [f"{i}: {CATALOG[i].title}" for i in failed] + extra
            severity = None
            if "AUTH-05" in failed and protocol is not Protocol.SMTP:
                severity = Severity.CRITICAL
                evidence.append("severity raised to critical: AUTH-05 failed")
            self.fail(exposure_id, evidence, severity=severity)
            return
        missing = [i for i in inputs if i in self.untested_ids]
        if missing:
            self.untested((exposure_id,), f"depends on {', '.join(missing)}, not tested")
        else:
            self.ok(exposure_id)

    def result(self) -> MailResult:
        ordered = sorted(self.findings.values(), key=lambda f: catalog_order(f.id))
        return MailResult(
            findings=tuple(ordered),
            capabilities_before_tls=self.caps_before,
            capabilities_after_tls=self.caps_after,
            starttls_works=self.starttls_works if self.cleartext else None,
            banner=self.banner,
            software=identify(
                self.rec.protocol, self.banner, (self.caps_before, self.caps_after), self.imap_id
            ),
        )


_ORDER = {check_id: index for index, check_id in enumerate(CATALOG)}


def catalog_order(check_id: str) -> int:
    return _ORDER.get(check_id, len(_ORDER))

"""The scan, start to finish: the only place the scanner's parts meet.

    resolve targets → recognise what answers on each endpoint (greeting or TLS)
    → the mail checks per service (scanner/mail/, over net.Network)
    → the TLS and certificate audit of every TLS endpoint (sslyze, in a thread)
    → the checks across services of one address (implicit-TLS twin missing,
      different certificate or TLS policy on the twins)
    → the fix texts of the software found, a grade per service → ScanReport

The same server scanned twice gives the same report. Mail servers count and delay
what one client does (Postfix's anvil and fail2ban count connections, Dovecot's auth
penalty delays logins after failures), so the answer can depend on the order in which
they see our connections. Addresses are scanned in parallel, but one address sees one
connection at a time, always in the same order: every port's recognition in port
order, then the mail checks service by service, cleartext ports first (they decide
most of the grade), then implicit TLS, each by port; then the TLS audit, port by port
(tlsaudit's waves). A throttling server therefore cuts the scan at the same step
every time, whatever the port numbers or the machine's load. Steps that fail for a
passing reason are run again (mail.limits.ATTEMPTS), and the answer to the dummy
credential may take mail.limits.AUTH_WAIT seconds.

Twins (RFC 8314 §3): IMAP 143 ↔ 993, POP3 110 ↔ 995, submission 587 ↔ 465; on other
ports any implicit-TLS service of the same protocol on the same address. Only ports
of one server are twins: the same software (software.identify; unrecognised pairs only
with unrecognised) and, when both certificates were seen, the same certificate identity
(the names it is for). A gateway and the Dovecot behind it on one address are two
servers, and comparing their certificates (CERT-09) would be meaningless. When the
standard twin port was not in the scan, EXP-05 is not tested (the scanner talks to
nothing it was not given). Port 25 (MX) has none.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imapguard import __version__
from imapguard.scanner.catalog import finding, fix_for, not_tested
from imapguard.scanner.grade import grade
from imapguard.scanner.mail import Recognised, audit_mail, recognise
from imapguard.scanner.model import Protocol, ScanReport, Service, TlsMode
from imapguard.scanner.net import Network, NetworkSettings
from imapguard.scanner.targets import Endpoint, resolve
from imapguard.scanner.tlsaudit import TlsResult, TlsTarget, audit_tls, twin_findings

__all__ = ["ScanOptions", "scan"]

# cleartext port -> its implicit-TLS twin
STANDARD_TWINS: dict[int, int] = {143: 993, 110: 995, 587: 465}
_MAIL = (Protocol.IMAP, Protocol.POP3, Protocol.SMTP)


@dataclasses.dataclass(frozen=True, slots=True)
class ScanOptions:
    ports: tuple[int, ...]
    concurrency: int = 32
    per_host: int = 4
    timeout: float = 5.0
    rate: float = 100.0
    ca_file: Path | None = None
    server_name: str | None = None
    tls: bool = True  # run the sslyze audit (off only in tests of the mail checks)


Progress = Callable[[int, str], None]  # (advance by, description)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def scan(
    targets: list[str],
    options: ScanOptions,
    *,
    on_total: Callable[[int], None] | None = None,
    advance: Progress | None = None,
) -> ScanReport:
    started = _now()
    endpoints = await resolve(targets, options.ports)
    net = Network(
        NetworkSettings(
            concurrency=options.concurrency,
            per_host=options.per_host,
            rate=options.rate,
            timeout=options.timeout,
        )
    )
    step = advance or (lambda n, d: None)
    if on_total is not None:
        # discovery of every endpoint, then mail checks and TLS of each service found
        on_total(len(endpoints))

    # 1. and 2., one task per address: who answers, speaking what, then the mail checks
    # of each service found, one connection at a time in a fixed order (see above).
    found_so_far = 0

    async def host(eps: list[Endpoint]) -> None:
        nonlocal found_so_far
        found: list[tuple[Endpoint, Recognised]] = []
        for ep in eps:
            rec = await recognise(net, ep.address, ep.port, server_name=_name(ep, options))
            step(1, f"discovery {ep.address}")
            if rec is not None:
                found.append((ep, rec))
        found_so_far += len(found)
        if on_total is not None:
            on_total(len(endpoints) + 2 * found_so_far)
        for ep, rec in sorted(found, key=lambda pair: _audit_order(pair[0], pair[1])):
            checked[ep] = await check(ep, rec)

    async def check(ep: Endpoint, rec: Recognised) -> Service:
        began = time.monotonic()
        result = await audit_mail(net, ep.address, ep.port, rec, server_name=_name(ep, options))
        service = Service(
            host=ep.host,
            address=ep.address,
            port=ep.port,
            protocol=rec.protocol,
            tls_mode=rec.tls_mode,
            banner=result.banner or rec.banner,
            software=result.software,
            capabilities_before_tls=result.capabilities_before_tls,
            capabilities_after_tls=result.capabilities_after_tls,
            findings=list(result.findings),
        )
        service.duration = time.monotonic() - began
        # Only a STARTTLS seen to work is audited (not one refused, broken or untested).
        starttls[ep] = rec.tls_mode is TlsMode.CLEARTEXT and result.starttls_works is True
        step(1, f"mail checks {service.name}")
        return service

    starttls: dict[Endpoint, bool] = {}
    checked: dict[Endpoint, Service] = {}
    by_address: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        by_address.setdefault(ep.address, []).append(ep)
    await asyncio.gather(*(host(eps) for eps in by_address.values()))
    services = [checked[ep] for ep in endpoints if ep in checked]
    closed = len(endpoints) - len(services)
    starttls_ok = {(ep.address, ep.port) for ep, works in starttls.items() if works}

    # 3. TLS of every TLS endpoint: implicit ones, and cleartext ones whose STARTTLS works.
    tls_results: dict[str, TlsResult] = {}
    if options.tls:
        tls_targets = [
            TlsTarget(
                key=_key(s),
                address=s.address,
                port=s.port,
                protocol=s.protocol,
                tls_mode=s.tls_mode,
                server_name=_name(Endpoint(s.address, s.port, s.host), options),
            )
            for s in services
            if s.protocol in _MAIL
            and (s.tls_mode is TlsMode.IMPLICIT or (s.address, s.port) in starttls_ok)
        ]
        if tls_targets:
            began = time.monotonic()
            tls_results = await asyncio.to_thread(
                audit_tls,
                tls_targets,
                ca_file=options.ca_file,
                timeout=options.timeout,
                concurrency=max(1, min(options.concurrency, 16)),
                per_host=options.per_host,
            )
            spent = time.monotonic() - began
            for s in services:
                r = tls_results.get(_key(s))
                if r is None:
                    continue
                s.findings.extend(r.findings)
                s.tls_versions = r.tls_versions
                s.certificate = r.certificate
                s.duration += spent / len(tls_targets)
    for s in services:
        step(1, f"TLS {s.name}")

    # 4. Across services of one address: twins.
    _twins(services, tls_results, endpoints)

    # 5. Fix texts for the software found, and grades.
    for s in services:
        if s.software is not None:
            software = s.software.software
            s.findings = [
                dataclasses.replace(f, fix=fix_for(f.id, software)) if f.fix else f
                for f in s.findings
            ]
        s.findings.sort(key=lambda f: (f.status.value != "fail", f.severity.rank, f.id))
        s.grade, s.grade_reasons = grade(s)

    return ScanReport(
        started=started,
        finished=_now(),
        targets=tuple(targets),
        services=services,
        closed=closed,
        options=_options_json(options),
        version=__version__,
    )


def _name(ep: Endpoint, options: ScanOptions) -> str | None:
    """The name the certificate must match: --server-name for an address, else the name."""
    if options.server_name and ep.host == ep.address:
        return options.server_name
    return ep.host if ep.host != ep.address else None


def _key(s: Service) -> str:
    return f"{s.address}|{s.port}"


def _audit_order(ep: Endpoint, rec: Recognised) -> tuple[bool, int]:
    """Cleartext services first, then implicit TLS; each by port."""
    return rec.tls_mode is TlsMode.IMPLICIT, ep.port


def _software_name(service: Service) -> str:
    return service.software.software.value if service.software else "unrecognised software"


def certificate_identity(certificate: dict[str, Any]) -> tuple[str, ...]:
    """The names a certificate is for (subjectAltName, else the subject), in order,
    lower case; () when no certificate was seen."""
    names = certificate.get("san") or []
    if not names and certificate.get("subject"):
        names = [certificate["subject"]]
    return tuple(sorted({str(n).lower() for n in names}))


def other_server(a: Service, b: Service) -> str | None:
    """Why `a` and `b`, two services on one address, are not one server (different
    software, or certificates for different names), or None."""
    if (a.software and a.software.software) != (b.software and b.software.software):
        return f"{a.name} is {_software_name(a)}, {b.name} is {_software_name(b)}"
    names_a, names_b = certificate_identity(a.certificate), certificate_identity(b.certificate)
    if names_a and names_b and names_a != names_b:
        return (
            f"the certificate of {a.name} is for {', '.join(names_a)}, "
            f"that of {b.name} for {', '.join(names_b)}"
        )
    return None


def _twins(
    services: list[Service],
    tls_results: dict[str, TlsResult],
    endpoints: list[Endpoint],
) -> None:
    scanned = {(e.address, e.port) for e in endpoints}
    by_address: dict[str, list[Service]] = {}
    for s in services:
        by_address.setdefault(s.address, []).append(s)
    for address, group in by_address.items():
        for s in group:
            if s.tls_mode is not TlsMode.CLEARTEXT or s.protocol not in _MAIL or s.port == 25:
                continue
            implicit = [
                t for t in group if t.protocol is s.protocol and t.tls_mode is TlsMode.IMPLICIT
            ]
            strangers = {t.port: why for t in implicit if (why := other_server(s, t))}
            twins = [t for t in implicit if t.port not in strangers]
            standard = STANDARD_TWINS.get(s.port)
            twin = next((t for t in twins if t.port == standard), twins[0] if twins else None)
            others = [
                f"port {port} is another server, not its twin: {why}"
                for port, why in sorted(strangers.items())
            ]
            if twin is None and standard is not None and (address, standard) not in scanned:
                # The scanner talks only to what it was given: no look at the twin port.
                reason = f"port {standard} (its twin) was not in the scan"
                s.findings.append(not_tested("EXP-05", "; ".join([reason, *others])))
                continue
            if twin is None:
                where = f"port {standard}" if standard else "any scanned port"
                first = (
                    f"{s.protocol.value.upper()} in cleartext on port {s.port}; "
                    f"no implicit-TLS {s.protocol.value.upper()}"
                    f"{' of the same server' if others else ''} on {where}"
                )
                s.findings.append(finding("EXP-05", [first, *others]))
                continue
            a, b = tls_results.get(_key(s)), tls_results.get(_key(twin))
            if a is not None and b is not None:
                for f in twin_findings(s.name, a, twin.name, b):
                    s.findings.append(f)
                    twin.findings.append(f)


def _options_json(options: ScanOptions) -> dict[str, Any]:
    return {
        "ports": list(options.ports),
        "concurrency": options.concurrency,
        "per_host": options.per_host,
        "timeout": options.timeout,
        "rate": options.rate,
        "ca_file": str(options.ca_file) if options.ca_file else None,
        "server_name": options.server_name,
    }

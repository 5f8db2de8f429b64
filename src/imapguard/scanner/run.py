"""The scan, start to finish: the only place the scanner's parts meet.

    resolve targets → recognise what answers on each endpoint (greeting or TLS)
    → the mail checks per service (mail.py, over net.Network)
    → the TLS and certificate audit of every TLS endpoint (sslyze, in a thread)
    → the checks across services of one address (implicit-TLS twin missing,
      different certificate or TLS policy on the twins)
    → a grade per service → ScanReport

Twins (RFC 8314 §3): IMAP 143 ↔ 993, POP3 110 ↔ 995, submission 587 ↔ 465. On
other ports a cleartext service's twin is any implicit-TLS service of the same
protocol on the same address; when the standard twin port was not in the scan,
EXP-05 is not tested (the scanner talks to nothing it was not given). Port 25 (MX) has none.
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
from imapguard.scanner.catalog import finding, not_tested
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

    # 1. Who answers, speaking what.
    async def probe(ep: Endpoint) -> tuple[Endpoint, Recognised | None]:
        rec = await recognise(net, ep.address, ep.port, server_name=_name(ep, options))
        step(1, f"discovery {ep.address}")
        return ep, rec

    found = [(ep, rec) for ep, rec in await asyncio.gather(*map(probe, endpoints)) if rec]
    closed = len(endpoints) - len(found)
    if on_total is not None:
        on_total(len(endpoints) + 2 * len(found))

    # 2. The mail checks, one task per service (the Network bounds the connections).
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

    services = list(await asyncio.gather(*(check(ep, rec) for ep, rec in found)))
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

    # 5. Grades.
    for s in services:
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
            twins = [
                t for t in group if t.protocol is s.protocol and t.tls_mode is TlsMode.IMPLICIT
            ]
            standard = STANDARD_TWINS.get(s.port)
            twin = next((t for t in twins if t.port == standard), twins[0] if twins else None)
            if twin is None and standard is not None and (address, standard) not in scanned:
                # The scanner talks only to what it was given: no look at the twin port.
                s.findings.append(
                    not_tested("EXP-05", f"port {standard} (its twin) was not in the scan")
                )
                continue
            if twin is None:
                where = f"port {standard}" if standard else "any scanned port"
                s.findings.append(
                    finding(
                        "EXP-05",
                        (
                            f"{s.protocol.value.upper()} in cleartext on port {s.port}; "
                            f"no implicit-TLS {s.protocol.value.upper()} on {where}",
                        ),
                    )
                )
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

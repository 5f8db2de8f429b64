"""TLS and certificate checks of every TLS endpoint (implicit, or after STARTTLS).

The engine is sslyze (pinned in pyproject.toml; it speaks IMAP, POP3 and SMTP
STARTTLS and carries a legacy OpenSSL 1.0.2 to detect SSLv2/SSLv3/TLS 1.0/1.1); the
TLS audit decides what its results mean, as the catalog IDs TLS-01..TLS-11 and
CERT-01..CERT-09. `tlsrules.evaluate` is the pure core (sslyze results in,
findings out); `audit_tls`, here, is the thin threaded shell around sslyze's
`Scanner`.

Rules:
- The modules: `tlsmodel` (targets, results, scan commands), `tlsrules` (TLS-xx and
  `evaluate`), `certrules` (CERT-xx), `trust` (CERT-01's path validation) and
  `sslyze_adapter` (the only module that touches sslyze beyond its exported API).
- A server sslyze cannot reach is retried once, and so is each scan command that
  errored (alone: a loaded server or machine times out or resets spuriously, and
  two scans of one server must agree); then every ID is ``not_tested``.
- Bounded: at most `per_host` connections to one address (sslyze's per-server limit, and
  the ports of one address are scanned one after another: sslyze counts per host:port)
  and at most `concurrency` connections overall.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import itertools
import math
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from sslyze.connection_helpers.opportunistic_tls_helpers import ProtocolWithOpportunisticTlsEnum
from sslyze.plugins.openssl_cipher_suites.cipher_suites import CipherSuite
from sslyze.plugins.scan_commands import ScanCommand
from sslyze.scanner.models import ServerScanRequest, ServerScanResult, ServerScanStatusEnum
from sslyze.scanner.scan_command_attempt import ScanCommandAttemptStatusEnum
from sslyze.scanner.scanner import Scanner
from sslyze.server_setting import ServerNetworkConfiguration, ServerNetworkLocation

from imapguard.scanner import sslyze_adapter
from imapguard.scanner.identity import normalise_dns
from imapguard.scanner.model import Protocol, TlsMode
from imapguard.scanner.tlsmodel import (
    COMMANDS,
    OrderProbe,
    TlsResult,
    TlsTarget,
)
from imapguard.scanner.tlsrules import (
    accepted_by_version,
    evaluate,
    exception_line,
    order_probe_pair,
    twin_findings,
    unreachable,
)
from imapguard.scanner.trust import ChainVerdict, TrustAnchors, load_anchors, load_ca_file

__all__ = [
    "ChainVerdict",
    "OrderProbe",
    "TlsResult",
    "TlsTarget",
    "TrustAnchors",
    "audit_tls",
    "evaluate",
    "load_anchors",
    "load_ca_file",
    "order_probe_pair",
    "twin_findings",
    "unreachable",
]

_STARTTLS: dict[Protocol, ProtocolWithOpportunisticTlsEnum] = {
    Protocol.IMAP: ProtocolWithOpportunisticTlsEnum.IMAP,
    Protocol.POP3: ProtocolWithOpportunisticTlsEnum.POP3,
    Protocol.SMTP: ProtocolWithOpportunisticTlsEnum.SMTP,
}


def _ehlo_name() -> str:
    """What sslyze says in EHLO before STARTTLS: this host's FQDN (RFC 5321 §4.1.1.1)."""
    fqdn = socket.getfqdn()
    return fqdn if "." in fqdn and not fqdn.endswith(".") else "imapguard.localdomain"


def _request(
    target: TlsTarget, timeout: float, commands: Iterable[ScanCommand] = COMMANDS
) -> ServerScanRequest:
    """Raises ValueError (UnicodeError) for a name IDNA cannot encode."""
    name = normalise_dns(target.server_name) if target.server_name else target.address
    starttls = None
    if target.tls_mode is TlsMode.CLEARTEXT:
        starttls = _STARTTLS[target.protocol]
    config = ServerNetworkConfiguration(
        tls_server_name_indication=name,
        tls_opportunistic_encryption=starttls,
        smtp_ehlo_hostname=_ehlo_name()
        if starttls is ProtocolWithOpportunisticTlsEnum.SMTP
        else None,
        network_timeout=max(1, math.ceil(timeout)),
    )
    return ServerScanRequest(
        server_location=ServerNetworkLocation(name, target.port, ip_address=target.address),
        network_configuration=config,
        scan_commands=set(commands),
    )


def _waves(targets: Sequence[TlsTarget]) -> list[list[TlsTarget]]:
    """Wave n holds the n-th port of every address: one port per address at a time."""
    by_address: dict[str, list[TlsTarget]] = {}
    for t in targets:
        by_address.setdefault(t.address, []).append(t)
    columns = itertools.zip_longest(*by_address.values())
    return [[t for t in column if t is not None] for column in columns]


def _scan(
    targets: Sequence[TlsTarget],
    *,
    timeout: float,
    concurrency: int,
    per_host: int,
    commands: Mapping[str, Iterable[ScanCommand]] | None = None,
) -> dict[str, ServerScanResult]:
    """sslyze on every target, wave by wave; `commands`: only these, per target key."""
    per_server = max(1, min(per_host, concurrency))
    results: dict[str, ServerScanResult] = {}
    for wave in _waves(targets):
        requests = {
            t.key: _request(t, timeout, (commands or {}).get(t.key, COMMANDS)) for t in wave
        }
        if not requests:
            continue
        by_uuid = {r.uuid: key for key, r in requests.items()}
        scanner = Scanner(
            per_server_concurrent_connections_limit=per_server,
            concurrent_server_scans_limit=max(1, min(len(wave), concurrency // per_server)),
        )
        scanner.queue_scans(list(requests.values()))
        for result in scanner.get_results():
            results[by_uuid[result.uuid]] = result
    return results


def _probe_order(scan: ServerScanResult) -> OrderProbe | str | None:
    """TLS-07's two handshakes (see the tlsrules docstring), or why they failed."""
    attempts = scan.scan_result
    if attempts is None or scan.connectivity_result is None:
        return None
    tls12 = accepted_by_version(attempts).get("TLSv1.2", [])
    pair = order_probe_pair(tls12, sslyze_adapter.needs_legacy_openssl)
    if pair is None:
        return None
    strong, weak = pair
    legacy = sslyze_adapter.needs_legacy_openssl(strong.openssl_name)
    by_openssl = {strong.openssl_name: strong.name, weak.openssl_name: weak.name}

    def chosen(first: CipherSuite, second: CipherSuite) -> str:
        name = sslyze_adapter.negotiated_tls12_suite(
            scan, f"{first.openssl_name}:{second.openssl_name}", legacy=legacy
        )
        return by_openssl.get(name, name)

    try:
        return OrderProbe(
            strong=strong.name,
            weak=weak.name,
            chosen_strong_first=chosen(strong, weak),
            chosen_weak_first=chosen(weak, strong),
        )
    except Exception as exc:  # sslyze and nassl raise many types; any means "not tested"
        return f"cipher order probe failed: {type(exc).__name__}: {exc}"[:300]


def _probe_orders(
    scans: dict[str, ServerScanResult], targets: Sequence[TlsTarget], concurrency: int
) -> dict[str, OrderProbe | str | None]:
    """Run the order probes, one address at a time per worker (two connections each)."""
    by_address: dict[str, list[TlsTarget]] = {}
    for t in targets:
        if scans[t.key].scan_status is ServerScanStatusEnum.COMPLETED:
            by_address.setdefault(t.address, []).append(t)

    def run(group: list[TlsTarget]) -> dict[str, OrderProbe | str | None]:
        return {t.key: _probe_order(scans[t.key]) for t in group}

    out: dict[str, OrderProbe | str | None] = {}
    if not by_address:
        return out
    workers = max(1, min(concurrency, len(by_address)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(run, by_address.values()):
            out.update(part)
    return out


def _errored(scan: ServerScanResult) -> set[ScanCommand]:
    """The scan commands of a completed scan that ended in an error."""
    attempts = scan.scan_result
    if scan.scan_status is not ServerScanStatusEnum.COMPLETED or attempts is None:
        return set()
    return {
        command
        for command in COMMANDS
        if getattr(attempts, command.value).status is ScanCommandAttemptStatusEnum.ERROR
    }


def _merge(
    scan: ServerScanResult, again: ServerScanResult, commands: Iterable[ScanCommand]
) -> ServerScanResult:
    """`scan` with the attempts of `commands` that completed in `again`."""
    if scan.scan_result is None or again.scan_result is None:
        return scan
    redone = {
        command.value: attempt
        for command in commands
        if (attempt := getattr(again.scan_result, command.value)).status
        is ScanCommandAttemptStatusEnum.COMPLETED
    }
    return dataclasses.replace(scan, scan_result=dataclasses.replace(scan.scan_result, **redone))


def _no_connectivity_reason(scan: ServerScanResult) -> str:
    detail = exception_line(scan.connectivity_error_trace)
    return f"no TLS connection (tried twice){f': {detail}' if detail else ''}"


def audit_tls(
    targets: Sequence[TlsTarget],
    *,
    ca_file: Path | None,
    timeout: float,
    concurrency: int,
    per_host: int,
) -> dict[str, TlsResult]:
    """Audit every target; the result is keyed by `TlsTarget.key`. Synchronous (sslyze
    runs its own threads): call it through asyncio.to_thread. Raises ValueError when
    `ca_file` holds no certificate."""
    if not targets:
        return {}
    anchors = load_anchors(ca_file)
    concurrency = max(1, concurrency)
    per_host = max(1, per_host)
    unsupported: dict[str, TlsResult] = {}
    for t in targets:
        if t.tls_mode is TlsMode.CLEARTEXT and t.protocol not in _STARTTLS:
            reason = f"STARTTLS for {t.protocol.value} is not supported by the TLS engine (sslyze)"
            unsupported[t.key] = unreachable(t, reason)
            continue
        try:
            _request(t, timeout)
        except ValueError as exc:  # UnicodeError included: a name IDNA cannot encode
            unsupported[t.key] = unreachable(t, f"cannot scan {t.server_name!r}: {exc}")
    scannable = [t for t in targets if t.key not in unsupported]

    scans: dict[str, ServerScanResult] = {}
    pending = scannable
    for _ in range(2):  # one retry: spurious timeouts happen on a loaded server or machine
        if not pending:
            break
        scans.update(_scan(pending, timeout=timeout, concurrency=concurrency, per_host=per_host))
        pending = [
            t for t in pending if scans[t.key].scan_status is not ServerScanStatusEnum.COMPLETED
        ]
    errored = {t.key: found for t in scannable if (found := _errored(scans[t.key]))}
    if errored:
        again = _scan(
            [t for t in scannable if t.key in errored],
            timeout=timeout,
            concurrency=concurrency,
            per_host=per_host,
            commands=errored,
        )
        for key, rescan in again.items():
            scans[key] = _merge(scans[key], rescan, errored[key])

    orders = _probe_orders(scans, scannable, concurrency)
    now = dt.datetime.now(dt.UTC)
    results = dict(unsupported)
    for t in scannable:
        scan = scans[t.key]
        if scan.scan_status is ServerScanStatusEnum.COMPLETED and scan.scan_result is not None:
            results[t.key] = evaluate(
                t, scan.scan_result, anchors=anchors, now=now, order=orders.get(t.key)
            )
        else:
            results[t.key] = unreachable(t, _no_connectivity_reason(scan))
    return results

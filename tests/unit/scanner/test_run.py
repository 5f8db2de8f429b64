"""The checks across the services of one address (run._twins): EXP-05."""

from __future__ import annotations

from imapguard.scanner.model import Protocol, Service, Status, TlsMode
from imapguard.scanner.run import _twins
from imapguard.scanner.targets import Endpoint


def _service(port: int, protocol: Protocol, mode: TlsMode) -> Service:
    return Service("192.0.2.1", "192.0.2.1", port, protocol, mode)


def _exp05(service: Service) -> list[tuple[Status, str]]:
    return [(f.status, f.evidence[0]) for f in service.findings if f.id == "EXP-05"]


def _eps(*ports: int) -> list[Endpoint]:
    return [Endpoint("192.0.2.1", p, "192.0.2.1") for p in ports]


def test_twin_port_not_scanned_is_not_tested_and_never_probed() -> None:
    imap = _service(143, Protocol.IMAP, TlsMode.CLEARTEXT)
    _twins([imap], {}, _eps(143))
    assert _exp05(imap) == [
        (Status.NOT_TESTED, "not tested: port 993 (its twin) was not in the scan")
    ]


def test_twin_port_scanned_and_closed_is_exp05() -> None:
    imap = _service(143, Protocol.IMAP, TlsMode.CLEARTEXT)
    _twins([imap], {}, _eps(143, 993))
    assert _exp05(imap) == [
        (Status.FAIL, "IMAP in cleartext on port 143; no implicit-TLS IMAP on port 993")
    ]


def test_a_twin_of_the_same_protocol_on_any_port_counts() -> None:
    pop3 = _service(2110, Protocol.POP3, TlsMode.CLEARTEXT)
    twin = _service(2995, Protocol.POP3, TlsMode.IMPLICIT)
    other = _service(2993, Protocol.IMAP, TlsMode.IMPLICIT)
    _twins([pop3, other], {}, _eps(2110, 2993))
    assert _exp05(pop3) == [
        (Status.FAIL, "POP3 in cleartext on port 2110; no implicit-TLS POP3 on any scanned port")
    ]
    pop3.findings.clear()
    _twins([pop3, twin, other], {}, _eps(2110, 2993, 2995))
    assert _exp05(pop3) == []


def test_port_25_needs_no_twin() -> None:
    mx = _service(25, Protocol.SMTP, TlsMode.CLEARTEXT)
    _twins([mx], {}, _eps(25))
    assert _exp05(mx) == []

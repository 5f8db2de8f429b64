"""The orchestration (run.py): the checks across the services of one address (twins:
EXP-05, and CERT-09 only between ports of one server), and the order in which one
address sees our connections (one at a time, the same every scan)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest

from imapguard.scanner.mail import limits
from imapguard.scanner.model import Identified, Protocol, Service, Software, Status, TlsMode
from imapguard.scanner.run import ScanOptions, _twins, other_server, scan
from imapguard.scanner.targets import Endpoint
from imapguard.scanner.tlsaudit import TlsResult
from tests.unit.scanner.test_mail import (
    SLOPPY_SMTP,
    Script,
    Scripted,
    imap_script,
)
from tests.unit.scanner.test_mail import tls as tls  # the module fixture, shared

DOVECOT = Identified(Software.DOVECOT, 'ID name "Dovecot"')
IMAPGUARD = Identified(Software.IMAPGUARD, "greeting '* OK IMAP gateway ready.'")


def _service(
    port: int,
    protocol: Protocol,
    mode: TlsMode,
    software: Identified | None = None,
    names: tuple[str, ...] = (),
) -> Service:
    service = Service("192.0.2.1", "192.0.2.1", port, protocol, mode, software=software)
    if names:
        service.certificate = {"subject": f"CN={names[0]}", "san": list(names)}
    return service


def _exp05(service: Service) -> list[tuple[Status, tuple[str, ...]]]:
    return [(f.status, f.evidence) for f in service.findings if f.id == "EXP-05"]


def _eps(*ports: int) -> list[Endpoint]:
    return [Endpoint("192.0.2.1", p, "192.0.2.1") for p in ports]


def _tls(fingerprint: str) -> TlsResult:
    policy = {"versions": ["TLSv1.2"], "suites": {}, "certificates": [fingerprint]}
    return TlsResult((), ("TLSv1.2",), {}, policy)


def test_twin_port_not_scanned_is_not_tested_and_never_probed() -> None:
    imap = _service(143, Protocol.IMAP, TlsMode.CLEARTEXT)
    _twins([imap], {}, _eps(143))
    assert _exp05(imap) == [
        (Status.NOT_TESTED, ("not tested: port 993 (its twin) was not in the scan",))
    ]


def test_twin_port_scanned_and_closed_is_exp05() -> None:
    imap = _service(143, Protocol.IMAP, TlsMode.CLEARTEXT)
    _twins([imap], {}, _eps(143, 993))
    assert _exp05(imap) == [
        (Status.FAIL, ("IMAP in cleartext on port 143; no implicit-TLS IMAP on port 993",))
    ]


def test_a_twin_of_the_same_protocol_on_any_port_counts() -> None:
    pop3 = _service(2110, Protocol.POP3, TlsMode.CLEARTEXT)
    twin = _service(2995, Protocol.POP3, TlsMode.IMPLICIT)
    other = _service(2993, Protocol.IMAP, TlsMode.IMPLICIT)
    _twins([pop3, other], {}, _eps(2110, 2993))
    assert _exp05(pop3) == [
        (Status.FAIL, ("POP3 in cleartext on port 2110; no implicit-TLS POP3 on any scanned port",))
    ]
    pop3.findings.clear()
    _twins([pop3, twin, other], {}, _eps(2110, 2993, 2995))
    assert _exp05(pop3) == []


def test_port_25_needs_no_twin() -> None:
    mx = _service(25, Protocol.SMTP, TlsMode.CLEARTEXT)
    _twins([mx], {}, _eps(25))
    assert _exp05(mx) == []


# -- twins only within one server (issue 9: the gateway's 144 paired with Dovecot's 993)


def test_a_gateway_port_is_not_the_twin_of_dovecots_and_gets_no_false_cert09() -> None:
    """imapguard on 144 (STARTTLS) and Dovecot on 143/993, one address, certificates
    for the same name but different keys: 144 has no twin of its own (EXP-05, naming
    the stranger on 993), Dovecot's pair is compared with itself only, no CERT-09."""
    name = ("mail.example.org",)
    gateway = _service(144, Protocol.IMAP, TlsMode.CLEARTEXT, IMAPGUARD, name)
    plain = _service(143, Protocol.IMAP, TlsMode.CLEARTEXT, DOVECOT, name)
    imaps = _service(993, Protocol.IMAP, TlsMode.IMPLICIT, DOVECOT, name)
    results = {
        "192.0.2.1|144": _tls("aa"),
        "192.0.2.1|143": _tls("bb"),
        "192.0.2.1|993": _tls("bb"),
    }
    _twins([plain, gateway, imaps], results, _eps(143, 144, 993))
    every = [f.id for s in (gateway, plain, imaps) for f in s.findings]
    assert "CERT-09" not in every
    assert _exp05(plain) == []
    assert _exp05(gateway) == [
        (
            Status.FAIL,
            (
                "IMAP in cleartext on port 144; no implicit-TLS IMAP of the same server"
                " on any scanned port",
                "port 993 is another server, not its twin: 192.0.2.1:144 is imapguard,"
                " 192.0.2.1:993 is Dovecot",
            ),
        )
    ]


def test_the_same_servers_twins_still_get_cert09() -> None:
    name = ("mail.example.org",)
    plain = _service(143, Protocol.IMAP, TlsMode.CLEARTEXT, DOVECOT, name)
    imaps = _service(993, Protocol.IMAP, TlsMode.IMPLICIT, DOVECOT, name)
    _twins(
        [plain, imaps], {"192.0.2.1|143": _tls("aa"), "192.0.2.1|993": _tls("bb")}, _eps(143, 993)
    )
    assert [f.id for f in plain.findings] == ["CERT-09"]
    assert [f.id for f in imaps.findings] == ["CERT-09"]


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        ((DOVECOT, ("mail.example.org",)), (DOVECOT, ("mail.example.org",)), None),
        ((None, ()), (None, ()), None),
        ((DOVECOT, ()), (DOVECOT, ("mail.example.org",)), None),  # one certificate unseen
        ((DOVECOT, ("mail.example.org",)), (IMAPGUARD, ("mail.example.org",)), "imapguard"),
        ((None, ("mail.example.org",)), (DOVECOT, ("mail.example.org",)), "unrecognised"),
        ((DOVECOT, ("mail.example.org",)), (DOVECOT, ("other.example.org",)), "other.example"),
        ((None, ("a.example", "b.example")), (None, ("B.example", "a.example")), None),
    ],
)
def test_other_server(a: Any, b: Any, why: str | None) -> None:
    first = _service(143, Protocol.IMAP, TlsMode.CLEARTEXT, a[0], a[1])
    second = _service(993, Protocol.IMAP, TlsMode.IMPLICIT, b[0], b[1])
    reason = other_server(first, second)
    assert (reason is None) is (why is None)
    if why is not None:
        assert reason is not None
        assert why in reason


# -- the order one address sees (issue 9: the throttling test that failed one run in two)


@dataclasses.dataclass
class Log:
    """Connections to one address, across listeners: which port, in what order, and
    how many were open at once."""

    ports: list[int] = dataclasses.field(default_factory=list)
    open_now: int = 0
    most_open: int = 0


class Logged(Scripted):
    """A scripted listener on a chosen port that writes to a shared `Log`, and counts
    connections together with its siblings (as a server counts per client address)."""

    def __init__(self, script: Script, tls: ssl.SSLContext, log: Log, port: int, **kw: Any):
        super().__init__(script, tls, **kw)
        self.log = log
        self.fixed_port = port

    async def __aenter__(self) -> Logged:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.fixed_port, ssl=self.tls if self.implicit else None
        )
        self.port = self.fixed_port
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.log.ports.append(self.port)
        self.log.open_now += 1
        self.log.most_open = max(self.log.most_open, self.log.open_now)
        self.connections = len(self.log.ports)  # the address's count, both listeners
        try:
            await super()._serve(reader, writer)
        finally:
            self.log.open_now -= 1

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections = len(self.log.ports)
        await super()._converse(reader, writer)


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return sorted(ports)


@contextlib.asynccontextmanager
async def _pair(
    script: Script, tls: ssl.SSLContext, *, implicit_first: bool
) -> AsyncIterator[tuple[Log, Logged, Logged]]:
    """A cleartext and an implicit-TLS listener of one server on 127.0.0.1; the
    implicit one on the lower port when `implicit_first`."""
    low, high = _free_ports(2)
    clear_port, implicit_port = (high, low) if implicit_first else (low, high)
    log = Log()
    async with (
        Logged(script, tls, log, clear_port) as clear,
        Logged(script, tls, log, implicit_port, implicit=True) as implicit,
    ):
        yield log, clear, implicit


def _options(*ports: int, concurrency: int = 32) -> ScanOptions:
    return ScanOptions(ports=ports, timeout=3.0, tls=False, concurrency=concurrency)


@pytest.fixture(autouse=True)
def _short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "GREETING_WAIT", 0.3)
    monkeypatch.setattr(limits, "QUIET_WAIT", 0.3)


@pytest.mark.parametrize("implicit_first", [False, True], ids=["clear-lower", "implicit-lower"])
@pytest.mark.asyncio
async def test_one_address_sees_one_connection_at_a_time_in_a_fixed_order(
    tls: ssl.SSLContext, implicit_first: bool
) -> None:
    """Recognition port by port, then every connection of the cleartext service's
    checks, then the implicit-TLS one's: whatever the port numbers."""
    script = imap_script(
        lambda s: "IMAP4rev1 ID AUTH=PLAIN" if s.tls else "IMAP4rev1 STARTTLS LOGINDISABLED"
    )
    async with _pair(script, tls, implicit_first=implicit_first) as (log, clear, implicit):
        report = await scan(["127.0.0.1"], _options(clear.port, implicit.port))
    assert len(report.services) == 2
    assert log.most_open == 1
    assert log.ports[:2] == sorted([clear.port, implicit.port])  # recognition
    audits = log.ports[2:]
    first_implicit = audits.index(implicit.port)
    assert set(audits[:first_implicit]) == {clear.port}
    assert set(audits[first_implicit:]) == {implicit.port}
    assert len(audits[:first_implicit]) >= 3  # main dialog, probe, injection...


@pytest.mark.parametrize("concurrency", [1, 32])
@pytest.mark.asyncio
async def test_a_server_that_throttles_after_n_connections_gives_one_answer(
    tls: ssl.SSLContext, concurrency: int
) -> None:
    """The flaky ground-truth test in small: an SMTP server with a cleartext and an
    implicit-TLS port that answers 421 after its third connection. Which port has
    the lower number decided which service the third connection belonged to (every
    time with --concurrency 1, which ran the services in port order; by a race of a
    TLS handshake against a token of the rate limiter otherwise); now the findings
    are the same either way, and both services say they were throttled."""
    script = dataclasses.replace(
        SLOPPY_SMTP,
        turn_away=lambda n: "421 4.7.0 Too many connections\r\n" if n > 3 else None,
    )
    outcomes = []
    for implicit_first in (False, True, False, True):
        async with _pair(script, tls, implicit_first=implicit_first) as (_, clear, implicit):
            options = _options(clear.port, implicit.port, concurrency=concurrency)
            report = await scan(["127.0.0.1"], options)
        outcomes.append(
            {(s.tls_mode.value, f.id, f.status.value) for s in report.services for f in s.findings}
        )
    assert all(outcome == outcomes[0] for outcome in outcomes), outcomes
    assert ("cleartext", "ST-11", "fail") in outcomes[0]
    assert ("implicit", "ST-11", "fail") in outcomes[0]

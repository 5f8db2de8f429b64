"""The mail checks (recognise + audit_mail) against the lab's real servers: Debian's
Dovecot in several configurations, aiosmtpd as a submission server, and the lab's
deliberately flawed toys (tests/scanlab.py says what each one is, and
tests/integration/scanner/test_lab.py proves it with ordinary clients).

Each case names the exact set of mail-check IDs that must fail on one endpoint;
everything else must pass, and nothing may be left not tested. The TLS and
certificate families are tlsaudit's, not checked here."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from imapguard.scanner import mail
from imapguard.scanner.model import Protocol, Severity, Status, TlsMode
from imapguard.scanner.net import Network, NetworkSettings
from tests.scanlab import (
    SERVER_NAME,
    LabDovecot,
    LabEndpoint,
    ScanLab,
    ThrottlingSmtp,
    scanlab,
)

__all__ = ["scanlab"]  # the session fixture, imported so pytest finds it

pytestmark = pytest.mark.dovecot

#: Generous for loopback under load; a hang fails instead of blocking.
_TIMEOUT = 10.0
#: The most connections one endpoint may cost, recognise() included.
_BUDGET = 8

_C, _I = "cleartext", "implicit"

#: kind -> {(protocol, cleartext|implicit): the IDs that must fail there}.
EXPECTED: Mapping[str, Mapping[tuple[str, str], frozenset[str]]] = {
    "dovecot:good": {
        ("imap", _C): frozenset({"ST-10"}),
        ("imap", _I): frozenset(),
        ("pop3", _C): frozenset({"ST-10"}),
        ("pop3", _I): frozenset(),
    },
    "dovecot:plaintext": {
        ("imap", _C): frozenset({"EXP-01", "AUTH-01", "AUTH-02", "AUTH-05", "ST-10"}),
        ("imap", _I): frozenset(),
        ("pop3", _C): frozenset({"EXP-02", "AUTH-03", "AUTH-05", "ST-10"}),
        ("pop3", _I): frozenset(),
    },
    "dovecot:no_starttls": {
        ("imap", _C): frozenset({"EXP-01", "EXP-07", "ST-01"}),
        ("pop3", _C): frozenset({"EXP-02", "EXP-07", "ST-01"}),
    },
    "dovecot:open": {
        ("imap", _C): frozenset({"EXP-01", "EXP-07", "ST-01", "AUTH-01", "AUTH-02", "AUTH-05"}),
        ("pop3", _C): frozenset({"EXP-02", "EXP-07", "ST-01", "AUTH-03", "AUTH-05"}),
    },
    # TLS 1.0 is tlsaudit's business; the mail checks still reach the other side.
    "dovecot:tls10": {
        ("imap", _C): frozenset({"ST-10"}),
        ("pop3", _I): frozenset(),
    },
    "dovecot:banner": {
        ("imap", _C): frozenset({"BAN-01", "BAN-02", "ST-10"}),
        ("imap", _I): frozenset({"BAN-01", "BAN-02"}),
        ("pop3", _C): frozenset({"BAN-01", "ST-10"}),
    },
    # aiosmtpd 1.4.6 answers a second STARTTLS inside TLS with 220 (no check for an
    # active TLS layer in smtp_STARTTLS): a true ST-05.
    "submission:auth_before_tls": {
        ("smtp", _C): frozenset({"EXP-03", "AUTH-04", "AUTH-05", "ST-05", "ST-10"}),
        ("smtp", _I): frozenset(),
    },
    "submission:tls_required": {
        ("smtp", _C): frozenset({"ST-05", "ST-10"}),
        ("smtp", _I): frozenset(),
    },
    "imap:inject_cleartext": {("imap", _C): frozenset({"ST-07", "ST-10"})},
    "imap:inject_tls": {("imap", _C): frozenset({"ST-07", "ST-10"})},
    "imap:safe": {("imap", _C): frozenset({"ST-10"}), ("imap", _I): frozenset()},
    "pop3:inject_cleartext": {("pop3", _C): frozenset({"ST-07", "ST-10"})},
    "pop3:inject_tls": {("pop3", _C): frozenset({"ST-07", "ST-10"})},
    "pop3:safe": {("pop3", _C): frozenset({"ST-10"}), ("pop3", _I): frozenset()},
    "smtp:inject_cleartext": {("smtp", _C): frozenset({"ST-07", "ST-10"})},
    "smtp:inject_tls": {("smtp", _C): frozenset({"ST-07", "ST-10"})},
    "smtp:safe": {("smtp", _C): frozenset({"ST-10"}), ("smtp", _I): frozenset()},
    "imap:starttls_unadvertised": {("imap", _C): frozenset({"EXP-01", "ST-01", "ST-03", "ST-10"})},
    "pop3:stls_unadvertised": {("pop3", _C): frozenset({"EXP-02", "ST-01", "ST-03", "ST-10"})},
    "imap:starttls_after_tls": {("imap", _C): frozenset({"ST-04", "ST-10"})},
    "smtp:starttls_after_tls": {("smtp", _C): frozenset({"ST-04", "ST-10"})},
    "smtp:second_starttls": {("smtp", _C): frozenset({"ST-05", "ST-10"})},
    "imap:implicit_starttls_ok": {
        ("imap", _C): frozenset({"ST-10"}),
        ("imap", _I): frozenset({"ST-06"}),
    },
    "smtp:no_reset": {("smtp", _C): frozenset({"ST-08", "ST-10"})},
    "imap:anonymous": {("imap", _I): frozenset({"AUTH-06"})},
    "smtp:vrfy": {("smtp", _C): frozenset({"AUTH-08", "ST-10"})},
    "imap:legacy_sasl": {("imap", _I): frozenset({"AUTH-09"})},
    "pop3:versioned": {
        ("pop3", _C): frozenset({"BAN-01", "BAN-02", "ST-10"}),
        ("pop3", _I): frozenset({"BAN-01", "BAN-02"}),
    },
    "imap:id_version": {("imap", _I): frozenset({"BAN-02"})},
    "smtp:internal_name": {("smtp", _C): frozenset({"BAN-03", "ST-10"})},
}

CASES = [
    pytest.param(kind, protocol, mode, ids, id=f"{kind}-{protocol}-{mode}")
    for kind, endpoints in EXPECTED.items()
    for (protocol, mode), ids in endpoints.items()
]


def endpoint(lab: ScanLab, kind: str, protocol: str, mode: str) -> LabEndpoint:
    server = lab.get(kind)
    return next(
        e for e in server.endpoints if e.protocol == protocol and e.implicit_tls is (mode == _I)
    )


def network() -> Network:
    return Network(NetworkSettings(timeout=_TIMEOUT))


async def audit(ep: LabEndpoint, net: Network) -> tuple[mail.Recognised, mail.MailResult]:
    rec = await mail.recognise(net, ep.address, ep.port, server_name=SERVER_NAME)
    assert rec is not None, ep
    result = await mail.audit_mail(net, ep.address, ep.port, rec, server_name=SERVER_NAME)
    return rec, result


@pytest.mark.asyncio
@pytest.mark.parametrize(("kind", "protocol", "mode", "expected"), CASES)
async def test_mail_checks_find_exactly_the_lab_flaws(
    scanlab: ScanLab, kind: str, protocol: str, mode: str, expected: frozenset[str]
) -> None:
    ep = endpoint(scanlab, kind, protocol, mode)
    net = network()
    rec, result = await audit(ep, net)
    assert rec.protocol is Protocol(protocol)
    assert rec.tls_mode is (TlsMode.IMPLICIT if ep.implicit_tls else TlsMode.CLEARTEXT)
    assert rec.throttled is None
    failed = {f.id for f in result.findings if f.status is Status.FAIL}
    not_tested = [(f.id, f.evidence) for f in result.findings if f.status is Status.NOT_TESTED]
    assert failed == expected, result.findings
    assert not_tested == []
    assert net.connections <= _BUDGET
    if ep.implicit_tls:
        assert result.starttls_works is None
        assert result.capabilities_before_tls == ()
        assert result.capabilities_after_tls != ()
    elif "EXP-07" not in expected:
        assert result.starttls_works is True
        assert result.capabilities_after_tls != ()
    # Evidence quotes the wire, never the probe's password.
    for f in result.findings:
        for line in f.evidence:
            assert "\r" not in line
            assert "\n" not in line


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", ["good", "plaintext"])
async def test_the_probe_is_evaluated_only_where_dovecot_allows_cleartext(
    scanlab: ScanLab, profile: str
) -> None:
    """Dovecot's own log is the witness: with `disable_plaintext_auth = no` the probe
    reaches the passdb lookup (AUTH-05 fails, EXP-01 critical); otherwise the login
    process refuses it before any lookup (NO [PRIVACYREQUIRED])."""
    server = scanlab.dovecot(profile)
    assert isinstance(server, LabDovecot)
    ep = endpoint(scanlab, f"dovecot:{profile}", "imap", _C)
    _, result = await audit(ep, network())
    lookup = f"passwd-file({mail.PROBE_USER},"
    if profile == "plaintext":
        probe = next(f for f in result.findings if f.id == "AUTH-05")
        assert probe.evidence[0] == f"C: s1 LOGIN {mail.PROBE_USER} ***"
        assert probe.evidence[1].startswith("S: s1 NO [AUTHENTICATIONFAILED]")
        exposure = next(f for f in result.findings if f.id == "EXP-01")
        assert exposure.severity is Severity.CRITICAL
        assert lookup in server.log_text()
    else:
        assert "AUTH-05" not in {f.id for f in result.findings}
        assert lookup not in server.log_text()
        assert {"STARTTLS", "LOGINDISABLED"} <= set(result.capabilities_before_tls)
        assert "LOGINDISABLED" not in result.capabilities_after_tls
        assert "AUTH=PLAIN" in result.capabilities_after_tls


@pytest.mark.asyncio
async def test_preauth_on_cleartext(scanlab: ScanLab) -> None:
    ep = endpoint(scanlab, "imap:preauth", "imap", _C)
    rec, result = await audit(ep, network())
    assert rec.banner.startswith("* PREAUTH")
    failed = {f.id for f in result.findings if f.status is Status.FAIL}
    # STARTTLS is impossible once authenticated (RFC 9051 §6.2.1): no STARTTLS at all.
    assert failed == {"ST-09", "EXP-01", "ST-01", "EXP-07"}
    exp07 = next(f for f in result.findings if f.id == "EXP-07")
    assert "RFC 9051 §6.2.1" in exp07.evidence[1]
    # Nothing else that needs an unauthenticated session can run: not tested, never passed.
    not_tested = {f.id for f in result.findings if f.status is Status.NOT_TESTED}
    assert {"ST-02", "AUTH-01", "AUTH-05", "ST-07"} <= not_tested
    assert not not_tested & failed
    assert all("PREAUTH" in f.evidence[0] for f in result.findings if f.id in not_tested)


@pytest.mark.asyncio
async def test_throttling_is_reported_not_judged() -> None:
    """After two connections the server answers 421: what ran stands, the rest is
    not tested, ST-11 says so, and the address is marked throttled."""
    with ThrottlingSmtp(after=2, implicit_twin=False) as server:
        (ep,) = server.endpoints
        net = network()
        rec, result = await audit(ep, net)
    assert rec.throttled is None  # connection 1
    failed = {f.id for f in result.findings if f.status is Status.FAIL}
    not_tested = {f.id for f in result.findings if f.status is Status.NOT_TESTED}
    assert failed == {"ST-10", "ST-11"}  # connection 2 was the main dialog
    assert not_tested == {"AUTH-05", "ST-07", "EXP-03"}
    assert net.throttled(ep.address) is not None
    st11 = next(f for f in result.findings if f.id == "ST-11")
    assert "421" in st11.evidence[0]
    assert server.connections == 3  # and no retry storm after the 421

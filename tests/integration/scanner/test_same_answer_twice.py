"""Issue 9, part C: "the scanner gives the same answer twice". Each test reproduces one
report of the issue against real servers and would fail on fe8455c:

* three scans in a row of a Dovecot with its own authentication delays graded port 143
  F, then C, then C: the dummy-credential probe (AUTH-05) of one scan made Dovecot's
  auth penalty delay the next scan's answer past --timeout;
* a real `imapguard serve` and a Dovecot on one address: the gateway's STARTTLS port
  was paired with Dovecot's implicit-TLS port as twins, with a false CERT-09 on both;
  two Dovecots with different certificates on one address, likewise;
* the fix text of TLS-06 on imapguard named Dovecot's ssl_alt_cert.

The headline that contradicted the body is tests/unit/scanner/test_report.py's and, in
a browser, test_html_chromium.py's; the throttling server that graded differently from
run to run is test_scan_ground_truth.py's and tests/unit/scanner/test_run.py's.

The scanner connects from 127.0.0.1, as everywhere in the scanner lab (tests/scanlab.py
says why); the gateway here is this module's own, so no other test shares its limits.
"""

from __future__ import annotations

import imaplib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from imapguard.scanner.catalog import block_software, fix_blocks
from imapguard.scanner.model import Software
from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.scanlab import (
    SERVER_NAME,
    LabConfig,
    LabDovecot,
    free_port_on,
    lab_address,
    lab_pki,
)

pytestmark = pytest.mark.dovecot

#: Dovecot as the issue's user had it: STARTTLS offered, cleartext login allowed, and
#: Dovecot's own delays after failed logins (auth_failure_delay 2 s, anvil's penalty).
PENALISING = LabConfig(ssl="yes", plaintext_auth=True, auth_penalty=True)
#: The scanner's default --timeout: an answer slower than this was "not tested" before.
DEFAULT_TIMEOUT = 5.0


def _scan(*targets: str, out: Path | None = None) -> dict[str, Any]:
    """`imapguard scan TARGET... --format json`, as a user runs it, trusting the lab."""
    args = [sys.executable, "-m", "imapguard.cli", "scan", *targets, "--format", "json"]
    args += ["--ca-file", str(lab_pki().ca_cert), "--server-name", SERVER_NAME]
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    if out is not None:
        out.write_text(done.stdout)
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _verdicts(report: dict[str, Any]) -> dict[int, Any]:
    """What must not change between two scans of an unchanged server: per port, the
    grade and its reasons, and every finding (status, severity, evidence, fix)."""
    return {
        s["port"]: (
            s["grade"],
            s["grade_reasons"],
            s["complete"],
            s["software"],
            [(f["id"], f["status"], f["severity"], f["evidence"], f["fix"]) for f in s["findings"]],
        )
        for s in report["services"]
    }


def _service(report: dict[str, Any], port: int) -> dict[str, Any]:
    return next(s for s in report["services"] if s["port"] == port)


def _ids(service: dict[str, Any], status: str = "fail") -> set[str]:
    return {f["id"] for f in service["findings"] if f["status"] == status}


def _login_seconds(address: str, port: int) -> float:
    """How long Dovecot takes to refuse a wrong password from 127.0.0.1 right now."""
    began = time.monotonic()
    client = imaplib.IMAP4(address, port, timeout=60)
    try:
        # Under load Dovecot sometimes answers a delayed login with NO [UNAVAILABLE]
        # ("Temporary authentication failure"); either way the wait is what counts.
        with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED|UNAVAILABLE"):
            client.login("nobody-here", "wrong")
    finally:
        client.shutdown()
    return time.monotonic() - began


def test_three_scans_of_dovecot_with_its_auth_penalty_give_the_same_report(
    tmp_path: Path,
) -> None:
    """The issue's three scans in a row: F, then C, then C, because each AUTH-05 probe
    failed a login and Dovecot then delayed the next one (2, 4, 8, 15 s, plus its 2 s
    auth_failure_delay) past the 5 s --timeout. Now all three reports agree: F."""
    with LabDovecot.create(tmp_path / "dovecot", PENALISING) as server:
        target = f"{server.address}:{server.imap_port}"
        reports = [_scan(target, out=tmp_path / f"scan-{n}.json") for n in (1, 2, 3)]
        # The penalty was real: by now a login waits longer than the default --timeout.
        assert _login_seconds(server.address, server.imap_port) > DEFAULT_TIMEOUT
    first = _verdicts(reports[0])
    assert _verdicts(reports[1]) == first
    assert _verdicts(reports[2]) == first
    imap = _service(reports[2], server.imap_port)
    assert imap["grade"] == "F"
    assert {"AUTH-05", "EXP-01", "EXP-05"} <= _ids(imap)  # no twin among the ports scanned
    assert _ids(imap, "not_tested") == set()
    assert imap["software"] == {"name": "Dovecot", "evidence": 'ID name "Dovecot"'}


# -- twins only within one server ------------------------------------------------------


@pytest.fixture
def gateway_beside_dovecot(
    tmp_path: Path, dovecot: DovecotServer
) -> Iterator[tuple[LabDovecot, int]]:
    """A lab Dovecot (IMAP and POP3, each with its implicit-TLS twin) and a real
    `imapguard serve` with one STARTTLS listener on the same address. The gateway's
    certificate comes from the lab CA for the same names as Dovecot's (SERVER_NAME and
    the address), so only the software tells the two apart; it is ECDSA, so its TLS 1.2
    lacks TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (TLS-06, RFC 9051 §11.1). Its upstream
    is the session's test Dovecot; the scan never logs in, so it never goes there."""
    address = lab_address()
    with LabDovecot.create(tmp_path / "lab", "good", addresses=[address]) as lab:
        port = free_port_on([address], exclude=[e.port for e in lab.endpoints])
        gateway = GatewayProcess.create(
            tmp_path / "gateway",
            dovecot,
            extra_toml=f'\n[[listen]]\naddress = "{address}:{port}"\ntls = "starttls"\n',
        )
        leaf = lab_pki().ca.issue_cert(SERVER_NAME, address, key_type=trustme.KeyType.ECDSA)
        (gateway.base / "gateway.pem").write_bytes(
            b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        )
        leaf.private_key_pem.write_to_path(str(gateway.base / "gateway.key"))
        gateway.start()
        try:
            yield lab, port
        finally:
            gateway.stop()


def test_the_gateway_and_the_dovecot_on_one_address_are_not_twins(
    gateway_beside_dovecot: tuple[LabDovecot, int],
) -> None:
    """The gateway's STARTTLS port was paired with Dovecot's implicit-TLS port and both
    got a false CERT-09 (two certificates for one name). Now the gateway is recognised,
    has no twin of its own (EXP-05, naming Dovecot's port as another server), and
    Dovecot's own ports pair with each other; no CERT-09 anywhere."""
    lab, gateway_port = gateway_beside_dovecot
    targets = [f"{e.address}:{e.port}" for e in lab.endpoints]
    report = _scan(*targets, f"{lab.address}:{gateway_port}")
    gateway = _service(report, gateway_port)
    assert gateway["software"]["name"] == "imapguard"
    assert "IMAP gateway ready." in gateway["software"]["evidence"]
    assert all(_service(report, e.port)["software"]["name"] == "Dovecot" for e in lab.endpoints)
    for service in report["services"]:
        assert "CERT-09" not in _ids(service) | _ids(service, "not_tested"), service["port"]
    exp05 = next(f for f in gateway["findings"] if f["id"] == "EXP-05")
    assert exp05["evidence"] == [
        f"IMAP in cleartext on port {gateway_port}; no implicit-TLS IMAP of the same server"
        " on any scanned port",
        f"port {lab.imaps_port} is another server, not its twin: {lab.address}:{gateway_port}"
        f" is imapguard, {lab.address}:{lab.imaps_port} is Dovecot",
    ]
    for cleartext in (lab.imap_port, lab.pop3_port):
        assert "EXP-05" not in _ids(_service(report, cleartext))


def test_fix_texts_on_imapguard_are_imapguards(
    gateway_beside_dovecot: tuple[LabDovecot, int],
) -> None:
    """TLS-06 on the gateway: its fix is the [tls] certificate of imapguard.toml, never
    Dovecot's ssl_alt_cert; no fix on the gateway names another server's settings,
    while the same checks on Dovecot keep Dovecot's."""
    lab, gateway_port = gateway_beside_dovecot
    report = _scan(f"{lab.address}:{gateway_port}", f"{lab.address}:{lab.imap_port}")
    gateway = _service(report, gateway_port)
    by_id = {f["id"]: f for f in gateway["findings"] if f["status"] == "fail"}
    assert "TLS-06" in by_id
    tls06 = by_id["TLS-06"]["fix"]
    assert "ssl_alt_cert" not in tls06
    assert "[tls]" in tls06
    assert 'certificate = "/etc/letsencrypt/live/mail.example.org/fullchain.pem"' in tls06
    for found in by_id.values():
        for label, _ in fix_blocks(found["fix"]):
            assert block_software(label) <= {Software.IMAPGUARD}, (found["id"], label)
        assert "Dovecot 2.3" not in found["fix"], found["id"]
    dovecot = _service(report, lab.imap_port)
    st10 = next(f for f in dovecot["findings"] if f["id"] == "ST-10")
    assert "Dovecot 2.3 and 2.4" in st10["fix"]


def test_two_dovecots_with_different_certificates_on_one_address_are_not_twins(
    tmp_path: Path,
) -> None:
    """Same software, different certificate identity (mail.lab.test and the address,
    or only other.lab.test): each cleartext port pairs with its own server's twin, so
    no false CERT-09 between the two servers, and no EXP-05."""
    address = lab_address()
    with (
        LabDovecot.create(tmp_path / "a", "good", addresses=[address]) as first,
        LabDovecot.create(tmp_path / "b", "wrong_name", addresses=[address]) as second,
    ):
        targets = [f"{e.address}:{e.port}" for s in (first, second) for e in s.endpoints]
        report = _scan(*targets)
    assert len(report["services"]) == 8
    for service in report["services"]:
        assert "CERT-09" not in _ids(service), service["port"]
        assert "EXP-05" not in _ids(service) | _ids(service, "not_tested"), service["port"]
    # Each server's own pair is still compared: same certificate and policy, nothing to say.
    assert "CERT-02" in _ids(_service(report, second.imap_port))
    assert "CERT-02" not in _ids(_service(report, first.imap_port))

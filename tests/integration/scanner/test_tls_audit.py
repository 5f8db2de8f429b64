"""`tlsaudit.audit_tls` against real TLS servers on loopback.

The servers:
- ``openssl s_server`` (Debian's OpenSSL 3) with trustme certificates: a good one (TLS 1.2
  and 1.3, ECDHE with AEAD only), a legacy one (TLS 1.0 only, ``ALL:@SECLEVEL=0``, which
  includes anonymous suites), and good TLS with an expired, a self-signed and a wrong-name
  certificate;
- Dovecot (tests/dovecot.py): IMAP STARTTLS and implicit IMAPS, Dovecot's default cipher
  list, a trustme ECDSA certificate for ``localhost``;
- the scanner lab (tests/scanlab.py): Dovecot's POP3 STARTTLS (STLS), and aiosmtpd's
  SMTP STARTTLS and implicit-TLS submission.

Everything is audited in one `audit_tls` call with one --ca-file holding every test CA
(sslyze opens about 600 connections per port: 1-3 s against these servers, about 9 s
against the lab Dovecot), so each test below only reads its part of the result. Each
test asserts the exact set of IDs of the endpoint, and names the IDs that must not appear.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from imapguard.scanner.model import Finding, Protocol, Severity, Status, TlsMode
from imapguard.scanner.tlsaudit import TlsResult, TlsTarget, audit_tls, twin_findings
from tests.dovecot import DovecotServer, free_port
from tests.scanlab import SERVER_NAME as LAB_NAME
from tests.scanlab import ScanLab, scanlab, self_signed

__all__ = ["scanlab"]  # the session fixture, imported so pytest finds it

pytestmark = pytest.mark.dovecot

NAME = "mail.imapguard.test"
OTHER = "other.imapguard.test"
#: Accepted by a modern server: ECDHE key exchange, AEAD ciphers (Mozilla intermediate).
MODERN = "ECDHE+AESGCM:ECDHE+CHACHA20"
TIMEOUT = 5.0

# -- openssl s_server --------------------------------------------------------------------


@contextlib.contextmanager
def s_server(pem: Path, log: Path, *options: str) -> Iterator[int]:
    """``openssl s_server`` on a free 127.0.0.1 port with `pem` (key and chain); yields
    the port, and stops the process on exit."""
    for _ in range(3):
        port = free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    "openssl",
                    "s_server",
                    "-accept",
                    f"127.0.0.1:{port}",
                    "-cert",
                    str(pem),
                    "-key",
                    str(pem),
                    "-www",  # answers by itself, never reads stdin
                    "-quiet",
                    *options,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        if proc.poll() is None:
            break
        proc.wait()  # the port was taken between free_port() and bind(): try another
    else:
        pytest.fail(f"openssl s_server did not start: {log.read_text(errors='replace')}")
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def self_signed_pem(path: Path) -> Path:
    cert, key = self_signed((), dt.datetime.now(dt.UTC), NAME)
    path.write_bytes(key + cert)
    return path


# -- the audit ------------------------------------------------------------------------------


class Audit:
    def __init__(self, results: dict[str, TlsResult], ca_file: Path, good: TlsTarget) -> None:
        self.results = results
        self.ca_file = ca_file
        self.good = good

    def ids(self, key: str) -> set[str]:
        return {f.id for f in self.results[key].findings if f.status is Status.FAIL}

    def finding(self, key: str, check_id: str) -> Finding:
        [f] = [f for f in self.results[key].findings if f.id == check_id]
        return f

    def severity(self, key: str, check_id: str) -> Severity:
        return self.finding(key, check_id).severity

    def not_tested(self, key: str) -> set[str]:
        return {f.id for f in self.results[key].findings if f.status is Status.NOT_TESTED}


@pytest.fixture(scope="module")
def audit(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer, scanlab: ScanLab
) -> Iterator[Audit]:
    base = tmp_path_factory.mktemp("tlsaudit")
    now = dt.datetime.now(dt.UTC)
    ca = trustme.CA(key_type=trustme.KeyType.RSA)

    def leaf(name: str, *, start: dt.timedelta, end: dt.timedelta, file: str) -> Path:
        cert = ca.issue_cert(
            name,
            "127.0.0.1",
            key_type=trustme.KeyType.RSA,
            not_before=now + start,
            not_after=now + end,
        )
        path = base / file
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path

    day = dt.timedelta(days=1)
    good = leaf(NAME, start=-day, end=90 * day, file="good.pem")
    expired = leaf(NAME, start=-120 * day, end=-30 * day, file="expired.pem")
    wrong = leaf(OTHER, start=-day, end=90 * day, file="wrong.pem")
    self_signed = self_signed_pem(base / "self-signed.pem")

    lab = scanlab.dovecot("good")
    submission = scanlab.submission(auth_before_tls=False)
    assert submission.implicit_port is not None

    ca_file = base / "cas.pem"
    ca_file.write_bytes(
        ca.cert_pem.bytes() + dovecot.ca_cert.read_bytes() + lab.ca_cert.read_bytes()
    )
    log = base / "s_server.log"
    with contextlib.ExitStack() as stack:
        ports = {
            "good": stack.enter_context(s_server(good, log, "-cipher", MODERN)),
            "legacy": stack.enter_context(
                s_server(good, log, "-tls1", "-cipher", "ALL:@SECLEVEL=0")
            ),
            "expired": stack.enter_context(s_server(expired, log, "-cipher", MODERN)),
            "self_signed": stack.enter_context(s_server(self_signed, log, "-cipher", MODERN)),
            "wrong_name": stack.enter_context(s_server(wrong, log, "-cipher", MODERN)),
        }
        targets = [
            TlsTarget(key, "127.0.0.1", port, Protocol.IMAP, TlsMode.IMPLICIT, NAME)
            for key, port in ports.items()
        ]
        targets += [
            TlsTarget(
                "imap",
                "127.0.0.1",
                dovecot.imap_port,
                Protocol.IMAP,
                TlsMode.CLEARTEXT,
                "localhost",
            ),
            # No name: the certificate is checked against the address (an IP SAN).
            TlsTarget(
                "imaps", "127.0.0.1", dovecot.imaps_port, Protocol.IMAP, TlsMode.IMPLICIT, None
            ),
            TlsTarget(
                "pop3", lab.address, lab.pop3_port, Protocol.POP3, TlsMode.CLEARTEXT, LAB_NAME
            ),
            TlsTarget(
                "smtp",
                submission.address,
                submission.port,
                Protocol.SMTP,
                TlsMode.CLEARTEXT,
                LAB_NAME,
            ),
            TlsTarget(
                "smtps",
                submission.address,
                submission.implicit_port,
                Protocol.SMTP,
                TlsMode.IMPLICIT,
                LAB_NAME,
            ),
        ]
        results = audit_tls(targets, ca_file=ca_file, timeout=TIMEOUT, concurrency=8, per_host=4)
        good_target = targets[0]
        yield Audit(results, ca_file, good_target)


# -- openssl s_server ----------------------------------------------------------------------


def test_good_server(audit: Audit) -> None:
    result = audit.results["good"]
    # Only the info note that the trustme certificate carries no revocation pointers.
    assert audit.ids("good") == {"CERT-08"}
    assert audit.not_tested("good") == set()
    assert not audit.ids("good") & {"TLS-02", "TLS-03", "TLS-05", "TLS-07", "CERT-01", "CERT-02"}
    assert result.tls_versions == ("TLSv1.2", "TLSv1.3")
    cert = result.certificate
    assert cert["trusted"] is True
    assert cert["name_match"] == "matched"
    assert cert["san"] == [NAME, "127.0.0.1"]
    assert cert["key"] == "RSA 2048"
    assert cert["signature"] == "sha256"
    assert 88 <= cert["days_left"] <= 90
    assert "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" in result.policy["suites"]["TLSv1.2"]


def test_good_server_without_the_private_ca_is_untrusted(audit: Audit) -> None:
    # Only Mozilla's roots: the same server now fails CERT-01, and only that changes.
    results = audit_tls([audit.good], ca_file=None, timeout=TIMEOUT, concurrency=4, per_host=4)
    result = results[audit.good.key]
    ids = {f.id for f in result.findings if f.status is Status.FAIL}
    assert ids == {"CERT-01", "CERT-08"}
    [cert01] = [f for f in result.findings if f.id == "CERT-01"]
    assert cert01.severity is Severity.HIGH
    assert "Mozilla's root store" in " ".join(cert01.evidence)
    assert "--ca-file" not in " ".join(cert01.evidence)
    assert result.certificate["trusted"] is False


def test_legacy_server(audit: Audit) -> None:
    result = audit.results["legacy"]
    assert audit.ids("legacy") == {"TLS-02", "TLS-03", "TLS-04", "TLS-05", "TLS-08", "CERT-08"}
    assert audit.not_tested("legacy") == set()
    # OpenSSL 3 cannot serve SSLv3; the certificate is the good one.
    assert not audit.ids("legacy") & {"TLS-01", "CERT-01", "CERT-02", "CERT-03"}
    assert result.tls_versions == ("TLSv1.0",)
    assert audit.severity("legacy", "TLS-02") is Severity.HIGH
    assert audit.severity("legacy", "TLS-03") is Severity.MEDIUM  # TLS 1.2 missing
    assert audit.severity("legacy", "TLS-04") is Severity.CRITICAL  # anonymous suites
    tls04 = audit.finding("legacy", "TLS-04")
    assert "TLS_DH_anon_WITH_AES_128_CBC_SHA (anonymous; TLSv1.0)" in tls04.evidence[0]


def test_expired_certificate(audit: Audit) -> None:
    assert audit.ids("expired") == {"CERT-03", "CERT-08"}
    # The chain is valid at the leaf's own time: expiry is not also a trust failure.
    assert not audit.ids("expired") & {"CERT-01", "CERT-02", "TLS-02", "TLS-05"}
    assert audit.severity("expired", "CERT-03") is Severity.CRITICAL
    assert audit.results["expired"].certificate["days_left"] in (-30, -31)


def test_self_signed_certificate(audit: Audit) -> None:
    assert audit.ids("self_signed") == {"CERT-01", "CERT-08"}
    assert not audit.ids("self_signed") & {"CERT-02", "CERT-03", "CERT-04"}
    assert "the leaf is self-signed" in audit.finding("self_signed", "CERT-01").evidence


def test_wrong_name(audit: Audit) -> None:
    assert audit.ids("wrong_name") == {"CERT-02", "CERT-08"}
    assert not audit.ids("wrong_name") & {"CERT-01", "CERT-03"}
    assert audit.severity("wrong_name", "CERT-02") is Severity.HIGH
    assert audit.results["wrong_name"].certificate["name_match"] == "mismatch"


# -- Dovecot ----------------------------------------------------------------------------------


def test_dovecot_imap_starttls_and_imaps(audit: Audit) -> None:
    # Dovecot 2.3's default ssl_cipher_list keeps CBC suites (TLS-05), follows the
    # client's order (TLS-07), and the fixture's ECDSA certificate cannot do
    # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (TLS-06); its trustme leaf is valid from
    # 2000 to 3000, which is no CERT-07 for a private CA.
    expected = {"TLS-05", "TLS-06", "TLS-07", "CERT-08"}
    for key in ("imap", "imaps"):
        assert audit.ids(key) == expected, key
        assert audit.not_tested(key) == set(), key
        assert not audit.ids(key) & {"TLS-02", "CERT-01", "CERT-02", "CERT-07"}, key
        assert audit.results[key].tls_versions == ("TLSv1.2", "TLSv1.3")
        assert audit.results[key].certificate["key"] == "EC 256"
    # One certificate and one policy on both ports: no CERT-09.
    assert twin_findings("imap", audit.results["imap"], "imaps", audit.results["imaps"]) == []


def test_lab_pop3_starttls(audit: Audit) -> None:
    # The lab Dovecot forks a login process per connection: about 9 s for sslyze's ~600
    # connections, so only its STLS port is audited (implicit TLS is covered by IMAPS).
    assert audit.ids("pop3") == {"CERT-08"}
    assert audit.not_tested("pop3") == set()
    assert not audit.ids("pop3") & {"TLS-05", "TLS-07", "CERT-01", "CERT-02"}
    assert audit.results["pop3"].tls_versions == ("TLSv1.2", "TLSv1.3")
    assert audit.results["pop3"].certificate["name_match"] == "matched"


def test_lab_smtp_starttls_and_smtps(audit: Audit) -> None:
    for key in ("smtp", "smtps"):
        assert audit.ids(key) == {"CERT-08"}, key
        assert audit.not_tested(key) == set(), key
        assert not audit.ids(key) & {"TLS-05", "TLS-09", "CERT-01", "CERT-02"}, key
        assert audit.results[key].tls_versions == ("TLSv1.2", "TLSv1.3")


def test_twins_that_differ(audit: Audit) -> None:
    [f] = twin_findings("imap", audit.results["imap"], "good", audit.results["good"])
    assert (f.id, f.status) == ("CERT-09", Status.FAIL)
    text = " | ".join(f.evidence)
    assert "certificate: imap sha256 " in text
    assert audit.results["good"].certificate["sha256"] in text
    assert "TLSv1.2 suites only on imap:" in text

"""What a listener's certificate and key files must hold, said before OpenSSL
reads them (`server_pair_problems`, `ca_file_problem`), and when a certificate
is announced as expired or about to (`expiry_warning`). Messages name the files,
never what is in them."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from imapguard.tls import (
    EXPIRY_WARNING_DAYS,
    ca_file_problem,
    expiry_warning,
    server_pair_problems,
)
from tests.pem import write_pair

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_pair(cert, key)
    return cert, key


def test_a_matching_pair_has_no_problem(pair: tuple[Path, Path]) -> None:
    assert server_pair_problems(str(pair[0]), str(pair[1])) == {}


def test_the_key_of_another_certificate_is_named(pair: tuple[Path, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other))
    problems = server_pair_problems(str(pair[0]), str(other))
    assert problems == {
        "private_key": f"{other} does not match the certificate in {pair[0]} "
        "(the key of another certificate?)"
    }
    assert "PRIVATE" not in problems["private_key"]  # no key material


def test_a_der_certificate_is_not_pem(pair: tuple[Path, Path], tmp_path: Path) -> None:
    from cryptography import x509

    der = tmp_path / "cert.der"
    cert = x509.load_pem_x509_certificate(pair[0].read_bytes())
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    assert server_pair_problems(str(der), str(pair[1])) == {
        "certificate": f"{der} is not PEM (convert a DER file with "
        "`openssl x509 -inform der -in FILE -out FILE.pem`)"
    }


def test_a_key_in_the_certificate_slot_and_back(pair: tuple[Path, Path]) -> None:
    cert, key = pair
    assert server_pair_problems(str(key), str(key)) == {
        "certificate": f"{key} holds no certificate (-----BEGIN CERTIFICATE-----), "
        "only EC PRIVATE KEY"
    }
    assert server_pair_problems(str(cert), str(cert)) == {
        "private_key": f"{cert} holds no private key (-----BEGIN PRIVATE KEY-----)"
    }


def test_an_encrypted_key_is_named(pair: tuple[Path, Path], tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pair[1].read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    assert server_pair_problems(str(pair[0]), str(locked)) == {
        "private_key": f"{locked} is encrypted: the gateway needs it without a passphrase"
    }


def test_a_ca_file_must_hold_pem_certificates(pair: tuple[Path, Path], tmp_path: Path) -> None:
    assert ca_file_problem(str(pair[0])) is None
    text = tmp_path / "ca.txt"
    text.write_text("not a certificate\n")
    assert ca_file_problem(str(text)) == (
        f"{text} is not PEM (convert a DER file with "
        "`openssl x509 -inform der -in FILE -out FILE.pem`)"
    )
    assert ca_file_problem(str(tmp_path / "missing.pem")) == (
        f"cannot read {tmp_path / 'missing.pem'}: No such file or directory"
    )


def test_expired_expiring_and_fine_certificates(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_pair(cert, key, not_after=NOW - datetime.timedelta(days=1))
    warning = expiry_warning(str(cert))
    assert warning is not None
    assert warning.startswith(f"{cert} expired at ")
    assert warning.endswith(" UTC: clients refuse it; renew it")

    write_pair(cert, key, not_after=NOW + datetime.timedelta(days=3, hours=5))
    warning = expiry_warning(str(cert))
    assert warning is not None
    assert warning.startswith(f"{cert} expires at ")
    assert "in 3 days 4 hours: renew it" in warning or "in 3 days 5 hours" in warning

    write_pair(cert, key, not_after=NOW + datetime.timedelta(days=EXPIRY_WARNING_DAYS + 1))
    assert expiry_warning(str(cert)) is None
    assert expiry_warning(str(tmp_path / "missing.pem")) is None  # its own check says so

"""TLS contexts for the listeners and the upstream, and the demo's certificate.

Listeners: TLS 1.2 minimum (1.3 preferred by OpenSSL), and for 1.2 only
forward-secret AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305); TLS 1.3
suites are all of that kind. No compression, no renegotiation, server order.
Upstream: the certificate is verified against `upstream.ca` (or the system
store) and the host name, always.

Client certificates (`tls.client_ca`): requested, not required (CERT_OPTIONAL),
so clients without one still connect; a certificate that is presented must chain
to that CA and be valid now, or the handshake fails. A verified certificate maps
to an account with `certificate_account`.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

__all__ = [
    "TLS12_CIPHERS",
    "certificate_account",
    "client_context",
    "generate_self_signed",
    "server_context",
]

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!DSS:!PSK:!SRP"


def server_context(
    certificate: str, private_key: str, min_version: str = "1.2", client_ca: str | None = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_ECDH_USE
    )
    ctx.load_cert_chain(certificate, private_key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=client_ca)
    return ctx


PeerCert = dict[str, Any]


def certificate_account(peercert: PeerCert, field: str) -> str | None:
    """The account a verified client certificate names (`tls.client_cert_user`):
    "email" — the first subjectAltName rfc822Name, else the subject emailAddress;
    "email-local" — that address's part before "@"; "cn" — the subject commonName.
    None when the certificate has no such field, or more than one different value
    (an ambiguous certificate names no account)."""
    emails = [v for k, v in peercert.get("subjectAltName", ()) if k == "email"]
    subject = [pair for rdn in peercert.get("subject", ()) for pair in rdn]
    if not emails:
        emails = [v for k, v in subject if k == "emailAddress"]
    if field == "cn":
        values = [v for k, v in subject if k == "commonName"]
    elif field in ("email", "email-local"):
        values = emails
        if field == "email-local":
            values = [v.rpartition("@")[0] for v in values if "@" in v]
    else:
        raise ValueError(f"unknown client_cert_user {field!r}")
    distinct = {str(v).lower() for v in values if v}
    return distinct.pop() if len(distinct) == 1 else None


def client_context(ca: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def generate_self_signed(
    directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> tuple[Path, Path]:
    """An ECDSA P-256 certificate for `names` (DNS names or IP addresses), valid a year.

    Returns (certificate, private key) paths; the key file is mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "gateway.crt"
    key_path = directory / "gateway.key"
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.chmod(0o600)
    key_path.write_bytes(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path

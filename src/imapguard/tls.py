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

Revocation (`tls.client_crl`): PEM CRLs, one or several concatenated, published
by the CAs of `tls.client_ca`. With them OpenSSL checks the client's certificate
("leaf", the default) or every certificate of its chain ("chain") against its
issuer's CRL in the handshake, and fails closed: a revoked certificate, a missing
CRL for its issuer or an expired CRL ends the handshake. The context is built
again on SIGHUP, so a new CRL takes effect for new connections after a reload.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.x509 import Certificate, CertificateRevocationList, Name

__all__ = [
    "TLS12_CIPHERS",
    "certificate_account",
    "client_context",
    "client_crl_problems",
    "generate_self_signed",
    "load_crls",
    "server_context",
]

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!DSS:!PSK:!SRP"


def server_context(
    certificate: str,
    private_key: str,
    min_version: str = "1.2",
    client_ca: str | None = None,
    *,
    client_crl: str | None = None,
    client_crl_check: str = "leaf",
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
        if client_crl is not None:
            # OpenSSL reads CRLs and certificates alike from a `cafile`
            # (X509_load_cert_crl_file): load_crls makes sure it holds only CRLs,
            # so the CRL file can never add a trusted CA.
            load_crls(client_crl)
            ctx.load_verify_locations(cafile=client_crl)
            ctx.verify_flags |= (
                ssl.VERIFY_CRL_CHECK_CHAIN
                if client_crl_check == "chain"
                else ssl.VERIFY_CRL_CHECK_LEAF
            )
    elif client_crl is not None:
        raise ValueError("a client CRL needs a client CA")
    return ctx


_PEM_BLOCK = re.compile(rb"-----BEGIN ([^-\r\n]{1,64})-----\r?\n.*?-----END \1-----", re.DOTALL)
_PEM_CRL = b"X509 CRL"
#: Far more CRLs than any device CA publishes; bounds the work of a wrong file.
MAX_CRLS = 256


def load_crls(path: str) -> list[CertificateRevocationList]:
    """The CRLs of a PEM file: X509 CRL blocks only, one or more. Raises OSError
    when the file cannot be read, ValueError saying what is wrong with it."""
    from cryptography import x509

    with open(path, "rb") as f:
        data = f.read()
    crls: list[CertificateRevocationList] = []
    for match in _PEM_BLOCK.finditer(data):
        label = match.group(1)
        if label != _PEM_CRL:
            raise ValueError(
                f"{path} holds a {label.decode(errors='replace')!r} block; only X509 CRL blocks "
                "belong there (CA certificates go in tls.client_ca)"
            )
        if len(crls) == MAX_CRLS:
            raise ValueError(f"{path} holds more than {MAX_CRLS} CRLs")
        try:
            crls.append(x509.load_pem_x509_crl(match.group(0)))
        except ValueError:
            raise ValueError(f"CRL {len(crls) + 1} in {path} does not parse") from None
    if data.count(b"-----BEGIN") != len(crls):
        # A block we did not read whole could still be one OpenSSL reads.
        raise ValueError(f"{path} has a PEM block that is not a whole X509 CRL")
    if not crls:
        raise ValueError(f"{path} holds no PEM CRL (-----BEGIN X509 CRL-----)")
    return crls


def client_crl_problems(
    crl_path: str, ca_path: str, now: datetime.datetime | None = None
) -> tuple[list[str], list[str]]:
    """What is wrong with `tls.client_crl` beside `tls.client_ca`: (problems that
    make the configuration invalid, warnings). Every CRL must be signed by a CA of
    `ca_path` with its issuer's name. Warnings: a CRL outside its validity period
    and a CA without a CRL, whose certificates OpenSSL would then refuse."""
    from cryptography import x509

    try:
        crls = load_crls(crl_path)
    except OSError as exc:
        return [f"cannot read {crl_path}: {exc.strerror}"], []
    except ValueError as exc:
        return [str(exc)], []
    try:
        with open(ca_path, "rb") as f:
            cas = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError):
        return [], []  # tls.client_ca has its own check
    now = now or datetime.datetime.now(datetime.UTC)
    problems: list[str] = []
    warnings: list[str] = []
    covered: set[Name] = set()
    for crl in crls:
        issuer = crl.issuer.rfc4514_string()
        named = [ca for ca in cas if ca.subject == crl.issuer]
        if not named:
            problems.append(
                f"the CRL of {issuer!r} is for no CA in tls.client_ca "
                "(add the CA that issued it there)"
            )
            continue
        signer = next((ca for ca in named if _signed_by(crl, ca)), None)
        if signer is None:
            problems.append(f"the CRL of {issuer!r} is not signed by that CA in tls.client_ca")
            continue
        covered.add(signer.subject)
        next_update = crl.next_update_utc
        if next_update is not None and next_update < now:
            warnings.append(
                f"tls.client_crl: the CRL of {issuer!r} expired at {next_update:%Y-%m-%d %H:%M} "
                "UTC: every certificate of that CA is refused until a newer one is loaded"
            )
        if crl.last_update_utc > now:
            warnings.append(
                f"tls.client_crl: the CRL of {issuer!r} is valid only from "
                f"{crl.last_update_utc:%Y-%m-%d %H:%M} UTC: until then its certificates are refused"
            )
    for ca in cas:
        if ca.subject not in covered:
            warnings.append(
                f"tls.client_crl: no CRL for {ca.subject.rfc4514_string()!r} of tls.client_ca: "
                "client certificates it issued are refused"
            )
    return problems, warnings


def _signed_by(crl: CertificateRevocationList, ca: Certificate) -> bool:
    from cryptography.hazmat.primitives.asymmetric.x448 import X448PublicKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    key = ca.public_key()
    if isinstance(key, X25519PublicKey | X448PublicKey):  # key agreement only, signs nothing
        return False
    try:
        return crl.is_signature_valid(key)
    except (TypeError, ValueError):
        return False


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

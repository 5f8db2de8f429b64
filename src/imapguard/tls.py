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

What a certificate file must hold is checked before OpenSSL reads it
(`server_pair_problems`, `ca_file_problem`), so that `check-config` and `serve`
say which file is wrong and how instead of OpenSSL's "PEM lib": PEM, not DER; a
private key that is not encrypted and belongs to the first certificate. An
expired certificate, or one that expires within `EXPIRY_WARNING_DAYS`, is a
warning (`expiry_warning`), not an error: clients that refuse it get a clear
TLS alert, and refusing to start would take the gateway down for those that
accept it too.

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
    "EXPIRY_WARNING_DAYS",
    "TLS12_CIPHERS",
    "ca_file_problem",
    "certificate_account",
    "client_context",
    "client_crl_problems",
    "expiry_warning",
    "generate_self_signed",
    "load_crls",
    "server_context",
    "server_pair_problems",
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


#: A certificate this close to its end is announced by `check-config` and at
#: start: two weeks leave time for a renewal that failed (Let's Encrypt renews at
#: 30 days left and mails at 20, 10 and 1).
EXPIRY_WARNING_DAYS = 14

_NOT_PEM = (
    "is not PEM (convert a DER file with `openssl {tool} -inform der -in FILE -out FILE.pem`)"
)


def _pem_labels(data: bytes) -> list[str]:
    return [m.group(1).decode("ascii", "replace") for m in _PEM_BLOCK.finditer(data)]


def _certificates(path: str, data: bytes) -> list[Certificate]:
    """The PEM certificates of `data` (read from `path`); ValueError saying why none."""
    from cryptography import x509

    labels = _pem_labels(data)
    if not labels:
        raise ValueError(f"{path} {_NOT_PEM.format(tool='x509')}")
    if "CERTIFICATE" not in labels:
        found = ", ".join(sorted(set(labels)))
        raise ValueError(f"{path} holds no certificate (-----BEGIN CERTIFICATE-----), only {found}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path}: a certificate in it does not parse") from None


def server_pair_problems(certificate: str, private_key: str) -> dict[str, str]:
    """What is wrong with a listener's certificate chain and private key, by
    which of the two ("certificate" or "private_key") is to blame: not PEM, no
    certificate, an encrypted or unreadable key, or a key that does not belong
    to the first certificate. Empty when OpenSSL loads the pair. Messages name
    the files, never their content."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        with open(certificate, "rb") as f:
            certs = _certificates(certificate, f.read())
    except OSError as exc:
        return {"certificate": f"cannot read {certificate}: {exc.strerror}"}
    except ValueError as exc:
        return {"certificate": str(exc)}
    try:
        with open(private_key, "rb") as f:
            data = f.read()
    except OSError as exc:
        return {"private_key": f"cannot read {private_key}: {exc.strerror}"}
    if not any(label.endswith("PRIVATE KEY") for label in _pem_labels(data)):
        if b"-----BEGIN" in data:
            return {
                "private_key": f"{private_key} holds no private key (-----BEGIN PRIVATE KEY-----)"
            }
        return {"private_key": f"{private_key} {_NOT_PEM.format(tool='pkey')}"}
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        return {
            "private_key": f"{private_key} is encrypted: the gateway needs it without a passphrase"
        }
    except (ValueError, UnsupportedAlgorithm):
        return {"private_key": f"{private_key}: the private key in it does not parse"}
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certs[0].public_key().public_bytes(*spki):
        return {
            "private_key": f"{private_key} does not match the certificate in {certificate} "
            "(the key of another certificate?)"
        }
    try:  # anything else OpenSSL itself refuses
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certificate, private_key)
    except ssl.SSLError as exc:
        return {"certificate": f"OpenSSL refuses {certificate} with its key: {exc.reason or exc}"}
    return {}


def ca_file_problem(path: str) -> str | None:
    """Why `path` cannot be a file of trusted CA certificates (PEM), or None."""
    try:
        with open(path, "rb") as f:
            _certificates(path, f.read())
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    except ValueError as exc:
        return str(exc)
    return None


def expiry_warning(path: str, now: datetime.datetime | None = None) -> str | None:
    """A warning when the first certificate of `path` has expired, expires within
    `EXPIRY_WARNING_DAYS`, or is not valid yet; None when it is fine or cannot be
    read (the file has its own check)."""
    try:
        with open(path, "rb") as f:
            cert = _certificates(path, f.read())[0]
    except (OSError, ValueError):
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    end, start = cert.not_valid_after_utc, cert.not_valid_before_utc
    if end <= now:
        return f"{path} expired at {end:%Y-%m-%d %H:%M} UTC: clients refuse it; renew it"
    if start > now:
        return f"{path} is valid only from {start:%Y-%m-%d %H:%M} UTC: clients refuse it until then"
    left = end - now
    if left <= datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        return (
            f"{path} expires at {end:%Y-%m-%d %H:%M} UTC, in {left.days} days "
            f"{left.seconds // 3600} hours: renew it"
        )
    return None


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

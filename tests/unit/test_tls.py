"""Listener TLS contexts and client certificate revocation (`tls.client_crl`): which
CRL files load, what check-config says about them, and handshakes between a server
and a client context over memory BIOs (real OpenSSL, no sockets); the listener's
versions, suites and client-certificate mode, the upstream context's checks, the
account a client certificate names, and the demo's self-signed certificate.

Attack-named: a revoked device certificate, a revoked intermediate CA ("chain"),
a CRL file that smuggles in a trusted CA."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imapguard.tls import (
    certificate_account,
    client_context,
    client_crl_problems,
    generate_self_signed,
    load_crls,
    server_context,
)

NOW = datetime.datetime.now(datetime.UTC)


def crl(
    ca: trustme.CA,
    revoked: Iterable[int] = (),
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    last: datetime.datetime | None = None,
    next_: datetime.datetime | None = None,
) -> bytes:
    """A PEM CRL in the name of `ca` (signed by its key unless `key` is given)."""
    signer = key or serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject)
        .last_update(last or NOW - datetime.timedelta(minutes=5))
        .next_update(next_ or NOW + datetime.timedelta(days=1))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW).build()
        )
    signed = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    return signed.public_bytes(serialization.Encoding.PEM)


def serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


class Pki:
    """A gateway certificate, a device CA with an intermediate, and files for them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        server_ca = trustme.CA()
        server = server_ca.issue_cert("localhost")
        self.cert, self.key = tmp / "gateway.pem", tmp / "gateway.key"
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        server.private_key_pem.write_to_path(str(self.key))
        self.server_ca_pem = server_ca.cert_pem.bytes()
        self.root = trustme.CA(organization_name="devices root")
        self.intermediate = self.root.create_child_ca()
        self.client_ca = tmp / "devices-ca.pem"
        self.client_ca.write_bytes(self.root.cert_pem.bytes() + self.intermediate.cert_pem.bytes())
        self.crl = tmp / "devices.crl"

    def server(self, check: str = "leaf") -> ssl.SSLContext:
        return server_context(
            str(self.cert),
            str(self.key),
            client_ca=str(self.client_ca),
            client_crl=str(self.crl),
            client_crl_check=check,
        )

    def client(self, leaf: trustme.LeafCert) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.server_ca_pem.decode())
        leaf.configure_cert(ctx)
        return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """Run a handshake over memory BIOs; None if the server accepted the client's
    certificate, else OpenSSL's verification message."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    s_out, c_in = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(to_server, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, to_client, server_hostname="localhost")
    finished = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if finished[name]:
                continue
            try:
                side.do_handshake()
                finished[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                if side is client:
                    raise  # the client refused the gateway's certificate: a broken test
                return str(exc.verify_message)
        to_server.write(to_client.read())
        c_in.write(s_out.read())
        if all(finished.values()):
            return None
    raise AssertionError("the handshake did not finish")


# -- load_crls ------------------------------------------------------------------------


def test_one_and_several_crls_load(tmp_path: Path) -> None:
    a, b = trustme.CA(), trustme.CA()
    path = tmp_path / "crl.pem"
    path.write_bytes(crl(a, [7]))
    (one,) = load_crls(str(path))
    assert one.get_revoked_certificate_by_serial_number(7) is not None
    path.write_bytes(crl(a) + b"\n" + crl(b))
    assert len(load_crls(str(path))) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no PEM CRL"),
        (b"not a crl at all\n", "holds no PEM CRL"),
        (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "does not parse"),
        (b"-----BEGIN X509 CRL-----\nAAAA\n", "not a whole X509 CRL"),
    ],
)
def test_what_is_not_a_crl_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "crl.pem"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_crls(str(path))


def test_a_crl_file_that_smuggles_in_a_trusted_ca(tmp_path: Path) -> None:
    """OpenSSL loads certificates from the CRL file too: one there would become a
    trusted client CA. The file is refused whole."""
    pki = Pki(tmp_path)
    rogue = trustme.CA()
    pki.crl.write_bytes(crl(pki.intermediate) + rogue.cert_pem.bytes())
    with pytest.raises(ValueError, match="'CERTIFICATE' block"):
        load_crls(str(pki.crl))
    with pytest.raises(ValueError, match="'CERTIFICATE' block"):
        pki.server()
    assert client_crl_problems(str(pki.crl), str(pki.client_ca))[0] == [
        f"{pki.crl} holds a 'CERTIFICATE' block; only X509 CRL blocks belong there "
        "(CA certificates go in tls.client_ca)"
    ]


def test_a_crl_needs_a_client_ca(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pki.crl.write_bytes(crl(pki.root))
    with pytest.raises(ValueError, match="needs a client CA"):
        server_context(str(pki.cert), str(pki.key), client_crl=str(pki.crl))


# -- handshakes -----------------------------------------------------------------------


def test_revoked_device_certificate_is_refused_in_the_handshake(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    stolen, kept = (
        pki.intermediate.issue_cert("a@example.org"),
        pki.intermediate.issue_cert("b@example.org"),
    )
    pki.crl.write_bytes(crl(pki.intermediate, [serial(stolen.cert_chain_pems[0].bytes())]))
    server = pki.server()
    assert handshake(server, pki.client(stolen)) == "certificate revoked"
    assert handshake(server, pki.client(kept)) is None


def test_without_a_crl_for_its_issuer_a_certificate_is_refused(tmp_path: Path) -> None:
    """Fail closed: a CRL file that does not cover the issuing CA revokes everything
    it issued (and check-config says so)."""
    pki = Pki(tmp_path)
    pki.crl.write_bytes(crl(pki.root))
    device = pki.intermediate.issue_cert("a@example.org")
    assert handshake(pki.server(), pki.client(device)) == "unable to get certificate CRL"
    problems, warnings = client_crl_problems(str(pki.crl), str(pki.client_ca))
    assert problems == []
    assert any("no CRL for" in w and "client certificates it issued" in w for w in warnings)


def test_expired_crl_refuses_every_certificate(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pki.crl.write_bytes(
        crl(
            pki.intermediate,
            last=NOW - datetime.timedelta(days=10),
            next_=NOW - datetime.timedelta(days=1),
        )
    )
    device = pki.intermediate.issue_cert("a@example.org")
    assert handshake(pki.server(), pki.client(device)) == "CRL has expired"
    _, warnings = client_crl_problems(str(pki.crl), str(pki.client_ca))
    assert any("expired at" in w for w in warnings)


def test_revoked_intermediate_ca_is_refused_with_chain_checking(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    intermediate_serial = serial(pki.intermediate.cert_pem.bytes())
    pki.crl.write_bytes(crl(pki.root, [intermediate_serial]) + crl(pki.intermediate))
    device = pki.intermediate.issue_cert("a@example.org")
    # "leaf" looks only at the device's own certificate...
    assert handshake(pki.server("leaf"), pki.client(device)) is None
    # ... "chain" at every certificate above it too.
    assert handshake(pki.server("chain"), pki.client(device)) == "certificate revoked"
    assert client_crl_problems(str(pki.crl), str(pki.client_ca)) == ([], [])


# -- check-config ---------------------------------------------------------------------


def test_crl_of_another_ca_or_signed_by_another_key(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    other = trustme.CA()
    pki.crl.write_bytes(crl(other))
    (problem,) = client_crl_problems(str(pki.crl), str(pki.client_ca))[0]
    assert "is for no CA in tls.client_ca" in problem
    forged = crl(pki.intermediate, key=ec.generate_private_key(ec.SECP256R1()))
    pki.crl.write_bytes(forged)
    (problem,) = client_crl_problems(str(pki.crl), str(pki.client_ca))[0]
    assert "is not signed by that CA" in problem


def test_unreadable_crl_file(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    problems, _ = client_crl_problems(str(tmp_path / "missing.crl"), str(pki.client_ca))
    assert problems == [f"cannot read {tmp_path / 'missing.crl'}: No such file or directory"]


# -- listener and upstream contexts -----------------------------------------------------


def negotiate(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str = "localhost"
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A whole handshake over memory BIOs: (client, server) once both finished;
    raises the first ssl.SSLError either side gets."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    s_out, c_in = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(to_server, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, to_client, server_hostname=hostname)
    finished = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if not finished[name]:
                try:
                    side.do_handshake()
                    finished[name] = True
                except ssl.SSLWantReadError:
                    pass
        to_server.write(to_client.read())
        c_in.write(s_out.read())
        if all(finished.values()):
            return client, server
    raise AssertionError("the handshake did not finish")


class Listener:
    """A gateway certificate from its own CA, and a client that trusts that CA."""

    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("localhost", "gateway.example.org")
        self.cert, self.key = tmp / "gateway.pem", tmp / "gateway.key"
        leaf.cert_chain_pems[0].write_to_path(str(self.cert))
        leaf.private_key_pem.write_to_path(str(self.key))
        self.ca_file = tmp / "gateway-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server(self, **options: str) -> ssl.SSLContext:
        return server_context(str(self.cert), str(self.key), **options)

    def client(self, *, tls12_ciphers: str | None = None) -> ssl.SSLContext:
        ctx = client_context(str(self.ca_file))
        if tls12_ciphers is not None:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(tls12_ciphers)
        return ctx


def test_listener_context_options(tmp_path: Path) -> None:
    ctx = Listener(tmp_path).server()
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode is ssl.CERT_NONE  # no tls.client_ca: no certificate asked for
    for flag in (
        ssl.OP_NO_COMPRESSION,
        ssl.OP_NO_RENEGOTIATION,
        ssl.OP_CIPHER_SERVER_PREFERENCE,
        ssl.OP_SINGLE_ECDH_USE,
    ):
        assert ctx.options & flag == flag
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert cipher["aead"], cipher["name"]


def test_tls13_is_negotiated_when_both_can(tmp_path: Path) -> None:
    listener = Listener(tmp_path)
    client, _ = negotiate(listener.server(), listener.client())
    assert client.version() == "TLSv1.3"


def test_tls12_clients_get_only_forward_secret_aead_suites(tmp_path: Path) -> None:
    listener = Listener(tmp_path)
    client, _ = negotiate(
        listener.server(), listener.client(tls12_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    )
    cipher = client.cipher()
    assert cipher is not None
    assert (client.version(), cipher[0]) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")
    # Forward secret but CBC: refused.
    with pytest.raises(ssl.SSLError, match="NO_SHARED_CIPHER"):
        negotiate(listener.server(), listener.client(tls12_ciphers="ECDHE-ECDSA-AES128-SHA256"))


def test_minimum_version_13_refuses_a_tls12_client(tmp_path: Path) -> None:
    listener = Listener(tmp_path)
    server = listener.server(min_version="1.3")
    assert server.minimum_version is ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError, match="UNSUPPORTED_PROTOCOL"):
        negotiate(server, listener.client(tls12_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    client, _ = negotiate(server, listener.client())
    assert client.version() == "TLSv1.3"


def test_client_certificates_are_optional_and_verified_when_presented(tmp_path: Path) -> None:
    listener = Listener(tmp_path)
    devices = trustme.CA(organization_name="devices")
    client_ca = tmp_path / "devices-ca.pem"
    devices.cert_pem.write_to_path(str(client_ca))
    server = listener.server(client_ca=str(client_ca))
    assert server.verify_mode is ssl.CERT_OPTIONAL

    # No certificate: still connects, and the gateway sees none.
    _, seen = negotiate(server, listener.client())
    assert not seen.getpeercert()

    # One from the device CA: verified, and its fields reach the gateway.
    device = listener.client()
    devices.issue_cert("alice@example.org").configure_cert(device)
    _, seen = negotiate(server, device)
    peer = seen.getpeercert()
    assert peer is not None
    assert certificate_account(peer, "email") == "alice@example.org"

    # One from any other CA: the handshake fails.
    forged = listener.client()
    trustme.CA().issue_cert("alice@example.org").configure_cert(forged)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        negotiate(server, forged)


def test_without_a_client_ca_no_certificate_is_asked_for(tmp_path: Path) -> None:
    listener = Listener(tmp_path)
    client = listener.client()
    trustme.CA().issue_cert("alice@example.org").configure_cert(client)
    _, seen = negotiate(listener.server(), client)
    assert not seen.getpeercert()


def test_upstream_context_verifies_the_certificate_and_the_name(tmp_path: Path) -> None:
    listener = Listener(tmp_path)
    upstream = client_context(str(listener.ca_file))
    assert upstream.minimum_version is ssl.TLSVersion.TLSv1_2
    assert (upstream.verify_mode, upstream.check_hostname) == (ssl.CERT_REQUIRED, True)
    negotiate(listener.server(), upstream, "gateway.example.org")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        negotiate(listener.server(), upstream, "mail.example.org")
    # The system store does not know this private CA.
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        negotiate(listener.server(), client_context(None))


@pytest.mark.parametrize(
    ("peercert", "field", "account"),
    [
        ({"subjectAltName": (("email", "Alice@Example.org"),)}, "email", "alice@example.org"),
        ({"subjectAltName": (("email", "alice@example.org"),)}, "email-local", "alice"),
        ({"subject": ((("emailAddress", "bob@example.org"),),)}, "email", "bob@example.org"),
        (
            {
                "subjectAltName": (("email", "alice@example.org"),),
                "subject": ((("emailAddress", "bob@example.org"),),),
            },
            "email",
            "alice@example.org",  # the SAN wins over the subject's address
        ),
        ({"subject": ((("commonName", "carol"),),)}, "cn", "carol"),
        # Ambiguous certificates name no account.
        (
            {"subjectAltName": (("email", "a@example.org"), ("email", "b@example.org"))},
            "email",
            None,
        ),
        ({"subject": ((("commonName", "a"),), (("commonName", "b"),))}, "cn", None),
        # The same address twice is not ambiguous.
        (
            {"subjectAltName": (("email", "a@example.org"), ("email", "A@example.org"))},
            "email",
            "a@example.org",
        ),
        # Missing fields.
        ({"subjectAltName": (("DNS", "host.example.org"),)}, "email", None),
        ({"subjectAltName": (("email", "no-at-sign"),)}, "email-local", None),
        ({}, "cn", None),
    ],
)
def test_certificate_account(peercert: dict[str, Any], field: str, account: str | None) -> None:
    assert certificate_account(peercert, field) == account


def test_certificate_account_refuses_an_unknown_field() -> None:
    with pytest.raises(ValueError, match="unknown client_cert_user 'uid'"):
        certificate_account({}, "uid")


def test_self_signed_certificate_for_the_demo(tmp_path: Path) -> None:
    cert, key = generate_self_signed(tmp_path / "tls")
    assert key.stat().st_mode & 0o777 == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert isinstance(parsed.public_key(), ec.EllipticCurvePublicKey)
    server = server_context(str(cert), str(key))
    for name in ("localhost", "127.0.0.1"):
        client, _ = negotiate(server, client_context(str(cert)), name)
        assert client.version() == "TLSv1.3"

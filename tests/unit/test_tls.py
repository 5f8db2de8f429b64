"""Listener TLS contexts and client certificate revocation (`tls.client_crl`): which
CRL files load, what check-config says about them, and handshakes between a server
and a client context over memory BIOs (real OpenSSL, no sockets).

Attack-named: a revoked device certificate, a revoked intermediate CA ("chain"),
a CRL file that smuggles in a trusted CA."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterable
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imapguard.tls import client_crl_problems, load_crls, server_context

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

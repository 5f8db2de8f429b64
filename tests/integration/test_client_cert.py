"""Client certificates through the gateway to a real Dovecot (master mode): a device
certificate issued by the configured CA (trustme) logs in with AUTHENTICATE
EXTERNAL, and with LOGIN it is the second factor beside the password; a
certificate from another CA and an expired one are refused at the handshake;
clients without a certificate still connect and use their app passwords; a
certificate revoked in `tls.client_crl` (a CRL made with `cryptography`) is
refused at the handshake, and a CRL reloaded on SIGHUP revokes the next one.

Source addresses: 127.0.1.170-189.
"""

from __future__ import annotations

import datetime
import signal
import ssl
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway, wait_for

pytestmark = pytest.mark.dovecot


@pytest.fixture(scope="module")
def device_ca() -> trustme.CA:
    return trustme.CA(organization_name="imapguard test devices")


@pytest.fixture(scope="module")
def gw_cert(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer, device_ca: trustme.CA
) -> Iterator[GatewayProcess]:
    base = tmp_path_factory.mktemp("gw-cert")
    ca_file = base / "devices-ca.pem"
    device_ca.cert_pem.write_to_path(str(ca_file))

    def edit(text: str) -> str:
        return text.replace(
            "[tls]\n", f'[tls]\nclient_ca = "{ca_file}"\nclient_cert_user = "email-local"\n'
        )

    with running_gateway(
        base, dovecot, login="master", methods=("app-password", "client-cert"), edit=edit
    ) as gw:
        yield gw


def _context(
    gw: GatewayProcess, ca: trustme.CA | None, tmp: Path, **issue: object
) -> ssl.SSLContext:
    ctx = gw.client_ssl()
    if ca is not None:
        cert = ca.issue_cert("alice@example.org", **issue)  # type: ignore[arg-type]
        cert.configure_cert(ctx)
    return ctx


def _external(
    gw: GatewayProcess, n: int, ctx: ssl.SSLContext, authzid: bytes = b"="
) -> list[bytes]:
    with RawClient(gw.implicit_port, source_address(n), tls=ctx) as c:
        greeting = c.line()
        assert b"AUTH=EXTERNAL" in greeting
        return c.command(b"a", b"AUTHENTICATE EXTERNAL " + authzid)


def test_external_with_a_device_certificate(
    gw_cert: GatewayProcess, device_ca: trustme.CA, tmp_path: Path
) -> None:
    lines = _external(gw_cert, 170, _context(gw_cert, device_ca, tmp_path))
    assert lines[-1].startswith(b"a OK [CAPABILITY "), lines
    event = [e for e in gw_cert.events("auth") if e.get("src") == source_address(170)][-1]
    assert (event["user"], event["factor"]) == ("alice", "client-cert")
    tls = [e for e in gw_cert.events("tls") if e.get("src") == source_address(170)][-1]
    assert tls["client_cert"] == "alice"


def test_external_for_another_identity_is_refused(
    gw_cert: GatewayProcess, device_ca: trustme.CA, tmp_path: Path
) -> None:
    import base64

    lines = _external(
        gw_cert, 171, _context(gw_cert, device_ca, tmp_path), base64.b64encode(b"bob")
    )
    assert lines[-1] == b"a " + AUTH_FAILED


def test_without_a_certificate_external_fails_and_app_passwords_work(
    gw_cert: GatewayProcess, tmp_path: Path
) -> None:
    lines = _external(gw_cert, 172, _context(gw_cert, None, tmp_path))
    assert lines[-1] == b"a " + AUTH_FAILED
    password = gw_cert.create_app_password("bob", "laptop")
    with RawClient(gw_cert.implicit_port, source_address(173), tls=gw_cert.client_ssl()) as c:
        c.line()
        assert c.command(b"a", b'LOGIN bob "' + password.encode() + b'"')[-1].startswith(b"a OK")


def test_password_plus_certificate_is_two_factors(
    gw_cert: GatewayProcess, dovecot: DovecotServer, device_ca: trustme.CA, tmp_path: Path
) -> None:
    password = dovecot.users["alice"].encode()
    with RawClient(
        gw_cert.implicit_port, source_address(174), tls=_context(gw_cert, device_ca, tmp_path)
    ) as c:
        c.line()
        assert c.command(b"a", b'LOGIN alice "' + password + b'"')[-1].startswith(b"a OK")
    # The same password without the certificate is one factor only.
    with RawClient(gw_cert.implicit_port, source_address(175), tls=gw_cert.client_ssl()) as c:
        c.line()
        assert c.command(b"a", b'LOGIN alice "' + password + b'"')[-1] == b"a " + AUTH_FAILED
    factors = [
        (e["result"], e.get("factor"))
        for e in gw_cert.events("auth")
        if e.get("src") in (source_address(174), source_address(175))
    ]
    assert factors == [("ok", "password+client-cert"), ("missing_factor", None)]


def _greeting_and_external(gw: GatewayProcess, n: int, ctx: ssl.SSLContext) -> None:
    # TLS 1.3: the client's certificate is judged after the client's side of the
    # handshake finished; the refusal arrives with the first read.
    with RawClient(gw.implicit_port, source_address(n), tls=ctx) as c:
        c.line()
        c.command(b"a", b"AUTHENTICATE EXTERNAL =")


@pytest.mark.parametrize(
    "which",
    ["other-ca", "expired"],
)
def test_foreign_and_expired_certificates_are_refused_at_the_handshake(
    gw_cert: GatewayProcess, device_ca: trustme.CA, tmp_path: Path, which: str
) -> None:
    if which == "other-ca":
        ctx = _context(gw_cert, trustme.CA(), tmp_path)
    else:
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        ctx = _context(
            gw_cert,
            device_ca,
            tmp_path,
            not_before=past - datetime.timedelta(days=30),
            not_after=past,
        )
    n = 176 if which == "other-ca" else 177
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
        _greeting_and_external(gw_cert, n, ctx)
    wait_for(
        lambda: [e for e in gw_cert.events("tls_failed") if e.get("src") == source_address(n)],
        what="the tls_failed event",
    )
    assert not [e for e in gw_cert.events("auth") if e.get("src") == source_address(n)]


# -- revocation ----------------------------------------------------------------------


def make_crl(ca: trustme.CA, revoked: Iterable[int], *, days: int = 1) -> bytes:
    """A PEM CRL of `ca` listing the serial numbers `revoked`, valid `days` days."""
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=days))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - datetime.timedelta(minutes=1))
            .build()
        )
    crl = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.PEM)


def _serial(cert: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number


def _presenting(gw: GatewayProcess, cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = gw.client_ssl()
    cert.configure_cert(ctx)
    return ctx


def _refused_at_the_handshake(gw: GatewayProcess, n: int, cert: trustme.LeafCert) -> None:
    """The connection from 127.0.1.n ends in the handshake (with TLS 1.3 the client
    learns it at its first read): a tls_failed event, no login attempted."""
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
        _greeting_and_external(gw, n, _presenting(gw, cert))
    wait_for(
        lambda: [e for e in gw.events("tls_failed") if e.get("src") == source_address(n)],
        what="the tls_failed event",
    )
    assert not [e for e in gw.events("auth") if e.get("src") == source_address(n)]


def _logs_in(gw: GatewayProcess, n: int, cert: trustme.LeafCert, user: str) -> None:
    lines = _external(gw, n, _presenting(gw, cert))
    assert lines[-1].startswith(b"a OK [CAPABILITY "), lines
    event = [e for e in gw.events("auth") if e.get("src") == source_address(n)][-1]
    assert (event["user"], event["factor"]) == (user, "client-cert")


def _reload(gw: GatewayProcess, count: int) -> dict[str, object]:
    """SIGHUP; the `count`-th reload event."""
    gw.signal(signal.SIGHUP)
    wait_for(lambda: len(gw.events("reload")) >= count, what=f"reload event {count}")
    return gw.events("reload")[count - 1]


def test_revoked_client_certificate_is_refused_and_a_new_crl_applies_after_sighup(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    ca = trustme.CA(organization_name="imapguard revocable devices")
    ca_file, crl_file = tmp_path / "devices-ca.pem", tmp_path / "devices.crl"
    ca.cert_pem.write_to_path(str(ca_file))
    stolen = ca.issue_cert("alice@example.org")
    laptop = ca.issue_cert("bob@example.org")
    tablet = ca.issue_cert("carol@example.org")
    crl_file.write_bytes(make_crl(ca, [_serial(stolen)]))

    def edit(text: str) -> str:
        return text.replace(
            "[tls]\n",
            f'[tls]\nclient_ca = "{ca_file}"\nclient_crl = "{crl_file}"\n'
            'client_cert_user = "email-local"\n',
        )

    with running_gateway(
        tmp_path / "gw", dovecot, login="master", methods=("app-password", "client-cert"), edit=edit
    ) as gw:
        # Same CA, same validity: only the CRL tells the two apart.
        _refused_at_the_handshake(gw, 178, stolen)
        _logs_in(gw, 179, laptop, "bob")

        # The laptop is lost too: a new CRL, read at the next SIGHUP.
        crl_file.write_bytes(make_crl(ca, [_serial(stolen), _serial(laptop)]))
        assert _reload(gw, 1)["result"] == "ok"
        _refused_at_the_handshake(gw, 180, laptop)
        _refused_at_the_handshake(gw, 181, stolen)
        _logs_in(gw, 182, tablet, "carol")

        # A CRL file that would smuggle in a trusted CA is refused; the running
        # configuration (with its CRL) stays.
        rogue = trustme.CA()
        crl_file.write_bytes(make_crl(ca, []) + rogue.cert_pem.bytes())
        failed = _reload(gw, 2)
        assert failed["result"] == "failed"
        assert "tls.client_crl" in str(failed["reason"])
        _refused_at_the_handshake(gw, 183, laptop)
        _logs_in(gw, 184, tablet, "carol")

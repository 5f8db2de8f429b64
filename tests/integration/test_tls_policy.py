"""The listeners' TLS policy: TLS 1.2 minimum, and with 1.2 only
forward-secret AEAD suites; TLS 1.2 ECDHE-GCM / ChaCha20 and TLS 1.3 work.

The gateway gets an RSA certificate here, so that the refused suites (RSA key
exchange, CBC) could be negotiated at all. Every client context that must fail is
first shown to work against a permissive TLS server with the same certificate: a
refusal can only come from the gateway's policy, not from the client's own
OpenSSL defaults."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import RawClient, running_gateway, session_of, wait_for

pytestmark = pytest.mark.dovecot


class _Permissive:
    """A TLS server that accepts anything OpenSSL can still do (TLS 1.0+, any suite)."""

    def __init__(self, chain: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.ctx.minimum_version = ssl.TLSVersion.TLSv1
        self.ctx.set_ciphers("ALL:@SECLEVEL=0")
        self.ctx.load_cert_chain(chain, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                conn.settimeout(5)
                self.ctx.wrap_socket(conn, server_side=True).close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


def _use_rsa_certificate(gw: GatewayProcess) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    cert = ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
    ca.cert_pem.write_to_path(str(gw.ca_cert))
    cert.private_key_pem.write_to_path(str(gw.base / "gateway.key"))
    with open(gw.base / "gateway.pem", "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())


@pytest.fixture(scope="module")
def gw_rsa(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("gw-rsa"), dovecot, before_start=_use_rsa_certificate
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def permissive(gw_rsa: GatewayProcess) -> Iterator[_Permissive]:
    server = _Permissive(gw_rsa.base / "gateway.pem", gw_rsa.base / "gateway.key")
    yield server
    server.close()


def _client(
    gw: GatewayProcess, maximum: ssl.TLSVersion, ciphers: str | None = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(gw.ca_cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    ctx.set_ciphers((ciphers or "ALL") + ":@SECLEVEL=0")
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext, src: str = "127.0.0.1") -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), 5, source_address=(src, 0))
    try:
        return ctx.wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise


REFUSED = {
    "tls1.1": (ssl.TLSVersion.TLSv1_1, None),
    "rsa-kx-cbc": (ssl.TLSVersion.TLSv1_2, "AES128-SHA"),
    "rsa-kx-gcm": (ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256"),
    "ecdhe-cbc": (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA"),
    "ecdhe-cbc-sha256": (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA256"),
}


@pytest.mark.parametrize("listener", ["implicit", "starttls"])
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_weak_tls_is_refused(
    gw_rsa: GatewayProcess, permissive: _Permissive, name: str, listener: str
) -> None:
    maximum, ciphers = REFUSED[name]
    ctx = _client(gw_rsa, maximum, ciphers)
    # The client can do it ...
    with _handshake(permissive.port, ctx) as tls:
        assert tls.version() in ("TLSv1.1", "TLSv1.2")
    # ... but the gateway does not let it.
    src = source_address(90 if listener == "implicit" else 91)
    if listener == "implicit":
        with pytest.raises(ssl.SSLError):
            _handshake(gw_rsa.implicit_port, ctx, src).close()
    else:
        with RawClient(gw_rsa.starttls_port, src) as c:
            c.line()
            assert c.command(b"s", b"STARTTLS")[-1].startswith(b"s OK")
            with pytest.raises(ssl.SSLError):
                c.starttls(ctx)
            session = session_of(gw_rsa, src, c.local_port)
        failed = wait_for(
            lambda: [e for e in gw_rsa.events("tls_failed") if e.get("session") == session],
            what="the tls_failed event",
        )
        assert [e["tls_mode"] for e in failed] == ["starttls"]
        assert not [e for e in gw_rsa.events("tls") if e.get("session") == session]


ACCEPTED = {
    "tls1.2-ecdhe-aes-gcm": (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256", "TLSv1.2"),
    "tls1.2-ecdhe-aes256-gcm": (
        ssl.TLSVersion.TLSv1_2,
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLSv1.2",
    ),
    "tls1.2-ecdhe-chacha20": (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305", "TLSv1.2"),
    "tls1.3": (ssl.TLSVersion.TLSv1_3, None, "TLSv1.3"),
}


@pytest.mark.parametrize("listener", ["implicit", "starttls"])
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_strong_tls_works(gw_rsa: GatewayProcess, name: str, listener: str) -> None:
    maximum, ciphers, version = ACCEPTED[name]
    ctx = _client(gw_rsa, maximum, ciphers)
    src = source_address(92 if listener == "implicit" else 93)
    if listener == "implicit":
        c = RawClient(gw_rsa.implicit_port, src, tls=ctx)
    else:
        c = RawClient(gw_rsa.starttls_port, src)
    with c:
        c.line()
        if listener == "starttls":
            c.command(b"s", b"STARTTLS")
            c.starttls(ctx)
        assert isinstance(c.sock, ssl.SSLSocket)
        assert c.sock.version() == version
        cipher = c.sock.cipher()
        assert cipher is not None
        if ciphers is not None:
            assert cipher[0] == ciphers
        lines = c.command(b"c", b"CAPABILITY")
        assert b"AUTH=PLAIN" in lines[0]
        session = session_of(gw_rsa, src, c.local_port)
    tls = [e for e in gw_rsa.events("tls") if e.get("session") == session]
    assert len(tls) == 1
    assert tls[0]["version"] == version
    assert tls[0]["cipher"] == cipher[0]

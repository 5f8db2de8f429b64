"""The scanner's lab servers are what tests/scanlab.py says they are.

The scanner's ground-truth tests trust these servers: "the good Dovecot advertises
LOGINDISABLED", "this toy answers an injected command inside TLS". Each claim is checked
here with ordinary clients (imaplib, poplib, smtplib, ``openssl s_client``, curl) from
127.0.0.1, the vantage point the scanner has. The negative controls matter as much as the
positives: a check that cannot tell the good server from the broken one proves nothing.
"""

from __future__ import annotations

import datetime
import imaplib
import os
import poplib
import re
import secrets
import smtplib
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.dovecot import _group_members
from tests.scanlab import (
    CYRUS_ID,
    FLAW_KINDS,
    FLAWS,
    INTERNAL_NAME,
    KINDS,
    OTHER_NAME,
    QPOPPER_GREETING,
    QPOPPER_IMPLEMENTATION,
    SERVER_NAME,
    InjectableImap,
    LabDovecot,
    LabSubmission,
    MailProtocol,
    ScanLab,
    ThrottlingSmtp,
    ToyServer,
    lab_pki,
    scanlab,
    start_lab,
)

__all__ = ["scanlab"]  # the session fixture, imported so pytest finds it

pytestmark = pytest.mark.dovecot

#: Enough for any single exchange with a loopback server; a hang fails instead of blocking.
_TIMEOUT = 10.0


# -- helpers ------------------------------------------------------------------------------


def trusting(ca: Path) -> ssl.SSLContext:
    """A client context that trusts the lab CA and checks names, as a careful client does."""
    return ssl.create_default_context(cafile=str(ca))


def legacy_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers exactly ``version`` (OpenSSL 3 needs level 0 below TLS 1.2)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1; offering them is the point of this client.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    return context


class Lines:
    """A line-oriented client socket that can be upgraded to TLS in place."""

    def __init__(self, address: str, port: int, source: str | None = None) -> None:
        bind = (source, 0) if source else None
        self.sock: socket.socket = socket.create_connection(
            (address, port), timeout=_TIMEOUT, source_address=bind
        )
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed; buffered {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("latin-1").rstrip("\r")

    def until(self, predicate_prefix: str) -> list[str]:
        """Lines up to and including the first that starts with ``predicate_prefix``."""
        lines = [self.line()]
        while not lines[-1].startswith(predicate_prefix):
            lines.append(self.line())
        return lines

    def upgrade(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        # Bytes already read past the STARTTLS reply would be lost in the handshake.
        assert self.buffer == b"", f"cleartext after the STARTTLS reply: {self.buffer!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def close(self) -> None:
        self.sock.close()


def imap_exchange(lines: Lines, tag: str, command: str) -> list[str]:
    lines.send(f"{tag} {command}\r\n".encode())
    return lines.until(f"{tag} ")


def listeners_of(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket that process ``pid`` holds."""
    out = subprocess.run(
        ["ss", "-ltnpH"], capture_output=True, text=True, check=True, timeout=_TIMEOUT
    ).stdout
    found: set[tuple[str, int]] = set()
    for row in out.splitlines():
        if f"pid={pid}," not in row:
            continue
        local = row.split()[3]
        address, _, port = local.rpartition(":")
        found.add((address, int(port)))
    return found


def refuses(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=_TIMEOUT):
            return False
    except ConnectionRefusedError:
        return True


def peer_certificate(address: str, port: int) -> x509.Certificate:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((address, port), timeout=_TIMEOUT) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def verify_error(address: str, port: int, ca: Path, name: str) -> int | None:
    """The OpenSSL verify code a name-checking client gets (None: the chain verifies)."""
    try:
        with (
            socket.create_connection((address, port), timeout=_TIMEOUT) as raw,
            trusting(ca).wrap_socket(raw, server_hostname=name),
        ):
            return None
    except ssl.SSLCertVerificationError as error:
        return error.verify_code


@pytest.fixture
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before


# -- the vantage point ------------------------------------------------------------------------


def test_clients_reach_lab_servers_from_127_0_0_1(scanlab: ScanLab) -> None:
    """The kernel picks 127.0.0.1 as source for any 127/8 address: not the server's."""
    server = scanlab.dovecot("good")
    with socket.create_connection((server.address, server.imap_port), timeout=_TIMEOUT) as sock:
        source = sock.getsockname()[0]
    assert source == "127.0.0.1"
    assert server.address != source


def test_dovecot_would_trust_a_client_on_its_own_address(scanlab: ScanLab) -> None:
    """Why the lab never lets Dovecot share the client's address: it then drops LOGINDISABLED."""
    server = scanlab.dovecot("good")
    outside = Lines(server.address, server.imap_port)
    inside = Lines(server.address, server.imap_port, source=server.address)
    try:
        assert "LOGINDISABLED" in outside.line()
        greeting = inside.line()
        assert "LOGINDISABLED" not in greeting
        assert "AUTH=PLAIN" in greeting
    finally:
        outside.close()
        inside.close()


# -- Dovecot profiles --------------------------------------------------------------------------


def test_good_imap_requires_starttls_before_login(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("good")
    client = imaplib.IMAP4(server.address, server.imap_port, timeout=_TIMEOUT)
    try:
        assert {"STARTTLS", "LOGINDISABLED"} <= set(client.capabilities)
        assert not [c for c in client.capabilities if c.startswith("AUTH=")]
        with pytest.raises(imaplib.IMAP4.error, match=r"\[PRIVACYREQUIRED\]"):
            client.login(server.user, server.password)
        client.starttls(trusting(server.ca_cert))
        assert "STARTTLS" not in client.capabilities
        assert "LOGINDISABLED" not in client.capabilities
        assert "AUTH=PLAIN" in client.capabilities
        assert client.login(server.user, server.password)[0] == "OK"
    finally:
        client.logout()


def test_good_pop3_requires_stls_before_user(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("good")
    client = poplib.POP3(server.address, server.pop3_port, timeout=_TIMEOUT)
    try:
        before = client.capa()
        assert "STLS" in before
        assert "USER" not in before
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext authentication"):
            client.user(server.user)
        client.stls(trusting(server.ca_cert))
        after = client.capa()
        assert "USER" in after
        assert "STLS" not in after
        client.user(server.user)
        assert client.pass_(server.password).startswith(b"+OK")
    finally:
        client.quit()


def test_good_implicit_twins_serve_imap_and_pop3(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("good")
    assert server.imaps_port is not None
    assert server.pop3s_port is not None
    context = trusting(server.ca_cert)
    imap = imaplib.IMAP4_SSL(server.address, server.imaps_port, ssl_context=context)
    try:
        assert imap.login(server.user, server.password)[0] == "OK"
    finally:
        imap.logout()
    pop3 = poplib.POP3_SSL(server.address, server.pop3s_port, context=context)
    try:
        pop3.user(server.user)
        assert pop3.pass_(server.password).startswith(b"+OK")
    finally:
        pop3.quit()


def test_good_tls_is_1_2_or_later_with_aead_suites(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("good")
    assert server.imaps_port is not None
    port = server.imaps_port
    with (
        socket.create_connection((server.address, port), timeout=_TIMEOUT) as raw,
        trusting(server.ca_cert).wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        assert tls.version() == "TLSv1.3"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with (
            pytest.raises(ssl.SSLError),
            socket.create_connection((server.address, port), timeout=_TIMEOUT) as raw,
            legacy_client(old).wrap_socket(raw),
        ):
            pass
    cbc = legacy_client(ssl.TLSVersion.TLSv1_2)
    cbc.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES128-SHA")
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection((server.address, port), timeout=_TIMEOUT) as raw,
        cbc.wrap_socket(raw),
    ):
        pass


def test_good_certificate_is_valid_for_name_and_address(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("good")
    assert server.imaps_port is not None
    assert verify_error(server.address, server.imaps_port, server.ca_cert, SERVER_NAME) is None
    assert verify_error(server.address, server.imaps_port, server.ca_cert, server.address) is None
    cert = peer_certificate(server.address, server.imaps_port)
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_after_utc - now > datetime.timedelta(days=30)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=398)
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size >= 2048
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"


@pytest.mark.clients
@pytest.mark.parametrize(
    ("profile", "code"),
    [("good", 0), ("expired", 60), ("self_signed", 60), ("wrong_name", 60)],
)
def test_curl_judges_the_certificates(scanlab: ScanLab, profile: str, code: int) -> None:
    """A real mail client (curl) logs in to the good one and refuses the three bad ones."""
    server = scanlab.dovecot(profile)
    assert server.imaps_port is not None
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            str(_TIMEOUT),
            "--cacert",
            str(server.ca_cert),
            "--resolve",
            f"{SERVER_NAME}:{server.imaps_port}:{server.address}",
            "-u",
            f"{server.user}:{server.password}",
            f"imaps://{SERVER_NAME}:{server.imaps_port}/",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=2 * _TIMEOUT,
    )
    assert result.returncode == code, result.stderr
    if code == 0:
        assert "INBOX" in result.stdout


def test_expired_certificate_is_expired(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("expired")
    assert server.imaps_port is not None
    cert = peer_certificate(server.address, server.imaps_port)
    assert cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    # Otherwise sound: issued by the lab CA for the right name.
    assert cert.issuer == x509.load_pem_x509_certificate(server.ca_cert.read_bytes()).subject
    code = verify_error(server.address, server.imaps_port, server.ca_cert, SERVER_NAME)
    assert code == 10  # X509_V_ERR_CERT_HAS_EXPIRED


def test_self_signed_certificate_is_its_own_issuer(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("self_signed")
    assert server.imaps_port is not None
    cert = peer_certificate(server.address, server.imaps_port)
    assert cert.issuer == cert.subject
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC)
    code = verify_error(server.address, server.imaps_port, server.ca_cert, SERVER_NAME)
    assert code == 18  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT


def test_wrong_name_certificate_is_trusted_but_for_another_name(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("wrong_name")
    assert server.imaps_port is not None
    cert = peer_certificate(server.address, server.imaps_port)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [OTHER_NAME]
    assert names.get_values_for_type(x509.IPAddress) == []
    assert verify_error(server.address, server.imaps_port, server.ca_cert, OTHER_NAME) is None
    code = verify_error(server.address, server.imaps_port, server.ca_cert, SERVER_NAME)
    assert code == 62  # X509_V_ERR_HOSTNAME_MISMATCH


def test_plaintext_profile_evaluates_logins_before_tls(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("plaintext")
    client = imaplib.IMAP4(server.address, server.imap_port, timeout=_TIMEOUT)
    try:
        assert {"STARTTLS", "AUTH=PLAIN", "AUTH=LOGIN"} <= set(client.capabilities)
        assert "LOGINDISABLED" not in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
            client.login(server.user, "not-" + server.password)
        assert client.login(server.user, server.password)[0] == "OK"
    finally:
        client.logout()
    pop3 = poplib.POP3(server.address, server.pop3_port, timeout=_TIMEOUT)
    try:
        assert {"STLS", "USER"} <= set(pop3.capa())
        pop3.user(server.user)
        assert pop3.pass_(server.password).startswith(b"+OK")
    finally:
        pop3.quit()


def test_no_starttls_profile_has_no_tls_at_all(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("no_starttls")
    assert (server.imaps_port, server.pop3s_port) == (None, None)
    assert server.pid is not None
    assert listeners_of(server.pid) == {
        (server.address, server.imap_port),
        (server.address, server.pop3_port),
    }
    imap = Lines(server.address, server.imap_port)
    try:
        greeting = imap.line()
        assert "STARTTLS" not in greeting
        assert "LOGINDISABLED" in greeting  # Dovecot's default: no plaintext logins
        assert imap_exchange(imap, "a", "STARTTLS")[-1].startswith("a BAD")
    finally:
        imap.close()
    pop3 = Lines(server.address, server.pop3_port)
    try:
        assert pop3.line().startswith("+OK")
        pop3.send(b"CAPA\r\n")
        assert "STLS" not in pop3.until(".")
        pop3.send(b"STLS\r\n")
        assert pop3.line().startswith("-ERR")
    finally:
        pop3.close()


def test_open_profile_lets_anyone_log_in_without_tls(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("open")
    client = imaplib.IMAP4(server.address, server.imap_port, timeout=_TIMEOUT)
    try:
        assert "STARTTLS" not in client.capabilities
        assert client.login(server.user, server.password)[0] == "OK"
    finally:
        client.logout()


@pytest.mark.parametrize("where", ["imaps", "imap", "pop3"])
def test_tls10_profile_negotiates_tls_1_0(scanlab: ScanLab, where: str) -> None:
    """``openssl s_client -tls1`` gets TLS 1.0 from tls10 (both STARTTLS and implicit)."""

    def s_client(server: LabDovecot) -> subprocess.CompletedProcess[str]:
        port = {"imaps": server.imaps_port, "imap": server.imap_port, "pop3": server.pop3_port}
        starttls = [] if where == "imaps" else ["-starttls", where]
        return subprocess.run(
            [
                "openssl",
                "s_client",
                "-tls1",
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
                "-connect",
                f"{server.address}:{port[where]}",
                *starttls,
            ],
            input="",
            capture_output=True,
            text=True,
            check=False,
            timeout=_TIMEOUT,
        )

    legacy = s_client(scanlab.dovecot("tls10"))
    assert legacy.returncode == 0, legacy.stderr
    assert re.search(r"^\s*Protocol\s*: TLSv1$", legacy.stdout, re.MULTILINE)
    assert "New, TLSv1.0, Cipher is" in legacy.stdout
    control = s_client(scanlab.dovecot("good"))
    assert control.returncode != 0
    assert "Cipher is (NONE)" in control.stdout


def test_tls10_profile_negotiates_tls_1_1_too(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("tls10")
    assert server.imaps_port is not None
    with (
        socket.create_connection((server.address, server.imaps_port), timeout=_TIMEOUT) as raw,
        legacy_client(ssl.TLSVersion.TLSv1_1).wrap_socket(raw) as tls,
    ):
        assert tls.version() == "TLSv1.1"


def test_no_twins_profile_listens_on_cleartext_ports_only(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("no_twins")
    assert (server.imaps_port, server.pop3s_port) == (None, None)
    assert server.pid is not None
    assert listeners_of(server.pid) == {
        (server.address, server.imap_port),
        (server.address, server.pop3_port),
    }
    client = imaplib.IMAP4(server.address, server.imap_port, timeout=_TIMEOUT)
    try:
        assert "LOGINDISABLED" in client.capabilities
        client.starttls(trusting(server.ca_cert))
        assert client.login(server.user, server.password)[0] == "OK"
    finally:
        client.logout()


def test_banner_profile_discloses_product_and_version(scanlab: ScanLab) -> None:
    disclosed, generic = scanlab.dovecot("banner"), scanlab.dovecot("good")
    seen: dict[str, tuple[str, str]] = {}
    for server in (disclosed, generic):
        imap = Lines(server.address, server.imap_port)
        try:
            seen[server.profile] = (imap.line(), " ".join(imap_exchange(imap, "a", "ID NIL")))
        finally:
            imap.close()
    greeting, id_reply = seen["banner"]
    assert greeting.endswith("] Dovecot 2.3.19 ready.")
    assert re.search(r'"version" "2\.3\.\d+', id_reply)
    greeting, id_reply = seen["good"]
    assert greeting.endswith("] Server ready.")
    assert "Dovecot" not in greeting
    assert "version" not in id_reply
    pop3 = poplib.POP3(generic.address, generic.pop3_port, timeout=_TIMEOUT)
    try:
        assert pop3.getwelcome() == b"+OK Server ready."
    finally:
        pop3.quit()


def test_dovecot_binds_only_its_own_address(scanlab: ScanLab) -> None:
    server = scanlab.dovecot("good")
    assert server.pid is not None
    assert listeners_of(server.pid) == {(e.address, e.port) for e in server.endpoints}
    assert len(server.endpoints) == 4


def test_dovecot_stop_leaves_no_process_and_no_port(tmp_path: Path) -> None:
    with LabDovecot.create(tmp_path, "no_twins") as server:
        pid = server.pid
        assert pid is not None
        assert _group_members(pid)
        assert not refuses(server.address, server.imap_port)
    assert _group_members(pid) == []
    assert refuses(server.address, server.imap_port)
    assert refuses(server.address, server.pop3_port)


def test_two_dovecots_run_side_by_side(tmp_path: Path) -> None:
    with (
        LabDovecot.create(tmp_path / "one", "good") as one,
        LabDovecot.create(tmp_path / "two", "plaintext") as two,
    ):
        assert one.address != two.address
        greetings = []
        for server in (one, two):
            imap = Lines(server.address, server.imap_port)
            try:
                greetings.append(imap.line())
            finally:
                imap.close()
        assert "LOGINDISABLED" in greetings[0]
        assert "AUTH=PLAIN" in greetings[1]


# -- aiosmtpd submission ---------------------------------------------------------------------


def test_submission_tls_required_refuses_auth_and_mail_before_starttls(scanlab: ScanLab) -> None:
    server = scanlab.submission(auth_before_tls=False)
    client = smtplib.SMTP(server.address, server.port, timeout=_TIMEOUT)
    try:
        client.ehlo("lab.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        refused = (530, b"5.7.0 Must issue a STARTTLS command first")
        assert client.docmd("AUTH", "PLAIN AHByb2JlAHByb2Jl") == refused
        assert client.docmd("MAIL", "FROM:<probe@lab.test>") == refused
        client.starttls(context=trusting(server.ca_cert))
        # RFC 3207 §4.2: STARTTLS forgot the EHLO.
        assert client.docmd("MAIL", "FROM:<probe@lab.test>")[0] == 503
        client.ehlo("lab.test")
        assert client.has_extn("auth")
        assert not client.has_extn("starttls")
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            client.login(server.user, "not-" + server.password)
        assert wrong.value.smtp_code == 535
        assert client.login(server.user, server.password)[0] == 235
        assert client.docmd("MAIL", "FROM:<alice@lab.test>")[0] == 250
    finally:
        client.quit()


def test_submission_auth_before_tls_evaluates_credentials_in_cleartext(scanlab: ScanLab) -> None:
    server = scanlab.submission(auth_before_tls=True)
    client = smtplib.SMTP(server.address, server.port, timeout=_TIMEOUT)
    try:
        client.ehlo("lab.test")
        assert client.has_extn("starttls")
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        assert client.docmd("MAIL", "FROM:<probe@lab.test>")[0] == 530  # AUTH first
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            client.login(server.user, "not-" + server.password)
        assert wrong.value.smtp_code == 535
        assert client.login(server.user, server.password)[0] == 235
    finally:
        client.quit()


@pytest.mark.parametrize("auth_before_tls", [True, False])
def test_submission_implicit_twin(scanlab: ScanLab, auth_before_tls: bool) -> None:
    server = scanlab.submission(auth_before_tls=auth_before_tls)
    assert server.implicit_port is not None
    client = smtplib.SMTP_SSL(
        server.address, server.implicit_port, context=trusting(server.ca_cert), timeout=_TIMEOUT
    )
    try:
        client.ehlo("lab.test")
        assert client.has_extn("auth")
        assert not client.has_extn("starttls")
        assert client.login(server.user, server.password)[0] == 235
    finally:
        client.quit()


@pytest.mark.usefixtures("_no_leftover_threads")
def test_asyncio_servers_bind_only_their_address_and_release_it() -> None:
    with (
        LabSubmission(auth_before_tls=False) as submission,
        ToyServer("pop3", injection="answers_in_tls") as toy,
    ):
        expected = {(e.address, e.port) for e in (*submission.endpoints, *toy.endpoints)}
        assert len(expected) == 4
        held = {entry for entry in listeners_of(os.getpid()) if entry in expected}
        assert held == expected
        wildcard = {port for address, port in listeners_of(os.getpid()) if address == "0.0.0.0"}
        assert not wildcard & {port for _, port in expected}
    for address, port in expected:
        assert refuses(address, port)


# -- deliberately broken toys ---------------------------------------------------------------------

#: Per protocol: the STARTTLS segment with one pipelined command, the first line of our
#: STARTTLS reply, the first line of the answer to the pipelined command, and for the
#: control a command of our own with the first line of its answer.
_INJECTION = {
    "imap": (b"a STARTTLS\r\nINJ NOOP\r\n", "a OK", "INJ OK NOOP", b"c NOOP\r\n", "c OK"),
    "pop3": (b"STLS\r\nCAPA\r\n", "+OK Begin", "+OK", b"QUIT\r\n", "+OK Logging out"),
    "smtp": (
        b"STARTTLS\r\nEHLO injected\r\n",
        "220 ",
        "250-mail.lab.test",
        b"NOOP\r\n",
        "250 2.0.0",
    ),
}


def _start_injection(server: ToyServer) -> Lines:
    """Connect, get to the point of STARTTLS, send it with a command pipelined behind it."""
    segment, reply, _, _, _ = _INJECTION[server.protocol]
    client = Lines(server.address, server.port)
    greeting = client.line()
    assert greeting.startswith(("* OK", "+OK", "220 "))
    if server.protocol == "smtp":
        client.send(b"EHLO lab.test\r\n")
        client.until("250 ")
    client.send(segment)  # one sendall: one TCP segment on loopback
    assert client.line().startswith(reply)
    return client


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_injection_answered_in_cleartext(scanlab: ScanLab, protocol: MailProtocol) -> None:
    server = scanlab.toy(f"{protocol}:inject_cleartext")
    client = _start_injection(server)
    try:
        # The very next cleartext bytes, before any handshake, answer the injected command.
        assert client.line().startswith(_INJECTION[protocol][2])
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_injection_answered_inside_tls(scanlab: ScanLab, protocol: MailProtocol) -> None:
    server = scanlab.toy(f"{protocol}:inject_tls")
    client = _start_injection(server)
    try:
        client.upgrade(trusting(server.ca_cert), SERVER_NAME)
        # The first record we decrypt answers what we never sent inside TLS.
        first = client.line()
        assert first.startswith(_INJECTION[protocol][2])
        if protocol == "pop3":
            assert "USER" in client.until(".")  # CAPA ran in the TLS state
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_safe_toy_discards_the_injected_command(scanlab: ScanLab, protocol: MailProtocol) -> None:
    """The control: same dialog, the pipelined command is thrown away."""
    server = scanlab.toy(f"{protocol}:safe")
    client = _start_injection(server)
    try:
        # The handshake would fail on any cleartext after the reply (and upgrade() checks
        # that nothing arrived already); inside TLS the first answer is to our own command.
        client.upgrade(trusting(server.ca_cert), SERVER_NAME)
        _, _, _, own, answer = _INJECTION[protocol]
        client.send(own)
        assert client.line().startswith(answer)
    finally:
        client.close()


def test_injectable_imap_is_otherwise_a_careful_server(scanlab: ScanLab) -> None:
    server = scanlab.toy("imap:inject_tls")
    client = imaplib.IMAP4(server.address, server.port, timeout=_TIMEOUT)
    try:
        assert {"STARTTLS", "LOGINDISABLED"} <= set(client.capabilities)
        with pytest.raises(imaplib.IMAP4.error, match=r"\[PRIVACYREQUIRED\]"):
            client.login("probe", "probe")
        client.starttls(trusting(server.ca_cert))
        assert "STARTTLS" not in client.capabilities
        assert "AUTH=PLAIN" in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
            client.login("probe", "probe")
        assert client.noop()[0] == "OK"
        with pytest.raises(imaplib.IMAP4.error, match="STARTTLS not allowed"):
            client.xatom("STARTTLS")
    finally:
        assert client.logout()[0] == "BYE"
    assert server.implicit_port is not None
    twin = imaplib.IMAP4_SSL(
        server.address, server.implicit_port, ssl_context=trusting(server.ca_cert)
    )
    try:
        assert "STARTTLS" not in twin.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="STARTTLS not allowed"):
            twin.xatom("STARTTLS")  # RFC 9051 §6.2.1: BAD on an implicit-TLS port
    finally:
        twin.logout()


def test_injectable_pop3_is_otherwise_a_careful_server(scanlab: ScanLab) -> None:
    server = scanlab.toy("pop3:inject_tls")
    client = poplib.POP3(server.address, server.port, timeout=_TIMEOUT)
    try:
        assert "USER" not in client.capa()
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext"):
            client.user("probe")
        client.stls(trusting(server.ca_cert))
        assert "USER" in client.capa()
        client.user("probe")
        with pytest.raises(poplib.error_proto, match="Authentication failed"):
            client.pass_("probe")
    finally:
        client.quit()


def test_injectable_smtp_is_otherwise_a_careful_server(scanlab: ScanLab) -> None:
    server = scanlab.toy("smtp:inject_tls")
    client = smtplib.SMTP(server.address, server.port, timeout=_TIMEOUT)
    try:
        client.ehlo("lab.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AHByb2JlAHByb2Jl")[0] == 530
        client.starttls(context=trusting(server.ca_cert))
        assert client.docmd("MAIL", "FROM:<probe@lab.test>")[0] == 503  # state was reset
        client.ehlo("lab.test")
        assert client.has_extn("auth")
        assert not client.has_extn("starttls")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("probe", "probe")
        assert client.docmd("STARTTLS")[0] == 554  # RFC 3207 §4.2: not twice
    finally:
        client.quit()


def test_preauth_imap_greets_authenticated_on_cleartext(scanlab: ScanLab) -> None:
    server = scanlab.toy("imap:preauth")
    client = imaplib.IMAP4(server.address, server.port, timeout=_TIMEOUT)
    try:
        assert client.welcome.startswith(b"* PREAUTH")
        assert client.state == "AUTH"
        typ, mailboxes = client.list()
        assert typ == "OK"
        assert b"INBOX" in b" ".join(m for m in mailboxes if isinstance(m, bytes))
        assert "STARTTLS" not in client.capabilities
    finally:
        client.logout()
    raw = Lines(server.address, server.port)
    try:
        assert raw.line().startswith("* PREAUTH [CAPABILITY IMAP4rev1")
        assert imap_exchange(raw, "a", "STARTTLS")[-1].startswith("a BAD")
    finally:
        raw.close()
    # The control: an ordinary toy greets "* OK" on the same kind of port.
    ordinary = Lines(scanlab.toy("imap:safe").address, scanlab.toy("imap:safe").port)
    try:
        assert ordinary.line().startswith("* OK")
    finally:
        ordinary.close()


def test_throttling_smtp_answers_421_after_n_connections() -> None:
    with ThrottlingSmtp(after=2, implicit_twin=False) as server:
        for _ in range(2):
            client = smtplib.SMTP(server.address, server.port, timeout=_TIMEOUT)
            client.ehlo("lab.test")
            assert client.has_extn("starttls")
            client.quit()
        with pytest.raises(smtplib.SMTPConnectError) as throttled:
            smtplib.SMTP(server.address, server.port, timeout=_TIMEOUT)
        assert throttled.value.smtp_code == 421
        error = throttled.value.smtp_error
        assert isinstance(error, bytes)
        assert error.startswith(b"4.7.0 ")
        assert b"Too many connections" in error
        assert server.connections == 3


# -- one switchable flaw per toy -------------------------------------------------------------


def imap_capabilities(lines: Lines, tag: str) -> set[str]:
    reply = imap_exchange(lines, tag, "CAPABILITY")
    assert reply[-1].startswith(f"{tag} OK"), reply
    listed = next(line for line in reply if line.startswith("* CAPABILITY "))
    return set(listed.split()[2:])


def sasl_of(capabilities: list[str] | tuple[str, ...]) -> set[str]:
    return {c.removeprefix("AUTH=") for c in capabilities if c.startswith("AUTH=")}


def _twin(server: ToyServer) -> int:
    assert server.implicit_port is not None
    return server.implicit_port


def test_flaw_kinds_are_registered_with_their_one_flaw(scanlab: ScanLab) -> None:
    assert set(FLAW_KINDS) <= set(KINDS)
    for kind, (protocol, flaw) in FLAW_KINDS.items():
        assert kind.startswith(f"{protocol}:")
        assert protocol in FLAWS[flaw].protocols
        assert FLAWS[flaw].checks
    server = scanlab.toy("smtp:vrfy")
    assert (server.protocol, server.flaws) == ("smtp", frozenset({"vrfy"}))
    assert server.implicit_port is not None  # every flaw kind has its twin: no EXP-05


def test_toy_flaws_belong_to_their_protocol() -> None:
    with pytest.raises(ValueError, match="not a flaw the imap toy has"):
        ToyServer("imap", flaws=["vrfy"])
    with pytest.raises(ValueError, match="implicit-TLS twin"):
        ToyServer("imap", flaws=["implicit_starttls_ok"], implicit_twin=False)
    with pytest.raises(ValueError, match="unknown flaw"):
        ToyServer("pop3", flaws=["no_such_flaw"])  # type: ignore[list-item]


@pytest.mark.parametrize("kind", sorted(FLAW_KINDS))
def test_flaw_kinds_are_otherwise_careful(scanlab: ScanLab, kind: str) -> None:
    """Only the one flaw: credentials refused before TLS, nothing offered for them, and
    a command pipelined behind STARTTLS thrown away (no ST-07, no AUTH-0x, no EXP-0x)."""
    server = scanlab.toy(kind)
    client = Lines(server.address, server.port)
    try:
        greeting = client.line()
        if server.protocol == "imap":
            assert "LOGINDISABLED" in greeting
            assert "AUTH=" not in greeting
            assert imap_exchange(client, "a", "LOGIN probe probe")[-1].startswith(
                "a NO [PRIVACYREQUIRED]"
            )
        elif server.protocol == "pop3":
            client.send(b"CAPA\r\n")
            assert "USER" not in client.until(".")
            client.send(b"USER probe\r\n")
            assert client.line().startswith("-ERR [AUTH] Plaintext")
        else:
            client.send(b"EHLO lab.test\r\n")
            assert not [line for line in client.until("250 ") if "AUTH" in line]
            client.send(b"AUTH PLAIN AHByb2JlAHByb2Jl\r\nMAIL FROM:<probe@lab.test>\r\n")
            assert client.line().startswith("530 5.7.0")
            assert client.line().startswith("530 5.7.0")
    finally:
        client.close()
    injected = _start_injection(server)
    try:
        injected.upgrade(trusting(server.ca_cert), SERVER_NAME)
        _, _, _, own, answer = _INJECTION[server.protocol]
        injected.send(own)
        assert injected.line().startswith(answer)
    finally:
        injected.close()


def test_imap_starttls_works_although_not_advertised(scanlab: ScanLab) -> None:
    server = scanlab.toy("imap:starttls_unadvertised")
    careful = imaplib.IMAP4(server.address, server.port, timeout=_TIMEOUT)
    try:
        assert "STARTTLS" not in careful.capabilities
        assert "LOGINDISABLED" in careful.capabilities
        with pytest.raises(imaplib.IMAP4.abort, match="TLS not supported by server"):
            careful.starttls(trusting(server.ca_cert))  # a careful client believes the list
    finally:
        careful.logout()
    raw = Lines(server.address, server.port)
    try:
        assert "STARTTLS" not in raw.line()
        assert "STARTTLS" not in imap_capabilities(raw, "a")
        assert imap_exchange(raw, "b", "STARTTLS")[-1].startswith("b OK")
        raw.upgrade(trusting(server.ca_cert), SERVER_NAME)
        inside = imap_capabilities(raw, "c")
        assert "AUTH=PLAIN" in inside
        assert "STARTTLS" not in inside
    finally:
        raw.close()
    # The control: the safe toy advertises what it accepts.
    safe = scanlab.toy("imap:safe")
    control = Lines(safe.address, safe.port)
    try:
        assert "STARTTLS" in control.line()
    finally:
        control.close()


def test_pop3_stls_works_although_not_advertised(scanlab: ScanLab) -> None:
    server = scanlab.toy("pop3:stls_unadvertised")
    careful = poplib.POP3(server.address, server.port, timeout=_TIMEOUT)
    try:
        assert "STLS" not in careful.capa()
        with pytest.raises(poplib.error_proto, match="STLS not supported"):
            careful.stls(trusting(server.ca_cert))
    finally:
        careful.quit()
    raw = Lines(server.address, server.port)
    try:
        raw.line()
        raw.send(b"STLS\r\n")
        assert raw.line().startswith("+OK")
        raw.upgrade(trusting(server.ca_cert), SERVER_NAME)
        raw.send(b"CAPA\r\n")
        inside = raw.until(".")
        assert "USER" in inside
        assert "STLS" not in inside
    finally:
        raw.close()
    safe = scanlab.toy("pop3:safe")
    control = poplib.POP3(safe.address, safe.port, timeout=_TIMEOUT)
    try:
        assert "STLS" in control.capa()
    finally:
        control.quit()


@pytest.mark.parametrize(
    ("kind", "protocol"),
    [("imap:starttls_unadvertised", "imap"), ("pop3:stls_unadvertised", "pop3")],
)
def test_s_client_upgrades_where_starttls_is_not_advertised(
    scanlab: ScanLab, kind: str, protocol: str
) -> None:
    """``openssl s_client -starttls`` tries anyway, and gets a verified TLS session."""
    server = scanlab.toy(kind)
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-starttls",
            protocol,
            "-connect",
            f"{server.address}:{server.port}",
            "-CAfile",
            str(server.ca_cert),
            "-verify_return_error",
            "-verify_hostname",
            SERVER_NAME,
            "-servername",
            SERVER_NAME,
        ],
        input="",
        capture_output=True,
        text=True,
        check=False,
        timeout=_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout
    assert re.search(r"^New, TLSv1\.[23], Cipher is ", result.stdout, re.MULTILINE)
    if protocol == "imap":  # s_client reads CAPABILITY first (for POP3 it sends STLS blindly)
        assert "Didn't find STARTTLS in server response, trying anyway" in result.stderr


def test_imap_still_advertises_starttls_after_starttls(scanlab: ScanLab) -> None:
    server = scanlab.toy("imap:starttls_after_tls")
    context = trusting(server.ca_cert)
    client = imaplib.IMAP4(server.address, server.port, timeout=_TIMEOUT)
    try:
        assert {"STARTTLS", "LOGINDISABLED"} <= set(client.capabilities)
        client.starttls(context)
        assert "STARTTLS" in client.capabilities  # the flaw (RFC 9051 §6.2.1)
        assert "AUTH=PLAIN" in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="STARTTLS not allowed"):
            client.xatom("STARTTLS")  # only the list is wrong: a second one is refused
    finally:
        client.logout()
    # The implicit twin is right: the flaw belongs to the upgrade.
    twin = imaplib.IMAP4_SSL(server.address, _twin(server), ssl_context=context)
    try:
        assert "STARTTLS" not in twin.capabilities
        assert "AUTH=PLAIN" in twin.capabilities
    finally:
        twin.logout()


def test_smtp_still_advertises_starttls_after_starttls(scanlab: ScanLab) -> None:
    server = scanlab.toy("smtp:starttls_after_tls")
    context = trusting(server.ca_cert)
    client = smtplib.SMTP(server.address, server.port, timeout=_TIMEOUT)
    try:
        client.ehlo("lab.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        client.starttls(context=context)
        client.ehlo("lab.test")
        assert client.has_extn("starttls")  # the flaw (RFC 3207 §4.2)
        assert client.has_extn("auth")
        assert client.docmd("STARTTLS")[0] == 554  # only advertised, still refused
    finally:
        client.quit()
    twin = smtplib.SMTP_SSL(server.address, _twin(server), context=context, timeout=_TIMEOUT)
    try:
        twin.ehlo("lab.test")
        assert not twin.has_extn("starttls")
    finally:
        twin.quit()


def test_smtp_accepts_a_second_starttls(scanlab: ScanLab) -> None:
    server = scanlab.toy("smtp:second_starttls")
    context = trusting(server.ca_cert)
    client = smtplib.SMTP(server.address, server.port, timeout=_TIMEOUT)
    try:
        client.ehlo("lab.test")
        client.starttls(context=context)
        client.ehlo("lab.test")
        assert not client.has_extn("starttls")  # not advertised: only the command is wrong
        assert client.docmd("STARTTLS") == (220, b"2.0.0 Ready to start TLS")
        # It then hangs up rather than nest TLS (see tests/scanlab.py "Things that bite").
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    finally:
        client.close()
    # Controls: the twin and the safe toy refuse STARTTLS inside TLS (no ST-06, no ST-05).
    twin = smtplib.SMTP_SSL(server.address, _twin(server), context=context, timeout=_TIMEOUT)
    try:
        twin.ehlo("lab.test")
        assert twin.docmd("STARTTLS")[0] == 554
    finally:
        twin.quit()
    safe = scanlab.toy("smtp:safe")
    control = smtplib.SMTP(safe.address, safe.port, timeout=_TIMEOUT)
    try:
        control.starttls(context=trusting(safe.ca_cert))
        control.ehlo("lab.test")
        assert control.docmd("STARTTLS")[0] == 554
    finally:
        control.quit()


def test_imap_implicit_port_answers_starttls_with_ok(scanlab: ScanLab) -> None:
    server = scanlab.toy("imap:implicit_starttls_ok")
    context = trusting(server.ca_cert)
    twin = imaplib.IMAP4_SSL(server.address, _twin(server), ssl_context=context)
    try:
        assert "STARTTLS" not in twin.capabilities
        assert twin.xatom("STARTTLS")[0] == "OK"  # RFC 9051 §6.2.1 wants a tagged BAD
    finally:
        twin.shutdown()  # it hung up after the OK
    # The control: the safe toy's twin answers BAD (imaplib raises on BAD).
    safe = scanlab.toy("imap:safe")
    control = imaplib.IMAP4_SSL(safe.address, _twin(safe), ssl_context=trusting(safe.ca_cert))
    try:
        with pytest.raises(imaplib.IMAP4.error, match="STARTTLS not allowed"):
            control.xatom("STARTTLS")
    finally:
        control.logout()
    # The flawed toy's cleartext port is safe: one STARTTLS, and none inside TLS.
    client = imaplib.IMAP4(server.address, server.port, timeout=_TIMEOUT)
    try:
        client.starttls(context)
        assert "STARTTLS" not in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="STARTTLS not allowed"):
            client.xatom("STARTTLS")
    finally:
        client.logout()


@pytest.mark.parametrize(("kind", "after_starttls"), [("smtp:no_reset", 250), ("smtp:safe", 503)])
def test_smtp_state_across_starttls(scanlab: ScanLab, kind: str, after_starttls: int) -> None:
    """``no_reset`` keeps the EHLO from before TLS (MAIL works at once); the safe toy forgot
    it (503 until a new EHLO)."""
    server = scanlab.toy(kind)
    client = smtplib.SMTP(server.address, server.port, timeout=_TIMEOUT)
    try:
        client.ehlo("lab.test")
        assert client.docmd("MAIL", "FROM:<probe@lab.test>")[0] == 530  # not before TLS
        client.starttls(context=trusting(server.ca_cert))
        assert client.docmd("MAIL", "FROM:<probe@lab.test>")[0] == after_starttls
        assert client.rset()[0] == 250
        client.ehlo("lab.test")
        if kind == "smtp:no_reset":
            # MAIL without AUTH is Postfix's default; relaying is refused at RCPT.
            assert client.docmd("MAIL", "FROM:<probe@lab.test>")[0] == 250
            rcpt = client.docmd("RCPT", "TO:<probe@example.invalid>")
            assert rcpt == (554, b"5.7.1 <probe@example.invalid>: Relay access denied")
        else:
            assert client.docmd("MAIL", "FROM:<probe@lab.test>")[0] == 530
    finally:
        client.quit()


def test_imap_anonymous_login_works_inside_tls(scanlab: ScanLab) -> None:
    server = scanlab.toy("imap:anonymous")
    context = trusting(server.ca_cert)

    def trace(challenge: bytes) -> bytes:
        return b"lab@lab.test"  # RFC 4505 trace information: no password

    client = imaplib.IMAP4(server.address, server.port, timeout=_TIMEOUT)
    try:
        assert sasl_of(client.capabilities) == set()
        with pytest.raises(imaplib.IMAP4.error, match=r"\[PRIVACYREQUIRED\]"):
            client.authenticate("ANONYMOUS", trace)
        client.starttls(context)
        assert sasl_of(client.capabilities) == {"PLAIN", "ANONYMOUS"}
        assert client.authenticate("ANONYMOUS", trace)[0] == "OK"  # in without a password
        assert client.state == "AUTH"
        typ, mailboxes = client.list()
        assert typ == "OK"
        assert b"INBOX" in b" ".join(m for m in mailboxes if isinstance(m, bytes))
    finally:
        client.logout()
    twin = imaplib.IMAP4_SSL(server.address, _twin(server), ssl_context=context)
    try:
        assert "AUTH=ANONYMOUS" in twin.capabilities
    finally:
        twin.logout()
    safe = scanlab.toy("imap:safe")
    control = imaplib.IMAP4(safe.address, safe.port, timeout=_TIMEOUT)
    try:
        control.starttls(trusting(safe.ca_cert))
        assert sasl_of(control.capabilities) == {"PLAIN"}
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
            control.authenticate("ANONYMOUS", trace)
    finally:
        control.logout()


def test_smtp_vrfy_tells_mailboxes_from_strangers(scanlab: ScanLab) -> None:
    server = scanlab.toy("smtp:vrfy")
    context = trusting(server.ca_cert)
    stranger = f"nobody-{secrets.token_hex(4)}"
    client = smtplib.SMTP(server.address, server.port, timeout=_TIMEOUT)
    try:
        client.ehlo("lab.test")
        assert client.verify("postmaster")[0] == 530  # TLS first, like everything else
        client.starttls(context=context)
        client.ehlo("lab.test")
        assert client.verify("postmaster") == (250, b"2.1.5 <postmaster@mail.lab.test>")
        assert client.verify("alice@mail.lab.test") == (250, b"2.1.5 <alice@mail.lab.test>")
        assert client.verify(stranger)[0] == 550
        assert client.expn("postmaster")[0] == 502
    finally:
        client.quit()
    twin = smtplib.SMTP_SSL(server.address, _twin(server), context=context, timeout=_TIMEOUT)
    try:
        twin.ehlo("lab.test")
        assert twin.verify("postmaster")[0] == 250
        assert twin.verify(stranger)[0] == 550
    finally:
        twin.quit()
    safe = scanlab.toy("smtp:safe")
    control = smtplib.SMTP(safe.address, safe.port, timeout=_TIMEOUT)
    try:
        control.starttls(context=trusting(safe.ca_cert))
        control.ehlo("lab.test")
        assert control.verify("postmaster")[0] == control.verify(stranger)[0] == 502
    finally:
        control.quit()


def test_imap_offers_only_legacy_sasl_inside_tls(scanlab: ScanLab) -> None:
    server = scanlab.toy("imap:legacy_sasl")
    context = trusting(server.ca_cert)
    challenges: list[bytes] = []

    def respond(challenge: bytes) -> bytes:
        challenges.append(challenge)
        return b"alice 0123456789abcdef0123456789abcdef"

    client = imaplib.IMAP4(server.address, server.port, timeout=_TIMEOUT)
    try:
        assert sasl_of(client.capabilities) == set()
        client.starttls(context)
        assert sasl_of(client.capabilities) == {"CRAM-MD5", "DIGEST-MD5"}
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
            client.authenticate("CRAM-MD5", respond)
        assert re.fullmatch(rb"<\d+\.\d+@mail\.lab\.test>", challenges[0])  # RFC 2195
    finally:
        client.logout()
    twin = imaplib.IMAP4_SSL(server.address, _twin(server), ssl_context=context)
    try:
        assert sasl_of(twin.capabilities) == {"CRAM-MD5", "DIGEST-MD5"}
    finally:
        twin.logout()
    safe = scanlab.toy("imap:safe")
    control = imaplib.IMAP4_SSL(safe.address, _twin(safe), ssl_context=trusting(safe.ca_cert))
    try:
        assert sasl_of(control.capabilities) == {"PLAIN"}
    finally:
        control.logout()


def test_pop3_discloses_product_and_version(scanlab: ScanLab) -> None:
    server = scanlab.toy("pop3:versioned")
    context = trusting(server.ca_cert)
    implementation = QPOPPER_IMPLEMENTATION.split()[1:]
    client = poplib.POP3(server.address, server.port, timeout=_TIMEOUT)
    try:
        assert client.getwelcome() == QPOPPER_GREETING.encode() == b"+OK Qpopper 4.1.0 ready"
        before = client.capa()
        assert before["IMPLEMENTATION"] == implementation == ["Qpopper-4.1.0"]
        assert "STLS" in before
        client.stls(context)
        assert client.capa()["IMPLEMENTATION"] == implementation
    finally:
        client.quit()
    twin = poplib.POP3_SSL(server.address, _twin(server), context=context, timeout=_TIMEOUT)
    try:
        assert twin.getwelcome() == QPOPPER_GREETING.encode()
        assert twin.capa()["IMPLEMENTATION"] == implementation
    finally:
        twin.quit()
    safe = scanlab.toy("pop3:safe")
    control = poplib.POP3(safe.address, safe.port, timeout=_TIMEOUT)
    try:
        assert not re.search(rb"\d\.\d", control.getwelcome())
        assert "IMPLEMENTATION" not in control.capa()
    finally:
        control.quit()


def test_imap_id_discloses_product_and_version(scanlab: ScanLab) -> None:
    server, safe = scanlab.toy("imap:id_version"), scanlab.toy("imap:safe")
    context = trusting(server.ca_cert)
    for address, port, tls, fields in (
        (server.address, server.port, False, CYRUS_ID),
        (server.address, _twin(server), True, CYRUS_ID),
        (safe.address, safe.port, False, "NIL"),
    ):
        client = Lines(address, port)
        try:
            if tls:
                client.upgrade(context, SERVER_NAME)
            greeting = client.line()
            assert not re.search(r"\d\.\d", greeting.partition("] ")[2])  # BAN-01 stays clean
            assert imap_exchange(client, "a", "ID NIL") == [f"* ID {fields}", "a OK ID completed."]
        finally:
            client.close()
    assert CYRUS_ID == '("name" "Cyrus IMAP" "version" "3.2.6")'


def test_smtp_ehlo_names_an_internal_host(scanlab: ScanLab) -> None:
    server, safe = scanlab.toy("smtp:internal_name"), scanlab.toy("smtp:safe")
    context = trusting(server.ca_cert)
    client = smtplib.SMTP(timeout=_TIMEOUT)
    try:
        code, greeting = client.connect(server.address, server.port)
        assert (code, greeting.split()[0]) == (220, SERVER_NAME.encode())  # the public name
        client.ehlo("lab.test")
        assert client.ehlo_resp is not None
        assert client.ehlo_resp.splitlines()[0] == INTERNAL_NAME.encode() == b"mx1.corp.internal"
        assert client.helo("lab.test") == (250, INTERNAL_NAME.encode())
    finally:
        client.quit()
    twin = smtplib.SMTP_SSL(server.address, _twin(server), context=context, timeout=_TIMEOUT)
    try:
        twin.ehlo("lab.test")
        assert twin.ehlo_resp is not None
        assert twin.ehlo_resp.splitlines()[0] == INTERNAL_NAME.encode()
    finally:
        twin.quit()
    control = smtplib.SMTP(safe.address, safe.port, timeout=_TIMEOUT)
    try:
        control.ehlo("lab.test")
        assert control.ehlo_resp is not None
        assert control.ehlo_resp.splitlines()[0] == SERVER_NAME.encode()
    finally:
        control.quit()


def test_toy_servers_reject_127_0_0_1() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        InjectableImap("answers_in_tls", address="127.0.0.1")


# -- start_lab (the benchmark's way in) ------------------------------------------------------------


def test_start_lab_spreads_hosts_and_shares_one_dovecot_per_profile(tmp_path: Path) -> None:
    network = f"127.{secrets.randbelow(150) + 100}.{secrets.randbelow(256)}.0/24"
    kinds = [
        "dovecot:good",
        "dovecot:plaintext",
        "dovecot:good",
        "submission:tls_required",
        "imap:inject_tls",
        "smtp:throttle",
    ]
    with start_lab(kinds, tmp_path, network=network, standard_ports=False) as lab:
        addresses = [host.address for host in lab.hosts]
        assert len(set(addresses)) == len(kinds)
        assert all(a.startswith(network.rsplit(".", 2)[0] + ".") for a in addresses)
        assert [host.kind for host in lab.hosts] == kinds
        dovecots = [s for s in lab.servers if isinstance(s, LabDovecot)]
        assert sorted(d.profile for d in dovecots) == ["good", "plaintext"]
        assert lab.ca_cert == lab_pki().ca_cert
        greeting = {"imap": "* OK", "pop3": "+OK", "smtp": "220 "}
        for host in lab.hosts:
            for endpoint in host.endpoints:
                assert endpoint.address == host.address
                if endpoint.implicit_tls:
                    continue
                client = Lines(endpoint.address, endpoint.port)
                try:
                    first = client.line()
                finally:
                    client.close()
                assert first.startswith(greeting[endpoint.protocol])
                if host.kind == "dovecot:plaintext" and endpoint.protocol == "imap":
                    assert "AUTH=PLAIN" in first
                elif host.kind == "dovecot:good" and endpoint.protocol == "imap":
                    assert "LOGINDISABLED" in first
        endpoints = list(lab.endpoints)
    assert all(refuses(e.address, e.port) for e in endpoints)


@pytest.mark.usefixtures("_no_leftover_threads")
def test_toy_server_survives_clients_that_vanish() -> None:
    """Aborted handshakes and half-sent lines do not wedge a toy or its stop()."""
    with InjectableImap("answers_in_tls", implicit_twin=False) as server:
        half = Lines(server.address, server.port)
        half.line()
        half.send(b"a NOO")  # no line end, then gone
        half.close()
        broken = _start_injection(server)
        broken.send(b"\x16\x03\x01 not a ClientHello\r\n")
        broken.close()
        client = imaplib.IMAP4(server.address, server.port, timeout=_TIMEOUT)
        assert client.noop()[0] == "OK"
        client.logout()

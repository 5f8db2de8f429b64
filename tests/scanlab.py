"""The scanner's test lab: real, deliberately configured mail servers on loopback.

`imapguard scan` is judged by scanning these servers and comparing the finding IDs with
what each server is known to be. Everything here is a test fixture, not product code.

What there is (each is a context manager, and :class:`ScanLab` hands them out to pytest):

* :class:`LabDovecot` -- Debian's Dovecot 2.3 serving IMAP and POP3, configured from a
  :class:`LabConfig`; :data:`PROFILES` names the configurations the scanner tests need
  (``good``, ``plaintext``, ``no_starttls``, ``open``, ``tls10``, ``expired``,
  ``self_signed``, ``wrong_name``, ``no_twins``, ``banner``; see :data:`PROFILES`)::

      with LabDovecot.create(tmp_path, "tls10") as server:
          server.address, server.imap_port, server.imaps_port, server.pop3_port, ...

* :class:`LabSubmission` -- ``aiosmtpd`` as a submission server with STARTTLS, either
  offering and evaluating AUTH before TLS (``auth_before_tls=True``) or refusing anything
  but EHLO/STARTTLS/NOOP/QUIT before TLS with ``530 5.7.0 Must issue a STARTTLS command
  first``; an implicit-TLS twin ("submissions") unless ``implicit_twin=False``.
* Tiny, deliberately broken servers (:class:`ToyServer` and its named variants) for what no
  real server does any more: :class:`InjectableImap` / :class:`InjectablePop3` /
  :class:`InjectableSmtp` (STARTTLS command injection, CVE-2011-0411 class, variant
  ``answers_in_cleartext`` or ``answers_in_tls``), :class:`PreauthImap` (``* PREAUTH``
  greeting on a cleartext port) and :class:`ThrottlingSmtp` (``421 4.7.0 Too many
  connections`` after the first N connections). ``ToyServer(protocol, flaws=[...])``
  switches on any of :data:`FLAWS`, one scanner check each (ST-03, ST-04, ST-05, ST-06,
  ST-08, AUTH-06, AUTH-08, AUTH-09, BAN-01/02, BAN-03), and :data:`FLAW_KINDS` names a lab
  kind for each (``imap:anonymous``, ``smtp:vrfy`` ...). Apart from their one flaw they
  behave like a careful server: LOGINDISABLED / no USER / 530 before TLS, STARTTLS not
  advertised after TLS, STARTTLS refused inside TLS, SMTP state reset by STARTTLS, no
  version anywhere, pipelined commands after STARTTLS thrown away. A flaw of the STARTTLS
  upgrade shows on the cleartext port only, ST-06 on the implicit-TLS twin only, and what a
  TLS session offers (mechanisms, VRFY, names, versions) on both (``ToyFlaw.shows_on``).
* :func:`start_lab` -- many services at once for the benchmark (one Dovecot per profile,
  listening on every address of that profile)::

      with start_lab(["dovecot:good"] * 5 + ["submission:tls_required"] * 5, base) as lab:
          for host in lab.hosts: host.address, host.kind, host.endpoints

* pytest: ``from tests.scanlab import scanlab`` (session fixture) and then
  ``scanlab.dovecot("good")``, ``scanlab.submission(auth_before_tls=True)``,
  ``scanlab.get("imap:inject_tls")``; each is started once per session and stopped at its
  end. A server whose state a test changes (:class:`ThrottlingSmtp` counts connections)
  is better started by the test itself with ``with ThrottlingSmtp(after=2) as server:``.

Certificates: one private CA per process (:func:`lab_pki`, file ``ca_cert`` on every
server) signs every leaf, RSA 2048, 91 days, SHA-256, for :data:`SERVER_NAME` and the
server's addresses. ``expired`` expired 30 days ago; ``wrong_name`` is valid and trusted but
only for :data:`OTHER_NAME`; ``self_signed`` is its own issuer, unknown to the CA. TLS is
Mozilla "intermediate" (TLS 1.2+, ECDHE with AEAD only) except where a profile says not.

Things that bite:

* **Dovecot's "secured" rule.** Dovecot treats a client whose address equals the server's
  address as secure (and then offers AUTH=PLAIN and drops LOGINDISABLED), as it does a
  client in ``login_trusted_networks``. So every lab server listens on its own loopback
  address other than 127.0.0.1 (127.0.0.2 and up, :func:`lab_address`), and
  ``login_trusted_networks`` stays empty. Linux routes all of 127.0.0.0/8 through ``lo``
  with ``src 127.0.0.1`` (``ip route get 127.0.0.2``), so an ordinary client connects
  *from* 127.0.0.1 and meets what an outside client meets. A client that binds its
  source to the server's own address (e.g. ``source_address=("127.0.0.2", 0)``) is
  "secure" again and sees a different server.
* **Auth penalty.** Dovecot's anvil delays every login from an address that recently
  failed (measured 4.5 s from the second failure on). The scanner's dummy-credential
  probe fails on purpose, from 127.0.0.1, many times, so the lab disables the penalty
  (the anvil-auth-penalty socket gets mode 0, so the auth process cannot reach it) and
  sets ``auth_failure_delay = 0``; a failed login still takes about 0.5 s.
  ``LabConfig(auth_penalty=True)`` keeps Dovecot's own (2 s, then 4, 8, 15 s more while
  failures come less than 15 s apart), for the test that a scan run again soon gives the
  same report (tests/integration/scanner/test_same_answer_twice.py); give such a server
  its own instance: the penalty is per client address and 127.0.0.1 is every test's.
* ``ssl = no`` also drops Dovecot's implicit-TLS listeners silently, so the ``no_starttls``
  and ``open`` profiles have no twins; :class:`LabConfig` refuses ``ssl="no"`` with
  ``twins=True``.
* Dovecot's own default greeting is ``Dovecot (Debian) ready.`` (``doveconf -d
  login_greeting``): product without version. The lab's is ``Server ready.`` except for
  the ``banner`` profile (``Dovecot 2.3.19 ready.`` and ``imap_id_send = name * version *``).
  Even ``good`` answers IMAP ``ID`` with ``("name" "Dovecot")``, Dovecot's default.
* TLS 1.0/1.1 under Debian's OpenSSL 3 need ``@SECLEVEL=0`` in the cipher list on *both*
  sides (``openssl s_client -tls1 -cipher DEFAULT:@SECLEVEL=0``); TLS 1.0 has no AEAD
  suites, so ``tls10`` necessarily offers CBC suites too.
* Dovecot must run as root; see :mod:`tests.dovecot` for traversable directories, the
  ``setpriv --pdeathsig`` guard and the process-group clean-up this module reuses.
  Starting takes about 0.2 s (most of it the RSA key). Stopping: a login process forked
  just before SIGTERM (by the readiness probe, say) lingers ~6 s, so ``stop()`` SIGKILLs
  the process group after 1.5 s; :func:`stop_all` (used by :class:`Lab` and
  :class:`ScanLab`) stops many servers in parallel. ``stats_writer_socket_path`` is
  empty: a process still connecting to the stats service at shutdown waits 5 s for it.
* Scanners with their own trust store (sslyze) do not know the lab CA: pass ``ca_cert``
  as a custom CA file (``--ca-file``), and :data:`SERVER_NAME` as the name to check.
* aiosmtpd logs a traceback for every failed handshake; :class:`LabSubmission` sets its
  logger ``mail.log`` to CRITICAL.
* Dovecot's ports are chosen free before it binds them (a small race; a start that hits
  EADDRINUSE is retried once with new ports). The asyncio servers bind port 0 and report
  what the kernel gave them. ``standard_ports=True`` (the benchmark) binds 143/993/110/995/
  587/465 on the lab addresses and fails if another process holds them.
* The asyncio servers run on a private event loop in a daemon thread; ``stop()`` aborts
  open connections, lets their handlers end on the EOF (cancelling a stream handler makes
  Python 3.11 log "Exception in callback") and closes the loop, so no transport is left
  for the garbage collector (pytest turns ``ResourceWarning`` into errors here).
* Python 3.11's asyncio can start TLS inside TLS, but a nested handshake that fails (the
  client hangs up, as a scanner does once it has seen the answer) ends in
  ``TypeError: SSLProtocol._abort() takes 1 positional argument`` and "Error calling
  eof_received()" on the loop. So the toys that wrongly accept STARTTLS inside TLS (ST-05,
  ST-06) answer it and hang up instead of negotiating: the answer is the flaw.
* Fixtures are found by pytest only where imported: a test module does
  ``from tests.scanlab import scanlab`` (or tests/conftest.py re-exports it).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import datetime
import ipaddress
import itertools
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AnyStr, Literal, Protocol, Self

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.dovecot import (
    DOVECOT_BINARY,
    _check_credential,
    _group_members,
    _make_traversable,
    launch_dovecot,
)

__all__ = [
    "CYRUS_ID",
    "FLAWS",
    "FLAW_KINDS",
    "INTERNAL_NAME",
    "KINDS",
    "OTHER_NAME",
    "PROFILES",
    "QPOPPER_GREETING",
    "QPOPPER_IMPLEMENTATION",
    "SERVER_NAME",
    "VRFY_USERS",
    "CertKind",
    "Flaw",
    "InjectableImap",
    "InjectablePop3",
    "InjectableSmtp",
    "Injection",
    "Lab",
    "LabConfig",
    "LabDovecot",
    "LabEndpoint",
    "LabHost",
    "LabPki",
    "LabServer",
    "LabSubmission",
    "PreauthImap",
    "ScanLab",
    "ThrottlingSmtp",
    "ToyFlaw",
    "ToyServer",
    "free_port_on",
    "lab_address",
    "lab_pki",
    "scanlab",
    "start_lab",
    "stop_all",
]

#: The name every lab certificate (but ``wrong_name``) is issued for; pass it to the scanner
#: as ``--server-name`` and connect by address.
SERVER_NAME = "mail.lab.test"
#: The only name in the ``wrong_name`` certificate.
OTHER_NAME = "other.lab.test"

Injection = Literal["answers_in_cleartext", "answers_in_tls"]
CertKind = Literal["good", "expired", "self_signed", "wrong_name"]
MailProtocol = Literal["imap", "pop3", "smtp"]

#: Mozilla "intermediate" for TLS 1.2: ECDHE key exchange, AEAD ciphers only.
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: Adds the CBC suites TLS 1.0/1.1 need; OpenSSL 3 refuses those versions above level 0.
LEGACY_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES:@SECLEVEL=0"

_GENERIC_GREETING = "Server ready."
_START_TIMEOUT = 10.0
#: How long a stopping Dovecot may take before its process group is SIGKILLed.
_STOP_GRACE = 1.5
_LOOP_TIMEOUT = 10.0
#: Longest Dovecot base_dir (sun_path is 108 bytes; Dovecot appends e.g. "/login/...").
_MAX_BASE_DIR_LEN = 60
#: Longest command line the toy servers buffer before hanging up (RFC 5321 allows 512).
_MAX_LINE = 8192


# -- addresses and ports ----------------------------------------------------------------

_hosts = itertools.count()
_hosts_lock = threading.Lock()


def lab_address() -> str:
    """The next loopback address for a lab server: 127.0.0.2 .. 127.0.0.254, round robin.

    Never 127.0.0.1: that is the address clients connect *from* (see the module docstring).
    Two processes may hand out the same address; their ports still differ.
    """
    with _hosts_lock:
        return f"127.0.0.{2 + next(_hosts) % 253}"


def free_port_on(addresses: Sequence[str], exclude: Sequence[int] = ()) -> int:
    """A TCP port that was free a moment ago on every one of ``addresses``."""
    for _ in range(100):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            first.bind((addresses[0], 0))
            port: int = first.getsockname()[1]
            if port in exclude:
                continue
            try:
                for address in addresses[1:]:
                    other = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    other.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free on all of {', '.join(addresses)}")


# -- certificates -----------------------------------------------------------------------


class LabPki:
    """One CA for the whole process and the leaf certificates it issues (see module doc)."""

    def __init__(self) -> None:
        self.ca = trustme.CA(key_type=trustme.KeyType.RSA, organization_name="imapguard lab")
        self._dir = Path(tempfile.mkdtemp(prefix="scanlab-pki-"))
        atexit.register(shutil.rmtree, self._dir, True)
        self.ca_cert = self._dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_cert))
        self._serial = itertools.count()
        self._lock = threading.Lock()

    def issue(self, kind: CertKind, addresses: Sequence[str]) -> tuple[bytes, bytes]:
        """A certificate chain and its private key (PEM) of the given kind."""
        now = datetime.datetime.now(datetime.UTC)
        if kind == "self_signed":
            return self_signed(addresses, now)
        identities: list[str] = [SERVER_NAME, *addresses]
        not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=90)
        if kind == "expired":
            not_before, not_after = (
                now - datetime.timedelta(days=120),
                now - datetime.timedelta(days=30),
            )
        elif kind == "wrong_name":
            identities = [OTHER_NAME]
        leaf = self.ca.issue_cert(
            *identities,
            not_before=not_before,
            not_after=not_after,
            key_type=trustme.KeyType.RSA,
        )
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        key: bytes = leaf.private_key_pem.bytes()
        return chain, key

    def server_context(self, kind: CertKind, addresses: Sequence[str]) -> ssl.SSLContext:
        """A TLS server context with a fresh certificate and the lab's TLS policy."""
        chain, key = self.issue(kind, addresses)
        with self._lock:
            stem = self._dir / f"leaf-{next(self._serial)}"
        chain_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        chain_path.write_bytes(chain)
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(MODERN_CIPHERS)
        context.options |= ssl.OP_NO_RENEGOTIATION
        context.load_cert_chain(chain_path, key_path)
        return context


def self_signed(
    addresses: Sequence[str], now: datetime.datetime, server_name: str = SERVER_NAME
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a self-signed leaf for `server_name` and `addresses`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)])
    alt_names: list[x509.GeneralName] = [x509.DNSName(server_name)]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


_pki: LabPki | None = None
_pki_lock = threading.Lock()


def lab_pki() -> LabPki:
    """The process-wide lab CA (made on first use)."""
    global _pki
    with _pki_lock:
        if _pki is None:
            _pki = LabPki()
        return _pki


# -- what a lab server offers -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabEndpoint:
    """One listening service: where, which protocol, and whether TLS starts at once."""

    address: str
    port: int
    protocol: MailProtocol
    implicit_tls: bool


class LabServer(Protocol):
    """What every lab server has (used by :class:`ScanLab` and :func:`start_lab`)."""

    ca_cert: Path
    server_name: str

    @property
    def address(self) -> str: ...

    @property
    def endpoints(self) -> tuple[LabEndpoint, ...]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


# -- Dovecot --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LabConfig:
    """How a :class:`LabDovecot` is configured; :data:`PROFILES` holds the named ones."""

    #: Dovecot ``ssl``: ``required`` (TLS before any login), ``yes`` (STARTTLS offered),
    #: ``no`` (no STARTTLS/STLS at all, and no implicit-TLS listeners either).
    ssl: Literal["required", "yes", "no"] = "required"
    #: ``disable_plaintext_auth = no``: LOGIN, USER/PASS and AUTH=PLAIN before TLS.
    plaintext_auth: bool = False
    min_protocol: str = "TLSv1.2"
    cipher_list: str = MODERN_CIPHERS
    certificate: CertKind = "good"
    #: Implicit-TLS listeners (993/995 equivalents) next to the cleartext ones.
    twins: bool = True
    greeting: str = _GENERIC_GREETING
    #: Dovecot ``imap_id_send``; its default, ``name *``, answers ID with ("name" "Dovecot").
    imap_id_send: str = "name *"
    #: Dovecot's own authentication delays (``auth_failure_delay = 2 s`` and anvil's auth
    #: penalty) instead of the lab's none; see "Auth penalty" in the module docstring.
    auth_penalty: bool = False

    def __post_init__(self) -> None:
        if self.ssl == "no" and self.twins:
            raise ValueError("Dovecot drops implicit-TLS listeners when ssl = no: set twins=False")
        for text in (self.greeting, self.imap_id_send, self.cipher_list, self.min_protocol):
            if any(c in text for c in '"\\\r\n'):
                raise ValueError(f"{text!r} cannot be written into dovecot.conf")


#: The named Dovecot configurations; each differs from ``good`` in one respect.
PROFILES: Mapping[str, LabConfig] = {
    # ssl = required, disable_plaintext_auth = yes, TLS >= 1.2 with AEAD suites, twins,
    # a valid certificate for mail.lab.test, a greeting without product or version.
    "good": LabConfig(),
    # STARTTLS offered but optional; LOGIN, USER/PASS and AUTH=PLAIN work in cleartext.
    "plaintext": LabConfig(ssl="yes", plaintext_auth=True),
    # No STARTTLS/STLS; plaintext logins still refused (Dovecot's default), so nobody can
    # log in from outside; no implicit-TLS listeners (ssl = no drops them).
    "no_starttls": LabConfig(ssl="no", twins=False),
    # No TLS at all and cleartext logins allowed: the wide-open legacy server.
    "open": LabConfig(ssl="no", twins=False, plaintext_auth=True),
    # TLS 1.0 and 1.1 really negotiate (and so CBC suites are offered).
    "tls10": LabConfig(min_protocol="TLSv1", cipher_list=LEGACY_CIPHERS),
    "expired": LabConfig(certificate="expired"),
    "self_signed": LabConfig(certificate="self_signed"),
    "wrong_name": LabConfig(certificate="wrong_name"),
    # Only the cleartext ports (STARTTLS required there).
    "no_twins": LabConfig(twins=False),
    # Product and version in the greeting and in the IMAP ID answer.
    "banner": LabConfig(greeting="Dovecot 2.3.19 ready.", imap_id_send="name * version *"),
}

#: The anvil socket the auth process asks for penalties, unreachable (mode 0).
_NO_PENALTY = """\
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""

#: Standard ports, used with ``standard_ports=True``.
_STANDARD = {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995, "smtp": 587, "smtps": 465}


@dataclass(kw_only=True, eq=False)
class LabDovecot:
    """One Dovecot (IMAP + POP3) serving one :class:`LabConfig` on one or more addresses."""

    base: Path
    profile: str
    config: LabConfig
    addresses: tuple[str, ...]
    imap_port: int
    imaps_port: int | None
    pop3_port: int
    pop3s_port: int | None
    ca_cert: Path
    password: str
    server_name: str = SERVER_NAME
    user: str = "alice"
    standard_ports: bool = False

    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _run_dir: Path | None = field(default=None, init=False, repr=False)

    @classmethod
    def create(
        cls,
        base: Path,
        profile: str | LabConfig = "good",
        *,
        addresses: Sequence[str] | None = None,
        standard_ports: bool = False,
    ) -> LabDovecot:
        """Write certificates, users and dovecot.conf under ``base``; do not start."""
        if os.geteuid() != 0:
            raise RuntimeError("the lab Dovecot must run as root")
        if isinstance(profile, str):
            name, config = profile, PROFILES[profile]
        else:
            name, config = "custom", profile
        chosen = tuple(addresses) if addresses else (lab_address(),)
        if "127.0.0.1" in chosen:
            raise ValueError("127.0.0.1 is where clients come from; Dovecot would trust them")
        base = base.resolve()
        base.mkdir(parents=True, exist_ok=True)
        _make_traversable(base)
        mail = base / "mail"
        mail.mkdir(exist_ok=True)
        shutil.chown(mail, "nobody", "nogroup")
        mail.chmod(0o750)
        (base / "state").mkdir(mode=0o750, exist_ok=True)

        pki = lab_pki()
        if config.ssl != "no":
            chain, key = pki.issue(config.certificate, chosen)
            (base / "server-chain.pem").write_bytes(chain)
            key_path = base / "server-key.pem"
            key_path.write_bytes(key)
            key_path.chmod(0o600)

        server = cls(
            base=base,
            profile=name,
            config=config,
            addresses=chosen,
            imap_port=0,
            imaps_port=None,
            pop3_port=0,
            pop3s_port=None,
            ca_cert=pki.ca_cert,
            password=secrets.token_urlsafe(12),
            standard_ports=standard_ports,
        )
        server._choose_ports()
        server._write_users()
        server._write_config()
        return server

    # ------------------------------------------------------------------ facts

    @property
    def address(self) -> str:
        """The first (usually the only) address Dovecot listens on."""
        return self.addresses[0]

    @property
    def endpoints(self) -> tuple[LabEndpoint, ...]:
        ports: list[tuple[int | None, MailProtocol, bool]] = [
            (self.imap_port, "imap", False),
            (self.imaps_port, "imap", True),
            (self.pop3_port, "pop3", False),
            (self.pop3s_port, "pop3", True),
        ]
        return tuple(
            LabEndpoint(address, port, protocol, implicit)
            for address in self.addresses
            for port, protocol, implicit in ports
            if port is not None
        )

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def config_path(self) -> Path:
        return self.base / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.base / "dovecot.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ files

    def _choose_ports(self) -> None:
        twins = self.config.twins
        if self.standard_ports:
            self.imap_port, self.pop3_port = _STANDARD["imap"], _STANDARD["pop3"]
            self.imaps_port = _STANDARD["imaps"] if twins else None
            self.pop3s_port = _STANDARD["pop3s"] if twins else None
            return
        taken: list[int] = []
        for _ in range(4 if twins else 2):
            taken.append(free_port_on(self.addresses, exclude=taken))
        self.imap_port, self.pop3_port = taken[0], taken[1]
        self.imaps_port = taken[2] if twins else None
        self.pop3s_port = taken[3] if twins else None

    def _write_users(self) -> None:
        _check_credential("user name", self.user)
        _check_credential("password", self.password)
        path = self.base / "users.passwd"
        path.write_text(f"{self.user}:{{PLAIN}}{self.password}\n", encoding="utf-8")
        # The auth process runs as user dovecot: unreadable means NO [UNAVAILABLE].
        shutil.chown(path, "root", "dovecot")
        path.chmod(0o640)

    def _base_dir(self) -> Path:
        if self._run_dir is None:
            candidate = self.base / "run"
            if len(str(candidate)) <= _MAX_BASE_DIR_LEN:
                candidate.mkdir(mode=0o755, exist_ok=True)
            else:
                candidate = Path(tempfile.mkdtemp(prefix="scanlab-", dir="/tmp"))
                candidate.chmod(0o755)
            self._run_dir = candidate
        return self._run_dir

    def _write_config(self) -> None:
        cfg, base = self.config, self.base
        listen = ", ".join(self.addresses)
        tls = ""
        if cfg.ssl != "no":
            tls = f"""\
ssl_cert = <{base / "server-chain.pem"}
ssl_key = <{base / "server-key.pem"}
ssl_min_protocol = {cfg.min_protocol}
ssl_cipher_list = {cfg.cipher_list}
"""

        def listener(name: str, port: int | None, implicit: bool) -> str:
            # Port 0 disables a listener; naming all four also overrides the built-in
            # defaults (imap 143, imaps 993, pop3 110, pop3s 995) on every address.
            ssl_line = "\n    ssl = yes" if implicit else ""
            return (
                f"  inet_listener {name} {{\n    address = {listen}\n"
                f"    port = {port or 0}{ssl_line}\n  }}\n"
            )

        # High-performance login mode (as tests/dovecot.py): a TLS scan opens ~600
        # connections per port, and forking a login process for each costs ~9 s a port.
        fast = "  service_count = 0\n  process_min_avail = 1\n"
        # The scanner fails logins on purpose; see "Auth penalty" in the module docstring.
        penalty, anvil = "auth_failure_delay = 0", _NO_PENALTY
        if cfg.auth_penalty:
            penalty, anvil = "# Dovecot's defaults: auth_failure_delay = 2 s, anvil's penalty.", ""
        text = f"""\
# Generated by tests/scanlab.py -- scanner lab, profile {self.profile}.
instance_name = scanlab-{secrets.token_hex(4)}
base_dir = {self._base_dir()}
state_dir = {base / "state"}
log_path = {self.log_path}
info_log_path = {self.log_path}
listen = {listen}
protocols = imap pop3
# No stats-writer connections: a login process still connecting to it when the master
# stops waits 5 s for a handshake that never comes.
stats_writer_socket_path =
login_greeting = "{cfg.greeting}"
imap_id_send = "{cfg.imap_id_send}"

ssl = {cfg.ssl}
{tls}
disable_plaintext_auth = {"no" if cfg.plaintext_auth else "yes"}
auth_mechanisms = plain login
auth_verbose = yes
{penalty}

mail_location = maildir:~/Maildir
first_valid_uid = 100

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {base / "users.passwd"}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={base / "mail"}/%n
}}

{anvil}service imap-login {{
{listener("imap", self.imap_port, False)}{listener("imaps", self.imaps_port, True)}{fast}}}
service pop3-login {{
{listener("pop3", self.pop3_port, False)}{listener("pop3s", self.pop3s_port, True)}{fast}}}
"""
        self.config_path.write_text(text, encoding="utf-8")

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LabDovecot:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start ``dovecot -F``; return when every listener accepts connections."""
        if self._proc is not None:
            raise RuntimeError("lab Dovecot already started")
        try:
            self._start_once()
        except _BindError:
            if self.standard_ports:
                raise
            # Someone took a port between free_port_on() and Dovecot's bind(): once more.
            self._choose_ports()
            self._write_config()
            self._start_once()

    def _start_once(self) -> None:
        self._proc = launch_dovecot(self.config_path, self.base / "dovecot.stdout")
        atexit.register(self.stop)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                output = self._diagnostics()
                self._reap()
                if "Address already in use" in output:
                    raise _BindError(output)
                raise RuntimeError(f"lab Dovecot exited during start-up:\n{output}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                output = self._diagnostics()
                self.stop()
                raise RuntimeError(f"lab Dovecot did not listen in time:\n{output}")
            time.sleep(0.02)

    def _ready(self) -> bool:
        greeting = _first_bytes(self.address, self.imap_port)
        if not greeting.startswith(b"* OK"):
            return False
        return all(_accepts(e.address, e.port) for e in self.endpoints)

    def _diagnostics(self) -> str:
        stdout = ""
        with contextlib.suppress(OSError):
            stdout = (self.base / "dovecot.stdout").read_text(encoding="utf-8", errors="replace")
        return f"--- stdout\n{stdout}\n--- {self.log_path}\n{self.log_text()}"

    def terminate(self) -> None:
        """Send SIGTERM and return at once (``stop()`` then waits); for stopping many."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM the master; SIGKILL its process group if it is not gone in a second."""
        proc = self._proc
        if proc is None:
            return
        self.terminate()
        self._reap(grace=_STOP_GRACE)

    def _reap(self, grace: float = 0.0) -> None:
        """Wait up to ``grace`` for the whole process group, then kill what is left."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session=True: the master leads its own process group
        deadline = time.monotonic() + grace
        while proc.poll() is None or _group_members(pgid):
            if time.monotonic() > deadline:
                # A login process forked moments before SIGTERM (e.g. by the readiness
                # probe) lingers ~6 s waiting for auth; a throw-away lab need not wait.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.02)
        self._proc = None
        atexit.unregister(self.stop)
        if self._run_dir is not None and not self._run_dir.is_relative_to(self.base):
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None


class _BindError(RuntimeError):
    pass


def _first_bytes(address: str, port: int) -> bytes:
    try:
        with socket.create_connection((address, port), timeout=1) as sock:
            return sock.recv(4096)
    except OSError:
        return b""


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


# -- asyncio servers on a private loop ------------------------------------------------------


class _LoopServer:
    """Base of the asyncio servers: a private event loop in a daemon thread.

    Subclasses implement ``_open()`` (bind and serve, on the loop) and may extend
    ``_abort_connections()``; everything else -- start, stop, context manager -- is here.
    """

    ca_cert: Path
    server_name: str

    def __init__(self, address: str | None, server_name: str) -> None:
        if address == "127.0.0.1":
            raise ValueError("127.0.0.1 is where clients come from; use another address")
        self._address = address or lab_address()
        self.server_name = server_name
        self.ca_cert = lab_pki().ca_cert
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._transports: set[asyncio.BaseTransport] = set()

    @property
    def address(self) -> str:
        return self._address

    @property
    def endpoints(self) -> tuple[LabEndpoint, ...]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Slow set-up (key generation) done before the loop runs."""

    async def _open(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        if self._loop is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._prepare()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=type(self).__name__, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        atexit.register(self.stop)
        try:
            asyncio.run_coroutine_threadsafe(self._open(), loop).result(_LOOP_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_LOOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_LOOP_TIMEOUT)
        loop.close()
        self._loop = self._thread = None
        self._servers.clear()
        atexit.unregister(self.stop)

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        # Aborting a connection ends its handler by itself (EOF). Cancelling a stream
        # handler instead makes Python 3.11 log "Exception in callback" for it.
        for transport in list(self._transports):
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            else:
                transport.close()
        for server in self._servers:
            await server.wait_closed()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=_LOOP_TIMEOUT / 2)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    @staticmethod
    def _port_of(server: asyncio.Server) -> int:
        port: int = server.sockets[0].getsockname()[1]
        return port


# -- aiosmtpd submission ----------------------------------------------------------------------


class _SubmissionSMTP(SMTP):
    """aiosmtpd's SMTP that reports its transports (for stop()) and answers a command
    refused for lack of STARTTLS with Postfix's enhanced status code."""

    def __init__(self, *args: Any, registry: set[asyncio.BaseTransport], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._registry = registry
        self._mine: list[asyncio.BaseTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again with the TLS transport after STARTTLS: remember both.
        self._registry.add(transport)
        self._mine.append(transport)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        for transport in self._mine:
            self._registry.discard(transport)

    async def push(self, status: AnyStr) -> None:
        if status == "530 Must issue a STARTTLS command first":
            await super().push("530 5.7.0 Must issue a STARTTLS command first")
            return
        await super().push(status)


class _SubmissionHandler:
    """Mail only after AUTH (else a submission port is an open relay); mail is dropped."""

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok: dropped by the lab"


class LabSubmission(_LoopServer):
    """``aiosmtpd`` submission (587-like) with STARTTLS and an implicit-TLS twin.

    ``auth_before_tls=True``: EHLO advertises ``AUTH PLAIN LOGIN`` before STARTTLS and AUTH
    is evaluated in cleartext (``535 5.7.8`` for a wrong credential, ``235`` for the right
    one). ``False``: before STARTTLS only EHLO, NOOP, STARTTLS and QUIT are accepted;
    anything else, AUTH included, is answered ``530 5.7.0 Must issue a STARTTLS command
    first``. Either way MAIL needs AUTH, and STARTTLS resets the session (RFC 3207 §4.2).
    """

    def __init__(
        self,
        *,
        auth_before_tls: bool,
        implicit_twin: bool = True,
        address: str | None = None,
        port: int = 0,
        implicit_port: int = 0,
        server_name: str = SERVER_NAME,
    ) -> None:
        super().__init__(address, server_name)
        self.auth_before_tls = auth_before_tls
        self.implicit_twin = implicit_twin
        self.port = port
        self.implicit_port: int | None = implicit_port if implicit_twin else None
        self.user = "alice"
        self.password = secrets.token_urlsafe(12)
        self._tls: ssl.SSLContext | None = None

    @property
    def endpoints(self) -> tuple[LabEndpoint, ...]:
        found = [LabEndpoint(self.address, self.port, "smtp", False)]
        if self.implicit_port is not None:
            found.append(LabEndpoint(self.address, self.implicit_port, "smtp", True))
        return tuple(found)

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == self.user.encode()
            and data.password == self.password.encode()
        )
        return AuthResult(success=ok, handled=False)

    def _prepare(self) -> None:
        self._tls = lab_pki().server_context("good", [self.address])
        # A scanner fails handshakes on purpose (cipher and version probes); aiosmtpd logs
        # a full traceback for each at ERROR level.
        logging.getLogger("mail.log").setLevel(logging.CRITICAL)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        tls = self._tls
        handler = _SubmissionHandler()

        def factory(implicit: bool) -> Callable[[], asyncio.BaseProtocol]:
            def make() -> asyncio.BaseProtocol:
                strict = not self.auth_before_tls
                protocol: asyncio.BaseProtocol = _SubmissionSMTP(
                    handler,
                    registry=self._transports,
                    hostname=self.server_name,
                    ident="ESMTP",  # aiosmtpd's default names itself and its version
                    # Implicit TLS: aiosmtpd only knows TLS it started itself (STARTTLS),
                    # so there "TLS required" must be off for AUTH to be offered at all.
                    tls_context=None if implicit else tls,
                    require_starttls=strict and not implicit,
                    auth_require_tls=strict and not implicit,
                    authenticator=self._authenticate,
                    loop=loop,
                )
                return protocol

            return make

        server = await loop.create_server(factory(False), self.address, self.port)
        self._servers.append(server)
        self.port = self._port_of(server)
        if self.implicit_port is not None:
            twin = await loop.create_server(
                factory(True), self.address, self.implicit_port, ssl=tls
            )
            self._servers.append(twin)
            self.implicit_port = self._port_of(twin)


# -- tiny deliberately flawed servers --------------------------------------------------------

#: The switchable flaws of :class:`ToyServer` (see :data:`FLAWS`).
Flaw = Literal[
    "starttls_unadvertised",
    "starttls_after_tls",
    "second_starttls",
    "implicit_starttls_ok",
    "no_reset",
    "anonymous",
    "vrfy",
    "legacy_sasl",
    "versioned",
    "id_version",
    "internal_name",
]

#: Which endpoint of a toy shows a flaw (see :class:`ToyFlaw`).
ShowsOn = Literal["cleartext", "implicit", "both"]


@dataclass(frozen=True, slots=True)
class ToyFlaw:
    """What one flaw of :class:`ToyServer` is built to show a scanner.

    ``checks``: the catalog IDs (``src/imapguard/scanner/catalog.toml``) it is built to
    fail; ``summary`` names any that necessarily fail with them. ``shows_on``: the toy's
    endpoint(s) where it is visible: ``"cleartext"`` (the STARTTLS port, for flaws of the
    upgrade itself), ``"implicit"`` (the implicit-TLS twin) or ``"both"`` (what every
    session, or every TLS session, offers -- as a real misconfiguration would).
    """

    checks: tuple[str, ...]
    protocols: frozenset[MailProtocol]
    shows_on: ShowsOn
    summary: str


def _flaw(
    checks: str, protocols: Sequence[MailProtocol], shows_on: ShowsOn, summary: str
) -> ToyFlaw:
    return ToyFlaw(tuple(checks.split()), frozenset(protocols), shows_on, summary)


#: Every switchable flaw: the checks it fails, the protocols that have it, where it shows.
FLAWS: Mapping[Flaw, ToyFlaw] = {
    "starttls_unadvertised": _flaw(
        "ST-03",
        ("imap", "pop3"),
        "cleartext",
        "STARTTLS/STLS works but is not advertised (so ST-01 and EXP-01/EXP-02 fail too)",
    ),
    "starttls_after_tls": _flaw(
        "ST-04", ("imap", "smtp"), "cleartext", "STARTTLS still advertised after STARTTLS"
    ),
    "second_starttls": _flaw(
        "ST-05", ("smtp",), "cleartext", "a second STARTTLS inside TLS gets 220"
    ),
    "implicit_starttls_ok": _flaw(
        "ST-06", ("imap",), "implicit", "STARTTLS on the implicit-TLS port gets OK"
    ),
    "no_reset": _flaw(
        "ST-08", ("smtp",), "cleartext", "the EHLO from before STARTTLS still counts inside TLS"
    ),
    "anonymous": _flaw("AUTH-06", ("imap",), "both", "AUTH=ANONYMOUS inside TLS, and it works"),
    "vrfy": _flaw("AUTH-08", ("smtp",), "both", "VRFY: 250 for a mailbox, 550 for anything else"),
    "legacy_sasl": _flaw(
        "AUTH-09", ("imap",), "both", "only AUTH=CRAM-MD5 and AUTH=DIGEST-MD5 inside TLS"
    ),
    "versioned": _flaw(
        "BAN-01 BAN-02", ("pop3",), "both", "Qpopper 4.1.0 in the greeting and IMPLEMENTATION"
    ),
    "id_version": _flaw(
        "BAN-02", ("imap",), "both", 'ID answers ("name" "Cyrus IMAP" "version" ...)'
    ),
    "internal_name": _flaw("BAN-03", ("smtp",), "both", "EHLO and HELO name mx1.corp.internal"),
}

#: The lab kinds with one switchable flaw each: kind -> (protocol, flaw).
FLAW_KINDS: Mapping[str, tuple[MailProtocol, Flaw]] = {
    "imap:starttls_unadvertised": ("imap", "starttls_unadvertised"),
    "pop3:stls_unadvertised": ("pop3", "starttls_unadvertised"),
    "imap:starttls_after_tls": ("imap", "starttls_after_tls"),
    "smtp:starttls_after_tls": ("smtp", "starttls_after_tls"),
    "smtp:second_starttls": ("smtp", "second_starttls"),
    "imap:implicit_starttls_ok": ("imap", "implicit_starttls_ok"),
    "smtp:no_reset": ("smtp", "no_reset"),
    "imap:anonymous": ("imap", "anonymous"),
    "smtp:vrfy": ("smtp", "vrfy"),
    "imap:legacy_sasl": ("imap", "legacy_sasl"),
    "pop3:versioned": ("pop3", "versioned"),
    "imap:id_version": ("imap", "id_version"),
    "smtp:internal_name": ("smtp", "internal_name"),
}

#: The ``id_version`` IMAP toy's ID fields (RFC 2971): Cyrus's, with its version.
CYRUS_ID = '("name" "Cyrus IMAP" "version" "3.2.6")'
#: The ``versioned`` POP3 toy's greeting and CAPA line (RFC 2449 §6.9).
QPOPPER_GREETING = "+OK Qpopper 4.1.0 ready"
QPOPPER_IMPLEMENTATION = "IMPLEMENTATION Qpopper-4.1.0"
#: The name the ``internal_name`` SMTP toy gives itself in EHLO and HELO.
INTERNAL_NAME = "mx1.corp.internal"
#: The mailboxes the ``vrfy`` SMTP toy confirms; RFC 5321 §4.5.1 makes postmaster mandatory.
VRFY_USERS = ("postmaster", "alice")


@dataclass(frozen=True, slots=True)
class _Reply:
    data: str
    starttls: bool = False
    close: bool = False


class _ImapToy:
    """A minimal IMAP server dialog (sans-IO): lines in, replies out."""

    def __init__(
        self,
        *,
        tls: bool,
        preauth: bool,
        server_name: str,
        flaws: frozenset[Flaw] = frozenset(),
    ) -> None:
        self.tls = tls
        #: TLS from the first byte (the implicit-TLS twin) rather than by STARTTLS.
        self.implicit = tls
        self.preauth = preauth
        self.authenticated = preauth
        self.server_name = server_name
        self.flaws = flaws
        self._sasl_tag: str | None = None
        self._sasl_anonymous = False

    def mechanisms(self) -> list[str]:
        """The SASL mechanisms offered inside TLS."""
        offered = ["PLAIN"]
        if "legacy_sasl" in self.flaws:
            # DELIBERATELY BROKEN (AUTH-09): challenge-response mechanisms of the 1990s only
            # (RFC 6331 made DIGEST-MD5 historic); TLS would make PLAIN the safer choice.
            offered = ["CRAM-MD5", "DIGEST-MD5"]
        if "anonymous" in self.flaws:
            # DELIBERATELY BROKEN (AUTH-06): anyone logs in without a password (RFC 4505).
            offered.append("ANONYMOUS")
        return offered

    def capabilities(self) -> str:
        if self.preauth:
            return "IMAP4rev1 ID"
        if not self.tls:
            # DELIBERATELY BROKEN (ST-03) with starttls_unadvertised: STARTTLS is left out
            # of the list, yet handle() accepts it all the same.
            starttls = "" if "starttls_unadvertised" in self.flaws else " STARTTLS"
            return f"IMAP4rev1 ID{starttls} LOGINDISABLED"
        # DELIBERATELY BROKEN (ST-04) with starttls_after_tls: STARTTLS is still listed after
        # the upgrade (after STARTTLS only: the implicit twin lists it correctly not at all).
        again = " STARTTLS" if "starttls_after_tls" in self.flaws and not self.implicit else ""
        return f"IMAP4rev1 ID{again}" + "".join(f" AUTH={m}" for m in self.mechanisms())

    def greeting(self) -> str:
        if self.preauth:
            # DELIBERATELY BROKEN (ST-09): already authenticated on a cleartext connection,
            # which also makes STARTTLS impossible (RFC 9051 §7.1.4).
            return f"* PREAUTH [CAPABILITY {self.capabilities()}] Logged in as lab\r\n"
        return f"* OK [CAPABILITY {self.capabilities()}] {self.server_name} ready.\r\n"

    def start_tls(self) -> None:
        self.tls = True

    def handle(self, line: str) -> _Reply:
        if self._sasl_tag is not None:
            return self._sasl_response(line)
        parts = line.split(None, 2)
        if len(parts) < 2:
            return _Reply("* BAD Error in IMAP command received by server.\r\n")
        tag, command, args = parts[0], parts[1].upper(), parts[2] if len(parts) > 2 else ""
        privacy = f"{tag} NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"  # noqa: E501
        match command:
            case "CAPABILITY":
                return _Reply(
                    f"* CAPABILITY {self.capabilities()}\r\n{tag} OK CAPABILITY completed.\r\n"
                )
            case "NOOP":
                return _Reply(f"{tag} OK NOOP completed.\r\n")
            case "ID":
                # DELIBERATELY BROKEN (BAN-02) with id_version: product and version.
                fields = CYRUS_ID if "id_version" in self.flaws else "NIL"
                return _Reply(f"* ID {fields}\r\n{tag} OK ID completed.\r\n")
            case "LOGOUT":
                return _Reply(f"* BYE Logging out\r\n{tag} OK LOGOUT completed.\r\n", close=True)
            case "STARTTLS" if self.implicit and "implicit_starttls_ok" in self.flaws:
                # DELIBERATELY BROKEN (ST-06): on an implicit-TLS port STARTTLS must get a
                # tagged BAD (RFC 9051 §6.2.1); this one says OK. It then hangs up rather
                # than nest TLS in TLS: Python 3.11's asyncio cannot end a failed nested
                # handshake cleanly (SSLProtocol._abort() TypeError), and OK is the flaw.
                return _Reply(f"{tag} OK Begin TLS negotiation now.\r\n", close=True)
            case "STARTTLS" if self.tls or self.authenticated:
                return _Reply(f"{tag} BAD STARTTLS not allowed now.\r\n")
            case "STARTTLS":
                return _Reply(f"{tag} OK Begin TLS negotiation now.\r\n", starttls=True)
            case "LOGIN" | "AUTHENTICATE" if self.authenticated:
                return _Reply(f"{tag} BAD Already authenticated.\r\n")
            case "LOGIN" | "AUTHENTICATE" if not self.tls:
                return _Reply(privacy)
            case "AUTHENTICATE":
                return self._authenticate(tag, args)
            case "LOGIN":
                return _Reply(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
            case "LIST" if self.authenticated:
                return _Reply(f'* LIST (\\HasNoChildren) "/" INBOX\r\n{tag} OK LIST completed.\r\n')
            case _:
                return _Reply(f"{tag} BAD Unknown command.\r\n")

    def _authenticate(self, tag: str, args: str) -> _Reply:
        words = args.split()
        mechanism = words[0].upper() if words else ""
        if mechanism == "ANONYMOUS" and mechanism in self.mechanisms():
            if len(words) > 1:  # an initial response (SASL-IR) is the trace: welcome
                return self._anonymous(tag)
            self._sasl_tag, self._sasl_anonymous = tag, True
            return _Reply("+ \r\n")
        if len(words) > 1:
            return _Reply(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        self._sasl_tag = tag
        challenge = ""
        if mechanism == "CRAM-MD5":  # RFC 2195: the server speaks first, a msg-id
            msg_id = f"<{secrets.randbelow(10**9)}.{int(time.time())}@{self.server_name}>"
            challenge = base64.b64encode(msg_id.encode()).decode()
        return _Reply(f"+ {challenge}\r\n")

    def _sasl_response(self, line: str) -> _Reply:
        tag, self._sasl_tag = self._sasl_tag or "*", None
        anonymous, self._sasl_anonymous = self._sasl_anonymous, False
        if anonymous and line.strip() != "*":
            return self._anonymous(tag)
        return _Reply(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    def _anonymous(self, tag: str) -> _Reply:
        self.authenticated = True
        return _Reply(f"{tag} OK Logged in anonymously.\r\n")


class _Pop3Toy:
    """A minimal POP3 server dialog (sans-IO)."""

    def __init__(
        self, *, tls: bool, server_name: str, flaws: frozenset[Flaw] = frozenset()
    ) -> None:
        self.tls = tls
        self.server_name = server_name
        self.flaws = flaws

    def greeting(self) -> str:
        if "versioned" in self.flaws:
            # DELIBERATELY BROKEN (BAN-01): product and version to anyone who connects.
            return f"{QPOPPER_GREETING}\r\n"
        return f"+OK {self.server_name} POP3 ready.\r\n"

    def start_tls(self) -> None:
        self.tls = True

    def capabilities(self) -> list[str]:
        found = ["TOP", "UIDL", "RESP-CODES", "PIPELINING"]
        if self.tls:
            found += ["USER", "SASL PLAIN"]
        elif "starttls_unadvertised" not in self.flaws:
            found.append("STLS")
        # else DELIBERATELY BROKEN (ST-03): STLS missing here, yet handle() accepts it.
        if "versioned" in self.flaws:
            found.append(QPOPPER_IMPLEMENTATION)  # DELIBERATELY BROKEN (BAN-02)
        return found

    def handle(self, line: str) -> _Reply:
        command = (line.split(None, 1) or [""])[0].upper()
        privacy = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"  # noqa: E501
        match command:
            case "CAPA":
                listing = "".join(f"{c}\r\n" for c in self.capabilities())
                return _Reply(f"+OK\r\n{listing}.\r\n")
            case "STLS" if self.tls:
                return _Reply("-ERR TLS is already active.\r\n")
            case "STLS":
                return _Reply("+OK Begin TLS negotiation now.\r\n", starttls=True)
            case "USER" | "PASS" | "AUTH" if not self.tls:
                return _Reply(privacy)
            case "USER":
                return _Reply("+OK\r\n")
            case "PASS" | "AUTH":
                return _Reply("-ERR [AUTH] Authentication failed.\r\n")
            case "QUIT":
                return _Reply("+OK Logging out.\r\n", close=True)
            case _:
                return _Reply("-ERR Unknown command.\r\n")


class _SmtpToy:
    """A minimal submission server dialog (sans-IO); TLS required before AUTH and MAIL."""

    def __init__(
        self, *, tls: bool, server_name: str, flaws: frozenset[Flaw] = frozenset()
    ) -> None:
        self.tls = tls
        #: TLS from the first byte (the implicit-TLS twin) rather than by STARTTLS.
        self.implicit = tls
        self.server_name = server_name
        self.flaws = flaws
        self._helo: str | None = None
        self._in_auth = False
        self._mail = False  # a MAIL transaction is open (only the no_reset toy takes MAIL)

    def greeting(self) -> str:
        return f"220 {self.server_name} ESMTP ready\r\n"

    def host_name(self) -> str:
        """The name in the first line of the EHLO (and the HELO) reply."""
        if "internal_name" in self.flaws:
            # DELIBERATELY BROKEN (BAN-03): the machine's own name (Postfix's myhostname
            # left at its default) while the greeting shows the public one.
            return INTERNAL_NAME
        return self.server_name

    def start_tls(self) -> None:
        self.tls = True
        if "no_reset" in self.flaws:
            # DELIBERATELY BROKEN (ST-08): RFC 3207 §4.2 says forget everything said before
            # TLS; this one keeps the EHLO, so MAIL works at once without a new one.
            return
        self._helo = None  # RFC 3207 §4.2: forget everything said before TLS
        self._mail = False

    def handle(self, line: str) -> _Reply:
        if self._in_auth:
            self._in_auth = False
            return _Reply("535 5.7.8 Error: authentication failed\r\n")
        parts = line.split(None, 1)
        command = (parts or [""])[0].upper()
        args = parts[1] if len(parts) > 1 else ""
        must_tls = "530 5.7.0 Must issue a STARTTLS command first\r\n"
        match command:
            case "EHLO":
                self._helo, self._mail = args or "unknown", False
                keywords = ["PIPELINING", "8BITMIME"]
                if not self.tls:
                    keywords.append("STARTTLS")
                elif "starttls_after_tls" in self.flaws and not self.implicit:
                    # DELIBERATELY BROKEN (ST-04): STARTTLS offered again inside TLS
                    # (after STARTTLS only; the implicit twin does not offer it).
                    keywords.append("STARTTLS")
                if self.tls:
                    keywords.append("AUTH PLAIN LOGIN")
                lines = [self.host_name(), *keywords]
                body = "".join(f"250-{k}\r\n" for k in lines[:-1])
                return _Reply(f"{body}250 {lines[-1]}\r\n")
            case "HELO":
                self._helo, self._mail = args or "unknown", False
                return _Reply(f"250 {self.host_name()}\r\n")
            case "STARTTLS" if self.tls and "second_starttls" in self.flaws and not self.implicit:
                # DELIBERATELY BROKEN (ST-05): RFC 3207 §4.2 forbids a second STARTTLS; this
                # one says 220 (the twin still refuses it), then hangs up rather than nest
                # TLS in TLS (see the IMAP toy's ST-06 for why).
                return _Reply("220 2.0.0 Ready to start TLS\r\n", close=True)
            case "STARTTLS" if self.tls:
                return _Reply("554 5.5.1 Error: TLS already active\r\n")
            case "STARTTLS":
                return _Reply("220 2.0.0 Ready to start TLS\r\n", starttls=True)
            case "NOOP":
                return _Reply("250 2.0.0 Ok\r\n")
            case "RSET":
                self._mail = False
                return _Reply("250 2.0.0 Ok\r\n")
            case "QUIT":
                return _Reply("221 2.0.0 Bye\r\n", close=True)
            case "VRFY" if "vrfy" in self.flaws and not self.tls:
                return _Reply(must_tls)
            case "VRFY" if "vrfy" in self.flaws:
                return self._vrfy(args)
            case "VRFY" | "EXPN":
                return _Reply(f"502 5.5.1 {command} command is disabled\r\n")
            case "AUTH" | "MAIL" | "RCPT" | "DATA" if not self.tls:
                return _Reply(must_tls)
            case "AUTH" | "MAIL" | "RCPT" | "DATA" if self._helo is None:
                return _Reply("503 5.5.1 Error: send HELO/EHLO first\r\n")
            case "AUTH" if len(args.split()) < 2:
                self._in_auth = True
                return _Reply("334 \r\n")
            case "AUTH":
                return _Reply("535 5.7.8 Error: authentication failed\r\n")
            case "MAIL" if "no_reset" in self.flaws and self._mail:
                return _Reply("503 5.5.1 Error: nested MAIL command\r\n")
            case "MAIL" if "no_reset" in self.flaws:
                # Postfix's default: MAIL from anyone, relaying refused at RCPT. The flaw
                # above needs an accepted MAIL to show; the other toys want AUTH first.
                self._mail = True
                return _Reply("250 2.1.0 Ok\r\n")
            case "MAIL":
                return _Reply("530 5.7.0 Authentication required\r\n")
            case "RCPT" if self._mail:
                recipient = args.partition(":")[2].strip() or "<>"
                return _Reply(f"554 5.7.1 {recipient}: Relay access denied\r\n")
            case "RCPT" | "DATA":
                return _Reply("503 5.5.1 Error: need MAIL command\r\n")
            case _:
                return _Reply("502 5.5.2 Error: command not recognized\r\n")

    def _vrfy(self, args: str) -> _Reply:
        who = args.strip().strip("<>")
        if not who:
            return _Reply("501 5.5.4 Syntax: VRFY address\r\n")
        local, _, domain = who.partition("@")
        if local.lower() in VRFY_USERS and domain.lower() in ("", self.server_name):
            # DELIBERATELY BROKEN (AUTH-08): a mailbox is confirmed with its address and
            # (below) anything else denied, so VRFY tells users from non-users.
            return _Reply(f"250 2.1.5 <{local.lower()}@{self.server_name}>\r\n")
        return _Reply(f"550 5.1.1 <{who}>: Recipient address rejected: User unknown\r\n")


def _take_line(buffer: bytearray) -> str | None:
    end = buffer.find(b"\n")
    if end < 0:
        return None
    line = bytes(buffer[: end + 1])
    del buffer[: end + 1]
    return line.decode("latin-1").rstrip("\r\n")


class ToyServer(_LoopServer):
    """A tiny IMAP, POP3 or SMTP server with exactly the flaws asked for.

    ``injection``: what happens to bytes that arrived after the STARTTLS/STLS line, before
    the handshake. ``None`` is the correct behaviour (thrown away, RFC 9051 §6.2.1 option 2).
    ``"answers_in_cleartext"``: they are answered in cleartext right after the STARTTLS
    reply. ``"answers_in_tls"``: they are kept and answered inside TLS once the handshake is
    done -- the CVE-2011-0411 shape; the first record the client decrypts answers them.
    ``preauth`` (IMAP only): greet with ``* PREAUTH``. ``throttle_after=N``: connections
    after the first N are greeted with ``421 4.7.0`` (SMTP) and closed. ``flaws``: any of
    :data:`FLAWS` that the protocol has (each names the checks it fails and the endpoint
    it shows on). ``implicit_twin``: a second listener speaking the same protocol inside
    TLS from the first byte. Certificates are ``good`` ones from :func:`lab_pki`.
    """

    def __init__(
        self,
        protocol: MailProtocol,
        *,
        injection: Injection | None = None,
        preauth: bool = False,
        throttle_after: int | None = None,
        flaws: Iterable[Flaw] = (),
        implicit_twin: bool = True,
        address: str | None = None,
        port: int = 0,
        implicit_port: int = 0,
        server_name: str = SERVER_NAME,
    ) -> None:
        if preauth and protocol != "imap":
            raise ValueError("PREAUTH is an IMAP greeting")
        if throttle_after is not None and protocol != "smtp":
            raise ValueError("421 throttling is an SMTP reply")
        chosen: frozenset[Flaw] = frozenset(flaws)
        for flaw in sorted(chosen):
            if flaw not in FLAWS:
                raise ValueError(f"unknown flaw {flaw!r}; known: {', '.join(FLAWS)}")
            if protocol not in FLAWS[flaw].protocols:
                raise ValueError(f"{flaw!r} is not a flaw the {protocol} toy has")
            if FLAWS[flaw].shows_on == "implicit" and not implicit_twin:
                raise ValueError(f"{flaw!r} lives on the implicit-TLS twin: keep implicit_twin")
        super().__init__(address, server_name)
        self.protocol: MailProtocol = protocol
        self.injection = injection
        self.preauth = preauth
        self.throttle_after = throttle_after
        self.flaws = chosen
        self.port = port
        self.implicit_port: int | None = implicit_port if implicit_twin else None
        #: Connections accepted so far (both listeners).
        self.connections = 0
        self._tls: ssl.SSLContext | None = None

    @property
    def endpoints(self) -> tuple[LabEndpoint, ...]:
        found = [LabEndpoint(self.address, self.port, self.protocol, False)]
        if self.implicit_port is not None:
            found.append(LabEndpoint(self.address, self.implicit_port, self.protocol, True))
        return tuple(found)

    def _prepare(self) -> None:
        self._tls = lab_pki().server_context("good", [self.address])

    async def _open(self) -> None:
        server = await asyncio.start_server(self._cleartext, self.address, self.port)
        self._servers.append(server)
        self.port = self._port_of(server)
        if self.implicit_port is not None:
            twin = await asyncio.start_server(
                self._implicit, self.address, self.implicit_port, ssl=self._tls
            )
            self._servers.append(twin)
            self.implicit_port = self._port_of(twin)

    def _session(self, tls: bool) -> _ImapToy | _Pop3Toy | _SmtpToy:
        name, flaws = self.server_name, self.flaws
        if self.protocol == "imap":
            return _ImapToy(tls=tls, preauth=self.preauth, server_name=name, flaws=flaws)
        if self.protocol == "pop3":
            return _Pop3Toy(tls=tls, server_name=name, flaws=flaws)
        return _SmtpToy(tls=tls, server_name=name, flaws=flaws)

    async def _cleartext(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, implicit=False)

    async def _implicit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, implicit=True)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, implicit: bool
    ) -> None:
        self.connections += 1
        self._transports.add(writer.transport)
        try:
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
                await self._converse(reader, writer, implicit=implicit)
                # A polite close (FIN, TLS close_notify), but never wait long for the peer.
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        finally:
            self._transports.discard(writer.transport)
            writer.transport.abort()

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, implicit: bool
    ) -> None:
        if self.throttle_after is not None and self.connections > self.throttle_after:
            writer.write(f"421 4.7.0 {self.server_name} Too many connections\r\n".encode())
            await writer.drain()
            return
        session = self._session(implicit)
        writer.write(session.greeting().encode())
        buffer = bytearray()
        while True:
            await writer.drain()
            line = _take_line(buffer)
            if line is None:
                if len(buffer) > _MAX_LINE:
                    return
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buffer += chunk
                continue
            reply = session.handle(line)
            writer.write(reply.data.encode())
            if reply.close:
                await writer.drain()
                return
            if reply.starttls:
                await self._start_tls(session, buffer, writer)

    async def _start_tls(
        self,
        session: _ImapToy | _Pop3Toy | _SmtpToy,
        buffer: bytearray,
        writer: asyncio.StreamWriter,
    ) -> None:
        # `buffer` holds whatever arrived after the STARTTLS line: a careful client sends
        # nothing until it has read our reply, so any bytes here were pipelined with it.
        pipelined = bytes(buffer)
        buffer.clear()
        if self.injection == "answers_in_cleartext":
            # DELIBERATELY BROKEN (ST-07): answer the pipelined commands before the handshake.
            pending = bytearray(pipelined)
            while (extra := _take_line(pending)) is not None:
                writer.write(session.handle(extra).data.encode())
            pipelined = b""
        elif self.injection is None:
            pipelined = b""  # correct: thrown away (RFC 9051 §6.2.1, option 2)
        assert self._tls is not None
        old = writer.transport
        await writer.start_tls(self._tls)
        self._transports.discard(old)
        self._transports.add(writer.transport)
        session.start_tls()
        # For "answers_in_tls" the pipelined commands now run as if they came inside TLS:
        # DELIBERATELY BROKEN (ST-07), the CVE-2011-0411 shape.
        buffer += pipelined


class InjectableImap(ToyServer):
    """IMAP with STARTTLS command injection (``variant``: see :class:`ToyServer`)."""

    def __init__(self, variant: Injection, **kwargs: Any) -> None:
        super().__init__("imap", injection=variant, **kwargs)


class InjectablePop3(ToyServer):
    """POP3 with STLS command injection: ``STLS\\r\\nCAPA\\r\\n`` gets CAPA answered."""

    def __init__(self, variant: Injection, **kwargs: Any) -> None:
        super().__init__("pop3", injection=variant, **kwargs)


class InjectableSmtp(ToyServer):
    """SMTP with STARTTLS command injection: ``STARTTLS\\r\\nEHLO x\\r\\n`` gets a 250."""

    def __init__(self, variant: Injection, **kwargs: Any) -> None:
        super().__init__("smtp", injection=variant, **kwargs)


class PreauthImap(ToyServer):
    """IMAP greeting ``* PREAUTH`` on its cleartext port (no STARTTLS possible)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("imap", preauth=True, **kwargs)


class ThrottlingSmtp(ToyServer):
    """SMTP that answers ``421 4.7.0 ... Too many connections`` after ``after`` connections."""

    def __init__(self, after: int, **kwargs: Any) -> None:
        super().__init__("smtp", throttle_after=after, **kwargs)


# -- the registry: kinds, ScanLab (pytest), start_lab (benchmark) --------------------------------

#: Builds one lab server of a kind: (base directory, address, standard ports?) -> server.
_Factory = Callable[[Path, str, bool], LabServer]


def _dovecot_kind(profile: str) -> _Factory:
    def build(base: Path, address: str, standard: bool) -> LabServer:
        return LabDovecot.create(base, profile, addresses=[address], standard_ports=standard)

    return build


def _submission_kind(auth_before_tls: bool) -> _Factory:
    def build(base: Path, address: str, standard: bool) -> LabServer:
        return LabSubmission(
            auth_before_tls=auth_before_tls,
            address=address,
            port=_STANDARD["smtp"] if standard else 0,
            implicit_port=_STANDARD["smtps"] if standard else 0,
        )

    return build


def _toy_kind(protocol: MailProtocol, **options: Any) -> _Factory:
    clear, implicit = {"imap": ("imap", "imaps"), "pop3": ("pop3", "pop3s")}.get(
        protocol, ("smtp", "smtps")
    )

    def build(base: Path, address: str, standard: bool) -> LabServer:
        return ToyServer(
            protocol,
            address=address,
            port=_STANDARD[clear] if standard else 0,
            implicit_port=_STANDARD[implicit] if standard else 0,
            **options,
        )

    return build


#: Every kind of lab server by name: "dovecot:<profile>", "submission:...", "<proto>:...".
KINDS: Mapping[str, _Factory] = {
    **{f"dovecot:{name}": _dovecot_kind(name) for name in PROFILES},
    "submission:auth_before_tls": _submission_kind(True),
    "submission:tls_required": _submission_kind(False),
    **{
        f"{proto}:{label}": _toy_kind(proto, injection=variant)
        for proto in ("imap", "pop3", "smtp")
        for label, variant in (
            ("inject_cleartext", "answers_in_cleartext"),
            ("inject_tls", "answers_in_tls"),
            ("safe", None),
        )
    },
    "imap:preauth": _toy_kind("imap", preauth=True),
    "smtp:throttle": _toy_kind("smtp", throttle_after=3),
    **{kind: _toy_kind(proto, flaws=(flaw,)) for kind, (proto, flaw) in FLAW_KINDS.items()},
}


class ScanLab:
    """Starts lab servers on demand, once each, and stops them all in :meth:`close`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._servers: dict[str, LabServer] = {}

    def get(self, kind: str) -> LabServer:
        """The running server of ``kind`` (a key of :data:`KINDS`), started on first use."""
        if kind not in self._servers:
            directory = self.base / kind.replace(":", "-")
            server = KINDS[kind](directory, lab_address(), False)
            server.start()
            self._servers[kind] = server
        return self._servers[kind]

    def dovecot(self, profile: str = "good") -> LabDovecot:
        server = self.get(f"dovecot:{profile}")
        assert isinstance(server, LabDovecot)
        return server

    def submission(self, *, auth_before_tls: bool) -> LabSubmission:
        server = self.get(
            "submission:auth_before_tls" if auth_before_tls else "submission:tls_required"
        )
        assert isinstance(server, LabSubmission)
        return server

    def toy(self, kind: str) -> ToyServer:
        server = self.get(kind)
        assert isinstance(server, ToyServer)
        return server

    def close(self) -> None:
        servers = list(self._servers.values())
        self._servers.clear()
        stop_all(servers)


@pytest.fixture(scope="session")
def scanlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScanLab]:
    """The session's lab; servers start on first request and stop at the session's end."""
    if not DOVECOT_BINARY.exists():
        pytest.fail(f"{DOVECOT_BINARY} is missing: apt-get install dovecot-imapd dovecot-pop3d")
    lab = ScanLab(tmp_path_factory.mktemp("scanlab"))
    try:
        yield lab
    finally:
        lab.close()


@dataclass(frozen=True, slots=True)
class LabHost:
    """One address of a :class:`Lab` and what it runs."""

    address: str
    kind: str
    endpoints: tuple[LabEndpoint, ...]


class Lab(contextlib.ExitStack):
    """What :func:`start_lab` returns: an ExitStack that also knows the hosts it started."""

    def __init__(self) -> None:
        super().__init__()
        self.hosts: list[LabHost] = []
        self.servers: list[LabServer] = []
        self.ca_cert = lab_pki().ca_cert
        self.server_name = SERVER_NAME

    @property
    def endpoints(self) -> list[LabEndpoint]:
        return [e for host in self.hosts for e in host.endpoints]

    def __enter__(self) -> Lab:
        return self


def start_lab(
    kinds: Sequence[str],
    base_dir: Path,
    *,
    network: str = "127.0.66.0/24",
    standard_ports: bool = True,
) -> Lab:
    """Start one lab host per entry of ``kinds`` (keys of :data:`KINDS`) inside ``network``.

    Hosts are spread evenly over the network's addresses (so a /24 with 20 hosts has live
    and dead addresses interleaved). All hosts of one Dovecot profile share one Dovecot
    process listening on each of their addresses; every other kind is one asyncio server
    (one thread) per host. ``standard_ports`` binds 143/993, 110/995, 587/465; without it
    ports are free ones (the same on every address of one Dovecot). Use as a context
    manager, or call ``close()``.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown lab kinds: {', '.join(unknown)}")
    hosts = [str(h) for h in ipaddress.ip_network(network).hosts() if str(h) != "127.0.0.1"]
    if len(kinds) > len(hosts):
        raise ValueError(f"{len(kinds)} hosts do not fit into {network}")
    step = len(hosts) // max(len(kinds), 1)
    placed = [(hosts[i * step], kind) for i, kind in enumerate(kinds)]

    lab = Lab()
    lab.callback(stop_all, lab.servers)  # whatever has been started when it closes
    try:
        by_profile: dict[str, list[str]] = {}
        for address, kind in placed:
            if kind.startswith("dovecot:"):
                by_profile.setdefault(kind.removeprefix("dovecot:"), []).append(address)
        endpoints: dict[str, tuple[LabEndpoint, ...]] = {}
        for profile, addresses in by_profile.items():
            dovecot = LabDovecot.create(
                base_dir / f"dovecot-{profile}",
                profile,
                addresses=addresses,
                standard_ports=standard_ports,
            )
            lab.servers.append(dovecot)
            dovecot.start()
            for endpoint in dovecot.endpoints:
                endpoints[endpoint.address] = (*endpoints.get(endpoint.address, ()), endpoint)
        for address, kind in placed:
            if kind.startswith("dovecot:"):
                continue
            server = KINDS[kind](base_dir / address, address, standard_ports)
            lab.servers.append(server)
            server.start()
            endpoints[address] = server.endpoints
        lab.hosts = [LabHost(address, kind, endpoints[address]) for address, kind in placed]
    except BaseException:
        lab.close()
        raise
    return lab


def stop_all(servers: Sequence[LabServer]) -> None:
    """Stop servers in parallel: a Dovecot takes up to a second and a half to stop."""
    if servers:
        with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
            for stopped in [pool.submit(server.stop) for server in servers]:
                stopped.result()

"""The mail checks: the pure verdicts by table, then the dialogs end to end against
tiny scripted servers on 127.0.0.1 that have exactly the flaws each test names.

The scripted servers prove the check logic and the not_tested paths (timeouts,
throttling, broken STARTTLS) that no real server shows on demand; the ground truth
against Dovecot and aiosmtpd is in tests/integration/scanner/test_mail_checks.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
import trustme

from imapguard.scanner import dialogs as d
from imapguard.scanner import mail
from imapguard.scanner.catalog import checks_for
from imapguard.scanner.mail import limits
from imapguard.scanner.model import Protocol, Severity, Status, TlsMode
from imapguard.scanner.net import Network, NetworkSettings
from tests.unit.scanner.test_dialogs import ntlm_challenge

# -- pure verdicts ---------------------------------------------------------------------


_T = TypeVar("_T")


def parsed(parser: d.ResponseParser[_T], line: bytes) -> _T:
    """The response `line` (CRLF added) makes."""
    parser.feed(line + b"\r\n")
    response = parser.next()
    assert response is not None
    return response


def imap(line: bytes) -> d.ImapResponse:
    return parsed(d.ImapParser(), line)


def smtp(line: bytes) -> d.SmtpReply:
    return parsed(d.SmtpParser(), line)


def pop3(line: bytes) -> d.Pop3Response:
    return parsed(d.Pop3Parser(), line)


@pytest.mark.parametrize(
    ("line", "logindisabled", "verdict"),
    [
        (b"s1 NO [PRIVACYREQUIRED] Plaintext authentication disallowed.", False, "refused"),
        (b"s1 BAD Command not allowed before STARTTLS", False, "refused"),
        (b"s1 NO LOGIN disabled", True, "refused"),
        (b"s1 NO [AUTHENTICATIONFAILED] Authentication failed.", False, "evaluated"),
        # LOGINDISABLED advertised, and yet the code says the password was checked:
        (b"s1 NO [AUTHENTICATIONFAILED] Authentication failed.", True, "evaluated"),
        (b"s1 NO Login failed", False, "evaluated"),
        (b"s1 NO [CONTACTADMIN] Ask your admin", False, "evaluated"),
        (b"s1 NO [UNAVAILABLE] Backend down", False, "unclear"),
        (b"s1 NO [UNAVAILABLE] Backend down", True, "unclear"),
        (b"s1 OK Logged in", False, "accepted"),
        (b"s1 OK Logged in", True, "accepted"),
    ],
)
def test_classify_imap_login(line: bytes, logindisabled: bool, verdict: str) -> None:
    assert mail.classify_imap_login(imap(line), logindisabled=logindisabled) == verdict


@pytest.mark.parametrize(
    ("line", "verdict"),
    [
        (b"530 5.7.0 Must issue a STARTTLS command first", "refused"),
        (b"538 5.7.11 Encryption required for requested authentication mechanism", "refused"),
        (b"503 5.5.1 Error: authentication not enabled", "refused"),
        (b"502 5.5.2 Error: command not recognized", "refused"),
        (b"504 5.7.4 Unrecognized authentication type", "refused"),
        (b"534 5.7.9 Authentication mechanism is too weak", "refused"),
        (b"535 5.7.8 Error: authentication failed", "evaluated"),
        (b"235 2.7.0 Authentication successful", "accepted"),
        (b"454 4.7.0 Temporary authentication failure", "unclear"),
        (b"554 5.7.1 Go away", "unclear"),
    ],
)
def test_classify_smtp_auth(line: bytes, verdict: str) -> None:
    assert mail.classify_smtp_auth(smtp(line)) == verdict


@pytest.mark.parametrize(
    ("line", "verdict"),
    [
        (b"+OK", "evaluated"),
        (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.", "refused"),
        (b"+ ", "unclear"),
    ],
)
def test_classify_pop3_user(line: bytes, verdict: str) -> None:
    assert mail.classify_pop3_user(pop3(line)) == verdict


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (b"250 2.1.0 Ok", True),
        (b"503 5.5.1 Error: send HELO/EHLO first", False),
        (b"530 5.7.0 Authentication required", None),
        (b"501 Syntax: MAIL FROM: <address>", None),
    ],
)
def test_classify_state_reset(line: bytes, kept: bool | None) -> None:
    assert mail.classify_state_reset(smtp(line)) is kept


@pytest.mark.parametrize(
    ("mail_line", "rcpt_line", "relay"),
    [
        (b"250 2.1.0 Ok", b"250 2.1.5 Ok", True),
        (b"250 2.1.0 Ok", b"251 2.1.5 User not local; will forward", True),
        (b"250 2.1.0 Ok", b"554 5.7.1 Relay access denied", False),
        (b"250 2.1.0 Ok", b"450 4.1.2 Domain not found", False),
        (b"530 5.7.0 Authentication required", None, False),
    ],
)
def test_classify_relay(mail_line: bytes, rcpt_line: bytes | None, relay: bool) -> None:
    rcpt = smtp(rcpt_line) if rcpt_line is not None else None
    assert mail.classify_relay(smtp(mail_line), rcpt) is relay


@pytest.mark.parametrize(
    ("known", "unknown", "enumerates"),
    [
        (b"252 2.0.0 postmaster", b"550 5.1.1 <x>: Recipient address rejected", True),
        (b"250 2.1.5 Postmaster <postmaster@example.org>", b"550 5.1.1 User unknown", True),
        (b"252 Cannot VRFY user, but will accept message", b"252 Cannot VRFY user", False),
        (b"250 2.1.5 ok", b"250 2.1.5 ok", False),
        (b"502 5.5.1 VRFY command is disabled", b"502 5.5.1 VRFY command is disabled", False),
    ],
)
def test_vrfy_enumerates(known: bytes, unknown: bytes, enumerates: bool) -> None:
    assert mail.vrfy_enumerates(smtp(known), smtp(unknown)) is enumerates


@pytest.mark.parametrize(
    ("mechanisms", "legacy"),
    [
        (("CRAM-MD5",), True),
        (("cram-md5", "DIGEST-MD5"), True),
        (("PLAIN", "CRAM-MD5"), False),
        (("SCRAM-SHA-256",), False),
        ((), False),
    ],
)
def test_legacy_only(mechanisms: tuple[str, ...], legacy: bool) -> None:
    assert mail.legacy_only(mechanisms) is legacy


def test_capability_diff() -> None:
    before = ("IMAP4REV1", "STARTTLS", "LOGINDISABLED", "ID")
    after = ("IMAP4REV1", "ID", "AUTH=PLAIN", "AUTH=LOGIN")
    assert mail.capability_diff(before, after) == (
        ("AUTH=PLAIN", "AUTH=LOGIN"),
        ("STARTTLS", "LOGINDISABLED"),
    )
    assert mail.capability_diff(("a",), ("A",)) == ((), ())


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("mail.example.org ESMTP Exim 4.96 Tue, 02 Dec 2026 13:02:36 +0000", "Exim 4.96"),
        ("server Cyrus IMAP v3.2.6-184-g2e6e6a6 server ready", "IMAP v3.2.6-184-g2e6e6a6"),
        ("Dovecot 2.3.19.1 ready.", "Dovecot 2.3.19.1"),
        ("host Microsoft ESMTP MAIL Service, Version: 15.1.2507.23 ready", "Version 15.1.2507.23"),
        ("mail.example.org Python SMTP 1.4.6", "SMTP 1.4.6"),
        ("mail.example.org ESMTP Sendmail 8.15.2/8.15.2; Tue, 2 Dec 2026", "Sendmail 8.15.2"),
        ("Qpopper-4.1.0", "Qpopper 4.1.0"),
        ("Dovecot (Debian) ready.", None),
        ("mail-1.2.example.org ESMTP", None),
        ("mail.example.org ESMTP Postfix (Debian/GNU)", None),
        ("[CAPABILITY IMAP4rev1 X-VERSION=1.2] Server ready.", None),
        ("mx1.2.example.org ESMTP ready", None),
        ("mail ready at 10.0.0.1", None),
        ("[192.0.2.1] ESMTP ready", None),
        ("10.1.2.3 ESMTP", None),
        ("Server ready.", None),
        ("", None),
    ],
)
def test_disclosed_version(text: str, version: str | None) -> None:
    assert mail.disclosed_version(text) == version


@pytest.mark.parametrize(
    ("name", "internal"),
    [
        ("mail.example.org", False),
        ("mail.example.org.", False),
        ("mx.corp.local", True),
        ("exchange01", True),
        ("localhost", True),
        ("mail.lan", True),
        ("smtp.internal", True),
        ("ad.example.corp", True),
        ("router.home.arpa", True),
        ("[10.1.2.3]", True),
        ("[192.168.1.5]", True),
        ("172.16.0.9", True),
        ("[IPv6:fd00::1]", True),
        ("[203.0.113.7]", True),  # documentation range: not public either
        ("[8.8.8.8]", False),
        ("", False),
    ],
)
def test_internal_name(name: str, internal: bool) -> None:
    assert (mail.internal_name(name) is not None) is internal


# -- scripted servers ------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    data: str
    starttls: bool = False
    close: bool = False
    delay: float = 0.0  # seconds before the reply goes out (a server that makes us wait)


@dataclasses.dataclass
class Session:
    tls: bool
    state: dict[str, Any] = dataclasses.field(default_factory=dict)


Respond = Callable[[Session, str], Reply]


@dataclasses.dataclass
class Script:
    """What a scripted server says: a greeting (None: silent) and a responder."""

    greeting: Callable[[Session], str | None]
    respond: Respond
    #: Called with the connection number (1-based): a greeting that replaces the usual one.
    turn_away: Callable[[int], str | None] = lambda n: None


class Scripted:
    """A one-port asyncio server on 127.0.0.1 that plays a `Script`; bytes pipelined
    after a STARTTLS line are thrown away (the correct behaviour)."""

    def __init__(self, script: Script, tls: ssl.SSLContext, *, implicit: bool = False) -> None:
        self.script = script
        self.tls = tls
        self.implicit = implicit
        self.connections = 0
        self.received: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=self.tls if self.implicit else None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
                await self._converse(reader, writer)
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(tls=self.implicit)
        away = self.script.turn_away(self.connections)
        if away is not None:
            writer.write(away.encode())
            await writer.drain()
            return
        greeting = self.script.greeting(session)
        if greeting is None:  # silent: read and ignore everything
            while await reader.read(65536):
                pass
            return
        writer.write(greeting.encode())
        buffer = bytearray()
        while True:
            await writer.drain()
            end = buffer.find(b"\n")
            if end < 0:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buffer += chunk
                continue
            line = bytes(buffer[:end]).decode("latin-1").rstrip("\r")
            del buffer[: end + 1]
            self.received.append(line)
            reply = self.script.respond(session, line)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            writer.write(reply.data.encode())
            if reply.close:
                await writer.drain()
                return
            if reply.starttls:
                await writer.drain()
                buffer.clear()  # RFC 9051 §6.2.1 option 2: pipelined bytes thrown away
                await writer.start_tls(self.tls)
                session.tls = True


@pytest.fixture(scope="module")
def tls() -> ssl.SSLContext:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mail.example.org", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(autouse=True)
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "GREETING_WAIT", 0.3)
    monkeypatch.setattr(limits, "QUIET_WAIT", 0.3)
    monkeypatch.setattr(limits, "AUTH_WAIT", 0.3)


def network(timeout: float = 3.0) -> Network:
    return Network(NetworkSettings(timeout=timeout, backoff=0.0))


@contextlib.asynccontextmanager
async def serving(
    script: Script, tls: ssl.SSLContext, *, implicit: bool = False
) -> AsyncIterator[Scripted]:
    async with Scripted(script, tls, implicit=implicit) as server:
        yield server


async def scan(
    server: Scripted, net: Network | None = None
) -> tuple[mail.Recognised, mail.MailResult, Network]:
    net = net or network()
    rec = await mail.recognise(net, "127.0.0.1", server.port, server_name="mail.example.org")
    assert rec is not None
    result = await mail.audit_mail(net, "127.0.0.1", server.port, rec, server_name=None)
    return rec, result, net


def failed(result: mail.MailResult) -> set[str]:
    return {f.id for f in result.findings if f.status is Status.FAIL}


def untested(result: mail.MailResult) -> set[str]:
    return {f.id for f in result.findings if f.status is Status.NOT_TESTED}


def by_id(result: mail.MailResult, check_id: str) -> Any:
    return next(f for f in result.findings if f.id == check_id)


def evidence(result: mail.MailResult) -> str:
    return "\n".join(line for f in result.findings for line in f.evidence)


# -- SMTP: a sloppy submission server ------------------------------------------------------


PASSWORDS: list[str] = []  # what the sloppy server was sent as a password


def sloppy_smtp(s: Session, line: str) -> Reply:
    """AUTH LOGIN evaluated in clear, MAIL before TLS, EHLO kept across STARTTLS,
    STARTTLS advertised inside TLS, only CRAM-MD5 inside TLS, an open relay, VRFY
    that tells mailboxes apart, and an internal host name."""
    stage = s.state.get("auth")
    if stage == "user":
        s.state["auth"] = "password"
        return Reply("334 UGFzc3dvcmQ6\r\n")
    if stage == "password":
        s.state["auth"] = None
        PASSWORDS.append(base64.b64decode(line).decode())
        return Reply("535 5.7.8 Authentication credentials invalid\r\n")
    verb, _, arg = line.partition(" ")
    match verb.upper():
        case "EHLO":
            s.state["helo"] = True
            keywords = ["PIPELINING", "STARTTLS"]
            keywords += ["AUTH CRAM-MD5"] if s.tls else ["AUTH LOGIN"]
            lines = ["mx.corp.local Hello", *keywords]
            return Reply("".join(f"250-{k}\r\n" for k in lines[:-1]) + f"250 {lines[-1]}\r\n")
        case "STARTTLS" if s.tls:
            return Reply("503 5.5.1 TLS already active\r\n")
        case "STARTTLS":
            return Reply("220 2.0.0 Ready to start TLS\r\n", starttls=True)
        case "MAIL" if s.state.get("helo"):
            return Reply("250 2.1.0 Ok\r\n")
        case "MAIL":
            return Reply("503 5.5.1 Error: send HELO/EHLO first\r\n")
        case "RCPT":
            return Reply("250 2.1.5 Ok\r\n")
        case "RSET" | "NOOP":
            return Reply("250 2.0.0 Ok\r\n")
        case "VRFY" | "EXPN" if arg == "postmaster":
            return Reply("250 2.1.5 Postmaster <postmaster@mx.corp.local>\r\n")
        case "VRFY" | "EXPN":
            return Reply("550 5.1.1 User unknown\r\n")
        case "AUTH" if arg.upper() == "LOGIN":
            s.state["auth"] = "user"
            return Reply("334 VXNlcm5hbWU6\r\n")
        case "AUTH":
            return Reply("504 5.7.4 Unrecognized authentication type\r\n")
        case "QUIT":
            return Reply("221 2.0.0 Bye\r\n", close=True)
        case _:
            return Reply("502 5.5.2 Error: command not recognized\r\n")


SLOPPY_SMTP = Script(
    greeting=lambda s: "220 mx.corp.local ESMTP Exim 4.96 Tue, 02 Dec 2026 13:02:36 +0000\r\n",
    respond=sloppy_smtp,
)


@pytest.mark.asyncio
async def test_sloppy_submission_server(tls: ssl.SSLContext) -> None:
    PASSWORDS.clear()
    async with serving(SLOPPY_SMTP, tls) as server:
        rec, result, net = await scan(server)
    assert (rec.protocol, rec.tls_mode) == (Protocol.SMTP, TlsMode.CLEARTEXT)
    assert failed(result) == {
        "EXP-03",  # AUTH before TLS, and MAIL before TLS
        "ST-04",
        "ST-08",
        "ST-10",
        "AUTH-04",
        "AUTH-05",
        "AUTH-06",
        "AUTH-08",
        "AUTH-09",
        "BAN-01",
        "BAN-03",
    }
    assert untested(result) == set()
    assert result.starttls_works is True
    assert result.capabilities_before_tls == ("PIPELINING", "STARTTLS", "AUTH LOGIN")
    assert result.capabilities_after_tls == ("PIPELINING", "STARTTLS", "AUTH CRAM-MD5")
    assert result.banner.startswith("220 mx.corp.local ESMTP Exim 4.96")
    exp = by_id(result, "EXP-03")
    assert "MAIL accepted before STARTTLS" in exp.evidence
    assert exp.severity is Severity.MEDIUM  # the catalog does not raise EXP-03
    assert "Exim 4.96" in evidence(result)
    # The probe went through AUTH LOGIN, and its password is nowhere in the evidence.
    assert base64.b64encode(mail.PROBE_USER.encode()).decode() in server.received
    (secret,) = PASSWORDS
    assert len(secret) >= 16
    assert secret not in evidence(result)
    assert base64.b64encode(secret.encode()).decode() not in evidence(result)
    assert "C: *** (base64)" in by_id(result, "AUTH-05").evidence
    assert net.connections <= 8


@pytest.mark.asyncio
async def test_sloppy_submission_on_port_25_has_no_exp03(
    tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Port 25 is the MX port: TLS may not be required there (RFC 3207 §4)."""
    original = Network.connect

    async def connect(
        self: Network, address: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # No root-only port 25 in tests: "25" reaches the scripted server.
        return await original(self, address, server.port if port == 25 else port)

    monkeypatch.setattr(Network, "connect", connect)
    async with serving(SLOPPY_SMTP, tls) as server:
        rec = mail.Recognised(Protocol.SMTP, TlsMode.CLEARTEXT, "220 x")
        result = await mail.audit_mail(network(), "127.0.0.1", 25, rec, server_name=None)
    assert "EXP-03" not in failed(result)
    assert {"AUTH-04", "AUTH-05", "ST-08"} <= failed(result)
    assert "MAIL accepted before STARTTLS" not in evidence(result)
    before_tls = server.received[: server.received.index("STARTTLS")]
    assert before_tls == ["EHLO imapguard.scan.invalid"]


# -- IMAP ---------------------------------------------------------------------------------


def imap_script(
    caps: Callable[[Session], str],
    *,
    greeting: str = "Server ready.",
    extra: Callable[[Session, str, str, str], str | None] | None = None,
) -> Script:
    def respond(s: Session, line: str) -> Reply:
        tag, _, rest = line.partition(" ")
        command, _, arg = rest.partition(" ")
        if extra is not None and (custom := extra(s, tag, command.upper(), arg)) is not None:
            return Reply(custom, starttls=custom.startswith(f"{tag} OK Begin TLS"))
        match command.upper():
            case "CAPABILITY":
                return Reply(f"* CAPABILITY {caps(s)}\r\n{tag} OK done\r\n")
            case "STARTTLS" if s.tls:
                return Reply(f"{tag} BAD TLS already active\r\n")
            case "STARTTLS":
                return Reply(f"{tag} OK Begin TLS negotiation now.\r\n", starttls=True)
            case "LOGIN" if "LOGINDISABLED" in caps(s):
                return Reply(f"{tag} NO [PRIVACYREQUIRED] Use TLS\r\n")
            case "LOGIN":
                return Reply(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
            case "NOOP" | "ID":
                return Reply(f"{tag} OK done\r\n")
            case "LOGOUT":
                return Reply(f"* BYE bye\r\n{tag} OK done\r\n", close=True)
            case _:
                return Reply(f"{tag} BAD unknown\r\n")

    return Script(greeting=lambda s: f"* OK {greeting}\r\n", respond=respond)


@pytest.mark.asyncio
async def test_imap_implicit_sloppy(tls: ssl.SSLContext) -> None:
    """Inside implicit TLS: STARTTLS advertised and answered NO (not BAD), anonymous
    login, a version in the greeting and in ID."""

    def extra(s: Session, tag: str, command: str, arg: str) -> str | None:
        if command == "STARTTLS":
            return f"{tag} NO not now\r\n"
        if command == "ID":
            return f'* ID ("name" "Cyrus IMAPd" "version" "3.2.6")\r\n{tag} OK done\r\n'
        return None

    script = imap_script(
        lambda s: "IMAP4rev1 ID STARTTLS AUTH=ANONYMOUS AUTH=PLAIN",
        greeting="mail Cyrus IMAP v3.2.6 server ready",
        extra=extra,
    )
    async with serving(script, tls, implicit=True) as server:
        rec, result, _ = await scan(server)
    assert (rec.protocol, rec.tls_mode) == (Protocol.IMAP, TlsMode.IMPLICIT)
    assert failed(result) == {"ST-04", "ST-06", "AUTH-06", "BAN-01", "BAN-02"}
    assert untested(result) == set()
    assert result.starttls_works is None
    assert result.capabilities_before_tls == ()
    assert "ID discloses version '3.2.6'" in by_id(result, "BAN-02").evidence


@pytest.mark.asyncio
async def test_imap_implicit_good(tls: ssl.SSLContext) -> None:
    script = imap_script(lambda s: "IMAP4rev1 ID AUTH=PLAIN")
    async with serving(script, tls, implicit=True) as server:
        _, result, _ = await scan(server)
    assert result.findings == ()
    assert "ID NIL" in " ".join(server.received)
    assert any(line.endswith("STARTTLS") for line in server.received)


@pytest.mark.asyncio
async def test_imap_starttls_hidden_but_accepted(tls: ssl.SSLContext) -> None:
    """Not advertised, yet accepted: ST-01 and ST-03, but not EXP-07; LOGIN refused
    because of LOGINDISABLED."""
    script = imap_script(lambda s: "IMAP4rev1 AUTH=PLAIN" if s.tls else "IMAP4rev1 LOGINDISABLED")
    async with serving(script, tls) as server:
        _, result, _ = await scan(server)
    assert failed(result) == {"EXP-01", "ST-01", "ST-03", "ST-10"}
    assert untested(result) == set()
    assert result.starttls_works is True
    assert by_id(result, "EXP-01").evidence == (
        "ST-01: STARTTLS/STLS not advertised on the cleartext port",
    )
    assert by_id(result, "ST-10").evidence[2:] == (
        "added after TLS: AUTH=PLAIN",
        "removed after TLS: LOGINDISABLED",
    )


@pytest.mark.asyncio
async def test_imap_broken_starttls(tls: ssl.SSLContext) -> None:
    """STARTTLS advertised, answered OK, then the server hangs up: ST-02, and what
    needs TLS is not tested (never passed)."""

    def extra(s: Session, tag: str, command: str, arg: str) -> str | None:
        return f"{tag} OK go ahead\r\n" if command == "STARTTLS" else None

    def respond_then_close(s: Session, line: str) -> Reply:
        reply = inner.respond(s, line)
        return dataclasses.replace(
            reply, close=reply.data.endswith("OK go ahead\r\n") or reply.close
        )

    inner = imap_script(lambda s: "IMAP4rev1 STARTTLS LOGINDISABLED", extra=extra)
    script = Script(inner.greeting, respond_then_close)
    async with serving(script, tls) as server:
        _, result, _ = await scan(server)
    assert failed(result) == {"ST-02"}
    assert untested(result) == {"ST-04", "ST-07", "ST-10", "AUTH-09"}
    assert result.starttls_works is False
    assert any("TLS handshake failed" in line for line in by_id(result, "ST-02").evidence)
    for check_id in untested(result):
        assert by_id(result, check_id).evidence == (
            "not tested: STARTTLS did not work (see ST-02)",
        )


def _delayed_login(delay: float | None) -> Script:
    """Dovecot with cleartext login allowed, whose answer to LOGIN takes `delay`
    seconds (its auth penalty after failed logins), or never comes (None)."""
    inner = imap_script(lambda s: "IMAP4rev1 ID AUTH=PLAIN" + ("" if s.tls else " STARTTLS"))

    def respond(s: Session, line: str) -> Reply:
        reply = inner.respond(s, line)
        if " LOGIN " not in f" {line} ":
            return reply
        return Reply("") if delay is None else dataclasses.replace(reply, delay=delay)

    return Script(inner.greeting, respond)


@pytest.mark.asyncio
async def test_an_auth_penalty_longer_than_the_timeout_still_gets_the_probe_its_answer(
    tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9: Dovecot's penalty for the previous scan's probe delayed this scan's
    answer past --timeout, and AUTH-05 (so the grade) flipped from F to not tested.
    The answer to the credential gets AUTH_WAIT, whatever the timeout."""
    monkeypatch.setattr(limits, "AUTH_WAIT", 4.0)
    async with serving(_delayed_login(1.5), tls) as server:
        _, result, _ = await scan(server, network(timeout=1.0))
    assert "AUTH-05" in failed(result)
    assert "EXP-01" in failed(result)
    assert by_id(result, "EXP-01").severity is Severity.CRITICAL
    assert untested(result) == set()


@pytest.mark.asyncio
async def test_a_credential_never_answered_is_not_tested_and_says_how_to_rerun(
    tls: ssl.SSLContext,
) -> None:
    async with serving(_delayed_login(None), tls) as server:
        _, result, _ = await scan(server, network(timeout=1.0))
        logins = [line for line in server.received if " LOGIN " in line]
    assert untested(result) == {"AUTH-05"}
    # EXP-01 stands on AUTH-01/AUTH-02; only the critical severity needed AUTH-05.
    assert by_id(result, "EXP-01").severity is Severity.HIGH
    assert by_id(result, "AUTH-05").evidence == (
        "not tested: the server did not answer the dummy credential within 1 s (2 tries,"
        " 0 s apart); the server delays logins from this address after failed ones"
        " (Dovecot's auth penalty reaches 15 s and lasts until 15 s pass without a"
        " failure): rerun in a minute, or from another address",
    )
    assert len(logins) == limits.ATTEMPTS  # tried again, then gave up
    assert "AUTH-05" not in failed(result)


@pytest.mark.parametrize("failures", [1, 2])
@pytest.mark.asyncio
async def test_a_temporary_authentication_failure_is_asked_again(
    tls: ssl.SSLContext, failures: int
) -> None:
    """NO [UNAVAILABLE] (RFC 5530: a subsystem is down; Dovecot's "Temporary
    authentication failure") says nothing about the credential: the probe runs again,
    and only a failure every time leaves AUTH-05 not tested, with how to rerun."""
    inner = imap_script(lambda s: "IMAP4rev1 ID AUTH=PLAIN" + ("" if s.tls else " STARTTLS"))
    seen: list[str] = []

    def respond(s: Session, line: str) -> Reply:
        if " LOGIN " in f" {line} ":
            seen.append(line)
            if len(seen) <= failures:
                tag = line.split()[0]
                return Reply(f"{tag} NO [UNAVAILABLE] Temporary authentication failure.\r\n")
        return inner.respond(s, line)

    async with serving(Script(inner.greeting, respond), tls) as server:
        _, result, _ = await scan(server)
    assert len(seen) == min(failures + 1, limits.ATTEMPTS)
    if failures < limits.ATTEMPTS:
        assert "AUTH-05" in failed(result)
        assert untested(result) == set()
    else:
        assert untested(result) == {"AUTH-05"}
        assert (
            by_id(result, "AUTH-05")
            .evidence[0]
            .startswith(
                "not tested: the server reported a temporary failure: S: s1 NO [UNAVAILABLE]"
                " Temporary authentication failure. (2 tries, 0 s apart); rerun in a few minutes"
            )
        )


@pytest.mark.asyncio
async def test_a_step_cut_short_runs_again_from_a_clean_state(tls: ssl.SSLContext) -> None:
    """The main dialog's connection closes after the greeting (a restart, a reset):
    the step runs again and decides everything, once (no doubled evidence)."""
    greeting = "* OK Server ready.\r\n"
    script = dataclasses.replace(
        imap_script(lambda s: "IMAP4rev1 ID AUTH=PLAIN" if s.tls else "IMAP4rev1 STARTTLS"),
        turn_away=lambda n: greeting if n == 2 else None,  # 1 recognise, 2 the main dialog
    )
    async with serving(script, tls) as server:
        _, result, _ = await scan(server)
    assert untested(result) == set()
    assert failed(result) == {"AUTH-01", "AUTH-05", "EXP-01", "ST-10"}
    assert len(by_id(result, "AUTH-01").evidence) == 3  # C:, S:, why: one run's worth


@pytest.mark.asyncio
async def test_imap_silence_after_greeting_is_not_tested_never_passed(tls: ssl.SSLContext) -> None:
    script = Script(greeting=lambda s: "* OK Server ready.\r\n", respond=lambda s, line: Reply(""))
    async with serving(script, tls) as server:
        _, result, _ = await scan(server, network(timeout=0.4))
    assert failed(result) == set()
    assert {"ST-01", "ST-02", "AUTH-01", "AUTH-02", "AUTH-05", "EXP-01", "EXP-07"} <= untested(
        result
    )
    assert all(f.evidence[0].startswith("not tested: ") for f in result.findings), result.findings
    assert "timed out waiting for the server" in by_id(result, "AUTH-05").evidence[0]


@pytest.mark.asyncio
async def test_imap_untagged_responses_trickling_in_share_one_timeout(
    tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server answering every command with an endless trickle of untagged
    responses, each well within the timeout: the command still gets one timeout in
    all, so the checks end as not tested for a timeout (not after MAX_RESPONSES
    timeouts, nor for too many responses)."""
    monkeypatch.setattr(limits, "MAX_RESPONSES", 20)

    class Trickle(Scripted):
        async def _converse(
            self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            writer.write(b"* OK ready\r\n")
            await writer.drain()
            await reader.readline()
            while True:
                writer.write(b"* OK still working on it\r\n")
                await writer.drain()
                await asyncio.sleep(0.2)  # 20 of them take 4 s, the timeout is 1 s

    script = Script(greeting=lambda s: None, respond=lambda s, line: Reply(""))
    rec = mail.Recognised(Protocol.IMAP, TlsMode.CLEARTEXT, "* OK ready")
    async with Trickle(script, tls) as server:
        result = await mail.audit_mail(
            network(timeout=1.0), "127.0.0.1", server.port, rec, server_name=None
        )
    assert failed(result) == set()
    for check_id in ("ST-01", "AUTH-01", "AUTH-05"):
        assert by_id(result, check_id).evidence == (
            "not tested: timed out waiting for the server (2 tries, 0 s apart); rerun with a"
            " longer --timeout, or when the server is less busy",
        ), check_id


@pytest.mark.asyncio
async def test_imap_bytes_after_the_starttls_reply_convict_in_both_variants(
    tls: ssl.SSLContext,
) -> None:
    """The start of a response right behind the STARTTLS reply, never completed:
    bytes before our ClientHello, so each variant convicts on its own."""

    def extra(s: Session, tag: str, command: str, arg: str) -> str | None:
        if command == "STARTTLS" and not s.tls:
            return f"{tag} OK Begin TLS negotiation now.\r\n* OK"
        return None

    script = imap_script(lambda s: "IMAP4rev1 STARTTLS LOGINDISABLED", extra=extra)
    async with serving(script, tls) as server:
        _, result, _ = await scan(server)
    assert "ST-07" in failed(result)
    lines = by_id(result, "ST-07").evidence
    assert lines.count("bytes followed the STARTTLS reply in cleartext") == 2, lines


@pytest.mark.asyncio
async def test_imap_ntlm_challenge_names(tls: ssl.SSLContext) -> None:
    def extra(s: Session, tag: str, command: str, arg: str) -> str | None:
        if command == "AUTHENTICATE":
            s.state["ntlm"] = tag
            return "+ \r\n"
        if "ntlm" in s.state:  # the SASL lines: NEGOTIATE, then our cancel
            if command == "" and tag == "*":
                return f"{s.state.pop('ntlm')} BAD cancelled\r\n"
            negotiate = base64.b64decode(tag)
            assert negotiate.startswith(b"NTLMSSP\0\x01\0\0\0")
            challenge = ntlm_challenge("", [(2, "CORP"), (3, "mail01.corp.local")], (10, 0, 17763))
            return f"+ {base64.b64encode(challenge).decode()}\r\n"
        return None

    script = imap_script(lambda s: "IMAP4rev1 STARTTLS LOGINDISABLED AUTH=NTLM", extra=extra)
    async with serving(script, tls) as server:
        _, result, _ = await scan(server)
    assert "AUTH-07" in failed(result)
    (last,) = [line for line in by_id(result, "AUTH-07").evidence if "discloses" in line]
    assert "NetBIOS domain CORP" in last
    assert "DNS computer mail01.corp.local" in last
    assert "OS version 10.0 build 17763" in last


# -- POP3 ---------------------------------------------------------------------------------


def sloppy_pop3(s: Session, line: str) -> Reply:
    command = line.partition(" ")[0].upper()
    match command:
        case "CAPA":
            return Reply("+OK\r\nTOP\r\nUSER\r\nIMPLEMENTATION Qpopper 4.1.0\r\n.\r\n")
        case "USER":
            return Reply("+OK send PASS\r\n")
        case "QUIT":
            return Reply("+OK bye\r\n", close=True)
        case _:
            return Reply("-ERR unknown command\r\n")


@pytest.mark.asyncio
async def test_pop3_without_tls_that_takes_user_names(tls: ssl.SSLContext) -> None:
    script = Script(greeting=lambda s: "+OK POP3 server ready\r\n", respond=sloppy_pop3)
    async with serving(script, tls) as server:
        rec, result, _ = await scan(server)
    assert rec.protocol is Protocol.POP3
    assert failed(result) == {"EXP-02", "EXP-07", "ST-01", "AUTH-03", "AUTH-05", "BAN-02"}
    assert untested(result) == set()
    assert by_id(result, "EXP-02").severity is Severity.CRITICAL
    assert "severity raised to critical: AUTH-05 failed" in by_id(result, "EXP-02").evidence
    assert result.starttls_works is False
    assert "PASS" not in " ".join(server.received)  # +OK to USER was proof enough


# -- throttling -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_smtp_421_greeting(tls: ssl.SSLContext) -> None:
    script = Script(
        greeting=lambda s: "421 4.7.0 mail.example.org Too many connections\r\n",
        respond=lambda s, line: Reply(""),
    )
    async with serving(script, tls) as server:
        rec, result, net = await scan(server)
    assert rec.protocol is Protocol.SMTP
    assert rec.throttled == "421 4.7.0 mail.example.org Too many connections"
    assert net.throttled("127.0.0.1") is not None
    assert failed(result) == {"ST-11"}
    assert by_id(result, "ST-11").severity is Severity.INFO
    assert untested(result) == set(checks_for(Protocol.SMTP, TlsMode.CLEARTEXT))
    assert server.connections == 1  # no check was attempted


@pytest.mark.asyncio
async def test_throttling_in_the_middle_of_the_audit(tls: ssl.SSLContext) -> None:
    """Connections after the third get 421: what ran stands, the rest is not tested."""
    script = dataclasses.replace(
        SLOPPY_SMTP,
        turn_away=lambda n: "421 4.7.0 Too many connections\r\n" if n > 3 else None,
    )
    async with serving(script, tls) as server:
        _, result, _ = await scan(server)
    # 1 recognise, 2 main dialog, 3 probe; the injection tests meet the 421.
    assert {"AUTH-04", "AUTH-05", "ST-08", "BAN-01"} <= failed(result)
    assert untested(result) == {"ST-07"}
    assert "ST-11" in failed(result)
    assert "ST-07" in by_id(result, "ST-11").evidence[1]


# -- recognise ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_recognise_sieve(tls: ssl.SSLContext) -> None:
    script = Script(
        greeting=lambda s: (
            '"IMPLEMENTATION" "Dovecot Pigeonhole"\r\n"SIEVE" "fileinto"\r\n'
            '"STARTTLS"\r\nOK "Ready."\r\n'
        ),
        respond=lambda s, line: Reply('OK "Logout"\r\n', close=True),
    )
    async with serving(script, tls) as server:
        rec, result, _ = await scan(server)
    assert rec == mail.Recognised(
        Protocol.SIEVE, TlsMode.CLEARTEXT, '"IMPLEMENTATION" "Dovecot Pigeonhole"'
    )
    assert [(f.id, f.severity) for f in result.findings] == [("EXP-06", Severity.INFO)]


@pytest.mark.asyncio
async def test_recognise_unknown_banner(tls: ssl.SSLContext) -> None:
    script = Script(
        greeting=lambda s: "SSH-2.0-OpenSSH_9.2\r\n",
        respond=lambda s, line: Reply("", close=True),
    )
    async with serving(script, tls) as server:
        rec, result, _ = await scan(server)
    assert rec == mail.Recognised(Protocol.UNKNOWN, TlsMode.CLEARTEXT, "SSH-2.0-OpenSSH_9.2")
    assert result.findings == ()


@pytest.mark.asyncio
async def test_recognise_implicit_tls_on_any_port(tls: ssl.SSLContext) -> None:
    script = Script(
        greeting=lambda s: "+OK ready\r\n", respond=lambda s, line: Reply("+OK\r\n", close=True)
    )
    async with serving(script, tls, implicit=True) as server:
        net = network()
        rec = await mail.recognise(net, "127.0.0.1", server.port, server_name=None)
    assert rec == mail.Recognised(Protocol.POP3, TlsMode.IMPLICIT, "+OK ready")
    assert server.connections == 1  # the silent first connection went on to TLS


@pytest.mark.asyncio
async def test_recognise_slow_greeter(tls: ssl.SSLContext) -> None:
    """Silent longer than GREETING_WAIT and no TLS: one patient cleartext try."""

    class Slow(Scripted):
        async def _converse(
            self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await asyncio.sleep(0.6)
            writer.write(b"220 mail.example.org ESMTP\r\n")
            await writer.drain()
            await reader.read(65536)

    script = Script(greeting=lambda s: None, respond=lambda s, line: Reply(""))
    async with Slow(script, tls) as server:
        rec = await mail.recognise(network(), "127.0.0.1", server.port, server_name=None)
    assert rec == mail.Recognised(Protocol.SMTP, TlsMode.CLEARTEXT, "220 mail.example.org ESMTP")


@pytest.mark.asyncio
async def test_recognise_silent_port_is_none(tls: ssl.SSLContext) -> None:
    script = Script(greeting=lambda s: None, respond=lambda s, line: Reply(""))
    async with serving(script, tls) as server:
        rec = await mail.recognise(network(timeout=0.5), "127.0.0.1", server.port, server_name=None)
    assert rec is None


@pytest.mark.parametrize(
    "name",
    ["a" * 64 + ".example.org", ".".join(["a" * 60] * 5)],
    ids=["label-over-63", "name-over-255"],
)
@pytest.mark.asyncio
async def test_a_server_name_the_ssl_module_refuses_goes_without_sni(
    tls: ssl.SSLContext, name: str
) -> None:
    """--server-name is the user's text: one that cannot go into SNI must neither
    crash the scan (UnicodeError) nor make a TLS port look dead (SSLError)."""
    script = imap_script(lambda s: "IMAP4rev1 ID AUTH=PLAIN")
    async with serving(script, tls, implicit=True) as server:
        net = network()
        rec = await mail.recognise(net, "127.0.0.1", server.port, server_name=name)
        assert rec == mail.Recognised(Protocol.IMAP, TlsMode.IMPLICIT, "* OK Server ready.")
        result = await mail.audit_mail(net, "127.0.0.1", server.port, rec, server_name=name)
    assert result.findings == ()


@pytest.mark.asyncio
async def test_recognise_closed_port_is_none() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = sock.getsockname()[1]
        rec = await mail.recognise(network(), "127.0.0.1", port, server_name=None)
    assert rec is None

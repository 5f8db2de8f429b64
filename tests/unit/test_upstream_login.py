"""The login to the upstream (imapguard.imap.login), as transcripts: the server's
bytes in, what the gateway sends and decides out."""

from __future__ import annotations

import base64

import pytest

from imapguard.imap.login import (
    Action,
    Failed,
    Greeted,
    LoggedIn,
    LoginDialogue,
    LoginSettings,
    NeedResponse,
    Send,
    StartTls,
    plain_response,
)
from imapguard.secret import Secret

PLAIN = plain_response("", "alice", Secret(b"s3cret"))
MASTER = plain_response("alice", "gateway", Secret(b"master"))
ID = (("x-originating-ip", "192.0.2.7"), ("x-session-ext-id", "s1"))


def run(machine: LoginDialogue, data: bytes = b"") -> list[Action]:
    """Server bytes in; every action up to the next need for bytes, or the end."""
    if data:
        machine.receive_data(data)
    actions: list[Action] = []
    while True:
        action = machine.next_action()
        if isinstance(action, NeedResponse):
            return actions
        actions.append(action)
        if isinstance(action, LoggedIn | Greeted | Failed | StartTls):
            return actions


def sent(actions: list[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Send))


def test_plain_response_is_rfc_4616() -> None:
    assert base64.b64decode(PLAIN.reveal()) == b"\0alice\0s3cret"
    assert base64.b64decode(MASTER.reveal()) == b"alice\0gateway\0master"


def test_sasl_ir_login_sends_the_credentials_inline_and_takes_the_tagged_capabilities() -> None:
    m = LoginDialogue(PLAIN)
    assert run(m) == []
    out = run(m, b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] Dovecot ready.\r\n")
    assert sent(out) == b"g2 AUTHENTICATE PLAIN " + PLAIN.reveal() + b"\r\n"
    out = run(m, b"g2 OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n* 3 EXISTS\r\n")
    assert out == [LoggedIn(["IMAP4rev1", "IDLE", "MOVE"], b"* 3 EXISTS\r\n")]


def test_without_sasl_ir_the_credentials_wait_for_the_continuation() -> None:
    m = LoginDialogue(PLAIN)
    out = run(m, b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
    assert sent(out) == b"g2 AUTHENTICATE PLAIN\r\n"
    assert sent(run(m, b"+ \r\n")) == PLAIN.reveal() + b"\r\n"
    out = run(m, b"* CAPABILITY IMAP4rev1 IDLE\r\ng2 OK Logged in\r\n")
    assert out == [LoggedIn(["IMAP4rev1", "IDLE"], b"")]


def test_a_response_where_the_continuation_belongs_ends_the_login() -> None:
    m = LoginDialogue(PLAIN)
    run(m, b"* OK ready\r\n")
    assert run(m, b"* OK [ALERT] not now\r\n") == [Failed("no SASL continuation")]


def test_client_address_goes_first_in_an_id_pipelined_with_the_login() -> None:
    m = LoginDialogue(MASTER, LoginSettings(id_fields=ID))
    out = run(m, b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n")
    assert sent(out) == (
        b'g1 ID ("x-originating-ip" "192.0.2.7" "x-session-ext-id" "s1")\r\n'
        b"g2 AUTHENTICATE PLAIN " + MASTER.reveal() + b"\r\n"
    )
    out = run(m, b'* ID ("name" "Dovecot")\r\ng1 OK ID completed\r\ng2 OK Logged in\r\n')
    # No capabilities with the OK: they are asked for.
    assert sent(out) == b"g3 CAPABILITY\r\n"
    out = run(m, b"* CAPABILITY IMAP4rev1 IDLE\r\ng3 OK done\r\n")
    assert out == [LoggedIn(["IMAP4rev1", "IDLE"], b"")]


def test_id_values_are_quoted() -> None:
    m = LoginDialogue(PLAIN, LoginSettings(id_fields=(("x-session-ext-id", 'a"b\\c'),)))
    out = run(m, b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n")
    assert sent(out).startswith(b'g1 ID ("x-session-ext-id" "a\\"b\\\\c")\r\n')


@pytest.mark.parametrize(
    ("answer", "refused", "code"),
    [
        (b"g2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", True, "AUTHENTICATIONFAILED"),
        (b"g2 NO [AUTHORIZATIONFAILED] Authorization failed\r\n", True, "AUTHORIZATIONFAILED"),
        (b"g2 BAD bad command\r\n", True, None),
        (b"g2 NO [UNAVAILABLE] Temporary authentication failure.\r\n", False, "UNAVAILABLE"),
        (b"g2 NO [SERVERBUG] Internal error\r\n", False, "SERVERBUG"),
    ],
)
def test_no_is_a_refusal_unless_the_server_cannot_answer_now(
    answer: bytes, refused: bool, code: str | None
) -> None:
    """The code goes with the refusal: AUTHORIZATIONFAILED (RFC 5530) says the
    credentials were right and only the identity asked for was refused."""
    m = LoginDialogue(PLAIN)
    run(m, b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n")
    (failed,) = run(m, answer)
    assert failed == Failed("login: " + answer[3:].decode().strip(), refused=refused, code=code)


@pytest.mark.parametrize(
    ("greeting", "detail"),
    [
        (b"* PREAUTH [CAPABILITY IMAP4rev1] Come in\r\n", "unexpected greeting (PREAUTH)"),
        (b"* BYE go away\r\n", "unexpected greeting (refusal)"),
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", "unexpected greeting (not IMAP)"),
        (b"+ hello\r\n", "unexpected greeting (refusal)"),
    ],
)
def test_a_server_that_is_not_a_willing_imap_server_is_not_logged_in_to(
    greeting: bytes, detail: str
) -> None:
    m = LoginDialogue(PLAIN)
    assert run(m, greeting) == [Failed(detail)]
    assert m.next_action() == Failed(detail)  # it stays ended


def test_starttls_then_the_login_inside_tls_with_what_tls_says() -> None:
    m = LoginDialogue(PLAIN, LoginSettings(starttls=True))
    out = run(m, b"* OK [CAPABILITY IMAP4rev1 STARTTLS SASL-IR] ready\r\n")
    assert out == [Send(b"g0 STARTTLS\r\n")]
    assert run(m, b"g0 OK Begin TLS negotiation now.\r\n") == [StartTls()]
    m.tls_established()
    # SASL-IR was said before TLS: forgotten, so the login waits for "+".
    assert sent(run(m)) == b"g2 AUTHENTICATE PLAIN\r\n"


def test_a_check_without_credentials_ends_after_tls_having_sent_no_login() -> None:
    m = LoginDialogue(None, LoginSettings(starttls=True, id_fields=ID))
    out = run(m, b"* OK [CAPABILITY IMAP4rev1 STARTTLS SASL-IR] ready\r\n")
    assert out == [Send(b"g0 STARTTLS\r\n")]
    assert run(m, b"g0 OK Begin TLS negotiation now.\r\n") == [StartTls()]
    m.tls_established()
    assert run(m) == [Greeted()]


def test_a_check_without_credentials_still_refuses_a_preauth_greeting() -> None:
    m = LoginDialogue(None)
    assert run(m, b"* PREAUTH logged in already\r\n") == [Failed("unexpected greeting (PREAUTH)")]
    m = LoginDialogue(None)
    assert run(m, b"* OK ready\r\n") == [Greeted()]


def test_starttls_response_injection_ends_the_login() -> None:
    """CVE-2011-0411 class: bytes after the STARTTLS OK were sent before our
    handshake, so someone on the path wrote them."""
    m = LoginDialogue(PLAIN, LoginSettings(starttls=True))
    run(m, b"* OK ready\r\n")
    out = run(m, b"g0 OK Begin TLS.\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] x\r\n")
    assert out == [Failed("data injected after STARTTLS response")]


def test_starttls_refused() -> None:
    m = LoginDialogue(PLAIN, LoginSettings(starttls=True))
    run(m, b"* OK ready\r\n")
    assert run(m, b"g0 NO not today\r\n") == [Failed("STARTTLS refused")]


def test_a_closed_connection_ends_the_login() -> None:
    m = LoginDialogue(PLAIN)
    run(m, b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n")
    m.receive_data(b"")
    assert m.next_action() == Failed("connection closed during login")


def test_flooding_untagged_responses_before_the_answer_ends_the_login() -> None:
    m = LoginDialogue(PLAIN, LoginSettings(max_untagged=1000))
    run(m, b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n")
    out = run(m, b"* OK [ALERT] " + b"x" * 50 + b"\r\n" * 1)
    assert out == []
    assert run(m, (b"* OK [ALERT] " + b"x" * 50 + b"\r\n") * 20) == [
        Failed("too many untagged responses")
    ]


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"* OK " + b"x" * 2000 + b"\r\n", "response line too long"),
        (b'* ID ("x" {3000}\r\n', "response literal too large"),
        (b'* ID ("x" {900}\r\n' + b"v" * 900 + b' "y" {900}\r\n', "response too long"),
    ],
)
def test_every_response_is_bounded(data: bytes, detail: str) -> None:
    m = LoginDialogue(PLAIN, LoginSettings(max_response=1024))
    run(m, b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n")
    assert run(m, data) == [Failed(detail)]


def test_the_outcome_is_the_same_however_the_bytes_are_split() -> None:
    server = (
        b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"
        b'* ID ("name" {7}\r\nDovecot)\r\ng1 OK\r\n+ \r\n'
        b"g2 OK [CAPABILITY IMAP4rev1 IDLE] in\r\nleft"
    )

    def through(chunks: list[bytes]) -> tuple[bytes, Action]:
        """As the gateway reads: once logged in, the bytes not read yet are the
        client's too (the link's buffer)."""
        m = LoginDialogue(PLAIN, LoginSettings(id_fields=ID))
        out: list[Action] = []
        for i, chunk in enumerate(chunks):
            out += run(m, chunk)
            if isinstance(out[-1:][0] if out else None, LoggedIn):
                done = out[-1]
                assert isinstance(done, LoggedIn)
                rest = b"".join(chunks[i + 1 :])
                return sent(out), LoggedIn(done.capabilities, done.leftover + rest)
        return sent(out), out[-1]

    whole = through([server])
    assert whole[1] == LoggedIn(["IMAP4rev1", "IDLE"], b"left")
    for size in (1, 2, 3, 7, 64):
        assert through([server[i : i + size] for i in range(0, len(server), size)]) == whole

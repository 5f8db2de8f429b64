"""The pre-auth state machine, as transcripts: client bytes in, gateway bytes out."""

from __future__ import annotations

import base64
from typing import Any, NoReturn

import pytest

from imapguard.imap import commands
from imapguard.imap.framing import NEED_DATA, FrameLimits
from imapguard.imap.preauth import (
    Action,
    AuthOutcome,
    AuthRequest,
    Close,
    Credentials,
    Phase,
    PreAuth,
    PreAuthSettings,
    Relay,
    Send,
    StartTlsNow,
    filter_capabilities,
)
from imapguard.secret import Secret

PRE_TLS_CAPS = b"IMAP4rev1 ID LITERAL+ STARTTLS LOGINDISABLED"
TLS_CAPS = b"IMAP4rev1 ID LITERAL+ SASL-IR AUTH=PLAIN"
PRIVACY = b" NO [PRIVACYREQUIRED] Encryption required: use STARTTLS first.\r\n"
FAILED = b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
UPSTREAM_CAPS = ["IMAP4rev1", "IDLE", "STARTTLS", "AUTH=PLAIN", "LOGINDISABLED", "SASL-IR",
                 "COMPRESS=DEFLATE", "auth=xoauth2", "LOGIN-REFERRALS"]  # fmt: skip


def starttls_listener(**settings: Any) -> PreAuth:
    return PreAuth(PreAuthSettings(tls=False, starttls=True, **settings))


def implicit_listener(**settings: Any) -> PreAuth:
    return PreAuth(PreAuthSettings(tls=True, starttls=False, **settings))


def feed(machine: PreAuth, data: bytes = b"") -> list[Action]:
    """Client bytes in; every action up to the point where the machine needs data."""
    machine.receive_data(data)
    actions: list[Action] = []
    while (action := machine.next_action()) is not NEED_DATA:
        actions.append(action)
    return actions


def sent(actions: list[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Send))


def plain(user: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    return base64.b64encode(authzid + b"\0" + user + b"\0" + password)


def login_to_auth(machine: PreAuth, data: bytes) -> AuthRequest:
    actions = feed(machine, data)
    assert len(actions) == 1
    assert isinstance(actions[0], AuthRequest)
    assert machine.phase is Phase.AUTHENTICATING
    return actions[0]


# -- greeting and capabilities ------------------------------------------------------


def test_greeting_on_starttls_listener() -> None:
    machine = starttls_listener()
    greeting = machine.greeting()
    assert greeting == b"* OK [CAPABILITY " + PRE_TLS_CAPS + b"] IMAP gateway ready.\r\n"
    assert b"AUTH=" not in greeting
    assert b"PREAUTH" not in greeting


def test_capability_before_tls() -> None:
    assert feed(starttls_listener(), b"a CAPABILITY\r\n") == [
        Send(b"* CAPABILITY " + PRE_TLS_CAPS + b"\r\n"),
        Send(b"a OK Capability completed.\r\n"),
    ]


def test_greeting_on_implicit_listener() -> None:
    machine = implicit_listener(mechanisms=("PLAIN", "XOAUTH2"))
    assert machine.greeting() == (
        b"* OK [CAPABILITY IMAP4rev1 ID LITERAL+ SASL-IR AUTH=PLAIN AUTH=XOAUTH2]"
        b" IMAP gateway ready.\r\n"
    )
    assert b"PREAUTH" not in machine.greeting()


def test_capability_after_starttls_has_auth_and_no_starttls() -> None:
    machine = starttls_listener()
    assert feed(machine, b"a STARTTLS\r\n") == [
        StartTlsNow(b"a OK Begin TLS negotiation now.\r\n"),
    ]
    machine.tls_established()
    assert feed(machine, b"b CAPABILITY\r\n") == [
        Send(b"* CAPABILITY " + TLS_CAPS + b"\r\n"),
        Send(b"b OK Capability completed.\r\n"),
    ]


def test_filter_capabilities() -> None:
    assert filter_capabilities(UPSTREAM_CAPS) == ["IMAP4rev1", "IDLE", "COMPRESS=DEFLATE"]


# -- simple commands -------------------------------------------------------------------


def test_noop_and_id() -> None:
    machine = implicit_listener()
    assert sent(feed(machine, b'a NOOP\r\nb ID ("name" "mutt")\r\n')) == (
        b"a OK NOOP completed.\r\n* ID NIL\r\nb OK ID completed.\r\n"
    )
    assert machine.client_id == (("name", "mutt"),)


def test_logout() -> None:
    machine = starttls_listener()
    assert feed(machine, b"a LOGOUT\r\nb NOOP\r\n") == [
        Send(b"* BYE Logging out.\r\n"),
        Send(b"a OK Logout completed.\r\n"),
        Close("logout"),
    ]
    assert machine.phase is Phase.LOGOUT
    assert feed(machine, b"c NOOP\r\n") == []


def test_unknown_command_is_bad() -> None:
    assert feed(implicit_listener(), b"a SELECT INBOX\r\n") == [
        Send(b"a BAD Command unknown or not allowed before authentication.\r\n")
    ]


def test_invalid_tag_gets_untagged_bad() -> None:
    assert feed(implicit_listener(), b"+x NOOP\r\n") == [Send(b"* BAD Invalid command syntax.\r\n")]


def test_parse_error_is_tagged_bad() -> None:
    assert feed(implicit_listener(), b"a LOGIN alice\r\n") == [
        Send(b"a BAD Invalid arguments: expected ' '.\r\n")
    ]


def test_sync_literal_gets_continuation() -> None:
    machine = implicit_listener()
    assert feed(machine, b'a ID ("name" {4}\r\n') == [Send(b"+ Ready for literal data\r\n")]
    assert sent(feed(machine, b"mutt)\r\n")) == b"* ID NIL\r\na OK ID completed.\r\n"


# -- before TLS: no credentials ----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"a LOGIN alice secret\r\n",
        b"a login alice\r\n",
        b'a LOGIN "unterminated\r\n',
        b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n",
        b"a AUTHENTICATE PLAIN " + plain(b"alice", b"secret") + b"\r\n",
        b"a AUTHENTICATE PLAIN\r\n",
        b"a authenticate PLAIN !!!not-base64\r\n",
        b"a AUTHENTICATE FOO\r\n",
    ],
)
def test_login_before_tls_is_privacy_required(data: bytes) -> None:
    machine = starttls_listener()
    assert feed(machine, data) == [Send(b"a" + PRIVACY)]
    assert machine.phase is Phase.NOT_AUTHENTICATED
    assert machine.bad_commands == 0


def test_credentials_before_tls_are_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse_command(*args: object) -> NoReturn:
        raise AssertionError("the grammar was applied to credentials sent in clear")

    monkeypatch.setattr(commands, "parse_command", parse_command)
    machine = starttls_listener()
    assert feed(machine, b'a LOGIN alice "secret"\r\nb AUTHENTICATE PLAIN AGFsaWNl\r\n') == [
        Send(b"a" + PRIVACY),
        Send(b"b" + PRIVACY),
    ]


def test_login_literal_before_tls_is_refused_not_invited() -> None:
    # "+" would invite the client to send its password in clear.
    machine = starttls_listener()
    assert feed(machine, b"a LOGIN {5}\r\n") == [Send(b"a" + PRIVACY)]
    assert feed(machine, b"b NOOP\r\n") == [Send(b"b OK NOOP completed.\r\n")]


def test_password_literal_before_tls_is_refused_not_invited() -> None:
    machine = starttls_listener()
    assert feed(machine, b"a LOGIN alice {6}\r\n") == [Send(b"a" + PRIVACY)]


def test_no_login_before_tls_even_without_starttls() -> None:
    machine = PreAuth(PreAuthSettings(tls=False, starttls=False))
    assert b"STARTTLS" not in machine.greeting()
    assert b"LOGINDISABLED" in machine.greeting()
    assert feed(machine, b"a LOGIN alice secret\r\nb STARTTLS\r\n") == [
        Send(b"a" + PRIVACY),
        Send(b"b BAD STARTTLS is not offered here.\r\n"),
    ]


# -- STARTTLS ---------------------------------------------------------------------------------


def test_starttls_injection_is_never_answered() -> None:
    # CVE-2011-0411: the commands pipelined after STARTTLS in clear.
    machine = starttls_listener()
    assert feed(machine, b"a STARTTLS\r\nb CAPABILITY\r\n") == [
        StartTlsNow(b"a OK Begin TLS negotiation now.\r\n"),
    ]
    assert machine.discarded_after_starttls == len(b"b CAPABILITY\r\n")
    machine.tls_established()
    assert feed(machine) == []
    assert feed(machine, b"c NOOP\r\n") == [Send(b"c OK NOOP completed.\r\n")]


def test_starttls_injection_of_a_half_line() -> None:
    # A fragment in clear must not become the start of the first command in TLS.
    machine = starttls_listener()
    assert feed(machine, b"a STARTTLS\r\nb LOG") == [
        StartTlsNow(b"a OK Begin TLS negotiation now.\r\n")
    ]
    machine.tls_established()
    assert feed(machine, b"c NOOP\r\n") == [Send(b"c OK NOOP completed.\r\n")]


def test_data_during_starttls_phase_is_discarded() -> None:
    machine = starttls_listener()
    feed(machine, b"a STARTTLS\r\n")
    assert machine.phase is Phase.STARTTLS
    assert feed(machine, b"b LOGIN alice secret\r\n") == []
    assert machine.discarded_after_starttls == len(b"b LOGIN alice secret\r\n")
    machine.tls_established()
    assert feed(machine, b"c CAPABILITY\r\n") == [
        Send(b"* CAPABILITY " + TLS_CAPS + b"\r\n"),
        Send(b"c OK Capability completed.\r\n"),
    ]


def test_starttls_ok_is_written_by_the_shell_at_the_switch() -> None:
    """The OK is not a Send of its own: responses queued before STARTTLS go out
    first, and the OK only with StartTlsNow, when the shell puts TLS on the
    transport (it may first wait for a handshake turn; a client must wait for
    the OK, so whatever arrives before it was injected)."""
    machine = starttls_listener()
    actions = feed(machine, b"a NOOP\r\nb STARTTLS\r\nc NOOP\r\n")
    assert actions == [
        Send(b"a OK NOOP completed.\r\n"),
        StartTlsNow(b"b OK Begin TLS negotiation now.\r\n"),
    ]
    assert machine.discarded_after_starttls == len(b"c NOOP\r\n")


def test_starttls_inside_tls_is_bad() -> None:
    machine = starttls_listener()
    feed(machine, b"a STARTTLS\r\n")
    machine.tls_established()
    assert feed(machine, b"b STARTTLS\r\n") == [Send(b"b BAD TLS is already active.\r\n")]


def test_starttls_on_implicit_listener_is_bad() -> None:
    assert feed(implicit_listener(), b"a STARTTLS\r\n") == [
        Send(b"a BAD TLS is already active.\r\n")
    ]


def test_tls_established_out_of_phase_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        starttls_listener().tls_established()


# -- LOGIN and AUTHENTICATE inside TLS ------------------------------------------------------


def test_login_success_relays_pipelined_bytes() -> None:
    machine = implicit_listener()
    request = login_to_auth(machine, b"a LOGIN alice hunter2\r\nb SELECT INBOX\r\nc NOOP")
    assert request == AuthRequest(b"a", Credentials("LOGIN", b"alice", Secret(b"hunter2")))
    assert "hunter2" not in repr(request)
    assert feed(machine, b"\r\n") == []
    machine.auth_finished(AuthOutcome.OK, UPSTREAM_CAPS)
    assert feed(machine) == [
        Send(b"a OK [CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE] Logged in.\r\n"),
        Relay(b"b SELECT INBOX\r\nc NOOP\r\n"),
    ]
    assert machine.phase is Phase.AUTHENTICATED


def test_login_success_without_capabilities() -> None:
    machine = implicit_listener()
    login_to_auth(machine, b"a LOGIN alice secret\r\n")
    machine.auth_finished(AuthOutcome.OK)
    assert feed(machine) == [Send(b"a OK Logged in.\r\n"), Relay(b"")]


def test_login_with_literals() -> None:
    machine = implicit_listener()
    assert feed(machine, b"a LOGIN {5}\r\n") == [Send(b"+ Ready for literal data\r\n")]
    assert feed(machine, b"alice {8}\r\n") == [Send(b"+ Ready for literal data\r\n")]
    request = login_to_auth(machine, b"se cret\n\r\n")
    assert request.credentials.secret.reveal() == b"se cret\n"


def test_authentication_failure_is_uniform() -> None:
    machine = implicit_listener()
    login_to_auth(machine, b"a LOGIN alice wrong\r\n")
    machine.auth_finished(AuthOutcome.FAILED)
    assert feed(machine) == [Send(b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")]
    assert machine.phase is Phase.NOT_AUTHENTICATED
    assert feed(machine, b"b NOOP\r\n") == [Send(b"b OK NOOP completed.\r\n")]


def test_pipelined_commands_after_failed_login_are_answered() -> None:
    machine = implicit_listener()
    login_to_auth(machine, b"a LOGIN alice wrong\r\nb NOOP\r\n")
    machine.auth_finished(AuthOutcome.FAILED)
    assert sent(feed(machine)) == b"a" + FAILED + b"b OK NOOP completed.\r\n"


def test_upstream_unavailable() -> None:
    machine = implicit_listener()
    login_to_auth(machine, b"a LOGIN alice secret\r\n")
    machine.auth_finished(AuthOutcome.UNAVAILABLE)
    assert feed(machine) == [
        Send(b"a NO [UNAVAILABLE] Service temporarily unavailable, try later.\r\n")
    ]
    assert machine.auth_failures == 0


def test_auth_finished_out_of_phase_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        implicit_listener().auth_finished(AuthOutcome.OK)


def test_authenticate_plain_with_initial_response() -> None:
    machine = implicit_listener()
    request = login_to_auth(
        machine, b"a AUTHENTICATE PLAIN " + plain(b"alice", b"secret", b"admin") + b"\r\n"
    )
    assert request == AuthRequest(b"a", Credentials("PLAIN", b"alice", Secret(b"secret"), b"admin"))


def test_authenticate_plain_continuation() -> None:
    machine = implicit_listener()
    assert feed(machine, b"a AUTHENTICATE PLAIN\r\n") == [Send(b"+ \r\n")]
    assert machine.phase is Phase.SASL
    request = login_to_auth(machine, plain(b"alice", b"secret") + b"\r\n")
    assert request == AuthRequest(b"a", Credentials("PLAIN", b"alice", Secret(b"secret")))
    machine.auth_finished(AuthOutcome.OK, ["IMAP4rev1"])
    assert feed(machine) == [Send(b"a OK [CAPABILITY IMAP4rev1] Logged in.\r\n"), Relay(b"")]


def test_authenticate_response_line_is_not_a_command() -> None:
    # In the SASL exchange a line that looks like a command is the response.
    machine = implicit_listener()
    feed(machine, b"a AUTHENTICATE PLAIN\r\n")
    assert feed(machine, b"b LOGOUT\r\n") == [
        Send(b"a BAD Invalid base64 in the SASL response.\r\n")
    ]
    assert machine.phase is Phase.NOT_AUTHENTICATED


def test_authenticate_cancel() -> None:
    machine = implicit_listener()
    assert feed(machine, b"a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n") == [
        Send(b"+ \r\n"),
        Send(b"a BAD Authentication cancelled.\r\n"),
        Send(b"b OK NOOP completed.\r\n"),
    ]
    assert machine.bad_commands == 0


@pytest.mark.parametrize(
    "response",
    [b"", b"=", base64.b64encode(b"alice\0secret"), base64.b64encode(b"\0a\0b\0c")],
)
def test_authenticate_malformed_plain(response: bytes) -> None:
    machine = implicit_listener()
    feed(machine, b"a AUTHENTICATE PLAIN\r\n")
    assert feed(machine, response + b"\r\n") == [Send(b"a BAD Malformed SASL PLAIN response.\r\n")]


def test_authenticate_invalid_base64_initial_response() -> None:
    assert feed(implicit_listener(), b"a AUTHENTICATE PLAIN QUJD!\r\n") == [
        Send(b"a BAD Invalid arguments: unexpected data after the command.\r\n")
    ]


def test_authenticate_unsupported_mechanism() -> None:
    assert feed(implicit_listener(), b"a AUTHENTICATE CRAM-MD5\r\n") == [
        Send(b"a NO Unsupported authentication mechanism.\r\n")
    ]


def test_overlong_sasl_response_fails_the_authenticate() -> None:
    # The client waits for the AUTHENTICATE's tagged result; the next command
    # must be read as a command, not as a SASL response.
    machine = implicit_listener(frame_limits=FrameLimits(max_line=64))
    feed(machine, b"a AUTHENTICATE PLAIN\r\n")
    assert feed(machine, b"b " + b"A" * 100 + b" {5+}\r\nc NOOP\r\n") == [
        Send(b"a BAD [TOOBIG] Command line too long.\r\n"),
        Send(b"c OK NOOP completed.\r\n"),
    ]


# -- limits -----------------------------------------------------------------------------------


def test_line_too_long_then_next_command_works() -> None:
    machine = implicit_listener(frame_limits=FrameLimits(max_line=64))
    assert feed(machine, b"a LOGIN " + b"x" * 100 + b"\r\nb NOOP\r\n") == [
        Send(b"a BAD [TOOBIG] Command line too long.\r\n"),
        Send(b"b OK NOOP completed.\r\n"),
    ]


def test_literal_bomb_is_refused_at_once() -> None:
    machine = implicit_listener()
    assert feed(machine, b"a LOGIN {99999999999}\r\n") == [
        Send(b"a BAD [TOOBIG] Literal too large.\r\n")
    ]
    assert machine.framer.buffered == 0
    assert feed(machine, b"b NOOP\r\n") == [Send(b"b OK NOOP completed.\r\n")]


def test_non_sync_literal_bomb_ends_the_connection() -> None:
    machine = implicit_listener()
    assert feed(machine, b"a LOGIN {99999999999+}\r\n" + b"x" * 1000) == [
        Send(b"a BAD [TOOBIG] Literal too large.\r\n"),
        Send(b"* BYE Protocol stream out of sync.\r\n"),
        Close("literal too large"),
    ]
    assert machine.phase is Phase.LOGOUT


def test_max_auth_failures() -> None:
    machine = implicit_listener(max_auth_failures=2)
    login_to_auth(machine, b"a LOGIN alice wrong1\r\n")
    machine.auth_finished(AuthOutcome.FAILED)
    assert feed(machine) == [Send(b"a" + FAILED)]
    login_to_auth(machine, b"b LOGIN alice wrong2\r\nc NOOP\r\n")
    machine.auth_finished(AuthOutcome.FAILED)
    assert feed(machine) == [
        Send(b"b" + FAILED),
        Send(b"* BYE Too many authentication failures.\r\n"),
        Close("auth failure limit"),
    ]
    assert machine.phase is Phase.LOGOUT


def test_max_bad_commands() -> None:
    machine = implicit_listener()
    assert feed(machine, b"a FOO\r\nb BAR\r\nc BAZ\r\nd NOOP\r\n") == [
        Send(b"a BAD Command unknown or not allowed before authentication.\r\n"),
        Send(b"b BAD Command unknown or not allowed before authentication.\r\n"),
        Send(b"c BAD Command unknown or not allowed before authentication.\r\n"),
        Send(b"* BYE Too many invalid commands.\r\n"),
        Close("bad command limit"),
    ]


def test_frame_errors_count_as_bad_commands() -> None:
    machine = implicit_listener(frame_limits=FrameLimits(max_line=16), max_bad_commands=2)
    long = b"a " + b"x" * 20 + b"\r\n"
    assert sent(feed(machine, long + long)) == (
        b"a BAD [TOOBIG] Command line too long.\r\n" * 2 + b"* BYE Too many invalid commands.\r\n"
    )


def test_max_commands() -> None:
    machine = implicit_listener(max_commands=3)
    assert sent(feed(machine, b"a NOOP\r\n" * 4)) == (
        b"a OK NOOP completed.\r\n" * 3 + b"* BYE Too many commands before authentication.\r\n"
    )
    assert machine.phase is Phase.LOGOUT


def test_refused_cleartext_literals_count_as_commands() -> None:
    machine = starttls_listener(max_commands=2)
    assert sent(feed(machine, b"a LOGIN {5}\r\nb LOGIN {5}\r\nc LOGIN {5}\r\n")) == (
        b"a" + PRIVACY + b"b" + PRIVACY + b"* BYE Too many commands before authentication.\r\n"
    )


def test_timeout() -> None:
    machine = implicit_listener()
    feed(machine, b"a NOO")
    machine.timed_out()
    assert feed(machine) == [
        Send(b"* BYE Autologout: too long without logging in.\r\n"),
        Close("pre-auth timeout"),
    ]


def test_timeout_after_login_does_nothing() -> None:
    machine = implicit_listener()
    login_to_auth(machine, b"a LOGIN alice secret\r\n")
    machine.auth_finished(AuthOutcome.OK)
    feed(machine)
    machine.timed_out()
    assert feed(machine) == []


# -- bearer tokens and EXTERNAL ----------------------------------------------------

BEARER_MECHS = ("PLAIN", "OAUTHBEARER", "XOAUTH2", "EXTERNAL")


def test_capabilities_list_every_configured_mechanism() -> None:
    machine = implicit_listener(mechanisms=BEARER_MECHS)
    assert machine.capabilities()[-4:] == [
        "AUTH=PLAIN",
        "AUTH=OAUTHBEARER",
        "AUTH=XOAUTH2",
        "AUTH=EXTERNAL",
    ]


@pytest.mark.parametrize("mechanism", [b"OAUTHBEARER", b"XOAUTH2"])
def test_bearer_payload_goes_to_the_chokepoint_whole(mechanism: bytes) -> None:
    machine = implicit_listener(mechanisms=BEARER_MECHS)
    payload = b"n,a=alice,\x01auth=Bearer abc.def.ghi\x01\x01"
    request = login_to_auth(
        machine, b"a AUTHENTICATE " + mechanism + b" " + base64.b64encode(payload) + b"\r\n"
    )
    assert request == AuthRequest(b"a", Credentials(mechanism.decode(), b"", Secret(payload)))


def test_bearer_failure_sends_the_error_challenge_then_no() -> None:
    """RFC 7628 §3.2.2: '+ <base64 error JSON>', the client answers 0x01, then NO."""
    machine = implicit_listener(mechanisms=BEARER_MECHS)
    assert feed(machine, b"a AUTHENTICATE OAUTHBEARER\r\n") == [Send(b"+ \r\n")]
    login_to_auth(machine, base64.b64encode(b"n,,\x01auth=Bearer x\x01\x01") + b"\r\n")
    error = b'{"status":"invalid_token"}'
    machine.auth_finished(AuthOutcome.FAILED, challenge=error)
    assert feed(machine) == [Send(b"+ " + base64.b64encode(error) + b"\r\n")]
    assert machine.phase is Phase.SASL_ERROR
    # The dummy response is read as a SASL line, never as a command.
    assert sent(feed(machine, b"AQ==\r\n")) == b"a" + FAILED
    assert machine.phase.value == Phase.NOT_AUTHENTICATED.value  # (mypy narrowed it above)
    assert machine.auth_failures == 1
    assert sent(feed(machine, b"b NOOP\r\n")) == b"b OK NOOP completed.\r\n"


def test_error_challenge_answered_with_a_command_line_is_still_no() -> None:
    machine = implicit_listener(mechanisms=BEARER_MECHS)
    login_to_auth(machine, b"a AUTHENTICATE XOAUTH2 " + base64.b64encode(b"user=a") + b"\r\n")
    machine.auth_finished(AuthOutcome.FAILED, challenge=b"{}")
    feed(machine)
    # A client that does not know the dance sends its next command: it is the
    # SASL response of the failed exchange, not executed.
    assert sent(feed(machine, b"b LOGOUT\r\n")) == b"a" + FAILED
    assert machine.phase is Phase.NOT_AUTHENTICATED


def test_unavailable_sends_no_challenge() -> None:
    machine = implicit_listener(mechanisms=BEARER_MECHS)
    login_to_auth(machine, b"a AUTHENTICATE XOAUTH2 " + base64.b64encode(b"user=a") + b"\r\n")
    machine.auth_finished(AuthOutcome.UNAVAILABLE, challenge=b"{}")
    assert sent(feed(machine)).startswith(b"a NO [UNAVAILABLE]")


@pytest.mark.parametrize(
    ("response", "authzid"), [(b"=", b""), (base64.b64encode(b"alice"), b"alice")]
)
def test_external_carries_the_requested_identity(response: bytes, authzid: bytes) -> None:
    machine = implicit_listener(mechanisms=BEARER_MECHS)
    request = login_to_auth(machine, b"a AUTHENTICATE EXTERNAL " + response + b"\r\n")
    assert request == AuthRequest(b"a", Credentials("EXTERNAL", authzid, Secret(b""), authzid))


def test_mechanism_not_configured_is_refused() -> None:
    machine = implicit_listener()
    assert sent(feed(machine, b"a AUTHENTICATE EXTERNAL =\r\n")) == (
        b"a NO Unsupported authentication mechanism.\r\n"
    )


def test_policy_alert_replaces_the_uniform_failure() -> None:
    machine = implicit_listener()
    login_to_auth(machine, b"a LOGIN carol secret\r\n")
    machine.auth_finished(AuthOutcome.FAILED, alert="IMAP is off] for students\r\n* OK x")
    # Printable, no "]" (it would end the response code), no line breaks.
    assert sent(feed(machine)) == b"a NO [ALERT] IMAP is off for students* OK x\r\n"
    assert machine.auth_failures == 1

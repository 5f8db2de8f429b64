"""Notifications: settings checks, the notice schema, the mails, the rate limit,
signatures, failure reporting and the bound on pending notices.

The webhook goes to an `httpx.MockTransport`; the only sockets here are a closed
loopback port standing in for a dead SMTP relay.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import pytest

from imapguard.config.notify import NotifyConfig
from imapguard.errors import ConfigError
from imapguard.notify import (
    Channel,
    MemoryRateLimit,
    Notice,
    NoticeKind,
    Notifier,
    NotifyStatus,
    build_messages,
    owner_address,
    sign,
    webhook_request,
)
from imapguard.secret import Secret

HOOK = "https://hooks.example.org/services/T0KEN-in-the-path"
SECRET = Secret("webhook-secret-0123456789")
T0 = 1_714_564_800.0  # 2024-05-01 12:00:00 UTC
SECRETS: list[Path] = []  # the directory secret_file() writes to (set per module)


@pytest.fixture(scope="module", autouse=True)
def _secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    SECRETS[:] = [tmp_path_factory.mktemp("secrets")]


def secret_file(secret: Secret) -> str:
    """A private file holding `secret`, as `*_file` keys name them."""
    path = SECRETS[0] / f"secret-{len(list(SECRETS[0].iterdir()))}"
    path.write_bytes(secret.reveal())
    path.chmod(0o600)
    return str(path)


def notice(
    kind: NoticeKind = NoticeKind.COMPROMISE_SIGNAL, user: str = "alice", **kw: object
) -> Notice:
    fields: dict[str, object] = {"source": "203.0.113.9", "time": T0}
    fields.update(kw)
    return Notice(kind, user, **fields)  # type: ignore[arg-type]


def mail_settings(**kw: object) -> NotifyConfig:
    fields: dict[str, object] = {
        "smtp_host": "mail.example.org",
        "mail_from": "imapguard@example.org",
        "owner_address": "{user}@example.org",
        "admin_addresses": ("root@example.org", "security@example.org"),
        "portal_url": "https://mail.example.org/portal",
    }
    fields.update(kw)
    return NotifyConfig.checked(fields)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Hook:
    """A MockTransport that records requests and answers `status`."""

    def __init__(self, status: int = 204, fail: Exception | None = None) -> None:
        self.status = status
        self.fail = fail
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail is not None:
            raise self.fail
        return httpx.Response(self.status)

    def bodies(self) -> list[dict[str, object]]:
        return [json.loads(r.content) for r in self.requests]


def webhook_notifier(
    hook: Hook,
    *,
    clock: Clock | None = None,
    should_send: Callable[[str, str, float], Awaitable[bool]] | None = None,
    **kw: object,
) -> Notifier:
    settings = NotifyConfig(webhook_url=HOOK, webhook_secret_file=secret_file(SECRET), timeout=2.0)
    return Notifier(
        settings,
        should_send=should_send or MemoryRateLimit(settings.min_interval),
        clock=clock or Clock(),
        transport=hook.transport,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def dead_port() -> int:
    """A loopback port nobody listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------
# Settings


def smtp(**kw: object) -> dict[str, object]:
    return {"smtp_host": "mail.example.org", "mail_from": "imapguard@example.org", **kw}


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({}, "notify.webhook_url"),
        ({"webhook_url": "http://hooks.example.org/x"}, "notify.webhook_url"),
        ({"webhook_url": "ftp://hooks.example.org/x"}, "notify.webhook_url"),
        ({"webhook_url": "https://user:pw@hooks.example.org/x"}, "notify.webhook_url"),
        ({"webhook_url": HOOK, "timeout": 0}, "notify.timeout"),
        (smtp(smtp_tls="none"), "notify.smtp_tls"),
        (
            smtp(smtp_host="127.0.0.1", smtp_tls="none", smtp_username="u", smtp_password_file="p"),
            "notify.smtp_tls",
        ),
        (smtp(smtp_tls="ssl"), "notify.smtp_tls"),
        (smtp(smtp_username="u"), "notify.smtp_username"),
        (smtp(mail_from="a b@example.org"), "notify.mail_from"),
        (smtp(admin_addresses=("root@example.org", "x\r\nBcc: y@z")), "notify.admin_addresses[1]"),
        (smtp(owner_address="{user}@{domain}"), "notify.owner_address"),
        (smtp(owner_address="alice@example.org"), "notify.owner_address"),
        (smtp(owner_address=None), "notify.admin_addresses"),
        (smtp(portal_url="http://mail.example.org/"), "notify.portal_url"),
    ],
)
def test_insecure_or_broken_settings_are_refused_with_their_key(
    kw: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        NotifyConfig.checked(kw)
    assert key in [k for k, _ in caught.value.problems]


def test_good_settings_and_defaults() -> None:
    NotifyConfig.checked(webhook_url="http://127.0.0.1:8080/hook")  # loopback may be http
    NotifyConfig.checked(webhook_url="http://[::1]:8080/hook")
    NotifyConfig.checked(smtp_host="127.0.0.1", smtp_tls="none", mail_from="a@example.org")
    password = secret_file(Secret("hunter2-pw"))
    s = mail_settings(owner_address="{user}", smtp_password_file=password, smtp_username="u")
    assert s.min_interval == 3600
    assert s.effective_smtp_port == 587
    assert mail_settings(smtp_tls="implicit").effective_smtp_port == 465
    notifier = Notifier(s, should_send=MemoryRateLimit(3600))
    assert "hunter2" not in repr(vars(notifier))


def test_a_short_webhook_secret_is_refused_with_its_key() -> None:
    settings = NotifyConfig(webhook_url=HOOK, webhook_secret_file=secret_file(Secret("short")))
    with pytest.raises(ConfigError) as caught:
        Notifier(settings, should_send=MemoryRateLimit(3600))
    assert [k for k, _ in caught.value.problems] == ["notify.webhook_secret_file"]
    assert "at least 16 bytes" in str(caught.value)


# ---------------------------------------------------------------------------
# The notice and its webhook document


def test_notice_json_has_a_stable_versioned_schema() -> None:
    n = notice(NoticeKind.NEW_DEVICE, client_id="Thunderbird 115", device_id="d-1")
    assert json.loads(n.to_json()) == {
        "version": 1,
        "kind": "new_device",
        "user": "alice",
        "src": "203.0.113.9",
        "client_id": "Thunderbird 115",
        "device_id": "d-1",
        "ts": T0,
        "time": "2024-05-01T12:00:00Z",
        "summary": "New device awaits approval",
    }
    bare = json.loads(notice(NoticeKind.LOCKOUT, summary="10 failures").to_json())
    assert bare["client_id"] is None
    assert bare["device_id"] is None
    assert bare["summary"] == "10 failures"


def test_notice_refuses_secrets() -> None:
    with pytest.raises(TypeError):
        notice(client_id=Secret("x"))
    with pytest.raises(ValueError, match="user"):
        notice(user="")


def test_webhook_signature_verifies_over_the_exact_body() -> None:
    body, headers = webhook_request(notice(), SECRET)
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Imapguard-Event"] == "compromise_signal"
    # What a receiver does: recompute over the raw body, compare in constant time.
    expected = "sha256=" + hmac.new(SECRET.reveal(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Imapguard-Signature"], expected)
    forged = body.replace(b"203.0.113.9", b"198.51.100.1")
    assert not hmac.compare_digest(headers["X-Imapguard-Signature"], sign(SECRET, forged))
    unsigned = webhook_request(notice(), None)[1]
    assert "X-Imapguard-Signature" not in unsigned


# ---------------------------------------------------------------------------
# The mails


def test_mails_say_what_from_where_when_and_what_to_do() -> None:
    n = notice(NoticeKind.NEW_DEVICE, client_id="K-9 Mail", device_id="d-7f3a")
    owner, admins = build_messages(n, mail_settings())
    assert owner.channel is Channel.OWNER_MAIL
    assert owner.recipients == ("alice@example.org",)
    assert owner.message is not None
    assert owner.message["To"] == "alice@example.org"
    assert owner.message["From"] == "imapguard <imapguard@example.org>"
    assert owner.message["Auto-Submitted"] == "auto-generated"
    assert owner.message.get_content_type() == "text/plain"
    text = owner.message.get_content()
    for fact in ("alice", "203.0.113.9", "K-9 Mail", "2024-05-01 12:00:00 UTC"):
        assert fact in text
    assert "If this was you: approve the device in the portal at" in text
    assert "https://mail.example.org/portal" in text
    assert "change your password" in text.lower()
    assert "tell your administrator" in text
    assert admins.recipients == ("root@example.org", "security@example.org")
    assert admins.message is not None
    assert "imapguard device approve alice d-7f3a" in admins.message.get_content()


def test_the_new_device_mail_links_to_the_devices_row_in_the_portal() -> None:
    n = notice(NoticeKind.NEW_DEVICE, device_id="d-7f3a")
    owner, _ = build_messages(n, mail_settings(portal_url="https://mail.example.org/portal/"))
    assert owner.message is not None
    lines = owner.message.get_content().splitlines()
    assert "    https://mail.example.org/portal/devices#device-d-7f3a" in lines
    # A device id is text from the store, never a way to bend the link.
    n = notice(NoticeKind.NEW_DEVICE, device_id='x y#?/"https://evil.example')
    owner, _ = build_messages(n, mail_settings())
    assert owner.message is not None
    (link,) = [line for line in owner.message.get_content().splitlines() if "#device-" in line]
    assert link.strip().startswith("https://mail.example.org/portal/devices#device-x%20y%23")
    assert " " not in link.strip()
    # Without a portal URL there is no link.
    owner, _ = build_messages(n, mail_settings(portal_url=None))
    assert owner.message is not None
    assert "#device-" not in owner.message.get_content()


@pytest.mark.parametrize("kind", list(NoticeKind))
def test_every_kind_has_owner_and_admin_text(kind: NoticeKind) -> None:
    for mail in build_messages(notice(kind), mail_settings()):
        assert mail.message is not None
        text = " ".join(mail.message.get_content().split())
        assert "What to do:" in text
        assert "2024-05-01 12:00:00 UTC" in text
        assert "never asks for one" in text


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        (NoticeKind.TOTP_ADDED, "authenticator app was set up"),
        (NoticeKind.TOTP_REPLACED, "authenticator app of the mail account"),
        (NoticeKind.TOTP_REMOVED, "was removed in the portal"),
        (NoticeKind.PASSKEY_ADDED, "A passkey was added"),
        (NoticeKind.PASSKEY_REMOVED, "A passkey was removed"),
        (NoticeKind.RECOVERY_CODES, "new set of recovery codes"),
        (NoticeKind.APP_PASSWORD_CREATED, "A new app password was created"),
    ],
)
def test_an_account_change_tells_the_owner_what_when_where_and_what_to_do(
    kind: NoticeKind, named: str
) -> None:
    """A change in the portal goes to the owner only (an admin mail per new app
    password would bury the ones that matter), and says what changed, from which
    address and when, that the other portal sessions ended, and what to do if it
    was not them."""
    (owner,) = build_messages(notice(kind), mail_settings())
    assert owner.channel is Channel.OWNER_MAIL
    assert owner.message is not None
    text = " ".join(owner.message.get_content().split())
    assert named in text
    assert "From: 203.0.113.9" in text
    assert "When: 2024-05-01 12:00:00 UTC" in text
    assert "Every other portal session of the account was signed out." in text
    assert "If this was not you" in text
    assert "https://mail.example.org/portal" in text


@pytest.mark.parametrize(
    "user",
    [
        "alice\r\nBcc: victim@evil.example",
        "alice\nSubject: pwned",
        "alice\rX-Injected: 1",
        "alice@evil.example>, <victim@evil.example",
        "alice\u2028Bcc: victim@evil.example",
    ],
)
def test_header_injection_in_the_account_name(user: str) -> None:
    owner, admins = build_messages(notice(NoticeKind.LOCKOUT, user), mail_settings())
    # The account name does not make an address: the owner is not mailed...
    assert owner.message is None
    assert owner.problem is not None
    assert owner_address(user, "{user}@example.org") is None
    assert owner_address(user, "{user}") is None
    # ... and in the admins' mail it is inert text: no new header, no recipient.
    assert admins.message is not None
    raw = admins.message.as_bytes()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert sorted(parsed.keys()) == sorted(admins.message.keys())
    for name in ("Bcc", "X-Injected"):
        assert parsed[name] is None
    assert parsed["Subject"].startswith("[imapguard] lockout: alice")
    assert "\r" not in parsed["Subject"]
    assert "\n" not in parsed["Subject"]
    assert parsed["To"] == "root@example.org, security@example.org"
    assert admins.recipients == ("root@example.org", "security@example.org")
    # The webhook document holds it escaped and cleaned.
    assert "\n" not in json.loads(notice(user=user).to_json())["user"]


def test_admin_commands_quote_the_account_name_for_the_shell() -> None:
    n = notice(NoticeKind.LOCKOUT, "bob$(touch /tmp/x);#")
    (admins,) = build_messages(n, mail_settings(owner_address=None))
    assert admins.message is not None
    assert "imapguard user unlock 'bob$(touch /tmp/x);#'" in admins.message.get_content()


def test_owner_address_template() -> None:
    assert owner_address("alice", "{user}@example.org") == "alice@example.org"
    assert owner_address("alice@example.org", "{user}") == "alice@example.org"
    assert owner_address("alice", "{user}") is None  # not an address
    assert owner_address("alice@x.org", "{user}@example.org") is None
    assert owner_address("alice", None) is None


# ---------------------------------------------------------------------------
# The rate limit


@pytest.mark.asyncio
async def test_memory_rate_limit_once_per_user_kind_and_interval() -> None:
    limit = MemoryRateLimit(3600)
    assert await limit("alice", "lockout", T0)
    assert not await limit("alice", "lockout", T0 + 3599)
    assert await limit("alice", "new_device", T0)
    assert await limit("bob", "lockout", T0)
    assert await limit("alice", "lockout", T0 + 3600)
    assert not await limit("alice", "lockout", T0 + 1)  # the clock went back


@pytest.mark.asyncio
async def test_memory_rate_limit_is_bounded() -> None:
    limit = MemoryRateLimit(3600, max_entries=100)
    for i in range(1000):
        assert await limit(f"user{i}", "lockout", T0 + i)
    assert len(limit._last) <= 100


@pytest.mark.asyncio
async def test_same_user_and_kind_within_the_interval_is_sent_once() -> None:
    hook, clock = Hook(), Clock()
    async with webhook_notifier(hook, clock=clock) as notifier:
        first = await notifier.notify(notice())
        clock.now += 60
        second = await notifier.notify(notice(user="ALICE", source="198.51.100.7"))
        other_kind = await notifier.notify(notice(NoticeKind.LOCKOUT))
        other_user = await notifier.notify(notice(user="bob"))
        clock.now += 3600
        next_hour = await notifier.notify(notice())
    assert first.status is NotifyStatus.SENT
    assert second.status is NotifyStatus.RATE_LIMITED
    assert second.deliveries == ()
    assert other_kind.status is NotifyStatus.SENT
    assert other_user.status is NotifyStatus.SENT
    assert next_hour.status is NotifyStatus.SENT
    assert [(b["user"], b["kind"]) for b in hook.bodies()] == [
        ("alice", "compromise_signal"),
        ("alice", "lockout"),
        ("bob", "compromise_signal"),
        ("alice", "compromise_signal"),
    ]


@pytest.mark.asyncio
async def test_should_send_gets_lower_case_user_kind_and_clock() -> None:
    calls: list[tuple[str, str, float]] = []

    async def should_send(user: str, kind: str, now: float) -> bool:
        calls.append((user, kind, now))
        return False

    async with webhook_notifier(Hook(), should_send=should_send, clock=Clock(42.0)) as n:
        result = await n.notify(notice(user="Alice"))
    assert calls == [("alice", "compromise_signal", 42.0)]
    assert result.status is NotifyStatus.RATE_LIMITED
    assert result.ok


@pytest.mark.asyncio
async def test_a_failing_rate_check_sends_nothing_and_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def store_down(user: str, kind: str, now: float) -> bool:
        raise ConnectionError("redis is down")

    hook = Hook()
    async with webhook_notifier(hook, should_send=store_down) as notifier:
        result = await notifier.notify(notice())
    assert result.status is NotifyStatus.FAILED
    assert result.detail is not None
    assert "redis is down" in result.detail
    assert hook.requests == []
    assert "rate-limit check failed" in caplog.text


# ---------------------------------------------------------------------------
# Failures are reported, never raised


@pytest.mark.asyncio
async def test_dead_webhook_is_reported_without_its_secret_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = Hook(fail=httpx.ConnectError("[Errno 111] Connection refused"))
    with caplog.at_level(logging.INFO, logger="imapguard.notify"):
        async with webhook_notifier(hook) as notifier:
            result = await notifier.notify(notice())
    assert result.status is NotifyStatus.FAILED
    (delivery,) = result.deliveries
    assert delivery.channel is Channel.WEBHOOK
    assert not delivery.ok
    assert "Connection refused" in delivery.detail
    assert "https://hooks.example.org" in delivery.detail
    assert "T0KEN" not in delivery.detail
    assert "T0KEN" not in caplog.text
    assert "Connection refused" in caplog.text


@pytest.mark.asyncio
async def test_webhook_error_status_and_redirect_are_failures() -> None:
    for status, expected in ((500, "HTTP 500"), (302, "redirects are not followed")):
        async with webhook_notifier(Hook(status=status)) as notifier:
            result = await notifier.notify(notice())
        assert result.status is NotifyStatus.FAILED
        assert expected in result.deliveries[0].detail


@pytest.mark.asyncio
async def test_slow_webhook_times_out() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(204)

    settings = NotifyConfig(webhook_url=HOOK, timeout=0.2)
    async with Notifier(
        settings, should_send=MemoryRateLimit(3600), transport=httpx.MockTransport(hang)
    ) as notifier:
        started = time.monotonic()
        result = await notifier.notify(notice())
    assert time.monotonic() - started < 5
    assert result.deliveries[0].detail.endswith("timed out")


@pytest.mark.asyncio
async def test_dead_smtp_and_dead_webhook_are_reported_not_raised(
    dead_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    settings = NotifyConfig(
        webhook_url=HOOK,
        smtp_host="127.0.0.1",
        smtp_port=dead_port,
        smtp_tls="implicit",
        smtp_username="notify",
        smtp_password_file=secret_file(Secret("hunter2-smtp")),
        mail_from="imapguard@example.org",
        owner_address="{user}@example.org",
        admin_addresses=("root@example.org",),
        timeout=5.0,
    )
    hook = Hook(fail=httpx.ConnectTimeout("timed out"))
    async with Notifier(
        settings, should_send=MemoryRateLimit(3600), transport=hook.transport
    ) as notifier:
        result = await notifier.notify(notice())
    assert result.status is NotifyStatus.FAILED
    by_channel = {d.channel: d for d in result.deliveries}
    assert set(by_channel) == {Channel.WEBHOOK, Channel.OWNER_MAIL, Channel.ADMIN_MAIL}
    for channel in (Channel.OWNER_MAIL, Channel.ADMIN_MAIL):
        assert not by_channel[channel].ok
        assert f"127.0.0.1:{dead_port}" in by_channel[channel].detail
        assert "Connection refused" in by_channel[channel].detail
    assert "hunter2" not in repr(result)
    assert "hunter2" not in caplog.text
    assert "compromise_signal notice for alice failed" in caplog.text


@pytest.mark.asyncio
async def test_owner_unmailable_but_admins_told_is_partial(dead_port: int) -> None:
    hook = Hook()
    settings = NotifyConfig(
        webhook_url=HOOK,
        smtp_host="127.0.0.1",
        smtp_port=dead_port,
        smtp_tls="implicit",
        mail_from="imapguard@example.org",
        owner_address="{user}@example.org",
    )
    async with Notifier(
        settings, should_send=MemoryRateLimit(3600), transport=hook.transport
    ) as notifier:
        result = await notifier.notify(notice(user="not an address"))
    assert result.status is NotifyStatus.PARTIAL
    (owner,) = [d for d in result.deliveries if d.channel is Channel.OWNER_MAIL]
    assert owner.detail == "the account name does not make a plain mail address"


# ---------------------------------------------------------------------------
# Background sending and its bound


@pytest.mark.asyncio
async def test_submit_returns_at_once_and_sends_in_the_background() -> None:
    release = asyncio.Event()

    async def slow_store(user: str, kind: str, now: float) -> bool:
        await release.wait()
        return True

    hook = Hook()
    async with webhook_notifier(hook, should_send=slow_store) as notifier:
        assert notifier.submit(notice())
        assert notifier.pending == 1
        assert hook.requests == []  # nothing happened on the caller's time
        release.set()
        async with asyncio.timeout(5):
            await notifier.join()
    assert len(hook.requests) == 1


@pytest.mark.asyncio
async def test_pending_notices_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def slow_store(user: str, kind: str, now: float) -> bool:
        await release.wait()
        return True

    hook = Hook()
    async with webhook_notifier(hook, should_send=slow_store, max_pending=3) as notifier:
        accepted = [notifier.submit(notice(user=f"user{i}")) for i in range(10)]
        assert accepted == [True] * 3 + [False] * 7
        assert notifier.pending == 3
        assert notifier.dropped == 7
        assert caplog.text.count("queue full") == 1  # logged once, not per drop
        release.set()
        async with asyncio.timeout(5):
            await notifier.join()
        assert notifier.submit(notice(user="later"))
    assert "7 notice(s) dropped" in caplog.text
    assert sorted(str(b["user"]) for b in hook.bodies()) == ["later", "user0", "user1", "user2"]


@pytest.mark.asyncio
async def test_close_waits_briefly_then_cancels(caplog: pytest.LogCaptureFixture) -> None:
    async def stuck_store(user: str, kind: str, now: float) -> bool:
        await asyncio.sleep(3600)
        return True

    hook = Hook()
    notifier = webhook_notifier(hook, should_send=stuck_store, close_grace=0.1)
    started = time.monotonic()
    async with notifier:
        assert notifier.submit(notice())
    assert time.monotonic() - started < 2
    assert notifier.pending == 0
    assert "1 pending notification(s) cancelled" in caplog.text
    assert not notifier.submit(notice())  # closed: dropped, not raised


@pytest.mark.asyncio
async def test_submit_outside_the_context_is_a_programming_error() -> None:
    notifier = webhook_notifier(Hook())
    with pytest.raises(RuntimeError):
        notifier.submit(notice())
    await notifier.aclose()


@pytest.mark.asyncio
async def test_a_bug_in_one_notice_does_not_take_the_owner_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = Hook()
    async with webhook_notifier(hook) as notifier:

        async def broken(n: Notice) -> None:
            raise RuntimeError("bug")

        notifier.notify = broken  # type: ignore[assignment, method-assign]
        assert notifier.submit(notice())
        async with asyncio.timeout(5):
            await notifier.join()
    assert "notification for alice failed" in caplog.text


@pytest.mark.asyncio
async def test_cancelling_the_owner_still_ends_pending_notices() -> None:
    async def stuck_store(user: str, kind: str, now: float) -> bool:
        await asyncio.sleep(3600)
        return True

    notifier = webhook_notifier(Hook(), should_send=stuck_store, close_grace=0.1)
    entered = asyncio.Event()

    async def gateway() -> None:
        async with notifier:
            notifier.submit(notice())
            entered.set()
            await asyncio.sleep(3600)

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(gateway())
        await entered.wait()
        task.cancel()
    assert task.cancelled()
    assert notifier.pending == 0


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    settings = NotifyConfig(webhook_url=HOOK, webhook_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError) as caught:
        Notifier(settings, should_send=MemoryRateLimit(3600))
    assert [k for k, _ in caught.value.problems] == ["notify.webhook_ca_file"]


@pytest.mark.asyncio
async def test_all_notices_together_are_capped_per_hour() -> None:
    """Many accounts, one notice each: at most `max_per_hour` leave in any hour (A3)."""
    hook, clock = Hook(), Clock()
    settings = NotifyConfig(
        webhook_url=HOOK, webhook_secret_file=secret_file(SECRET), max_per_hour=3
    )
    async with Notifier(
        settings, should_send=MemoryRateLimit(3600), clock=clock, transport=hook.transport
    ) as n:
        results = [await n.notify(notice(user=f"user{i}")) for i in range(5)]
        assert [r.status for r in results] == [NotifyStatus.SENT] * 3 + [
            NotifyStatus.RATE_LIMITED
        ] * 2
        assert results[-1].detail == "max_per_hour reached"
        clock.now += 3601
        assert (await n.notify(notice(user="later"))).status is NotifyStatus.SENT
    assert len(hook.requests) == 4

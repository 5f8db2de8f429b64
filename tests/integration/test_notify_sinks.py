"""Notifications over real loopback connections: the webhook to an HTTP
server, mail to an aiosmtpd server with STARTTLS or implicit TLS verified
against a trustme CA, with AUTH. Also what must not happen: a downgrade to
plaintext, a send to a server with an untrusted certificate, a header injected
through the account name.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
import trustme

from imapguard.config.notify import NotifyConfig
from imapguard.notify import (
    Channel,
    MemoryRateLimit,
    Notice,
    NoticeKind,
    Notifier,
    NotifyStatus,
)
from imapguard.secret import Secret
from tests.sinks import SmtpSink, WebhookReceiver

SECRET = Secret("webhook-secret-0123456789")
SMTP_USER, SMTP_PASSWORD = "imapguard-notify", "correct horse battery staple"
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


def notice(kind: NoticeKind = NoticeKind.COMPROMISE_SIGNAL, user: str = "alice") -> Notice:
    return Notice(kind, user, source="203.0.113.9", time=time.time(), client_id="Thunderbird 115")


def mail_settings(sink: SmtpSink, **kw: object) -> NotifyConfig:
    fields: dict[str, object] = {
        "smtp_host": sink.host,
        "smtp_port": sink.port,
        "smtp_tls": sink.tls,
        "smtp_ca_file": sink.ca_file,
        "mail_from": "imapguard@example.org",
        "owner_address": "{user}@example.org",
        "admin_addresses": ("root@example.org",),
        "timeout": 10.0,
    }
    if sink.auth is not None:
        fields.update(
            smtp_username=sink.auth[0], smtp_password_file=secret_file(Secret(sink.auth[1]))
        )
    fields.update(kw)
    return NotifyConfig.checked(fields)


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def starttls_sink() -> Iterator[SmtpSink]:
    with SmtpSink(tls="starttls", auth=(SMTP_USER, SMTP_PASSWORD)) as sink:
        yield sink


def body_text(message: EmailMessage) -> str:
    content = message.get_content()
    assert isinstance(content, str)
    return " ".join(content.split())


@pytest.mark.asyncio
async def test_webhook_and_starttls_mail_with_auth_arrive(
    hook: WebhookReceiver, starttls_sink: SmtpSink
) -> None:
    settings = mail_settings(
        starttls_sink, webhook_url=hook.url, webhook_secret_file=secret_file(SECRET)
    )
    async with Notifier(settings, should_send=MemoryRateLimit(3600)) as notifier:
        result = await notifier.notify(notice(NoticeKind.NEW_DEVICE))
    assert result.status is NotifyStatus.SENT, result
    assert {d.channel for d in result.deliveries} == set(Channel)

    (request,) = hook.wait_for(1)
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-imapguard-event"] == "new_device"
    expected = "sha256=" + hmac.new(SECRET.reveal(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-imapguard-signature"], expected)
    document = request.json()
    assert document["version"] == 1
    assert document["kind"] == "new_device"
    assert document["user"] == "alice"
    assert document["src"] == "203.0.113.9"

    mails = starttls_sink.wait_for(2)
    by_rcpt = {m.rcpt_tos: m for m in mails}
    owner = by_rcpt[("alice@example.org",)]
    admins = by_rcpt[("root@example.org",)]
    for mail in mails:
        assert mail.tls
        assert mail.login == SMTP_USER
        assert mail.mail_from == "imapguard@example.org"
    assert owner.message["Subject"] == "[imapguard] New device for alice awaits your approval"
    text = body_text(owner.message)
    assert "203.0.113.9" in text
    assert "UTC" in text
    assert "approve the device in the portal" in text
    assert SMTP_PASSWORD not in owner.message.as_string()
    assert "imapguard device approve alice" in body_text(admins.message)


@pytest.mark.asyncio
async def test_implicit_tls_mail_with_auth_arrives() -> None:
    with SmtpSink(tls="implicit", auth=(SMTP_USER, SMTP_PASSWORD)) as sink:
        settings = mail_settings(sink, owner_address=None)
        async with Notifier(settings, should_send=MemoryRateLimit(3600)) as notifier:
            result = await notifier.notify(notice(NoticeKind.LOCKOUT))
        assert result.status is NotifyStatus.SENT, result
        (mail,) = sink.wait_for(1)
    assert mail.tls
    assert mail.login == SMTP_USER
    assert mail.message["Subject"] == "[imapguard] lockout: alice"


@pytest.mark.asyncio
async def test_plain_smtp_to_a_loopback_relay() -> None:
    with SmtpSink() as sink:
        settings = mail_settings(sink, smtp_tls="none")
        async with Notifier(settings, should_send=MemoryRateLimit(3600)) as notifier:
            result = await notifier.notify(notice())
        assert result.status is NotifyStatus.SENT, result
        mails = sink.wait_for(2)
    assert not any(m.tls for m in mails)


@pytest.mark.asyncio
async def test_submit_delivers_in_the_background(
    hook: WebhookReceiver, starttls_sink: SmtpSink
) -> None:
    settings = mail_settings(starttls_sink, webhook_url=hook.url, owner_address=None)
    async with Notifier(settings, should_send=MemoryRateLimit(3600)) as notifier:
        assert notifier.submit(notice(NoticeKind.LOCKOUT, "alice"))
        assert notifier.submit(notice(NoticeKind.LOCKOUT, "alice"))  # rate limited
        assert notifier.submit(notice(NoticeKind.LOCKOUT, "bob"))
        async with asyncio.timeout(10):
            requests = await hook.wait_for_async(2)
            mails = await starttls_sink.wait_for_async(2)
        await notifier.join()
    assert sorted(r.json()["user"] for r in requests) == ["alice", "bob"]
    assert sorted(str(m.message["Subject"]) for m in mails) == [
        "[imapguard] lockout: alice",
        "[imapguard] lockout: bob",
    ]
    assert len(hook.requests) == 2
    assert len(starttls_sink.messages) == 2


@pytest.mark.asyncio
async def test_untrusted_smtp_certificate_is_refused(
    starttls_sink: SmtpSink, tmp_path: str
) -> None:
    other_ca = trustme.CA()
    path = f"{tmp_path}/other-ca.pem"
    other_ca.cert_pem.write_to_path(path)
    settings = mail_settings(starttls_sink, smtp_ca_file=path)
    async with Notifier(settings, should_send=MemoryRateLimit(3600)) as notifier:
        result = await notifier.notify(notice())
    assert result.status is NotifyStatus.FAILED
    for delivery in result.deliveries:
        assert "CERTIFICATE_VERIFY_FAILED" in delivery.detail
    assert starttls_sink.messages == []
    assert starttls_sink.auth_failures == 0  # the password never left


@pytest.mark.asyncio
async def test_no_downgrade_when_starttls_is_not_offered() -> None:
    with SmtpSink(tls="none") as sink:
        settings = mail_settings(sink, smtp_tls="starttls", smtp_host="127.0.0.1")
        async with Notifier(settings, should_send=MemoryRateLimit(3600)) as notifier:
            result = await notifier.notify(notice())
        assert result.status is NotifyStatus.FAILED
        assert all("STARTTLS" in d.detail for d in result.deliveries), result
        assert sink.messages == []


@pytest.mark.asyncio
async def test_wrong_smtp_password_is_reported(starttls_sink: SmtpSink) -> None:
    settings = mail_settings(
        starttls_sink,
        smtp_password_file=secret_file(Secret("wrong password")),
        owner_address=None,
    )
    async with Notifier(settings, should_send=MemoryRateLimit(3600)) as notifier:
        result = await notifier.notify(notice())
    (delivery,) = result.deliveries
    assert not delivery.ok
    assert "authentication refused (535)" in delivery.detail
    assert "wrong password" not in delivery.detail
    assert starttls_sink.auth_failures >= 1  # smtplib tries PLAIN, then LOGIN
    assert starttls_sink.messages == []


@pytest.mark.asyncio
async def test_header_injection_through_the_account_name(starttls_sink: SmtpSink) -> None:
    settings = mail_settings(starttls_sink, owner_address="{user}")
    user = "alice@example.org\r\nBcc: victim@evil.example"
    async with Notifier(settings, should_send=MemoryRateLimit(3600)) as notifier:
        result = await notifier.notify(notice(NoticeKind.LOCKOUT, user))
    assert result.status is NotifyStatus.PARTIAL  # the owner could not be mailed
    (mail,) = starttls_sink.wait_for(1)
    assert mail.rcpt_tos == ("root@example.org",)
    assert mail.message["Bcc"] is None
    assert "\n" not in str(mail.message["Subject"])
    assert str(mail.message["Subject"]).startswith("[imapguard] lockout: alice@example.org??Bcc")


@pytest.mark.asyncio
async def test_slow_and_failing_webhooks_are_reported() -> None:
    with (
        WebhookReceiver(delay=5.0) as slow,
        WebhookReceiver(status=503) as failing,
    ):
        for receiver, expected in ((slow, "timed out"), (failing, "HTTP 503")):
            settings = NotifyConfig(webhook_url=receiver.url, timeout=0.5)
            started = time.monotonic()
            async with Notifier(settings, should_send=MemoryRateLimit(3600)) as notifier:
                result = await notifier.notify(notice())
            assert time.monotonic() - started < 3
            assert result.status is NotifyStatus.FAILED
            assert expected in result.deliveries[0].detail
            assert receiver.wait_for(1)


def test_sinks_serve_synchronous_clients() -> None:
    """The sinks run on their own threads: plain blocking clients work too."""
    with WebhookReceiver(status=200) as hook, SmtpSink(tls="starttls", auth=("u", "p")) as sink:
        response = httpx.post(hook.url, json={"ping": 1})
        assert response.status_code == 200
        (request,) = hook.wait_for(1)
        assert request.json() == {"ping": 1}

        context = ssl.create_default_context(cafile=sink.ca_file)
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.starttls(context=context)
            client.login("u", "p")
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
        (mail,) = sink.wait_for(1)
        assert mail.message["Subject"] == "hi"
        assert mail.login == "u"
        assert mail.tls


def test_sink_refuses_mail_without_auth_or_tls() -> None:
    with SmtpSink(tls="starttls", auth=("u", "p")) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.ehlo()
            code, _ = client.mail("a@example.org")
            assert code == 530  # STARTTLS first
            client.starttls(context=ssl.create_default_context(cafile=sink.ca_file))
            client.ehlo()
            code, _ = client.mail("a@example.org")
            assert code == 530  # then AUTH
        assert sink.messages == []

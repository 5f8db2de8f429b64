"""Device setup: the Apple profile and the Thunderbird document name the gateway
with implicit TLS (993, 465) and the account, the profile the new password; a
download is possible only from the page that showed the password, by its
session, within minutes, once per document, while the password exists."""

from __future__ import annotations

import plistlib
import re
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from imapguard.portal.device_setup import (
    SETUP_LIFETIME,
    ServerSettings,
    autoconfig,
    mobileconfig,
)
from imapguard.secret import Secret
from tests.unit.portal.support import Portal, csrf_of, portal
from tests.unit.portal.test_app_passwords import create, shown_password

SERVER = ServerSettings("mail.example.org", 993, "smtp.example.org", 465, "Example U")
_SEALED = re.compile(r'name="sealed" value="([^"]+)"')


def test_the_profile_names_993_with_ssl_the_user_and_the_password() -> None:
    password = Secret("abcd-efgh-ijkm-npqr-stuv-wxyz-2345")
    profile = plistlib.loads(mobileconfig(SERVER, "alice@example.org", "1f2e", "phone", password))
    assert profile["PayloadType"] == "Configuration"
    (mail,) = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAccountType"] == "EmailTypeIMAP"
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"]) == (
        "mail.example.org",
        993,
    )
    assert mail["IncomingMailServerUseSSL"] is True
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"]) == (
        "smtp.example.org",
        465,
    )
    assert mail["OutgoingMailServerUseSSL"] is True
    assert (
        mail["IncomingMailServerUsername"]
        == mail["OutgoingMailServerUsername"]
        == "alice@example.org"
    )
    assert mail["IncomingPassword"] == mail["OutgoingPassword"] == password.reveal().decode()
    assert mail["EmailAddress"] == "alice@example.org"
    assert profile["PayloadUUID"] != mail["PayloadUUID"]
    again = plistlib.loads(mobileconfig(SERVER, "alice@example.org", "1f2e", "phone", password))
    assert again["PayloadUUID"] != profile["PayloadUUID"]
    # One profile per app password: installing a second does not replace the first.
    assert profile["PayloadIdentifier"] == "org.example.mail.imapguard.app-password.1f2e"


def test_a_user_name_that_is_no_address_is_not_sent_as_one() -> None:
    profile = plistlib.loads(mobileconfig(SERVER, "alice", "1f2e", "phone", Secret("x")))
    assert "EmailAddress" not in profile["PayloadContent"][0]


def test_hostile_labels_and_names_stay_data_in_both_documents() -> None:
    label = "</string><key>IncomingMailServerHostName</key><string>evil.example"
    profile = plistlib.loads(mobileconfig(SERVER, "a&b<c>", "1f2e", label, Secret("x")))
    (mail,) = profile["PayloadContent"]
    assert mail["IncomingMailServerHostName"] == "mail.example.org"
    assert mail["IncomingMailServerUsername"] == "a&b<c>"
    root = ElementTree.fromstring(autoconfig(SERVER, "a&b<c>"))  # noqa: S314 - our own output  # noqa: S314 - our own output
    assert {u.text for u in root.iter("username")} == {"a&b<c>"}


def test_the_thunderbird_document_names_ssl_on_993_and_465_and_no_password() -> None:
    document = autoconfig(SERVER, "alice")
    root = ElementTree.fromstring(document)  # noqa: S314 - our own output
    assert root.tag == "clientConfig"
    assert root.get("version") == "1.1"
    (incoming,) = root.iter("incomingServer")
    (outgoing,) = root.iter("outgoingServer")
    assert incoming.get("type") == "imap"
    assert outgoing.get("type") == "smtp"
    for server, host, port in (
        (incoming, "mail.example.org", "993"),
        (outgoing, "smtp.example.org", "465"),
    ):
        assert server.findtext("hostname") == host
        assert server.findtext("port") == port
        assert server.findtext("socketType") == "SSL"
        assert server.findtext("username") == "alice"
    assert b"STARTTLS" not in document
    assert list(root.iter("password")) == []


async def _new(p: Portal) -> tuple[str, str, str]:
    """A new app password of alice: (the password, the sealed copy, the page's csrf)."""
    page = await create(p, "phone")
    found = _SEALED.search(page.text)
    assert found is not None
    return shown_password(page), found.group(1), csrf_of(page)


async def download(p: Portal, csrf: str, sealed: str, kind: str = "apple") -> httpx.Response:
    return await p.post("/app-passwords/setup", {"csrf": csrf, "kind": kind, "sealed": sealed})


@pytest.mark.asyncio
async def test_the_profile_download_carries_the_new_password(tmp_path: Path) -> None:
    async with portal(tmp_path, mail_host="imap.portal.test") as p:
        await p.sign_in()
        password, sealed, csrf = await _new(p)
        (record,) = p.store.list_app_passwords("alice")
        got = await download(p, csrf, sealed)
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/x-apple-aspen-config"
        assert got.headers["content-disposition"] == (
            f'attachment; filename="mail-{record.id}.mobileconfig"'
        )
        assert got.headers["cache-control"] == "no-store"
        (mail,) = plistlib.loads(got.content)["PayloadContent"]
        assert mail["IncomingPassword"] == password
        assert mail["IncomingMailServerHostName"] == "imap.portal.test"
        assert mail["IncomingMailServerPortNumber"] == 993
        xml = await download(p, csrf, sealed, "thunderbird")
        assert xml.status_code == 200
        assert xml.headers["content-type"].startswith("application/xml")
        assert password not in xml.text
        log = p.audit_path.read_text()
        assert password not in log
        kinds = [e["reason"].split()[1] for e in p.events() if e["action"] == "app_password_setup"]
        assert kinds == ["apple", "thunderbird"]


@pytest.mark.asyncio
async def test_a_replayed_download_gives_nothing(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        password, sealed, csrf = await _new(p)
        assert (await download(p, csrf, sealed)).status_code == 200
        again = await download(p, csrf, sealed)
        assert again.status_code == 410
        assert password not in again.text
        assert p.events()[-1]["result"] == "refused"
        assert p.events()[-1]["reason"] == "downloaded before"


@pytest.mark.asyncio
async def test_another_session_cannot_download_with_the_sealed_copy(tmp_path: Path) -> None:
    # Even the same account's other browser: the copy is bound to the session
    # that was shown the password (a page source saved, a proxy log, a screenshot
    # of the HTML do not hand it out later).
    async with portal(tmp_path) as p:
        await p.sign_in()
        password, sealed, _ = await _new(p)
        async with p.browser() as other:
            await other.sign_in()
            page = await other.client.get("/app-passwords")
            got = await download(other, csrf_of(page), sealed)
            assert got.status_code == 410
            assert password not in got.text
        # Nor after this session signed out and in again.
        await p.post("/signout", {"csrf": csrf_of(await p.client.get("/"))})
        await p.sign_in()
        page = await p.client.get("/app-passwords")
        assert (await download(p, csrf_of(page), sealed)).status_code == 410


@pytest.mark.asyncio
async def test_the_download_expires_with_the_page(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        _, sealed, csrf = await _new(p)
        p.clock.now += SETUP_LIFETIME + 1
        assert (await download(p, csrf, sealed)).status_code == 410


@pytest.mark.asyncio
async def test_no_download_once_the_password_is_revoked(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        _, sealed, csrf = await _new(p)
        (record,) = p.store.list_app_passwords("alice")
        await p.post("/app-passwords/revoke", {"csrf": csrf, "id": record.id})
        assert (await download(p, csrf, sealed)).status_code == 410


@pytest.mark.asyncio
async def test_a_changed_or_made_up_copy_gives_nothing(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        _, sealed, csrf = await _new(p)
        flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
        for forged in (flipped, "", "AAAA", "%%%", "A" * 5000):
            assert (await download(p, csrf, forged)).status_code == 410
        assert (await download(p, csrf, sealed, "outlook")).status_code == 410
        assert (await download(p, csrf, sealed)).status_code == 200


@pytest.mark.asyncio
async def test_a_download_without_the_csrf_token_is_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in()
        _, sealed, _ = await _new(p)
        refused = await p.post("/app-passwords/setup", {"kind": "apple", "sealed": sealed})
        assert refused.status_code == 403

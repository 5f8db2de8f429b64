"""An account's page as an admin sees it, its revoke buttons (only within the
account of the URL: another account's record id changes nothing), the policy
explainer form and the charts page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imapguard.audit import events
from imapguard.state.accounts import DeviceKey
from tests.unit.portal.support import Portal, csrf_of, portal

pytestmark = pytest.mark.asyncio


def _admin_lines(p: Portal) -> list[tuple[str, str, str]]:
    return [
        (e["user"], e["result"], e["target"]) for e in p.events() if e["action"] == "admin_revoke"
    ]


async def _setup(p: Portal) -> tuple[str, str]:
    """alice with an app password and a pending device; bob with an app password."""
    now = p.clock()
    alice_pw = p.store.add_app_password("alice", "Alice <phone>", b"a" * 32, now)
    p.store.add_pending_device(
        DeviceKey("alice", "192.0.2.0/24", "Thunderbird", "128"), now, "192.0.2.9"
    )
    bob_pw = p.store.add_app_password("bob", "bob laptop", b"b" * 32, now)
    return alice_pw.id, bob_pw.id


async def test_user_page_shows_what_the_user_sees_escaped(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await _setup(p)
        await p.sign_in("alice")
        async with p.browser() as admin:
            await admin.sign_in("carol")
            page = await admin.client.get("/admin/users/Alice")
            assert page.status_code == 200
            assert "Account alice" in page.text
            assert "Alice &lt;phone&gt;" in page.text
            assert "Thunderbird 128" in page.text
            assert "pending" in page.text
            assert "192.0.2.10" in page.text  # alice's portal session
            assert "bob laptop" not in page.text
            found = await admin.client.get("/admin/users?name=ALICE")
            assert found.headers["location"] == "/admin/users/alice"
            unknown = await admin.client.get("/admin/users/nobody")
            assert unknown.status_code == 404
            assert (await admin.client.get("/admin/users?name=nobody")).status_code == 404


async def test_admin_revokes_an_app_password_and_the_line_names_the_admin(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        alice_pw, _ = await _setup(p)
        await p.sign_in("carol")
        page = await p.client.get("/admin/users/alice")
        done = await p.post(
            "/admin/users/alice/revoke",
            {"csrf": csrf_of(page), "credential": f"app-password:{alice_pw}"},
        )
        assert done.headers["location"] == "/admin/users/alice?done=revoked"
        assert p.store.list_app_passwords("alice") == []
        assert _admin_lines(p) == [("carol", "ok", f"alice app-password:{alice_pw}")]
        feed = p.store.revocations_after(0, 10)
        assert [(r.user, r.credential) for r in feed] == [("alice", f"app-password:{alice_pw}")]


async def test_another_accounts_record_id_changes_nothing(tmp_path: Path) -> None:
    """IDOR: bob's app password id posted on alice's page revokes nothing."""
    async with portal(tmp_path) as p:
        _, bob_pw = await _setup(p)
        await p.sign_in("carol")
        token = csrf_of(await p.client.get("/admin/users/alice"))
        done = await p.post(
            "/admin/users/alice/revoke", {"csrf": token, "credential": f"app-password:{bob_pw}"}
        )
        assert done.headers["location"] == "/admin/users/alice?done=gone"
        assert len(p.store.list_app_passwords("bob")) == 1
        assert len(p.store.list_app_passwords("alice")) == 1
        assert _admin_lines(p) == [("carol", "not_found", f"alice app-password:{bob_pw}")]


async def test_malformed_credentials_are_refused(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await _setup(p)
        await p.sign_in("carol")
        token = csrf_of(await p.client.get("/admin/users/alice"))
        for credential in ("", "password", "app-password:", "app-password:a b", "user:alice"):
            response = await p.post(
                "/admin/users/alice/revoke", {"csrf": token, "credential": credential}
            )
            assert response.status_code == 400, credential
        assert len(p.store.list_app_passwords("alice")) == 1
        assert _admin_lines(p) == []


async def test_revoke_everything_ends_the_users_portal_sessions(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await _setup(p)
        await p.sign_in("alice")
        assert (await p.client.get("/")).status_code == 200
        async with p.browser() as admin:
            await admin.sign_in("carol")
            page = await admin.client.get("/admin/users/alice")
            await admin.post(
                "/admin/users/alice/revoke", {"csrf": csrf_of(page), "credential": "everything"}
            )
            assert p.store.list_app_passwords("alice") == []
            assert p.store.list_devices("alice") == []
            assert p.store.list_portal_sessions("alice", p.clock()) == []
            assert (await admin.client.get("/admin")).status_code == 200  # the admin's own
        assert (await p.client.get("/")).status_code == 303
        assert _admin_lines(p) == [("carol", "ok", "alice everything")]


async def test_admin_ends_one_portal_session(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("alice")
        async with p.browser() as admin:
            await admin.sign_in("carol")
            page = await admin.client.get("/admin/users/alice")
            ids = re.findall(r'value="(portal-session:[^"]+)"', page.text)
            assert len(ids) == 1
            await admin.post(
                "/admin/users/alice/revoke", {"csrf": csrf_of(page), "credential": ids[0]}
            )
        assert (await p.client.get("/")).status_code == 303


async def test_policy_explainer(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        await p.sign_in("carol")
        empty = await p.client.get("/admin/policy")
        assert "Decision" not in empty.text
        page = await p.client.get(
            "/admin/policy?user=Alice&ip=192.0.2.1&method=app-password&cert_subject=CN%3Dx"
        )
        assert page.status_code == 200
        assert "Decision: ALLOW" in page.text
        assert "user alice" in page.text
        assert "client certificate yes" in page.text
        for query in ("user=alice&ip=nope", "user=&ip=192.0.2.1", "user=a&ip=192.0.2.1&method=x"):
            bad = await p.client.get(f"/admin/policy?{query}")
            assert bad.status_code == 400, query
            assert "Decision" not in bad.text


async def test_charts_page_counts_from_the_audit_log(tmp_path: Path) -> None:
    async with portal(tmp_path) as p:
        for result in ("ok", "invalid", "invalid", "denied"):
            p.deps.audit.emit(
                events.Auth(
                    src="198.51.100.1",
                    listener="x",
                    mechanism="LOGIN",
                    user="alice",
                    result=result,
                    reason=result,
                )
            )
        await p.sign_in("carol")  # the fake sign-in service writes no auth events
        page = await p.client.get("/admin/charts")
        assert page.status_code == 200
        assert page.text.count("<svg") == 2
        assert "<script" not in page.text.split("</nav>", 2)[-1]
        assert "1 successful and 3 failed sign-ins" in page.text
        assert "<title" in page.text

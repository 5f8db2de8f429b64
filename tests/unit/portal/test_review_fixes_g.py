"""The security review's findings 2, 4, 5 and 8 (OIDC), each stopped: the
review's proofs of concept without their xfail, and the attacks next to them.
The portal here runs the auth service's own `TwoStepSignIn` (`real_sign_in`:
its defense, counting, notices and audit lines over the portal's store, with a
stub mail server that knows FakeSignIn's users), so these tests prove the
service, not a fake of it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import httpx
import pyotp
import pytest

from imapguard.auth import invites, totp
from imapguard.auth.signin import TwoStepSignIn
from imapguard.defense.counters import Target, TargetKind
from imapguard.defense.engine import Action, Attempt, Defense
from imapguard.policy.gate import PolicyGate, load_policy
from imapguard.policy.rules import PolicyConfig
from imapguard.portal.app import create_app
from imapguard.portal.oidc import FLOW_COOKIE
from tests.unit.portal.support import PASSWORD, Portal, csrf_of, portal
from tests.unit.portal.test_oidc_attacks import _sign_in, _start, oidc_portal

pytestmark = pytest.mark.asyncio

HOME = "192.0.2.10"  # where the portal's tests sign in from
ELSEWHERE = "198.51.100.7"


def _defense(p: Portal) -> Defense:
    assert p.deps.services is not None
    assert p.deps.services.defense is not None
    return p.deps.services.defense


def _verdict(p: Portal, ip: str, user: str) -> Action:
    defense = _defense(p)
    attempt = defense.attempt(
        ip, user, None, method="LOGIN", listener="imap", trusted_device=False, spray=False
    )
    return defense.precheck(attempt).action


def _secret_of(page: httpx.Response) -> str:
    found = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', page.text)
    assert found is not None, page.text
    return found.group(1).replace(" ", "")


def _code(p: Portal, user: str) -> str:
    """The current code of `user`'s stored TOTP factor."""
    assert p.deps.services is not None
    record = p.store.get_totp(user)
    assert record is not None
    secret = totp.unseal(p.deps.services.totp_key, user, record.sealed)
    return pyotp.TOTP(secret.reveal().decode()).at(p.clock())


async def _redeem(p: Portal, token: str, user: str) -> httpx.Response:
    form = await p.client.get(f"/invite/{token}")
    return await p.post(
        f"/invite/{token}", {"csrf": csrf_of(form), "username": user, "password": PASSWORD}
    )


async def _enrol(p: Portal) -> httpx.Response:
    page = await p.client.get("/invite/enroll")
    secret = _secret_of(page)
    code = pyotp.TOTP(secret).at(p.clock())
    return await p.post("/invite/enroll", {"csrf": csrf_of(page), "code": code})


def _invite(p: Portal, user: str) -> str:
    return invites.issue(p.store, p.deps.keys.invite, user, p.clock(), 3600.0)


# -- finding 2: an invitation never replaces an enrolled factor ---------------------


async def test_invitation_link_and_password_cannot_replace_an_enrolled_totp(
    tmp_path: Path,
) -> None:
    """alice already has TOTP; whoever holds her password and an invitation
    (a bulk `--from-file` run, a link still in her mailbox) gets a full session
    without her code and replaces her authenticator with theirs."""
    async with portal(tmp_path, real_sign_in=True) as p:
        before = p.store.get_totp("alice")
        assert before is not None
        token = _invite(p, "alice")
        first = await _redeem(p, token, "alice")
        if first.status_code == 303 and first.headers["location"] == "/invite/enroll":
            await _enrol(p)
        after = p.store.get_totp("alice")
        assert after is not None
        assert after.sealed == before.sealed
        assert all(s.level != "full" for s in p.store.live())
        # The uniform failure, and the owner is told (a right password without her factor).
        assert first.status_code == 200
        assert "The invitation link, user name or password is not right." in first.text
        assert ("compromise_signal", "alice", HOME) in p.notices.sent
        # The link was not spent: after an admin's reset it is still good.
        assert p.store.use_invite(invites.token_digest(p.deps.keys.invite, token), "alice", 1.0)


async def test_invitation_link_and_password_cannot_replace_a_passkey(tmp_path: Path) -> None:
    async with portal(tmp_path, real_sign_in=True) as p:
        p.store.add_passkey("bob", b"cred-1", b"key", 0, "Phone", "", p.clock.now)
        first = await _redeem(p, _invite(p, "bob"), "bob")
        assert first.status_code == 200
        assert p.store.live() == []
        assert p.store.get_totp("bob") is None


async def test_a_mismatched_redemption_does_not_spend_another_accounts_link(
    tmp_path: Path,
) -> None:
    """bob (no factor, his own password) types his name on a link meant for
    dave: nothing opens, and dave's link still works for dave."""
    async with portal(tmp_path, real_sign_in=True) as p:
        p.service.users["dave"] = (PASSWORD, False)
        token = _invite(p, "dave")
        assert (await _redeem(p, token, "bob")).status_code == 200
        assert p.store.live() == []
        async with p.browser(ELSEWHERE) as dave:
            done = await _redeem(dave, token, "dave")
            assert (done.status_code, done.headers["location"]) == (303, "/invite/enroll")


async def test_reset_invitation_re_enrols_and_the_owner_is_told(tmp_path: Path) -> None:
    """The admin's reset (`user invite --reset`): alice's TOTP, passkeys and
    recovery codes go, her portal sessions end; her new invitation then sets up
    a new factor, and she is told that an invitation was used."""
    async with portal(tmp_path, real_sign_in=True) as p:
        async with p.browser(ELSEWHERE) as old:
            assert (await old.password_step("alice")).status_code == 303
            assert (await old.code_step(_code(p, "alice"))).headers["location"] == "/"
        assert [s.level for s in p.store.live()] == ["full"]
        p.store.add_passkey("alice", b"cred-1", b"key", 0, "Phone", "", p.clock.now)
        p.store.set_recovery_codes("alice", [b"r" * 32], p.clock.now)
        before = p.store.get_totp("alice")
        with p.store.batch():
            reset = invites.reset_factors(p.store, "alice", p.clock())
            token = _invite(p, "alice")
        assert reset == invites.Reset(totp=True, passkeys=1, sessions=1)
        assert p.store.live() == []
        assert p.store.list_passkeys("alice") == []
        assert p.store.count_recovery_codes("alice") == 0
        p.notices.sent.clear()
        assert (await _redeem(p, token, "alice")).headers["location"] == "/invite/enroll"
        assert ("invitation_used", "alice", HOME) in p.notices.sent
        done = await _enrol(p)
        assert (done.status_code, done.headers["location"]) == (303, "/")
        after = p.store.get_totp("alice")
        assert after is not None
        assert before is not None
        assert after.sealed != before.sealed


async def test_a_factor_enrolled_meanwhile_is_not_replaced_by_the_enrol_step(
    tmp_path: Path,
) -> None:
    """Between the invitation's password step and its enrol step a factor
    appears (another session of the owner): the enrol step stores nothing and
    ends the invitation's session."""
    async with portal(tmp_path, real_sign_in=True) as p:
        assert (await _redeem(p, _invite(p, "bob"), "bob")).status_code == 303
        page = await p.client.get("/invite/enroll")
        key = p.deps.services.totp_key  # type: ignore[union-attr]
        theirs = totp.seal(key, "bob", totp.new_secret())
        p.store.set_totp("bob", theirs, p.clock())
        code = pyotp.TOTP(_secret_of(page)).at(p.clock())
        refused = await p.post("/invite/enroll", {"csrf": csrf_of(page), "code": code})
        assert (refused.status_code, refused.headers["location"]) == (303, "/signin")
        record = p.store.get_totp("bob")
        assert record is not None
        assert record.sealed == theirs
        assert p.store.live() == []


# -- finding 4: OIDC sign-in through the auth service ------------------------------


async def test_a_blocked_source_cannot_sign_in_through_the_openid_provider(
    tmp_path: Path,
) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        _defense(p).block(Target(TargetKind.SOURCE, HOME), "test")
        assert _verdict(p, HOME, "alice") is Action.BLOCKED
        page = await _sign_in(p, idp, "alice")
        assert all(s.level != "full" for s in p.store.live())
        assert "did not work" in page.text
        (auth,) = p.events("auth")
        assert (auth["mechanism"], auth["result"]) == ("PORTAL-OIDC", "invalid")
        assert auth["reason"].startswith("blocked:")


async def test_oidc_for_a_name_the_mail_server_does_not_know_creates_no_user_row(
    tmp_path: Path,
) -> None:
    """The gateway would open an OAUTHBEARER session only with the mail server's
    master login; the portal asks the same before a session (and a user row)."""
    async with oidc_portal(tmp_path) as (p, idp):
        await _sign_in(p, idp, "mallory")
        assert p.store.get_user("mallory") is None
        assert p.store.live() == []
        (auth,) = p.events("auth")
        # NO [AUTHORIZATIONFAILED] to the master login: this account, not an outage.
        assert auth["result"] == "denied"
        assert auth["reason"].startswith("upstream refused the account")


async def test_oidc_without_a_token_method_in_auth_methods_is_refused(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path, methods=("password+totp",)) as (p, idp):
        await _sign_in(p, idp, "alice")
        assert p.store.live() == []
        (auth,) = p.events("auth")
        assert auth["reason"] == "no token method in auth.methods"


async def test_oidc_sign_in_is_refused_where_the_policy_denies_token_logins(
    tmp_path: Path,
) -> None:
    """The policy has its word on a token sign-in at the portal as on an
    OAUTHBEARER login: a rule that denies tokens denies the provider's way in."""
    policy, _ = load_policy(
        PolicyConfig.model_validate(
            {"rules": [{"name": "no-tokens", "action": "deny", "methods": ["oauthbearer"]}]}
        ),
        None,
    )
    assert isinstance(policy, PolicyGate)
    async with oidc_portal(tmp_path) as (p, idp):
        sign_in = p.deps.sign_in
        assert isinstance(sign_in, TwoStepSignIn)
        sign_in.auth.policy = policy
        await _sign_in(p, idp, "alice")
        assert p.store.live() == []
        (auth,) = p.events("auth")
        assert (auth["result"], auth["rule"]) == ("denied", "no-tokens")


async def test_oidc_sign_ins_are_counted_by_the_defense(tmp_path: Path) -> None:
    """A full OIDC sign-in is a success the defense learns from (the source
    becomes familiar to the account), as an OAUTHBEARER login is."""
    async with oidc_portal(tmp_path) as (p, idp):
        assert not _defense(p).precheck(_attempt(p, "alice")).familiar
        await _sign_in(p, idp, "alice")
        assert [s.level for s in p.store.live()] == ["full"]
        await _flush(p)
        assert _defense(p).precheck(_attempt(p, "alice")).familiar


async def _flush(p: Portal) -> None:
    """The defense's successes are bookkeeping, written in batches: now."""
    sign_in = p.deps.sign_in
    assert isinstance(sign_in, TwoStepSignIn)
    await sign_in.auth.flush()


def _attempt(p: Portal, user: str) -> Attempt:
    return _defense(p).attempt(
        HOME, user, None, method="portal", listener="portal", trusted_device=False, spray=False
    )


# -- finding 5: a right password is not confirmed silently --------------------------


async def test_password_oracle_a_right_password_alone_tells_the_owner(tmp_path: Path) -> None:
    """Someone with alice's password from an address she never signed in from
    stops at the code page: she hears of it."""
    async with portal(tmp_path, real_sign_in=True) as p:
        assert (await p.password_step("alice")).status_code == 303
        assert p.notices.sent == [("portal_password", "alice", HOME)]


async def test_a_wrong_password_tells_nobody(tmp_path: Path) -> None:
    async with portal(tmp_path, real_sign_in=True) as p:
        assert (await p.password_step("alice", "wrong")).status_code == 200
        assert p.notices.sent == []


async def test_a_familiar_source_is_not_reported_to_its_owner(tmp_path: Path) -> None:
    """Once alice finished a sign-in from here (a success the defense counts),
    her next password step from here is no news."""
    async with portal(tmp_path, real_sign_in=True) as p:
        assert (await p.password_step("alice")).status_code == 303
        assert (await p.code_step(_code(p, "alice"))).headers["location"] == "/"
        await _flush(p)
        p.notices.sent.clear()
        async with p.browser(HOME) as again:
            assert (await again.password_step("alice")).status_code == 303
        assert p.notices.sent == []


# -- finding 8: the OIDC flow is sealed in its cookie, not kept in memory ----------


async def test_oidc_flow_survives_a_restarted_portal_process(tmp_path: Path) -> None:
    """Nothing of the flow is in the portal's memory: another process (a new
    app on the same deps) finishes it, so no table can be filled or evicted."""
    async with oidc_portal(tmp_path) as (p, idp):
        callback = idp.authorize(await _start(p), "alice", ["pwd", "mfa"])
        restarted = dataclasses.replace(p, app=create_app(p.deps))
        async with restarted.browser(HOME) as other:
            other.client.cookies.set(FLOW_COOKIE, p.client.cookies[FLOW_COOKIE])
            done = await other.client.get(callback)
        assert 'url=/"' in done.text
        assert [s.level for s in p.store.live()] == ["full"]


async def test_oidc_flow_cookie_shows_neither_nonce_nor_verifier(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, _idp):
        location = await _start(p)
        sealed = p.client.cookies[FLOW_COOKIE]
        query = dict(part.split("=", 1) for part in location.split("?", 1)[1].split("&"))
        assert query["state"] not in sealed
        assert query["nonce"] not in sealed
        assert len(sealed) < 400


async def test_oidc_tampered_flow_cookie_is_refused(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        callback = idp.authorize(await _start(p), "alice", ["pwd", "mfa"])
        sealed = p.client.cookies[FLOW_COOKIE]
        flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
        p.client.cookies.set(FLOW_COOKIE, flipped)
        page = await p.client.get(callback)
        assert "did not work" in page.text
        assert p.store.live() == []


async def test_oidc_flow_past_its_lifetime_is_refused(tmp_path: Path) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        callback = idp.authorize(await _start(p), "alice", ["pwd", "mfa"])
        p.clock.now += 601
        assert "did not work" in (await p.client.get(callback)).text
        assert p.store.live() == []


async def test_oidc_without_mfa_goes_on_to_the_passkey_of_an_account_without_totp(
    tmp_path: Path,
) -> None:
    async with oidc_portal(tmp_path) as (p, idp):
        p.store.add_passkey("bob", b"cred-1", b"key", 0, "Phone", "", p.clock.now)
        page = await _sign_in(p, idp, "bob", amr=("pwd",))
        assert 'url=/signin/code"' in page.text
        assert [s.level for s in p.store.live()] == ["password"]
        code_page = await p.client.get("/signin/code")
        assert code_page.status_code == 200
        assert "passkey" in code_page.text.lower()

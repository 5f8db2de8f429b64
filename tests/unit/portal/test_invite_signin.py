"""The invitation's password step in the auth service
(`TwoStepSignIn.check_invited_password`): the account's password through the
gateway's own check, counted and audited; the invitation spent only after a
right password and only if it names that account."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.secret import Secret
from tests.unit import test_chokepoint_factors as base
from tests.unit.test_chokepoint_factors import PASSWORDS, Env, defended
from tests.unit.test_signin import audit_lines, portal_ctx, two_step

store = base.store
executor = base.executor
audit = base.audit
env = base.env

pytestmark = pytest.mark.asyncio


class Redeem:
    """An invitation for `names`, spent by the first call that matches."""

    def __init__(self, names: str | None) -> None:
        self.names = names
        self.calls: list[str] = []

    async def __call__(self, user: str) -> bool:
        self.calls.append(user)
        names, self.names = self.names, None
        return names == user


async def test_right_password_and_invitation_pass_without_a_factor(
    env: Env, tmp_path: Path
) -> None:
    signin = two_step(env, defended(env))
    redeem = Redeem("bob")
    check = await signin.check_invited_password(
        "Bob", Secret(PASSWORDS["bob"]), redeem, portal_ctx()
    )
    assert (check.ok, check.user, check.has_totp) == (True, "bob", False)
    assert redeem.calls == ["bob"]
    (event,) = [e for e in audit_lines(tmp_path / "audit.jsonl") if e["event"] == "auth"]
    assert (event["mechanism"], event["result"], event["user"]) == ("PORTAL-INVITE", "ok", "bob")
    # A password alone makes no source familiar: that takes a second factor.
    assert env.store.list_devices("bob") == []


async def test_wrong_password_never_spends_the_invitation(env: Env) -> None:
    signin = two_step(env, defended(env))
    redeem = Redeem("bob")
    check = await signin.check_invited_password("bob", Secret("guess"), redeem, portal_ctx())
    assert not check.ok
    assert redeem.calls == []


async def test_right_password_without_a_valid_invitation_is_a_uniform_failure(
    env: Env, tmp_path: Path
) -> None:
    """A password oracle otherwise: a made-up link with a guessed password must
    not answer differently when the password is right."""
    signin = two_step(env, defended(env))
    right = await signin.check_invited_password(
        "bob", Secret(PASSWORDS["bob"]), Redeem(None), portal_ctx()
    )
    wrong = await signin.check_invited_password("bob", Secret("guess"), Redeem(None), portal_ctx())
    assert right == wrong
    assert not right.ok
    results = [
        (e["result"], e["reason"])
        for e in audit_lines(tmp_path / "audit.jsonl")
        if e["event"] == "auth"
    ]
    assert results[0] == ("missing_factor", "correct password, no valid invitation for the account")


async def test_invitation_guessing_is_counted_by_the_shared_defense(env: Env) -> None:
    auth = defended(env, pair_free=1, pair_block=3, delay_base=1.0, delay_jitter=0.0)
    signin = two_step(env, auth)
    ip = "198.51.100.9"
    for n in range(4):
        await signin.check_invited_password(
            "bob", Secret(f"guess-{n}"), Redeem("bob"), portal_ctx(ip)
        )
    calls = len(env.upstream.calls)
    redeem = Redeem("bob")
    check = await signin.check_invited_password(
        "bob", Secret(PASSWORDS["bob"]), redeem, portal_ctx(ip)
    )
    # Blocked before the upstream is asked, and the link is not spent.
    assert not check.ok
    assert len(env.upstream.calls) == calls
    assert redeem.calls == []


async def test_an_account_with_totp_never_reaches_the_invitation(env: Env, tmp_path: Path) -> None:
    """Password + invitation must not replace an enrolled factor: refused like
    a wrong password, the link not spent, the owner told (a compromise signal)."""
    signin = two_step(env, defended(env))
    env.enroll("alice")
    redeem = Redeem("alice")
    check = await signin.check_invited_password(
        "alice", Secret(PASSWORDS["alice"]), redeem, portal_ctx()
    )
    wrong = await signin.check_invited_password("alice", Secret("guess"), redeem, portal_ctx())
    assert check == wrong
    assert not check.ok
    assert redeem.calls == []
    assert env.notices == [("compromise_signal", "alice", None)]
    events = [e["event"] for e in audit_lines(tmp_path / "audit.jsonl")]
    assert "compromise_signal" in events


async def test_a_used_invitation_is_told_to_the_owner(env: Env) -> None:
    signin = two_step(env, defended(env))
    check = await signin.check_invited_password(
        "bob", Secret(PASSWORDS["bob"]), Redeem("bob"), portal_ctx()
    )
    assert check.ok
    assert env.notices == [("invitation_used", "bob", None)]

"""The portal's two-step sign-in through the gateway's auth service
(imapguard.auth.signin): the same name rule, the same defense counters, the same
audit events as an IMAP login; a stub upstream that knows each user's password
(tests/integration proves the password check with Dovecot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imapguard.auth.chokepoint import Authenticator, Outcome
from imapguard.auth.model import AuthContext, ClientAddress
from imapguard.auth.signin import TwoStepSignIn
from imapguard.gateway.upstream import UpstreamSession
from imapguard.secret import Secret
from tests.unit import test_chokepoint_factors as base
from tests.unit.test_chokepoint_factors import PASSWORDS, SEAL, Env, attempt, ctx, defended

# The chokepoint tests' fixtures: a real SQLite store, its executor, an audit log.
store = base.store
executor = base.executor
audit = base.audit
env = base.env


def portal_ctx(ip: str = "192.0.2.10") -> AuthContext:
    return AuthContext(ClientAddress(ip, 50000, "127.0.0.1", 8443, "p1"), None, "portal")


def two_step(env: Env, auth: Authenticator[UpstreamSession]) -> TwoStepSignIn[Any]:
    return TwoStepSignIn(
        auth,
        audit=env.audit,
        executor=env.executor,
        totp_key=SEAL,
        on_notice=lambda kind, user, c, device: env.notices.append((kind, user, device)),
        wall_clock=env.clock,
        sleep=env.clock.sleep,
    )


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.asyncio
async def test_right_password_is_one_step_and_opens_nothing_upstream(
    env: Env, tmp_path: Path
) -> None:
    signin = two_step(env, defended(env))
    env.enroll("alice")
    check = await signin.check_password("Alice", Secret(PASSWORDS["alice"]), portal_ctx())
    assert (check.ok, check.user, check.has_totp) == (True, "alice", True)
    assert env.upstream.calls == [("alice", PASSWORDS["alice"])]
    # A right password alone is no success for the defense: the source is not
    # made familiar to the account (only a second factor may do that).
    assert env.store.list_devices("alice") == []
    (event,) = [e for e in audit_lines(tmp_path / "audit.jsonl") if e["event"] == "auth"]
    assert (event["listener"], event["mechanism"], event["result"]) == (
        "portal",
        "PORTAL-PASSWORD",
        "ok",
    )
    assert PASSWORDS["alice"] not in (tmp_path / "audit.jsonl").read_text()


@pytest.mark.asyncio
async def test_wrong_password_and_unknown_account_answer_alike(env: Env) -> None:
    signin = two_step(env, defended(env))
    wrong = await signin.check_password("alice", Secret("nope"), portal_ctx())
    unknown = await signin.check_password("mallory", Secret("nope"), portal_ctx())
    malformed = await signin.check_password("al\u202eice", Secret("nope"), portal_ctx())
    lone_surrogate = await signin.check_password("al\udcffice", Secret("x"), portal_ctx())
    assert wrong == unknown == malformed == lone_surrogate
    assert not wrong.ok
    assert wrong.user is None


@pytest.mark.asyncio
async def test_password_guessing_at_the_portal_blocks_imap_logins_too(env: Env) -> None:
    """One defense: guesses at the portal count against the account and source
    exactly as IMAP guesses do, so the block they earn refuses both."""
    auth = defended(env, pair_free=1, pair_block=3, delay_base=1.0, delay_jitter=0.0)
    signin = two_step(env, auth)
    for n in range(4):
        await signin.check_password("alice", Secret(f"guess-{n}"), portal_ctx("198.51.100.9"))
    result = await attempt(auth, "alice", PASSWORDS["alice"], ctx("198.51.100.9"))
    assert (result.outcome, result.blocked) == (Outcome.INVALID, True)
    # ... and the portal refuses the right password from there without asking upstream.
    calls = len(env.upstream.calls)
    check = await signin.check_password(
        "alice", Secret(PASSWORDS["alice"]), portal_ctx("198.51.100.9")
    )
    assert not check.ok
    assert len(env.upstream.calls) == calls


@pytest.mark.asyncio
async def test_password_sprayed_at_portal_and_imap_is_one_spray(env: Env) -> None:
    """The same wrong password tried on many accounts, half at the portal and half
    over IMAP, from many addresses: the login-free fingerprint is shared."""
    auth = defended(env, spray_accounts=4)
    signin = two_step(env, auth)
    sprayed = "Winter2026!"
    for n in range(2):
        await signin.check_password(f"user{n}", Secret(sprayed), portal_ctx(f"203.0.113.{n + 1}"))
    for n in range(2, 4):
        await attempt(auth, f"user{n}", sprayed, ctx(f"203.0.113.{n + 1}"))
    # The fifth try of that password, on a sixth address, at the portal: refused
    # before the upstream is asked (the fingerprint is blocked).
    calls = len(env.upstream.calls)
    check = await signin.check_password("user9", Secret(sprayed), portal_ctx("203.0.113.99"))
    assert not check.ok
    assert len(env.upstream.calls) == calls


@pytest.mark.asyncio
async def test_code_is_accepted_once_and_not_again_over_imap(env: Env) -> None:
    """Replay: a code spent at the portal is spent for IMAP too, and the reverse."""
    auth = defended(env)
    signin = two_step(env, auth)
    otp = env.enroll("alice")
    code = otp.at(env.clock.now)
    assert await signin.check_totp("alice", Secret(code), portal_ctx())
    assert not await signin.check_totp("alice", Secret(code), portal_ctx())
    imap = await attempt(auth, "alice", PASSWORDS["alice"] + code)
    assert imap.outcome is Outcome.MISSING_FACTOR


@pytest.mark.asyncio
async def test_wrong_codes_are_a_compromise_signal_and_lock_codes(env: Env) -> None:
    """Someone has the password: the owner is told, and code guessing stops at
    the same per-account limit as over IMAP."""
    auth = defended(env)
    signin = two_step(env, auth)
    otp = env.enroll("alice")
    for _ in range(auth.factors.totp_max_failures):
        assert not await signin.check_totp("alice", Secret("000000"), portal_ctx())
    assert ("compromise_signal", "alice", None) in env.notices
    # Locked now: even the right code is refused until the lockout passes.
    assert not await signin.check_totp("alice", Secret(otp.at(env.clock.now)), portal_ctx())
    env.clock.now += auth.factors.totp_lockout + 60
    assert await signin.check_totp("alice", Secret(otp.at(env.clock.now)), portal_ctx())


@pytest.mark.asyncio
async def test_account_without_totp_cannot_pass_the_code_step(env: Env) -> None:
    signin = two_step(env, defended(env))
    assert not await signin.check_totp("bob", Secret("123456"), portal_ctx())


@pytest.mark.asyncio
async def test_a_dead_store_fails_closed(env: Env) -> None:
    signin = two_step(env, defended(env))
    env.store.close()
    check = await signin.check_password("alice", Secret(PASSWORDS["alice"]), portal_ctx())
    assert not check.ok
    assert not await signin.check_totp("alice", Secret("123456"), portal_ctx())


@pytest.mark.asyncio
async def test_right_password_without_a_second_factor_answers_like_a_wrong_one(
    env: Env, tmp_path: Path
) -> None:
    """Timing oracle: an account with no factor cannot finish signing in, so its
    right password must not be answered sooner than a wrong one (which waits out
    the upstream's refusal time), or the quick answer confirms the password."""
    auth = defended(env)
    signin = two_step(env, auth)
    waited: list[str] = []
    original = auth.timing.wait_out

    async def recording_wait_out(clock: Any) -> None:
        waited.append("waited")
        await original(clock)

    auth.timing.wait_out = recording_wait_out  # type: ignore[method-assign, assignment]
    check = await signin.check_password("bob", Secret(PASSWORDS["bob"]), portal_ctx())
    assert check == await signin.check_password("bob", Secret("wrong"), portal_ctx())
    assert not check.ok
    assert waited == ["waited", "waited"]
    results = [
        (e["result"], e["reason"])
        for e in audit_lines(tmp_path / "audit.jsonl")
        if e["event"] == "auth"
    ]
    assert results[0] == ("missing_factor", "correct password, no second factor enrolled")

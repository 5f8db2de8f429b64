"""The chokepoint's second factors, with an injected clock and a stub upstream that
knows each user's password (tests/integration proves the same with Dovecot):
password + code, the trusted device, pending devices and notices, the per-account
code lockout, the verified-password cache, bearer tokens and EXTERNAL."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyotp
import pytest

from imapguard.audit import AuditLog
from imapguard.auth import oauth, totp
from imapguard.auth.chokepoint import (
    AuthContext,
    Authenticator,
    FactorSettings,
    Outcome,
)
from imapguard.auth.model import ClientAddress
from imapguard.errors import UpstreamRefused
from imapguard.gateway.upstream import UpstreamSession
from imapguard.imap.preauth import Credentials
from imapguard.secret import Secret
from imapguard.state.sqlite import SqliteStore, open_store

KEY = b"k" * 32
SEAL = b"s" * 32
PASSWORDS = {"alice": "correct-horse", "bob": "bobs-password-123456"}


class Upstream:
    """Accepts the master login (password None) and each user's own password."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    logs_in_for_users = True  # a master user is configured

    async def login(
        self, user: str, password: Secret | None, client: ClientAddress
    ) -> UpstreamSession:
        given = None if password is None else password.reveal().decode()
        self.calls.append((user, given))
        if given is not None and PASSWORDS.get(user) != given:
            raise UpstreamRefused("upstream", "NO [AUTHENTICATIONFAILED]")
        link: Any = _Link()
        return UpstreamSession(link=link, capabilities=["IMAP4rev1"], leftover=b"")


class _Link:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(1)
    yield ex
    ex.shutdown()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    yield log
    log.close()


class Env:
    def __init__(self, store: SqliteStore, executor: ThreadPoolExecutor, audit: AuditLog) -> None:
        self.store = store
        self.upstream = Upstream()
        self.clock = Clock()
        self.notices: list[tuple[str, str, str | None]] = []
        self.tokens: Any = None
        self.executor = executor
        self.audit = audit

    def auth(
        self, methods: tuple[str, ...] = ("password+totp",), **factors: Any
    ) -> Authenticator[UpstreamSession]:
        return Authenticator(
            methods=methods,
            store=self.store,
            store_executor=self.executor,
            app_password_key=KEY,
            upstream=self.upstream,
            audit=self.audit,
            failure_delay=0.0,
            failure_jitter=0.0,
            clock=self.clock,
            wall_clock=self.clock,
            sleep=self.clock.sleep,
            rng=random.Random(1),
            factors=FactorSettings(**{"verified_cache_seconds": 0, **factors}),
            totp_key=SEAL,
            on_notice=lambda kind, user, ctx, device: self.notices.append((kind, user, device)),
            token_verifier=self.tokens,
        )

    def enroll(self, user: str) -> pyotp.TOTP:
        secret = totp.new_secret()
        self.store.set_totp(user, totp.seal(SEAL, user, secret), self.clock.now)
        return pyotp.TOTP(secret.reveal().decode())


@pytest.fixture
def env(store: SqliteStore, executor: ThreadPoolExecutor, audit: AuditLog) -> Env:
    return Env(store, executor, audit)


def ctx(ip: str = "192.0.2.10", name: str = "Mail", cert_user: str | None = None) -> AuthContext:
    return AuthContext(
        ClientAddress(ip, 40000, "127.0.0.1", 993, "s"), name, "l", name, "1.0", cert_user
    )


def login(user: str, secret: str, mechanism: str = "LOGIN") -> Credentials:
    return Credentials(mechanism, user.encode(), Secret(secret))


async def attempt(
    auth: Authenticator[UpstreamSession], user: str, secret: str, c: AuthContext | None = None
) -> Any:
    return await auth.authenticate(login(user, secret), c or ctx(), "s")


# -- password + code, devices ------------------------------------------------------


@pytest.mark.asyncio
async def test_code_trusts_the_device_and_is_accepted_once(env: Env) -> None:
    auth = env.auth()
    otp = env.enroll("alice")
    typed = PASSWORDS["alice"] + otp.at(env.clock.now)
    first = await attempt(auth, "alice", typed)
    assert (first.outcome, first.factor) == (Outcome.OK, "password+totp")
    (device,) = env.store.list_devices("alice")
    assert (device.network, device.status, device.split_code) == ("192.0.2.0/24", "trusted", True)
    # Same stale string from the same device (another address of its /24): fine.
    again = await attempt(auth, "alice", typed, ctx("192.0.2.99"))
    assert (again.outcome, again.factor) == (Outcome.OK, "trusted-device")
    # From another network the used code is worth nothing.
    other = await attempt(auth, "alice", typed, ctx("198.51.100.7"))
    assert other.outcome is Outcome.MISSING_FACTOR
    assert env.notices == [("compromise_signal", "alice", None)]


@pytest.mark.asyncio
async def test_another_client_name_is_another_device(env: Env) -> None:
    auth = env.auth()
    otp = env.enroll("alice")
    assert (await attempt(auth, "alice", PASSWORDS["alice"] + otp.at(env.clock.now))).outcome is (
        Outcome.OK
    )
    result = await attempt(auth, "alice", PASSWORDS["alice"], ctx(name="Evil"))
    assert result.outcome is Outcome.MISSING_FACTOR


@pytest.mark.asyncio
async def test_device_trust_expires(env: Env) -> None:
    auth = env.auth(device_trust=3600.0)
    otp = env.enroll("alice")
    await attempt(auth, "alice", PASSWORDS["alice"] + otp.at(env.clock.now))
    env.clock.now += 3601
    result = await attempt(auth, "alice", PASSWORDS["alice"])
    assert result.outcome is Outcome.MISSING_FACTOR
    assert "trust expired" in result.reason


@pytest.mark.asyncio
async def test_password_alone_from_a_new_device_is_pending_and_notified(env: Env) -> None:
    auth = env.auth()
    env.enroll("alice")
    result = await attempt(auth, "alice", PASSWORDS["alice"])
    assert result.outcome is Outcome.MISSING_FACTOR
    (device,) = env.store.list_devices("alice")
    assert device.status == "pending"
    assert env.notices == [
        ("new_device", "alice", device.id),
        ("compromise_signal", "alice", device.id),
    ]
    env.store.approve_device("alice", device.id, env.clock.now + 60)
    approved = await attempt(auth, "alice", PASSWORDS["alice"])
    assert (approved.outcome, approved.factor) == (Outcome.OK, "trusted-device")


@pytest.mark.asyncio
async def test_new_device_approval_can_be_switched_off(env: Env) -> None:
    auth = env.auth(new_device_approval=False)
    env.enroll("alice")
    assert (await attempt(auth, "alice", PASSWORDS["alice"])).outcome is Outcome.MISSING_FACTOR
    assert env.store.list_devices("alice") == []
    assert [kind for kind, _, _ in env.notices] == ["compromise_signal"]


@pytest.mark.asyncio
async def test_a_password_ending_in_six_digits_with_a_code_is_checked_once(env: Env) -> None:
    auth = env.auth()
    otp = env.enroll("bob")  # bob's password ends in 123456
    typed = PASSWORDS["bob"] + otp.at(env.clock.now)
    with_code = await attempt(auth, "bob", typed)
    assert (with_code.outcome, with_code.factor) == (Outcome.OK, "password+totp")
    # The device sends the same string again: its stale code is its secret.
    again = await attempt(auth, "bob", typed)
    assert (again.outcome, again.factor) == (Outcome.OK, "trusted-device")
    # Each login asked the upstream once, with the password alone (never the whole
    # field: a failed upstream login for every right password + code, A10).
    assert env.upstream.calls == [("bob", PASSWORDS["bob"])] * 2
    # The password alone is no trusted device. bob's ends in six digits, and his
    # account has a code enrolled: the field reads as a password and a wrong code
    # (one check, decided before asking), so it fails as a wrong password.
    alone = await attempt(auth, "bob", PASSWORDS["bob"])
    assert alone.outcome is Outcome.INVALID
    assert env.upstream.calls[-1] == ("bob", PASSWORDS["bob"][:-6])


@pytest.mark.asyncio
async def test_wrong_password_is_invalid_and_never_a_signal(env: Env) -> None:
    auth = env.auth()
    otp = env.enroll("alice")
    result = await attempt(auth, "alice", "guess" + otp.at(env.clock.now))
    assert result.outcome is Outcome.INVALID
    assert env.notices == []
    record = env.store.get_totp("alice")
    assert record is not None
    assert record.last_step is None  # the code was not spent


@pytest.mark.asyncio
async def test_code_guessing_with_the_right_password_locks_codes(env: Env) -> None:
    """A guesser who has the password gets `totp_max_failures` tries, not a million."""
    auth = env.auth(totp_max_failures=3, totp_lockout=900.0)
    otp = env.enroll("alice")
    right = otp.at(env.clock.now)
    wrong = [f"{(int(right) + k) % 1_000_000:06d}" for k in (1, 2, 3)]
    for code in wrong:
        result = await attempt(auth, "alice", PASSWORDS["alice"] + code, ctx("203.0.113.5"))
        assert result.outcome is Outcome.MISSING_FACTOR
    assert "locked" in result.reason
    # Now even the right code is refused, from anywhere, until the lockout ends.
    locked = await attempt(auth, "alice", PASSWORDS["alice"] + right, ctx("192.0.2.10"))
    assert locked.outcome is Outcome.MISSING_FACTOR
    assert "locked" in locked.reason
    env.clock.now += 901
    fresh = otp.at(env.clock.now)
    ok = await attempt(auth, "alice", PASSWORDS["alice"] + fresh, ctx("192.0.2.10"))
    assert (ok.outcome, ok.factor) == (Outcome.OK, "password+totp")


# -- the verified-password cache ----------------------------------------------------


@pytest.mark.asyncio
async def test_verified_cache_skips_the_password_check_for_the_same_device_only(
    env: Env,
) -> None:
    auth = env.auth(verified_cache_seconds=300.0)
    otp = env.enroll("alice")
    typed = PASSWORDS["alice"] + otp.at(env.clock.now)
    assert (await attempt(auth, "alice", typed)).outcome is Outcome.OK
    env.upstream.calls.clear()
    assert (await attempt(auth, "alice", typed)).outcome is Outcome.OK
    # Remembered: the session is opened with the master login, no password sent.
    assert env.upstream.calls == [("alice", None)]
    env.upstream.calls.clear()
    # Another network: not the same (user, device, password), so checked again.
    await attempt(auth, "alice", typed, ctx("198.51.100.1"))
    assert ("alice", PASSWORDS["alice"]) in env.upstream.calls
    # Expired entries are checked again.
    env.upstream.calls.clear()
    env.clock.now += 301
    await attempt(auth, "alice", PASSWORDS["alice"])
    assert ("alice", PASSWORDS["alice"]) in env.upstream.calls


@pytest.mark.asyncio
async def test_verified_cache_is_never_shared_between_users(env: Env) -> None:
    PASSWORDS["carol"] = "shared-password"
    PASSWORDS["dave"] = "shared-password"
    try:
        auth = env.auth(verified_cache_seconds=300.0)
        for user in ("carol", "dave"):
            otp = env.enroll(user)
            await attempt(auth, user, "shared-password" + otp.at(env.clock.now))
        env.upstream.calls.clear()
        # dave's entry exists; erin (unknown upstream) with the same string is checked.
        await attempt(auth, "erin", "shared-password")
        assert env.upstream.calls == [("erin", "shared-password")]
    finally:
        del PASSWORDS["carol"], PASSWORDS["dave"]


# -- bearer tokens and client certificates -------------------------------------------


class Tokens:
    """A stand-in TokenVerifier: the token text is 'user.mfa', 'user.nomfa' or 'user.bad'."""

    settings = oauth.OAuthConfig(issuer="https://idp.example.org", audience="imap")

    async def verify(self, token: Secret, authzid: str | None) -> oauth.VerifiedToken:
        user, _, kind = token.reveal().decode().partition(".")
        if kind == "bad":
            raise oauth.TokenRejected("signature verification failed")
        if authzid is not None and authzid != user:
            raise oauth.TokenRejected(f"token is for {user!r}, not {authzid!r}")
        return oauth.VerifiedToken(
            user=user,
            amr=("mfa",) if kind == "mfa" else ("pwd",),
            acr=None,
            mfa=kind == "mfa",
            sub=user,
            jti=None,
            client_id=None,
            kid="k1",
            expires_at=0.0,
        )


def bearer(user: str, token: str) -> Credentials:
    return Credentials(
        "OAUTHBEARER", b"", Secret(f"n,a={user},\x01auth=Bearer {token}\x01\x01".encode())
    )


@pytest.mark.asyncio
async def test_bearer_token_with_mfa_opens_a_master_session(env: Env) -> None:
    env.tokens = Tokens()
    auth = env.auth(methods=("oauthbearer",))
    result = await auth.authenticate(bearer("alice", "alice.mfa"), ctx(), "s")
    assert (result.outcome, result.factor, result.challenge) == (Outcome.OK, "oauth-mfa", None)
    assert env.upstream.calls == [("alice", None)]


@pytest.mark.parametrize(
    ("token", "outcome"),
    [("alice.nomfa", Outcome.MISSING_FACTOR), ("alice.bad", Outcome.INVALID), ("", None)],
)
@pytest.mark.asyncio
async def test_bearer_failures_carry_the_error_challenge(
    env: Env, token: str, outcome: Outcome | None
) -> None:
    env.tokens = Tokens()
    auth = env.auth(methods=("oauthbearer",))
    result = await auth.authenticate(bearer("alice", token), ctx(), "s")
    assert result.outcome is (outcome or Outcome.INVALID)
    assert result.challenge is not None
    assert b"invalid_token" in result.challenge
    assert env.upstream.calls == []


@pytest.mark.asyncio
async def test_bearer_mechanism_not_enabled(env: Env) -> None:
    env.tokens = Tokens()
    auth = env.auth(methods=("password+totp",))
    result = await auth.authenticate(bearer("alice", "alice.mfa"), ctx(), "s")
    assert result.outcome is Outcome.INVALID
    assert "not enabled" in result.reason


@pytest.mark.asyncio
async def test_external_uses_the_certificate_account(env: Env) -> None:
    auth = env.auth(methods=("client-cert",))
    external = Credentials("EXTERNAL", b"", Secret(b""), b"")
    ok = await auth.authenticate(external, ctx(cert_user="alice"), "s")
    assert (ok.outcome, ok.user, ok.factor) == (Outcome.OK, "alice", "client-cert")
    none = await auth.authenticate(external, ctx(), "s")
    assert none.outcome is Outcome.INVALID
    other = Credentials("EXTERNAL", b"bob", Secret(b""), b"bob")
    assert (await auth.authenticate(other, ctx(cert_user="alice"), "s")).outcome is Outcome.INVALID


@pytest.mark.asyncio
async def test_password_plus_certificate(env: Env) -> None:
    auth = env.auth(methods=("client-cert",))
    both = await attempt(auth, "alice", PASSWORDS["alice"], ctx(cert_user="alice"))
    assert (both.outcome, both.factor) == (Outcome.OK, "password+client-cert")
    # A certificate for someone else is no factor for alice.
    mismatch = await attempt(auth, "alice", PASSWORDS["alice"], ctx(cert_user="bob"))
    assert mismatch.outcome is Outcome.MISSING_FACTOR


@pytest.mark.asyncio
async def test_a_factor_left_out_of_sufficient_is_not_enough(env: Env) -> None:
    auth = env.auth(sufficient=("password+totp",))
    otp = env.enroll("alice")
    assert (await attempt(auth, "alice", PASSWORDS["alice"] + otp.at(env.clock.now))).outcome is (
        Outcome.OK
    )
    # trusted-device is not in auth.sufficient: the device's stale string is not enough.
    result = await attempt(auth, "alice", PASSWORDS["alice"] + otp.at(env.clock.now))
    assert (result.outcome, result.factor) == (Outcome.MISSING_FACTOR, "trusted-device")


# -- one timing profile ---------------------------------------------------------------


class SlowRefusals(Upstream):
    """Refuses wrong passwords only after `delay` seconds, as Dovecot does (2 s)."""

    def __init__(self, clock: Clock, delay: float) -> None:
        super().__init__()
        self.clock = clock
        self.delay = delay

    logs_in_for_users = True  # a master user is configured

    async def login(
        self, user: str, password: Secret | None, client: ClientAddress
    ) -> UpstreamSession:
        try:
            return await super().login(user, password, client)
        except UpstreamRefused:
            self.clock.now += self.delay
            raise


@pytest.mark.asyncio
async def test_every_failure_takes_as_long_as_a_refused_password(env: Env) -> None:
    """A correct password without a factor is answered by Dovecot at once; a wrong
    one after its failure delay. Padding every failure to the refusals' 90th
    percentile keeps timing from telling them apart."""
    env.upstream = SlowRefusals(env.clock, 2.0)
    auth = env.auth(methods=("password+totp",))
    assert auth.failure_floor() == 0.0  # failure_delay of this Env
    durations: dict[str, list[float]] = {"wrong password": [], "missing factor": []}
    for i in range(20):
        for kind, secret in (("wrong password", f"guess-{i}"), ("missing factor", None)):
            started = env.clock.now
            result = await attempt(auth, "alice", secret or PASSWORDS["alice"], ctx(f"10.0.{i}.1"))
            assert result.outcome is not Outcome.OK
            durations[kind].append(env.clock.now - started)
    assert auth.failure_floor() == 2.0
    # After the first refusal taught the floor, both kinds take the same time.
    assert min(durations["missing factor"][1:]) >= 2.0
    assert max(durations["wrong password"]) == 2.0


# -- the defense inside the chokepoint ------------------------------------------------


def defended(env: Env, **settings: Any) -> Authenticator[UpstreamSession]:
    """The chokepoint with a real defense on the same store (also used by
    tests/unit/test_signin.py: the portal's sign-in shares it)."""
    from imapguard.defense import Defense, DefenseSettings, Fingerprinter

    auth = env.auth(methods=("app-password", "password+totp"))
    auth.defense = Defense(
        DefenseSettings(**settings),
        env.store,
        env.clock,
        random.Random(3),
        fingerprints=Fingerprinter(Secret(KEY)),
    )
    return auth


def _block(env: Env, ip: str) -> None:
    from imapguard.defense import Block, Target, TargetKind

    now = env.clock.now
    env.store.block_put(Block(Target(TargetKind.SOURCE, ip), "test", 1, now, now + 60))


@pytest.mark.asyncio
async def test_blocked_source_is_refused_before_any_credential_check(env: Env) -> None:
    auth = defended(env)
    _block(env, "203.0.113.66")
    result = await attempt(auth, "alice", PASSWORDS["alice"], ctx("203.0.113.66"))
    assert (result.outcome, result.blocked) == (Outcome.INVALID, True)
    assert result.reason.startswith("blocked: test")
    assert env.upstream.calls == []  # nothing was checked
    # The block expires by itself.
    env.clock.now += 61
    result = await attempt(auth, "alice", PASSWORDS["alice"], ctx("203.0.113.66"))
    assert not result.blocked


@pytest.mark.asyncio
async def test_repeated_guesses_are_delayed_then_blocked(env: Env) -> None:
    slept: list[float] = []
    auth = defended(env, pair_free=1, pair_block=3, delay_base=2.0, delay_jitter=0.0)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        env.clock.now += seconds

    auth._sleep = sleep
    for n in range(4):
        await attempt(auth, "alice", f"guess-{n}", ctx("198.51.100.9"))
    # The first guess is free; then the precheck waits before checking anything.
    assert slept[0] > 0  # a failure's padding or a defense delay
    blocked = await attempt(auth, "alice", "guess-x", ctx("198.51.100.9"))
    assert blocked.blocked
    guesses = [c for c in env.upstream.calls if c[1] is not None and c[1].startswith("guess")]
    assert len(guesses) == 3  # the rest never reached the upstream


@pytest.mark.asyncio
async def test_log_only_mode_records_but_never_blocks(env: Env, tmp_path: Path) -> None:
    import json

    auth = defended(env, enforce=False)
    _block(env, "203.0.113.67")
    result = await attempt(auth, "alice", PASSWORDS["alice"], ctx("203.0.113.67"))
    assert not result.blocked
    assert ("alice", PASSWORDS["alice"]) in env.upstream.calls
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    logged = [e for e in events if e["event"] == "defense_log_only"]
    assert logged[-1]["would"] == "blocked"


class Penalized(Upstream):
    """Dovecot's timing, per client address: a penalty that doubles with each failure
    (4, 8, then 15 s at most) before any answer, then 2 s more for a refusal; a
    right password clears the penalty (auth-penalty.c)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.failures: dict[str, int] = {}

    def penalty(self, ip: str) -> float:
        # As measured on Debian's Dovecot 2.3: refusals of 2, 6, 10, 17, 17 s.
        n = self.failures.get(ip, 0)
        return 0.0 if n == 0 else min(15.0, 2.0 * 2**n)

    logs_in_for_users = True  # a master user is configured

    async def login(
        self, user: str, password: Secret | None, client: ClientAddress
    ) -> UpstreamSession:
        self.clock.now += self.penalty(client.ip)
        try:
            session = await super().login(user, password, client)
        except UpstreamRefused:
            self.clock.now += 2.0
            self.failures[client.ip] = self.failures.get(client.ip, 0) + 1
            raise
        self.failures.pop(client.ip, None)
        return session


@pytest.mark.asyncio
@pytest.mark.parametrize("failures", [0, 1, 2, 3, 4, 6])
async def test_timing_oracle_at_every_upstream_penalty_level(env: Env, failures: int) -> None:
    """A5: with the upstream's per-address penalty at any level (up to Dovecot's 15 s,
    past the floor's 10 s cap), a right password without its factor, a wrong password
    and a blocked source are answered after the same time."""
    upstream = Penalized(env.clock)
    env.upstream = upstream
    # The defense neither delays nor blocks here (its own delays are decided before
    # any check, alike for every kind); the one block is placed by the test.
    auth = defended(env, pair_free=1000, source_free=1000, **_NO_BLOCKS)
    # Another address teaches the gateway the upstream's plain refusal time.
    await attempt(auth, "alice", "warm-up", ctx("198.51.100.200"))
    ip = "203.0.113.9"

    async def build_penalty() -> None:
        env.clock.now += 60  # quiet: the upstream's penalty has faded
        upstream.failures[ip] = 0
        for n in range(failures):
            await attempt(auth, "alice", f"guess-{n}-{secrets_suffix()}", ctx(ip))

    async def timed(secret: str) -> float:
        started = env.clock.now
        result = await attempt(auth, "alice", secret, ctx(ip))
        assert result.outcome is not Outcome.OK
        return env.clock.now - started

    await build_penalty()
    right = await timed(PASSWORDS["alice"])  # no code: missing factor (clears the penalty)
    await build_penalty()
    wrong = await timed("a-wrong-password")
    await build_penalty()
    _block(env, ip)
    blocked = await timed(PASSWORDS["alice"])
    env.store.block_delete(_source(ip))
    assert right == pytest.approx(wrong, abs=1e-6), (right, wrong, upstream.penalty(ip))
    assert blocked == pytest.approx(wrong, abs=1e-6), (blocked, wrong)


_NO_BLOCKS = {
    "account_lockout": 1000,
    "account_attacked": 1000,
    "pair_block": 1000,
    "source_failures": 1000,
    "source_accounts": 1000,
    "network_failures": 1000,
    "network_accounts": 1000,
    "spray_accounts": 1000,
}


def secrets_suffix() -> str:
    import secrets

    return secrets.token_hex(4)


def _source(ip: str) -> Any:
    from imapguard.defense import Target, TargetKind

    return Target(TargetKind.SOURCE, ip)


# -- a trusted device is the device, not its network (A7) -------------------------------


@pytest.mark.asyncio
async def test_trusted_device_forged_from_the_same_network_with_the_password_alone(
    env: Env,
) -> None:
    auth = env.auth()
    otp = env.enroll("alice")
    typed = PASSWORDS["alice"] + otp.at(env.clock.now)
    assert (await attempt(auth, "alice", typed, ctx("192.0.2.10"))).outcome is Outcome.OK
    # The attacker: the phished password, the victim's /24 and mail client ID.
    forged = await attempt(auth, "alice", PASSWORDS["alice"], ctx("192.0.2.66"))
    assert forged.outcome is Outcome.MISSING_FACTOR
    assert "trusted only with the code it proved" in forged.reason
    # A guess at the device's stale code is a wrong code: counted, then locked.
    right_code = otp.at(env.clock.now)
    guess = f"{(int(right_code) + 1) % 1_000_000:06d}"
    wrong = await attempt(auth, "alice", PASSWORDS["alice"] + guess, ctx("192.0.2.66"))
    assert wrong.outcome is Outcome.MISSING_FACTOR
    record = env.store.get_totp("alice")
    assert record is not None
    assert record.failures == 1
    # The device itself, sending what it stored, days later: still fine.
    env.clock.now += 5 * 86400
    again = await attempt(auth, "alice", typed, ctx("192.0.2.10"))
    assert (again.outcome, again.factor) == (Outcome.OK, "trusted-device")


@pytest.mark.asyncio
async def test_stale_code_guessing_stops_at_the_code_lockout(env: Env) -> None:
    auth = env.auth(totp_max_failures=2, totp_lockout=900.0)
    otp = env.enroll("alice")
    typed = PASSWORDS["alice"] + otp.at(env.clock.now)
    assert (await attempt(auth, "alice", typed, ctx("192.0.2.10"))).outcome is Outcome.OK
    env.clock.now += 3600
    for code in ("000001", "000002"):
        await attempt(auth, "alice", PASSWORDS["alice"] + code, ctx("192.0.2.66"))
    # Locked: even the right stale code from another address of the /24 is refused...
    hit = await attempt(auth, "alice", typed, ctx("192.0.2.66"))
    assert hit.outcome is Outcome.MISSING_FACTOR
    # ...while the device at its own address keeps working.
    own = await attempt(auth, "alice", typed, ctx("192.0.2.10"))
    assert (own.outcome, own.factor) == (Outcome.OK, "trusted-device")


@pytest.mark.asyncio
async def test_approved_device_is_trusted_at_its_exact_address_for_a_shorter_time(
    env: Env,
) -> None:
    auth = env.auth(approved_device_trust=3600.0)
    env.enroll("alice")
    pending = await attempt(auth, "alice", PASSWORDS["alice"], ctx("192.0.2.10"))
    assert pending.outcome is Outcome.MISSING_FACTOR
    assert pending.device is not None
    assert env.store.approve_device("alice", pending.device, env.clock.now + 3600.0)
    ok = await attempt(auth, "alice", PASSWORDS["alice"], ctx("192.0.2.10"))
    assert (ok.outcome, ok.factor) == (Outcome.OK, "trusted-device")
    # Same /24, same client: another address is not the approved device.
    other = await attempt(auth, "alice", PASSWORDS["alice"], ctx("192.0.2.11"))
    assert other.outcome is Outcome.MISSING_FACTOR
    assert "trusted only at 192.0.2.10" in other.reason
    env.clock.now += 3601
    late = await attempt(auth, "alice", PASSWORDS["alice"], ctx("192.0.2.10"))
    assert late.outcome is Outcome.MISSING_FACTOR


@pytest.mark.asyncio
async def test_a_device_trusted_before_the_binding_proves_a_code_again(env: Env) -> None:
    """Devices trusted by an older imapguard carry neither a code digest nor an
    address: they are not trusted until they prove a code once more."""
    from imapguard.state.sqlite import DeviceKey

    auth = env.auth()
    env.enroll("alice")
    key = DeviceKey("alice", "192.0.2.0/24", "Mail", "1.0")
    device = env.store.trust_device(key, env.clock.now, env.clock.now + 86400, "192.0.2.10", b"x")
    env.store._db.execute("UPDATE devices SET secret = NULL WHERE id = ?", (device.id,))
    result = await attempt(auth, "alice", PASSWORDS["alice"], ctx("192.0.2.10"))
    assert result.outcome is Outcome.MISSING_FACTOR


# -- A9: the policy's client_cert, sessions never leaked ----------------------------------


@pytest.mark.asyncio
async def test_another_accounts_certificate_does_not_meet_a_client_cert_rule(env: Env) -> None:
    from imapguard.policy.gate import PolicyGate, load_policy
    from imapguard.policy.rules import PolicyConfig

    policy, _ = load_policy(
        PolicyConfig.model_validate(
            {"rules": [{"name": "cert", "action": "allow", "client_cert": True}]}
        ),
        None,
    )
    assert isinstance(policy, PolicyGate)
    auth = env.auth(methods=("password+totp", "client-cert"))
    auth.policy = policy
    otp = env.enroll("alice")
    typed = PASSWORDS["alice"] + otp.at(env.clock.now)
    # Bob's certificate, alice's password and code: the rule needs alice's certificate.
    result = await attempt(auth, "alice", typed, ctx(cert_user="bob"))
    assert result.outcome is Outcome.DENIED
    env.clock.now += 30
    typed = PASSWORDS["alice"] + otp.at(env.clock.now)
    own = await attempt(auth, "alice", typed, ctx(ip="192.0.2.10", cert_user="alice"))
    assert own.outcome is Outcome.OK


class _TrackedLink(_Link):
    closed = 0

    def close(self) -> None:
        _TrackedLink.closed += 1


@pytest.mark.asyncio
async def test_an_unexpected_error_after_the_password_check_closes_the_upstream_session(
    env: Env,
) -> None:
    auth = env.auth()
    otp = env.enroll("alice")
    sessions: list[UpstreamSession] = []

    class Tracked(Upstream):
        async def login(
            self, user: str, password: Secret | None, client: ClientAddress
        ) -> UpstreamSession:
            link: Any = _TrackedLink()
            sessions.append(UpstreamSession(link=link, capabilities=[], leftover=b""))
            return sessions[-1]

    auth.upstream = Tracked()

    def broken(*args: Any) -> bool:
        raise RuntimeError("a bug in the store")

    env.store.use_totp_step = broken  # type: ignore[method-assign,assignment]
    _TrackedLink.closed = 0
    with pytest.raises(RuntimeError):
        await attempt(auth, "alice", PASSWORDS["alice"] + otp.at(env.clock.now))
    assert len(sessions) == 1
    assert _TrackedLink.closed == 1


@pytest.mark.asyncio
async def test_forged_device_is_no_familiar_source_for_the_defense(env: Env) -> None:
    """The defense's precheck treats a trusted device as one of the account's familiar
    sources (smart lockout spares them): the network and client ID alone, which an
    attacker on that network can copy, must not make him one."""
    auth = defended(env)
    otp = env.enroll("alice")
    typed = PASSWORDS["alice"] + otp.at(env.clock.now)
    assert (await attempt(auth, "alice", typed, ctx("192.0.2.10"))).outcome is Outcome.OK
    forged, _, _ = await auth._precheck(login("alice", "a-guess"), ctx("192.0.2.66"), None)
    assert not forged.trusted_device
    real, _, _ = await auth._precheck(login("alice", typed), ctx("192.0.2.10"), None)
    assert real.trusted_device

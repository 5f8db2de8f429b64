"""The one authentication chokepoint: every login path of every listener calls
`Authenticator.authenticate()`, and nothing else decides who gets in.

Order (fixed, in one place): make the account name the upstream's own
(`names.AccountNames`: realms, the master-user separator and odd characters
refused) → establish what the login proves (an app password by its keyed hash;
an OAuth token by its signature and claims; a client certificate from the TLS
layer; the primary password by logging in to the upstream as the user, then a
one-time code or a trusted device) → is that proof in `auth.sufficient`? → open
the upstream session (the password login itself, or a master login for proofs
that carry no password). The result is typed: OK, INVALID, MISSING_FACTOR or
UNAVAILABLE, with the real reason and the factor for the audit log only.

The password field of LOGIN / SASL PLAIN may hold the password followed by a
6-digit code (`totp.split_password_and_code`). How it is read is decided locally,
before the upstream is asked, and the upstream is asked once (`_reading`): a
code that verifies now, or the code a trusted device proved (kept as a keyed
digest: the device's secret), makes it password+code; an owner-approved device
at its exact address, or a client certificate of the account, takes the field
as the password; an account with a code enrolled reads trailing digits as a
(wrong) code, so that a wrong code after a correct password is seen and counted
(`totp_max_failures`). A correct password without a sufficient factor is a
compromise signal: audited, the owner told (`on_notice`), and from an unknown
device a pending device is created for the owner to approve. On the wire every
failure looks the same (`NO [AUTHENTICATIONFAILED] Authentication failed.`) and
is answered no sooner than the upstream would have refused that source's
password right now, plus a random jitter (`_failure_target`, `penalty.py`), so
neither text nor timing tells an unknown user from a wrong password, a right
password without its factor from a wrong one, or a blocked source from a checked
one, whatever the upstream's per-address penalty. A dead state store fails
closed (UNAVAILABLE).

State access: point reads go to `reader` on the event loop (WAL: never blocked
by a writer); writes a decision depends on are awaited on the store's worker
thread (`_store`); bookkeeping after a decision (last login, last use) is queued
on `bookkeeping` and written in batches.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import enum
import functools
import hashlib
import hmac
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from imapguard.audit import AuditEvent, AuditLog
from imapguard.auth import app_passwords, oauth, totp
from imapguard.auth.penalty import UpstreamPenalty
from imapguard.defense.counters import TargetKind
from imapguard.defense.engine import Action, Attempt, Defense, FailureKind, Verdict
from imapguard.defense.events import BlockPlaced, DefenseEvent
from imapguard.errors import StateUnavailable, UpstreamRefused, UpstreamUnavailable
from imapguard.gateway.upstream import (
    ClientAddress,
    UpstreamSession,
    UpstreamSettings,
    open_session,
)
from imapguard.imap.preauth import Credentials
from imapguard.keys import DEVICE_SECRET, VERIFIED_CACHE, derive_key
from imapguard.names import AccountNames
from imapguard.net import network
from imapguard.policy.engine import DecisionKind
from imapguard.policy.gate import PolicyGate
from imapguard.secret import Secret
from imapguard.state.accounts import AccountStore, DeviceKey, DeviceRecord, TotpRecord
from imapguard.state.writebehind import WriteBehind
from imapguard.vocab import DEFAULT_SUFFICIENT

__all__ = [
    "AuthContext",
    "AuthResult",
    "Authenticator",
    "FactorSettings",
    "Outcome",
    "canonical_user",
]

log = logging.getLogger("imapguard.auth")
T = TypeVar("T")

# The adaptive failure floor never exceeds this: clients give up near 30 s, and an
# upstream that hangs must not make every failure hang with it. (Per source, the
# upstream's own penalty is followed further: see `Authenticator._failure_target`.)
MAX_FAILURE_FLOOR = 10.0
# Upstream refusal times kept for the floor's percentile.
REFUSAL_SAMPLES = 256


class Outcome(enum.Enum):
    OK = "ok"
    INVALID = "invalid"
    MISSING_FACTOR = "missing_factor"
    DENIED = "denied"  # authenticated, but the policy says no
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class AuthContext:
    client: ClientAddress
    client_id: str | None
    listener: str
    # IMAP ID name and version ("" when the client sent none): part of a device.
    id_name: str = ""
    id_version: str = ""
    # The account a verified client certificate maps to, if one was presented.
    cert_user: str | None = None


@dataclass(frozen=True)
class AuthResult:
    outcome: Outcome
    user: str | None
    method: str | None
    reason: str
    session: UpstreamSession | None = None
    # What the login proved ("app-password", "password+totp", "trusted-device", ...).
    factor: str | None = None
    device: str | None = None
    # A failed OAUTHBEARER/XOAUTH2 exchange: the RFC 7628 error JSON for the client.
    challenge: bytes | None = None
    # The policy rule that decided, and the [ALERT] text of a deny (shown only to
    # a client whose credentials were right).
    rule: str | None = None
    alert: str | None = None
    # Refused by the defense before any credential was looked at.
    blocked: bool = False


@dataclass(frozen=True)
class FactorSettings:
    """[auth] settings the factor decisions need (see config.AuthConfig)."""

    sufficient: tuple[str, ...] = DEFAULT_SUFFICIENT
    device_trust: float = 30 * 86400.0
    totp_max_failures: int = 5
    totp_lockout: float = 900.0
    new_device_approval: bool = True
    verified_cache_seconds: float = 300.0
    verified_cache_entries: int = 10_000
    # A pending device its owner approved: trusted this long, at its exact address.
    approved_device_trust: float = 7 * 86400.0
    # The account-name rule (imapguard.names).
    names: AccountNames = field(default_factory=AccountNames)


# Called (synchronously; it must not block) when the owner should be told:
# kind is "compromise_signal" or "new_device".
NoticeHook = Callable[[str, str, AuthContext, str | None], None]


def canonical_user(raw: bytes) -> str | None:
    """The account `raw` names under the default rule (imapguard.names);
    the chokepoint itself applies the configured one."""
    return _DEFAULT_NAMES.canonical(raw)


_DEFAULT_NAMES = AccountNames()


class _Account:
    """One login's view of the account's factor records: each is read at most
    once per attempt (the defense's precheck and the factor checks share it)."""

    def __init__(self, reader: AccountStore, key: DeviceKey) -> None:
        self.key = key
        self._reader = reader

    @functools.cached_property
    def device(self) -> DeviceRecord | None:
        return self._reader.find_device(self.key)

    @functools.cached_property
    def totp(self) -> TotpRecord | None:
        return self._reader.get_totp(self.key.user)

    def enrolled(self) -> bool:
        """Has the account any second factor (so a bare password is suspicious)?"""
        user = self.key.user
        return (
            self.totp is not None
            or bool(self._reader.list_app_passwords(user))
            or any(d.status == "trusted" for d in self._reader.list_devices(user))
        )


@dataclass(frozen=True)
class _Reading:
    """How the password field is read: the password, and the code if any."""

    password: Secret
    code: str | None
    step: int | None = None  # the code verified for this time step
    # The code is the one this trusted device proved (its digest matched).
    device_code: bool = False


@dataclass
class _Timing:
    """One attempt's clock, for its failure's timing (see `_failure_target`)."""

    started: float
    # The upstream's refusal time for this source when the attempt began.
    refusal: float = 0.0
    # When an upstream check said the password was right (or the verified cache did).
    password_ok_at: float | None = None


_ATTEMPT: contextvars.ContextVar[_Timing | None] = contextvars.ContextVar(
    "imapguard_attempt", default=None
)


class Authenticator:
    def __init__(
        self,
        *,
        methods: tuple[str, ...],
        store: AccountStore,
        store_executor: Executor,
        app_password_key: bytes,
        upstream: UpstreamSettings,
        audit: AuditLog,
        failure_delay: float,
        failure_jitter: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        connect: Callable[..., Awaitable[UpstreamSession]] = open_session,
        reader: AccountStore | None = None,
        bookkeeping: WriteBehind | None = None,
        factors: FactorSettings | None = None,
        totp_key: bytes | None = None,
        on_notice: NoticeHook | None = None,
        token_verifier: oauth.TokenVerifier | None = None,
        oauth_scope: str = "openid email",
        policy: PolicyGate | None = None,
        defense: Defense | None = None,
    ) -> None:
        self.methods = methods
        self.store = store
        self.reader = reader or store
        self.bookkeeping = bookkeeping or WriteBehind(store, store_executor)
        self.upstream = upstream
        self.factors = factors or FactorSettings()
        self._executor = store_executor
        self._key = app_password_key
        self._totp_key = totp_key
        self._audit = audit
        self._delay = failure_delay
        self._jitter = failure_jitter
        self._refusals: deque[float] = deque(maxlen=REFUSAL_SAMPLES)
        # The upstream's per-address refusal time (imapguard.auth.penalty).
        self.penalty = UpstreamPenalty(clock, failure_delay)
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._rng = rng or random.SystemRandom()
        self._connect = connect
        self._on_notice = on_notice
        self._tokens = token_verifier
        self._oauth_scope = oauth_scope
        self.policy = policy or PolicyGate()
        self.defense = defense
        self.names = self.factors.names
        # keyed hash of (user, method, device, password) -> expiry (monotonic)
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        self._cache_key = derive_key(Secret(app_password_key), VERIFIED_CACHE)
        self._device_secret_key = derive_key(Secret(app_password_key), DEVICE_SECRET)

    async def authenticate(
        self, credentials: Credentials, ctx: AuthContext, session: str
    ) -> AuthResult:
        started = self._clock()
        timing = _Timing(started, self.penalty.predicted_refusal(ctx.client.ip))
        token = _ATTEMPT.set(timing)
        try:
            return await self._authenticate(credentials, ctx, session, timing)
        finally:
            _ATTEMPT.reset(token)

    async def _authenticate(
        self, credentials: Credentials, ctx: AuthContext, session: str, timing: _Timing
    ) -> AuthResult:
        attempt: Attempt | None = None
        verdict: Verdict | None = None
        account: _Account | None = None
        try:
            if self.defense is not None:
                attempt, verdict, account = self._precheck(credentials, ctx)
                if verdict.would_block or verdict.would_delay != verdict.delay:
                    self._audit.emit(
                        AuditEvent(
                            "defense_log_only",
                            session,
                            {
                                "src": ctx.client.ip,
                                "user": attempt.user,
                                "would": verdict.would.value,
                                "would_delay": round(verdict.would_delay, 2),
                                "reason": verdict.reason,
                            },
                        )
                    )
            if verdict is not None and verdict.action is Action.BLOCKED:
                result = AuthResult(
                    Outcome.INVALID,
                    attempt.user if attempt else None,
                    None,
                    f"blocked: {verdict.reason} (until {verdict.expires:.0f})",
                    blocked=True,
                )
            else:
                if verdict is not None and verdict.action is Action.DELAY:
                    # Before any expensive check; a coroutine waits, no thread does.
                    await self._sleep(verdict.delay)
                fresh = verdict is not None and verdict.require_factor
                result = await self._decide(credentials, ctx, fresh, account)
            if attempt is not None and verdict is not None:
                await self._record(attempt, verdict, result, ctx, session)
        except StateUnavailable as exc:
            result = AuthResult(Outcome.UNAVAILABLE, None, None, f"state store: {exc.detail}")
        self._audit.emit(
            AuditEvent(
                "auth",
                session,
                {
                    "src": ctx.client.ip,
                    "listener": ctx.listener,
                    "client_id": ctx.client_id,
                    "mechanism": credentials.mechanism,
                    "user": result.user or credentials.username.decode("utf-8", "replace")[:64],
                    "method": result.method,
                    "factor": result.factor,
                    "device": result.device,
                    "rule": result.rule,
                    "delay": round(verdict.delay, 2) if verdict and verdict.delay else None,
                    "result": result.outcome.value,
                    "reason": result.reason,
                },
            )
        )
        if result.outcome is not Outcome.OK:
            # One timing profile for every failure (SPEC "Failures are uniform").
            target = self._failure_target(timing)
            target += self._rng.uniform(0, self._jitter)
            remaining = target - (self._clock() - timing.started)
            if remaining > 0:
                await self._sleep(remaining)
        return result

    def _failure_target(self, timing: _Timing) -> float:
        """How long after the command this failure is answered (before jitter).

        Whatever failed, the answer must take as long as a refusal by the upstream
        would take for this source now. The upstream's refusal time grows with its
        per-address penalty (Dovecot: up to 15 s, past the floor's cap), and a right
        password is answered after the penalty alone. So the target is the highest
        of: the floor (recent refusal times from anywhere, capped); the refusal
        time predicted for this source when the attempt began (imapguard.auth.penalty:
        what a failure that never reached the upstream, a block or a malformed name,
        must wait); and,
        when the upstream said the password was right but the login fails anyway (no
        factor, a policy), the time that took plus what a refusal adds. At any
        penalty a right and a wrong password then end alike."""
        target = max(self.failure_floor(), timing.refusal)
        if timing.password_ok_at is not None:
            ok_after = timing.password_ok_at - timing.started
            target = max(target, ok_after + self.penalty.refusal_delay())
        return target

    # -- defense: how often have you failed? ------------------------------------

    def _precheck(
        self, credentials: Credentials, ctx: AuthContext
    ) -> tuple[Attempt, Verdict, _Account | None]:
        """Reads only (on the event loop): blocks, delays, the posture; and the
        account view the factor checks go on with."""
        assert self.defense is not None  # noqa: S101 - checked by the caller
        mechanism = credentials.mechanism
        bearer = mechanism in ("OAUTHBEARER", "XOAUTH2")
        if mechanism == "EXTERNAL":
            user, secret = self._cert_user(ctx), None
        elif bearer:
            user, secret = None, credentials.secret
        else:
            user, secret = self.names.canonical(credentials.username), credentials.secret
        trusted, account = False, None
        if user is not None and "password+totp" in self.methods:
            account = _Account(self.reader, self._device_key(user, ctx))
            trusted = self._looks_like_the_device(account.device, secret, ctx)
        attempt = self.defense.attempt(
            ctx.client.ip,
            user,
            secret if secret else None,
            method=mechanism.lower(),
            listener=ctx.listener,
            trusted_device=trusted,
            spray=not bearer,
        )
        return attempt, self.defense.precheck(attempt), account

    async def _record(
        self,
        attempt: Attempt,
        verdict: Verdict,
        result: AuthResult,
        ctx: AuthContext,
        session: str,
    ) -> None:
        """Count the outcome (writes, on the store thread). Blocked attempts,
        policy decisions and an unavailable upstream count for nothing."""
        assert self.defense is not None  # noqa: S101 - checked by the caller
        defense = self.defense
        if result.outcome is Outcome.OK:
            # Off the login path, batched; its events still reach the audit log.
            def succeeded() -> None:  # on the store thread: audit only, no notices
                events = defense.record_success(attempt)
                self._defense_events(events, session, ctx, notify=False)

            self.bookkeeping.submit(succeeded)
            return
        if result.blocked or result.rule is not None or result.outcome is Outcome.UNAVAILABLE:
            return  # (a DENIED result always names its rule)
        if result.outcome is Outcome.MISSING_FACTOR:
            kind = FailureKind.FACTOR
        elif result.user is None and attempt.user is None and result.method is None:
            kind = FailureKind.MALFORMED
        else:
            kind = FailureKind.CREDENTIAL
        events = await self._store(defense.record_failure, attempt, kind, verdict.familiar)
        self._defense_events(events, session, ctx)

    def _defense_events(
        self,
        events: list[DefenseEvent],
        session: str | None,
        ctx: AuthContext | None,
        *,
        notify: bool = True,
    ) -> None:
        for event in events:
            self._audit.emit(AuditEvent(event.event, session, event.fields()))
            if (
                notify
                and ctx is not None
                and isinstance(event, BlockPlaced)
                and event.block.target.kind is TargetKind.ACCOUNT_UNFAMILIAR
                and self._known(event.block.target.value)
            ):
                self._notice("lockout", event.block.target.value, ctx, None)

    def _known(self, user: str) -> bool:
        """An account the gateway knows (it logged in, or has a factor or device):
        only those are told of a lockout. Anyone can fail ten logins under any
        name; the organisation's relay must not mail whatever name they chose."""
        try:
            return self.reader.get_user(user) is not None
        except StateUnavailable:
            return False

    async def maintain(self, session: str | None = None) -> None:
        """Purge expired counters and let the posture relax (about once a minute)."""
        if self.defense is None:
            return
        events = await self._store(self.defense.maintain)
        self._defense_events(events, session, None, notify=False)

    def failure_floor(self) -> float:
        """How long every failure takes at least (before jitter)."""
        if not self._refusals:
            return self._delay
        ordered = sorted(self._refusals)
        # Few samples (just started): the slowest one, not a percentile of them.
        index = len(ordered) - 1 if len(ordered) < 32 else int(len(ordered) * 0.9)
        return max(self._delay, min(ordered[index], MAX_FAILURE_FLOOR))

    async def _password_login(
        self, user: str, password: Secret, ctx: AuthContext
    ) -> UpstreamSession:
        """Log in upstream with the user's password; a refusal's duration feeds
        the failure floor."""
        started = self._clock()
        try:
            session = await self._connect(self.upstream, user, password, ctx.client)
        except UpstreamRefused:
            duration = self._clock() - started
            self._refusals.append(duration)
            self.penalty.refused(ctx.client.ip, duration)
            raise
        _password_ok(self._clock())
        self.penalty.succeeded(ctx.client.ip)
        return session

    def _cert_user(self, ctx: AuthContext) -> str | None:
        """The account the verified client certificate names, under the rule."""
        return self.names.canonical_text(ctx.cert_user) if ctx.cert_user else None

    async def _store(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _decide(
        self,
        credentials: Credentials,
        ctx: AuthContext,
        fresh_factor: bool = False,
        account: _Account | None = None,
    ) -> AuthResult:
        mechanism = credentials.mechanism
        if mechanism in ("OAUTHBEARER", "XOAUTH2"):
            result = await self._bearer(mechanism, credentials.secret, ctx)
            if result.outcome in (Outcome.INVALID, Outcome.MISSING_FACTOR):
                result = _with_challenge(result, self._challenge(mechanism))
            return result
        if mechanism == "EXTERNAL":
            return await self._external(credentials, ctx)
        user = self.names.canonical(credentials.username)
        if user is None:
            return AuthResult(Outcome.INVALID, None, None, "malformed user name")
        if credentials.authzid and self.names.canonical(credentials.authzid) != user:
            return AuthResult(Outcome.INVALID, user, None, "authorization identity differs")
        if not credentials.secret:
            return AuthResult(Outcome.INVALID, user, None, "empty password")

        if "app-password" in self.methods:
            normalized = app_passwords.normalize(credentials.secret)
            if normalized is not None:
                digest = app_passwords.digest(self._key, user, normalized)
                record = self.reader.find_app_password(user, digest)
                if record is not None:
                    result = await self._grant(user, None, "app-password", "app-password", ctx)
                    if result.outcome is Outcome.OK:
                        self.bookkeeping.submit(
                            self.store.record_app_password_use,
                            record.id,
                            self._wall(),
                            ctx.client.ip,
                            ctx.client_id,
                        )
                    return result

        if "password+totp" in self.methods or "client-cert" in self.methods:
            key = self._device_key(user, ctx)
            if account is None or account.key != key:
                account = _Account(self.reader, key)
            return await self._password_and_factor(account, credentials.secret, ctx, fresh_factor)
        if "password" in self.methods:
            return await self._grant(user, credentials.secret, "password", "password", ctx)
        return AuthResult(Outcome.INVALID, user, "app-password", "not a valid app password")

    # -- OAuth 2.0 bearer tokens and client certificates -----------------------

    def _challenge(self, mechanism: str) -> bytes | None:
        if self._tokens is None:
            return None
        kind: Any = mechanism
        return oauth.error_challenge(
            oauth.discovery_url(self._tokens.settings.issuer), self._oauth_scope, kind
        )

    async def _bearer(self, mechanism: str, payload: Secret, ctx: AuthContext) -> AuthResult:
        method = mechanism.lower()
        if self._tokens is None or method not in self.methods:
            return AuthResult(Outcome.INVALID, None, method, f"{mechanism} is not enabled")
        try:
            parse = oauth.parse_oauthbearer if mechanism == "OAUTHBEARER" else oauth.parse_xoauth2
            bearer = parse(payload.reveal())
        except oauth.SaslMalformed as exc:
            return AuthResult(Outcome.INVALID, None, method, f"malformed {mechanism}: {exc.reason}")
        authzid = None
        if bearer.authzid:
            authzid = self.names.canonical(bearer.authzid)
            if authzid is None:
                return AuthResult(Outcome.INVALID, None, method, "malformed authorization identity")
        if bearer.discovery:
            return AuthResult(Outcome.INVALID, authzid, method, "discovery request (no token)")
        try:
            token = await self._tokens.verify(bearer.token, authzid)
        except oauth.TokenRejected as exc:
            return AuthResult(Outcome.INVALID, authzid, method, f"token rejected: {exc.reason}")
        except oauth.IssuerUnavailable as exc:
            return AuthResult(Outcome.UNAVAILABLE, authzid, method, f"issuer: {exc.reason}")
        user = self.names.canonical_text(token.user)
        if user is None:
            return AuthResult(Outcome.INVALID, None, method, "token names no valid account")
        factor = "oauth-mfa" if token.mfa else "oauth"
        if factor not in self.factors.sufficient:
            return AuthResult(
                Outcome.MISSING_FACTOR,
                user,
                method,
                "token without the required MFA claims (amr/acr)",
                factor=factor,
            )
        return await self._grant(user, None, method, factor, ctx)

    async def _external(self, credentials: Credentials, ctx: AuthContext) -> AuthResult:
        if "client-cert" not in self.methods:
            return AuthResult(Outcome.INVALID, None, "client-cert", "EXTERNAL is not enabled")
        user = self._cert_user(ctx)
        if user is None:
            return AuthResult(
                Outcome.INVALID,
                None,
                "client-cert",
                "no verified client certificate naming an account",
            )
        if credentials.authzid and self.names.canonical(credentials.authzid) != user:
            return AuthResult(
                Outcome.INVALID,
                user,
                "client-cert",
                "authorization identity differs from the certificate",
            )
        return await self._grant(user, None, "client-cert", "client-cert", ctx)

    # -- password + a second factor -------------------------------------------

    def _device_key(self, user: str, ctx: AuthContext) -> DeviceKey:
        return DeviceKey(user, network(ctx.client.ip), ctx.id_name, ctx.id_version)

    def _reading(
        self, secret: Secret, account: _Account, ctx: AuthContext, now: float
    ) -> tuple[_Reading, str | None]:
        """How to read the password field (one reading: the upstream is asked once
        per login), and why a code in it was not usable (for the audit log).

        Decided locally, from what the field and the account's records say, before
        the upstream is asked: a code that verifies now, or the code this trusted
        device proved, makes it password+code; a device its owner approved, or a
        client certificate of this account, takes the field as the password; an
        account with a one-time code enrolled reads trailing digits as a (wrong or
        used) code, so that a right password with a wrong code is seen and counted;
        anything else is the password as typed. Every branch costs exactly one
        upstream check, so which one was taken does not show in the timing, and a
        correct password with a correct code is never also sent whole (a failed
        upstream login, and the upstream's per-address penalty for the user)."""
        whole = _Reading(secret, None)
        split = totp.split_password_and_code(secret)
        device = account.device
        trusted = device is not None and device.trusted_at(now)
        if not split:
            return whole, None
        password, code = split[0]
        record = account.totp
        locked = (
            record is not None and record.locked_until is not None and (record.locked_until > now)
        )
        secret_key = None
        if record is not None and self._totp_key is not None:
            secret_key = totp.unseal(self._totp_key, account.key.user, record.sealed)
            if not locked:
                step = totp.verify(secret_key, code, now, last_step=record.last_step)
                if step is not None:
                    return _Reading(password, code, step), None
        # While codes are locked, the stale code only from the device's own last
        # address: the lock must stop a guesser of the stale code too.
        if (
            trusted
            and device is not None
            and self._device_code_matches(device, code)
            and (not locked or ctx.client.ip == device.last_address)
        ):
            return _Reading(password, code, device_code=True), None
        if trusted and device is not None and device.bound_address == ctx.client.ip:
            return whole, None
        if self._cert_user(ctx) == account.key.user:
            return whole, None
        if secret_key is None or record is None:
            return whole, None
        if locked:
            problem = "one-time codes locked (too many wrong)"
        elif totp.verify(secret_key, code, now, last_step=None) is not None:
            # A current code already spent: a mail client resending what was typed
            # on another device, or a replay.
            problem = "one-time code already used"
        else:
            problem = "wrong or used one-time code"
        return _Reading(password, code), problem

    def _device_secret(self, key: DeviceKey, code: str) -> bytes:
        """The keyed digest of the code a device proved: its secret from then on."""
        material = "\0".join(
            (key.user, key.network, key.client_name, key.client_version, code)
        ).encode()
        return hmac.new(self._device_secret_key, material, hashlib.sha256).digest()

    def _device_code_matches(self, device: DeviceRecord, code: str) -> bool:
        if device.secret is None:
            return False
        key = DeviceKey(device.user, device.network, device.client_name, device.client_version)
        return hmac.compare_digest(self._device_secret(key, code), device.secret)

    def _looks_like_the_device(
        self, device: DeviceRecord | None, secret: Secret | None, ctx: AuthContext
    ) -> bool:
        """For the defense's precheck (is this one of the account's familiar
        sources?): the trusted device itself, by what only it has (its code after
        the password, or its approved address), not merely its network and client
        ID, which anyone on that network can copy."""
        if device is None or not device.trusted_at(self._wall()):
            return False
        if device.bound_address is not None:
            return device.bound_address == ctx.client.ip
        split = totp.split_password_and_code(secret) if secret else []
        return bool(split) and self._device_code_matches(device, split[0][1])

    def _device_accepts(
        self, device: DeviceRecord | None, reading: _Reading, ctx: AuthContext, now: float
    ) -> bool:
        """Is this login the trusted device itself? A device that proved a code is
        trusted for its password followed by that code (what its mail client stores
        and sends again), never for the password alone; a device its owner approved
        is trusted at the exact address it was approved for."""
        if device is None or not device.trusted_at(now):
            return False
        if reading.device_code:
            return True
        return reading.code is None and device.bound_address == ctx.client.ip

    async def _password_and_factor(
        self, account: _Account, secret: Secret, ctx: AuthContext, fresh_factor: bool = False
    ) -> AuthResult:
        """`fresh_factor`: the account is under attack while the gateway is (the
        defense's posture): a trusted device's password alone is not enough."""
        now = self._wall()
        user = account.key.user
        reading, code_problem = self._reading(secret, account, ctx, now)
        try:
            session = await self._check_password(user, reading.password, ctx)
        except UpstreamRefused as exc:
            reason = f"wrong password ({exc.detail})".replace(" ()", "")
            return AuthResult(Outcome.INVALID, user, "password", reason)
        except UpstreamUnavailable as exc:
            return AuthResult(Outcome.UNAVAILABLE, user, "password", f"upstream: {exc.detail}")
        try:
            return await self._after_password(
                account, reading, session, ctx, now, fresh_factor, code_problem
            )
        except BaseException:
            await _close_session(session)  # whatever went wrong, no session is left open
            raise

    async def _after_password(
        self,
        account: _Account,
        reading: _Reading,
        session: UpstreamSession | None,
        ctx: AuthContext,
        now: float,
        fresh_factor: bool,
        code_problem: str | None,
    ) -> AuthResult:
        """The password is right. Which second factor comes with it?"""
        user, key, device = account.key.user, account.key, account.device
        factor: str | None = None
        reason = ""
        if reading.step is not None and reading.code is not None:
            if await self._store(self.store.use_totp_step, user, reading.step):
                factor = "password+totp"
                device = await self._store(
                    self.store.trust_device,
                    key,
                    now,
                    now + self.factors.device_trust,
                    ctx.client.ip,
                    self._device_secret(key, reading.code),
                )
            else:
                reason = "one-time code already used"
        if factor is None and self._cert_user(ctx) == user:
            factor = "password+client-cert"
        if (
            factor is None
            and device is not None
            and not fresh_factor
            and self._device_accepts(device, reading, ctx, now)
        ):
            factor = "trusted-device"
            self.bookkeeping.submit(
                self.store.record_device_use,
                device.id,
                now,
                ctx.client.ip,
                reading.code is not None,
            )
        if factor is not None and factor in self.factors.sufficient:
            return await self._open_after_password(
                user, reading, session, factor, ctx, device.id if device else None
            )
        await _close_session(session)
        if factor is not None:
            return AuthResult(
                Outcome.MISSING_FACTOR,
                user,
                "password",
                f"{factor} is not sufficient (auth.sufficient)",
                factor=factor,
            )
        return await self._compromise_signal(
            account, reading, device, ctx, now, reason or code_problem
        )

    async def _compromise_signal(
        self,
        account: _Account,
        reading: _Reading,
        device: DeviceRecord | None,
        ctx: AuthContext,
        now: float,
        code_problem: str | None,
    ) -> AuthResult:
        """A correct password and no sufficient factor: refuse, record, tell the owner.
        `device` is the account's device as it is now (trusted just now, or not)."""
        user, key = account.key.user, account.key
        if reading.code is not None:
            reason = f"correct password, {code_problem or 'wrong one-time code'}"
            if account.totp is not None:
                locked = await self._store(
                    self.store.record_totp_failure,
                    user,
                    now,
                    self.factors.totp_lockout,
                    self.factors.totp_max_failures,
                    self.factors.totp_lockout,
                )
                if locked:
                    reason += "; one-time codes now locked for the account"
        else:
            reason = "correct password without a second factor"
        enrolled = account.enrolled()
        device_id = device.id if device is not None else None
        if enrolled and reading.code is None and self.factors.new_device_approval:
            if device is None or device.status == "pending":
                device = await self._store(self.store.add_pending_device, key, now, ctx.client.ip)
                device_id = device.id
                reason += f"; device {device.id} awaits approval"
                self._notice("new_device", user, ctx, device.id)
            elif device.trusted_at(now):
                reason += (
                    f"; device {device.id} is trusted only with the code it proved"
                    if device.secret is not None
                    else f"; device {device.id} is trusted only at {device.bound_address}"
                )
            else:
                reason += f"; device {device.id} trust expired"
        if enrolled:
            self._audit.emit(
                AuditEvent(
                    "compromise_signal",
                    ctx.client.session,
                    {
                        "src": ctx.client.ip,
                        "user": user,
                        "client_id": ctx.client_id,
                        "device": device_id,
                        "reason": reason,
                    },
                )
            )
            self._notice("compromise_signal", user, ctx, device_id)
        else:
            reason += " (no second factor enrolled)"
        return AuthResult(Outcome.MISSING_FACTOR, user, "password", reason, device=device_id)

    def _notice(self, kind: str, user: str, ctx: AuthContext, device: str | None) -> None:
        if self._on_notice is not None:
            try:
                self._on_notice(kind, user, ctx, device)
            except Exception:
                log.exception("notification hook failed")

    # -- the password check and the upstream session ---------------------------

    def _cache_id(self, user: str, password: Secret, ctx: AuthContext) -> bytes:
        device = self._device_key(user, ctx)
        material = "\0".join(
            ("password", user, device.network, device.client_name, device.client_version)
        ).encode()
        return hmac.new(
            self._cache_key, material + b"\0" + password.reveal(), hashlib.sha256
        ).digest()

    async def _check_password(
        self, user: str, password: Secret, ctx: AuthContext
    ) -> UpstreamSession | None:
        """Raise UpstreamRefused if the password is wrong. Returns the upstream
        session the check opened, or None when a recent check of the same
        (user, device, password) is remembered and a master login can follow."""
        cache_id: bytes | None = None
        if self.factors.verified_cache_seconds > 0 and self.upstream.master_user is not None:
            cache_id = self._cache_id(user, password, ctx)
            expiry = self._verified.get(cache_id)
            if expiry is not None and expiry > self._clock():
                _password_ok(self._clock())
                return None
        session = await self._password_login(user, password, ctx)
        if cache_id is not None:
            self._verified[cache_id] = self._clock() + self.factors.verified_cache_seconds
            self._verified.move_to_end(cache_id)
            while len(self._verified) > self.factors.verified_cache_entries:
                self._verified.popitem(last=False)
        return session

    async def _open_after_password(
        self,
        user: str,
        reading: _Reading,
        session: UpstreamSession | None,
        factor: str,
        ctx: AuthContext,
        device: str | None,
    ) -> AuthResult:
        if session is None:
            result = await self._grant(user, None, "password", factor, ctx)
        elif (refusal := self._may(user, "password", factor, ctx)) is not None:
            await _close_session(session)
            result = refusal
        else:
            self.bookkeeping.submit(
                self.store.record_login, user, self._wall(), ctx.client.ip, factor
            )
            result = AuthResult(Outcome.OK, user, "password", "ok", session, factor)
        return AuthResult(
            result.outcome,
            result.user,
            result.method,
            result.reason,
            result.session,
            factor,
            device,
            rule=result.rule,
            alert=result.alert,
        )

    async def _grant(
        self, user: str, password: Secret | None, method: str, factor: str, ctx: AuthContext
    ) -> AuthResult:
        """The factor is proven: open the upstream session (password=None: master)."""
        if factor not in self.factors.sufficient and factor != "password":
            return AuthResult(
                Outcome.MISSING_FACTOR,
                user,
                method,
                f"{factor} is not sufficient (auth.sufficient)",
                factor=factor,
            )
        refusal = self._may(user, method, factor, ctx)
        if refusal is not None:
            return refusal
        try:
            if password is None:
                session = await self._connect(self.upstream, user, None, ctx.client)
                self.penalty.succeeded(ctx.client.ip)
            else:
                session = await self._password_login(user, password, ctx)
        except UpstreamRefused as exc:
            reason = "wrong password" if password is not None else "upstream refused master login"
            return AuthResult(Outcome.INVALID, user, method, f"{reason} ({exc.detail})")
        except UpstreamUnavailable as exc:
            return AuthResult(Outcome.UNAVAILABLE, user, method, f"upstream: {exc.detail}")
        self.bookkeeping.submit(self.store.record_login, user, self._wall(), ctx.client.ip, factor)
        return AuthResult(Outcome.OK, user, method, "ok", session, factor)

    def _may(self, user: str, method: str, factor: str, ctx: AuthContext) -> AuthResult | None:
        """The policy's word on an authenticated login: None to go on, else the
        refusal (DENIED, or MISSING_FACTOR when a stronger factor is required)."""
        policy_method = _POLICY_METHOD.get(factor, method)
        decision = self.policy.decide(
            self.policy.request(
                user,
                ctx.client.ip,
                method=policy_method,
                factor=factor,
                listener=ctx.listener,
                # Only a certificate of this very account (another account's is no
                # possession factor for this one).
                client_cert=self._cert_user(ctx) == user,
            )
        )
        if decision.kind is DecisionKind.ALLOW:
            return None
        outcome = (
            Outcome.MISSING_FACTOR
            if decision.kind is DecisionKind.REQUIRE_FACTOR
            else Outcome.DENIED
        )
        return AuthResult(
            outcome,
            user,
            method,
            f"policy: {decision.reason}",
            factor=factor,
            rule=decision.rule,
            alert=decision.alert,
        )

    async def flush(self) -> None:
        """Write the queued bookkeeping now (tests; shutdown)."""
        await self.bookkeeping.flush()


def _with_challenge(result: AuthResult, challenge: bytes | None) -> AuthResult:
    return dataclasses.replace(result, challenge=challenge)


# The auth.methods name a login's factor came through, for policy `methods` rules.
_POLICY_METHOD = {
    "password+totp": "password+totp",
    "trusted-device": "password+totp",
    "password+client-cert": "client-cert",
}


def _password_ok(at: float) -> None:
    """Note on the running attempt that the upstream accepted the password."""
    timing = _ATTEMPT.get()
    if timing is not None and timing.password_ok_at is None:
        timing.password_ok_at = at


async def _close_session(session: UpstreamSession | None) -> None:
    """Log out of an upstream session that will not be relayed."""
    if session is not None:
        session.link.write(b"z LOGOUT\r\n")
        session.link.close()

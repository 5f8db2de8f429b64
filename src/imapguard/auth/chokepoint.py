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

How the password field is read and when a device is trusted is in
`devices.py`; which factor a login proved and whether it suffices, in `proof.py`;
when a failure is answered, in `timing.py`. A correct password without a
sufficient factor is a compromise signal: audited, the owner told (`on_notice`),
and from an unknown device a pending device is created for the owner to approve.
On the wire every failure looks the same (`NO [AUTHENTICATIONFAILED]
Authentication failed.`) and takes as long as the upstream's refusal would. A
dead state store fails closed (UNAVAILABLE).

The service knows no socket and no protocol (`model.py`): the front end hands
in the client's credentials and an `Upstream` to log in to; the gateway's is the
IMAP server behind it.

State access: reads go through `reads` (`reads.py`): inline on the event loop
for the embedded store (its read-only WAL connection, `reader`: never blocked by
a writer), awaited on a read executor for a networked one; writes a decision
depends on are awaited on the store's worker thread (`_store`); bookkeeping
after a decision (last login, last use) is queued on `bookkeeping` and written
in batches. The policy's word is `permission.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Generic, ParamSpec, TypeVar

from imapguard.audit import AuditLog, events
from imapguard.auth import app_passwords, oauth, passwordless, prechecking, proof
from imapguard.auth.counting import Counting
from imapguard.auth.devices import AccountView, Devices, Reading, device_key
from imapguard.auth.failopen import FailOpen
from imapguard.auth.gate import Gate, LocalTurns, Turn
from imapguard.auth.model import (
    AuthContext,
    AuthResult,
    FactorSettings,
    LoginRequest,
    NoticeHook,
    Outcome,
    S,
    Upstream,
)
from imapguard.auth.permission import policy_refusal
from imapguard.auth.reads import Reads
from imapguard.auth.timing import AttemptClock, FailureTiming, password_ok
from imapguard.auth.verified import VerifiedPasswords
from imapguard.defense.engine import Action, Attempt, Defense, Verdict
from imapguard.errors import StateUnavailable, UpstreamRefused, UpstreamUnavailable
from imapguard.keys import VERIFIED_CACHE, derive_key
from imapguard.policy.gate import PolicyGate
from imapguard.secret import Secret
from imapguard.state.accounts import AccountStore, DeviceRecord
from imapguard.state.on_thread import on_thread
from imapguard.state.writebehind import WriteBehind
from imapguard.vocab import Factor

__all__ = ["AuthContext", "AuthResult", "Authenticator", "FactorSettings", "Outcome"]

log = logging.getLogger("imapguard.auth")
T = TypeVar("T")
P = ParamSpec("P")


class Authenticator(Generic[S]):
    """The ordered orchestration of one login; `S` is the front end's session."""

    def __init__(
        self,
        *,
        methods: tuple[str, ...],
        store: AccountStore,
        store_executor: Executor,
        app_password_key: bytes,
        upstream: Upstream[S],
        audit: AuditLog,
        failure_delay: float,
        failure_jitter: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        reader: AccountStore | None = None,
        bookkeeping: WriteBehind | None = None,
        gate_releases: WriteBehind | None = None,
        gate_turns: LocalTurns | None = None,
        factors: FactorSettings | None = None,
        totp_key: bytes | None = None,
        on_notice: NoticeHook | None = None,
        token_verifier: oauth.TokenVerifier | None = None,
        oauth_scope: str = "openid email",
        policy: PolicyGate | None = None,
        defense: Defense | None = None,
        read_executor: Executor | None = None,
        counter_read_executor: Executor | None = None,
    ) -> None:
        self.methods = methods
        self.store = store
        self.reader = reader or store
        # Where reads run (None: inline on the event loop; `reads.py`).
        self.reads = Reads(self.reader, executor=read_executor, counters=counter_read_executor)
        self.bookkeeping = bookkeeping or WriteBehind(store, store_executor)
        self._gate_releases = gate_releases  # None: the gate batches its own
        self._gate_turns = gate_turns  # None: turns by compare-and-set in the store
        self.upstream = upstream
        self.factors = factors or FactorSettings()
        self._executor = store_executor
        self._key = app_password_key
        self._audit = audit
        self.timing = FailureTiming(
            clock,
            sleep,
            rng or random.SystemRandom(),
            delay=failure_delay,
            jitter=failure_jitter,
        )
        self.penalty = self.timing.penalty
        self._clock = clock
        self._wall = wall_clock
        self._on_notice = on_notice
        self._tokens = token_verifier
        self._oauth_scope = oauth_scope
        self.policy = policy or PolicyGate()
        self.defense = defense
        self.names = self.factors.names
        self.devices = Devices(app_password_key, totp_key)
        self._verified = VerifiedPasswords(
            derive_key(Secret(app_password_key), VERIFIED_CACHE),
            clock,
            seconds=self.factors.verified_cache_seconds,
            entries=self.factors.verified_cache_entries,
        )
        self._sleep = sleep
        self._counting: Counting | None = None
        self._gate: Gate | None = None
        self._fail_open = FailOpen(audit, clock)

    @property
    def gate(self) -> Gate | None:
        """One guess at a time per source and account (None without a defense)."""
        if self.defense is None:
            return None
        if self._gate is None or self._gate.defense is not self.defense:
            self._gate = Gate(
                self.defense,
                self._executor,
                self._sleep,
                self._gate_releases,
                self._gate_turns,
                self.reads.counters,
            )
        return self._gate

    @property
    def counting(self) -> Counting | None:
        """What the defense learns from each login (None without a defense)."""
        if self.defense is None:
            return None
        if self._counting is None or self._counting.defense is not self.defense:
            self._counting = Counting(
                self.defense,
                audit=self._audit,
                reads=self.reads,
                bookkeeping=self.bookkeeping,
                executor=self._executor,
                notice=self._notice,
            )
        return self._counting

    async def authenticate(
        self, credentials: LoginRequest, ctx: AuthContext, session: str
    ) -> AuthResult[S]:
        """Who is this, what did they prove, may they in: the one entry point."""
        with self.timing.attempt(ctx.client.ip) as attempt_clock:
            return await self._authenticate(credentials, ctx, session, attempt_clock)

    async def _authenticate(
        self, credentials: LoginRequest, ctx: AuthContext, session: str, clock: AttemptClock
    ) -> AuthResult[S]:
        begun = self._clock()
        attempt: Attempt | None = None
        verdict: Verdict | None = None
        account: AccountView | None = None
        result: AuthResult[S]
        turn = self.gate.turn() if self.gate is not None else None
        try:
            if self.defense is not None:
                attempt, verdict, account = await self._precheck(credentials, ctx, turn)
                if verdict is not None and (
                    verdict.would_block or verdict.would_delay != verdict.delay
                ):
                    self._audit.emit(
                        events.DefenseLogOnly(
                            session=session,
                            src=ctx.client.ip,
                            user=attempt.user,
                            would=verdict.would.value,
                            would_delay=round(verdict.would_delay, 2),
                            reason=verdict.reason,
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
            counting = self.counting
            if attempt is not None and verdict is not None and counting is not None:
                await counting.record(attempt, verdict, result, ctx, session)
        except StateUnavailable as exc:
            result = AuthResult(Outcome.UNAVAILABLE, None, None, f"state store: {exc.detail}")
        finally:
            if turn is not None:  # counted: the pair's next guess may go (auth.gate)
                turn.leave()
        self._audit.emit(
            events.Auth(
                session=session,
                src=ctx.client.ip,
                listener=ctx.listener,
                client_id=ctx.client_id,
                mechanism=credentials.mechanism,
                user=result.user or credentials.username.decode("utf-8", "replace")[:64],
                method=result.method,
                factor=result.factor,
                device=result.device,
                credential=result.credential,
                rule=result.rule,
                delay=round(verdict.delay, 2) if verdict and verdict.delay else None,
                result=result.outcome.value,
                reason=result.reason,
                elapsed=round(self._clock() - begun, 4),
            )
        )
        if result.outcome is not Outcome.OK:
            # One timing profile for every failure (imapguard.auth.timing).
            await self.timing.wait_out(clock)
        return result

    def failure_floor(self) -> float:
        """How long every failure takes at least (before jitter)."""
        return self.timing.floor()

    # -- defense: how often have you failed? ------------------------------------

    async def _precheck(
        self, credentials: LoginRequest, ctx: AuthContext, turn: Turn | None
    ) -> tuple[Attempt, Verdict | None, AccountView | None]:
        return await prechecking.precheck(self, credentials, ctx, turn)

    async def maintain(self, session: str | None = None) -> None:
        """Purge expired counters and let the posture relax (about once a minute)."""
        counting = self.counting
        if counting is not None:
            await counting.maintain(session)

    # -- what the login proves ---------------------------------------------------

    def _cert_user(self, ctx: AuthContext) -> str | None:
        """The account the verified client certificate names, under the rule."""
        return self.names.canonical_text(ctx.cert_user) if ctx.cert_user else None

    async def _store(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await on_thread(self._executor, fn, *args, **kwargs)

    async def _decide(
        self,
        credentials: LoginRequest,
        ctx: AuthContext,
        fresh_factor: bool = False,
        account: AccountView | None = None,
    ) -> AuthResult[S]:
        mechanism = credentials.mechanism
        if mechanism in ("OAUTHBEARER", "XOAUTH2"):
            token = await passwordless.bearer(
                mechanism, credentials.secret, self._tokens, self.methods, self.names
            )
            result = await self._without_password(token, ctx)
            if result.outcome in (Outcome.INVALID, Outcome.MISSING_FACTOR):
                challenge = passwordless.challenge(mechanism, self._tokens, self._oauth_scope)
                result = dataclasses.replace(result, challenge=challenge)
            return result
        if mechanism == "EXTERNAL":
            cert = passwordless.certificate(
                self._cert_user(ctx), credentials.authzid, self.methods, self.names
            )
            return await self._without_password(cert, ctx)
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
                record = await self.reads.call(self.reader.find_app_password, user, digest)
                if record is not None:
                    scope = app_passwords.out_of_scope(record, ctx.client.ip, self._wall())
                    if scope is not None:
                        return AuthResult(Outcome.INVALID, user, "app-password", scope)
                    result = await self._grant(user, None, "app-password", Factor.APP_PASSWORD, ctx)
                    if result.outcome is Outcome.OK:
                        self.bookkeeping.submit(
                            self.store.record_app_password_use,
                            record.id,
                            self._wall(),
                            ctx.client.ip,
                            ctx.client_id,
                        )
                    return dataclasses.replace(result, app_password=record.id)

        if "password+totp" in self.methods or "client-cert" in self.methods:
            key = device_key(user, ctx)
            if account is None or account.key != key:
                account = await self.reads.account(key)
            return await self._password_and_factor(account, credentials.secret, ctx, fresh_factor)
        if "password" in self.methods:
            return await self._grant(user, credentials.secret, "password", Factor.PASSWORD, ctx)
        return AuthResult(Outcome.INVALID, user, "app-password", "not a valid app password")

    # -- OAuth 2.0 bearer tokens and client certificates -----------------------

    async def _without_password(
        self, proven: passwordless.Proven | passwordless.Refused, ctx: AuthContext
    ) -> AuthResult[S]:
        if isinstance(proven, passwordless.Refused):
            return AuthResult(proven.outcome, proven.user, proven.method, proven.reason)
        return await self._grant(proven.user, None, proven.method, proven.factor, ctx)

    # -- password + a second factor -------------------------------------------

    async def _password_and_factor(
        self, account: AccountView, secret: Secret, ctx: AuthContext, fresh_factor: bool = False
    ) -> AuthResult[S]:
        """`fresh_factor`: the account is under attack while the gateway is (the
        defense's posture): a trusted device's password alone is not enough."""
        now = self._wall()
        user = account.key.user
        own_cert = self._cert_user(ctx) == user
        reading, code_problem = self.devices.read(secret, account, ctx, own_cert, now)
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
            await _discard(session)  # whatever went wrong, no session is left open
            raise

    async def _after_password(
        self,
        account: AccountView,
        reading: Reading,
        session: S | None,
        ctx: AuthContext,
        now: float,
        fresh_factor: bool,
        code_problem: str | None,
    ) -> AuthResult[S]:
        """The password is right. Which second factor comes with it?"""
        user, key, device = account.key.user, account.key, account.device
        code_accepted = False
        reason = ""
        if reading.step is not None and reading.code is not None:
            if await self._store(self.store.use_totp_step, user, reading.step):
                code_accepted = True
                device = await self._store(
                    self.store.trust_device,
                    key,
                    now,
                    now + self.factors.device_trust,
                    ctx.client.ip,
                    self.devices.secret(key, reading.code),
                )
            else:
                reason = "one-time code already used"
        factor = proof.password_factor(
            code_accepted=code_accepted,
            own_certificate=self._cert_user(ctx) == user,
            trusted_device=not fresh_factor and self.devices.accepts(device, reading, ctx, now),
        )
        if factor is Factor.TRUSTED_DEVICE and device is not None:
            self.bookkeeping.submit(
                self.store.record_device_use,
                device.id,
                now,
                ctx.client.ip,
                reading.code is not None,
            )
        if factor is None:
            await _discard(session)
            return await self._compromise_signal(
                account, reading, device, ctx, now, reason or code_problem
            )
        shortfall = proof.shortfall(factor, self.factors.sufficient)
        if shortfall is not None:
            await _discard(session)
            return AuthResult(Outcome.MISSING_FACTOR, user, "password", shortfall, factor=factor)
        result = await self._open_after_password(user, session, factor, ctx)
        return dataclasses.replace(result, factor=factor, device=device.id if device else None)

    async def _compromise_signal(
        self,
        account: AccountView,
        reading: Reading,
        device: DeviceRecord | None,
        ctx: AuthContext,
        now: float,
        code_problem: str | None,
    ) -> AuthResult[S]:
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
        enrolled = await self.reads.call(account.enrolled)
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
                events.CompromiseSignal(
                    session=ctx.client.session,
                    src=ctx.client.ip,
                    user=user,
                    client_id=ctx.client_id,
                    device=device_id,
                    reason=reason,
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

    async def password_login(self, user: str, password: Secret, ctx: AuthContext) -> S:
        """Log in upstream with the user's password; a refusal's duration feeds
        the failure timing."""
        started = self._clock()
        try:
            session = await self.upstream.login(user, password, ctx.client)
        except UpstreamRefused:
            self.timing.refused(ctx.client.ip, self._clock() - started)
            raise
        password_ok(self._clock())
        self.timing.accepted(ctx.client.ip)
        return session

    async def _check_password(self, user: str, password: Secret, ctx: AuthContext) -> S | None:
        """Raise UpstreamRefused if the password is wrong. Returns the upstream
        session the check opened, or None when a recent check of the same
        (user, device, password) is remembered and a master login can follow."""
        device = device_key(user, ctx)
        remembering = self._verified.enabled and self.upstream.logs_in_for_users
        if remembering and self._verified.remembered(device, password):
            password_ok(self._clock())
            return None
        session = await self.password_login(user, password, ctx)
        if remembering:
            self._verified.remember(device, password)
        return session

    async def _open_after_password(
        self, user: str, session: S | None, factor: str, ctx: AuthContext
    ) -> AuthResult[S]:
        """A right password with a sufficient factor: the session its check opened
        (or, when the check was remembered, a master login), if the policy agrees."""
        if session is None:
            return await self._grant(user, None, "password", factor, ctx)
        refusal = self._may(user, "password", factor, ctx)
        if refusal is not None:
            await session.discard()
            return refusal
        self.bookkeeping.submit(self.store.record_login, user, self._wall(), ctx.client.ip, factor)
        return AuthResult(Outcome.OK, user, "password", "ok", session, factor)

    async def _grant(
        self, user: str, password: Secret | None, method: str, factor: str, ctx: AuthContext
    ) -> AuthResult[S]:
        """The factor is proven: open the upstream session (password=None: master)."""
        shortfall = proof.shortfall(factor, self.factors.sufficient)
        if shortfall is not None:
            return AuthResult(Outcome.MISSING_FACTOR, user, method, shortfall, factor=factor)
        refusal = self._may(user, method, factor, ctx)
        if refusal is not None:
            return refusal
        try:
            if password is None:
                session = await self.upstream.login(user, None, ctx.client)
                self.timing.accepted(ctx.client.ip)
            else:
                session = await self.password_login(user, password, ctx)
        except UpstreamRefused as exc:
            if password is None and exc.code == "AUTHORIZATIONFAILED":
                # RFC 5530: the master user was accepted, this account refused (no
                # such mailbox, or not to be opened): the user's own proof held.
                reason = f"upstream refused the account ({exc.detail})"
                return AuthResult(Outcome.DENIED, user, method, reason)
            if password is None:  # the gateway's own credentials: its fault, not the user's
                reason = f"upstream refused the master login ({exc.detail})"
                return AuthResult(Outcome.UNAVAILABLE, user, method, reason)
            return AuthResult(Outcome.INVALID, user, method, f"wrong password ({exc.detail})")
        except UpstreamUnavailable as exc:
            return AuthResult(Outcome.UNAVAILABLE, user, method, f"upstream: {exc.detail}")
        self.bookkeeping.submit(self.store.record_login, user, self._wall(), ctx.client.ip, factor)
        return AuthResult(Outcome.OK, user, method, "ok", session, factor)

    def _may(self, user: str, method: str, factor: str, ctx: AuthContext) -> AuthResult[S] | None:
        """The policy's word on an authenticated login (`permission.py`)."""
        own = self._cert_user(ctx) == user
        return policy_refusal(
            self.policy, user, ctx, method=method, factor=factor, own_certificate=own
        )

    async def flush(self) -> None:
        """Write the queued bookkeeping and the gate's releases now (tests; shutdown)."""
        await self.bookkeeping.flush()
        if self._gate is not None:
            await self._gate.releases.flush()


async def _discard(session: Any) -> None:
    """Log out of an upstream session that will not be relayed."""
    if session is not None:
        await session.discard()

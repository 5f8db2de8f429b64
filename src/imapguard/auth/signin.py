"""Sign-in in two steps, for a front end that can ask for the second factor on
a page of its own (the portal): the password, then a one-time code.

Both steps go through the gateway's auth service, so a password tried at the
portal is checked, counted and logged exactly as one tried over IMAP:

* the same account-name rule (`names.AccountNames`);
* the same defense: one attempt per step, against the same counters (source,
  network, account, the login-free spray fingerprint of the password), so a
  password sprayed at the portal and at IMAP is one spray, and a block placed
  by either refuses both;
* the password checked the only way imapguard checks one: by logging in to the
  mail server as the user (`Authenticator.password_login`, which also teaches
  the failure timing the upstream's refusal time), then logging out;
* the same failure timing: every failure of either step is answered no sooner
  than the upstream would have refused this source, whatever failed;
* the same audit event (`auth`, listener "portal") and the same compromise
  signal when a right password comes with a wrong code (the owner is told).

A right password alone proves one factor: it is counted as neither a success
nor a failure (a success would make the source familiar to the account, which
only a second factor may do) and it opens nothing upstream. It is not confirmed
silently, though: from a source the defense does not know as familiar to the
account, the owner is told at once (notice "portal_password", rate-limited per
account by the notifier), as IMAP tells them of a right password without its
factor. At the password step nobody can know whether a second step will follow;
waiting to see would need per-process state that a restart loses, and the
owner's own first sign-in from a new place is exactly what they should hear of. A wrong code after
it counts as a factor failure, locks codes after `auth.totp_max_failures` like
IMAP does, and spends no step; a right code spends its step (no replay, also
not over IMAP) and is the success the defense records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from imapguard.audit import AuditLog, events
from imapguard.auth import proof, recovery, totp
from imapguard.auth.chokepoint import Authenticator
from imapguard.auth.gate import Turn
from imapguard.auth.model import AuthContext, AuthResult, NoticeHook, Outcome, S
from imapguard.auth.oauth.tokens import VerifiedToken
from imapguard.auth.passkeys import Challenge, PasskeyRefused, Passkeys
from imapguard.auth.permission import policy_refusal
from imapguard.defense.engine import Action, Attempt, Verdict
from imapguard.errors import StateUnavailable, UpstreamRefused, UpstreamUnavailable
from imapguard.secret import Secret
from imapguard.state.on_thread import on_thread
from imapguard.state.portal import PortalStore
from imapguard.vocab import Factor, Method

__all__ = ["OidcCheck", "PasswordCheck", "TwoStepSignIn"]

log = logging.getLogger("imapguard.auth")
T = TypeVar("T")
P = ParamSpec("P")

MECHANISM_PASSWORD = "PORTAL-PASSWORD"  # noqa: S105 - a mechanism name
MECHANISM_CODE = "PORTAL-TOTP"
MECHANISM_PASSKEY = "PORTAL-PASSKEY"
MECHANISM_RECOVERY = "PORTAL-RECOVERY-CODE"
MECHANISM_INVITE = "PORTAL-INVITE"
MECHANISM_OIDC = "PORTAL-OIDC"
# The auth.methods that accept a token of the [oauth] issuer (passwordless.bearer).
TOKEN_METHODS = (Method.OAUTHBEARER.value, Method.XOAUTH2.value)


@dataclass(frozen=True)
class PasswordCheck:
    """The first step's answer. `user`, `has_totp` and `has_passkey` only when `ok`."""

    ok: bool
    user: str | None = None
    has_totp: bool = False
    has_passkey: bool = False


@dataclass(frozen=True)
class OidcCheck:
    """An OpenID sign-in's answer. Only when `ok`: `user`; `full` when the token
    proved both factors (MFA at the provider, sufficient and allowed), else the
    account's own second factor comes next (`has_totp`, `has_passkey`)."""

    ok: bool
    user: str | None = None
    full: bool = False
    has_totp: bool = False
    has_passkey: bool = False
    # Refused only because the token is one factor and the account has no other
    # (the provider's user is who they say: telling them so confirms nothing).
    no_factor: bool = False


@dataclass(frozen=True)
class _Done:
    ok: bool
    familiar: bool  # the defense knows the source as the account's (False: unknown)


class TwoStepSignIn(Generic[S]):
    """The portal's sign-in through the auth service (module docstring)."""

    def __init__(
        self,
        auth: Authenticator[S],
        *,
        audit: AuditLog,
        executor: Executor,
        totp_key: bytes | None,
        passkeys: Passkeys | None = None,
        portal_store: PortalStore | None = None,
        recovery_key: bytes | None = None,
        on_notice: NoticeHook | None = None,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.auth = auth
        self._audit = audit
        self._executor = executor
        self._totp_key = totp_key
        self.passkeys = passkeys
        self._portal_store = portal_store
        self._recovery_key = recovery_key
        self._on_notice = on_notice
        self._wall = wall_clock
        self._sleep = sleep

    async def check_password(
        self, username: str, password: Secret, ctx: AuthContext
    ) -> PasswordCheck:
        """Step one: is this the account's password?"""
        user = _account(self.auth, username)
        has_totp = has_passkey = False

        async def step() -> AuthResult[Any]:
            nonlocal has_totp, has_passkey
            result = await self._password(user, password, ctx)
            if result.outcome is not Outcome.OK or user is None:
                return result
            has_totp = await self._has_totp(user)
            has_passkey = await self._has_passkey(user)
            if has_totp or has_passkey:
                return result
            # A right password that cannot go on is a failure in every way a
            # client can see, timing included: else the quick answer would
            # confirm the password to whoever typed it.
            return AuthResult(
                Outcome.MISSING_FACTOR,
                user,
                "portal",
                "correct password, no second factor enrolled",
                factor=Factor.PASSWORD,
            )

        # A right password alone is no success for the defense (module docstring).
        done = await self._attempt(
            MECHANISM_PASSWORD, username, user, ctx, step, secret=password or None, success=False
        )
        if not done.ok or user is None:
            return PasswordCheck(ok=False)
        if not done.familiar:
            # Not confirmed silently (module docstring).
            self._notice("portal_password", user, ctx)
        return PasswordCheck(ok=True, user=user, has_totp=has_totp, has_passkey=has_passkey)

    async def passkey_options(self, user: str) -> Challenge | None:
        """What the browser is asked to sign to prove one of `user`'s passkeys
        (the caller keeps `challenge` and passes it to `check_passkey` once);
        None when the account has none or passkeys are not configured."""
        store = self._portal_store
        if store is None or self.passkeys is None:
            return None
        records = await self._store(store.list_passkeys, user)
        return self.passkeys.authentication(records) if records else None

    async def check_invited_password(
        self,
        username: str,
        password: Secret,
        redeem: Callable[[str], Awaitable[bool]],
        ctx: AuthContext,
    ) -> PasswordCheck:
        """Step one of an invitation (`auth.invites`): the account's password, and
        then `redeem(user)`, which spends the invitation if it names this account.
        Unlike `check_password`, a right password of an account with no second
        factor goes on here: the invitation is what lets it enroll one. It never
        replaces one: an account with a TOTP or a passkey is refused (a
        compromise signal, as a right password without the factor is; an admin's
        `user invite --reset` removes the factors first). A wrong password never
        reaches `redeem` (the link is not spent); a right password without a
        valid invitation is a failure like any other, counted as a factor
        failure (the password is right, what goes with it is not). The owner is
        told when an invitation is used (notice "invitation_used")."""
        user = _account(self.auth, username)

        async def step() -> AuthResult[Any]:
            result = await self._password(user, password, ctx)
            if result.outcome is not Outcome.OK or user is None:
                return result
            if await self._has_factor(user):
                return self._signal(user, ctx, "an invitation for an account with a second factor")
            if not await redeem(user):
                return AuthResult(
                    Outcome.MISSING_FACTOR,
                    user,
                    "portal",
                    "correct password, no valid invitation for the account",
                    factor=Factor.PASSWORD,
                )
            return AuthResult(
                Outcome.OK,
                user,
                "portal",
                "password right with an invitation, second factor enrolment next",
                factor=Factor.PASSWORD,
            )

        done = await self._attempt(
            MECHANISM_INVITE, username, user, ctx, step, secret=password or None, success=False
        )
        if not done.ok or user is None:
            return PasswordCheck(ok=False)
        self._notice("invitation_used", user, ctx)
        return PasswordCheck(ok=True, user=user)

    async def check_oidc(self, token: VerifiedToken, ctx: AuthContext) -> OidcCheck:
        """A sign-in with an ID token of the `[oauth]` issuer (verified by the
        portal's relying party), decided as the gateway decides an OAUTHBEARER
        login: the same name rule (`canonical_identity`), a token method in
        `auth.methods`, the defense's precheck and counting, the account known to
        the mail server (the master login the gateway would open, logged out at
        once: no user row for a name the mail server does not know), the
        policy, and the `auth` line. A token with MFA that `auth.sufficient`
        and the policy accept is both factors; any other is one, and the
        account's own second factor comes next (none: refused)."""
        user = self.auth.names.canonical_identity(token.user)
        found = OidcCheck(ok=False)

        async def step() -> AuthResult[Any]:
            nonlocal found
            if not set(TOKEN_METHODS) & set(self.auth.methods):
                return AuthResult(Outcome.INVALID, user, "oauth", "no token method in auth.methods")
            if user is None:
                return AuthResult(Outcome.INVALID, None, "oauth", "token names no valid account")
            known = await self._known_upstream(user, ctx)
            if known is not None:
                return known
            factor = proof.bearer_factor(token.mfa)
            full = token.mfa and proof.shortfall(factor, self.auth.factors.sufficient) is None
            refusal = self._may(user, Factor.OAUTH_MFA if full else Factor.OAUTH, ctx)
            if refusal is not None and refusal.outcome is Outcome.DENIED:
                return refusal
            full = full and refusal is None
            if full:
                found = OidcCheck(ok=True, user=user, full=True)
                return AuthResult(Outcome.OK, user, "oauth", "ok", factor=factor)
            has_totp = await self._has_totp(user)
            has_passkey = await self._has_passkey(user)
            if not (has_totp or has_passkey):
                why = "token without sufficient MFA, no second factor enrolled"
                found = OidcCheck(ok=False, user=user, no_factor=True)
                return AuthResult(Outcome.MISSING_FACTOR, user, "oauth", why, factor=factor)
            found = OidcCheck(ok=True, user=user, has_totp=has_totp, has_passkey=has_passkey)
            return AuthResult(Outcome.OK, user, "oauth", "second factor next", factor=factor)

        shown = token.user
        done = await self._attempt(
            MECHANISM_OIDC, shown, user, ctx, step, secret=None, success=lambda: found.full
        )
        return found if done.ok or found.no_factor else OidcCheck(ok=False)

    async def check_totp(self, user: str, code: Secret, ctx: AuthContext) -> bool:
        """Step two, for the `user` step one named: the account's current code."""
        return await self._second_step(
            MECHANISM_CODE, user, ctx, lambda: self._code(user, code, ctx)
        )

    async def check_passkey(
        self, user: str, response: bytes, challenge: bytes, ctx: AuthContext
    ) -> bool:
        """Step two with a passkey: `response` (the browser's JSON) signs
        `challenge` (the one this session was given, used once) with a passkey
        of `user`, and its counter grew."""
        return await self._second_step(
            MECHANISM_PASSKEY,
            user,
            ctx,
            lambda: self._passkey(user, response, challenge, ctx),
        )

    async def check_recovery_code(self, user: str, code: Secret, ctx: AuthContext) -> bool:
        """Step two with a recovery code of `user` (each works once)."""
        return await self._second_step(
            MECHANISM_RECOVERY, user, ctx, lambda: self._recovery(user, code, ctx)
        )

    async def _second_step(
        self,
        mechanism: str,
        user: str,
        ctx: AuthContext,
        step: Callable[[], Awaitable[AuthResult[Any]]],
    ) -> bool:
        done = await self._attempt(mechanism, user, user, ctx, step, secret=None, success=True)
        return done.ok

    async def _attempt(
        self,
        mechanism: str,
        shown: str,
        user: str | None,
        ctx: AuthContext,
        step: Callable[[], Awaitable[AuthResult[Any]]],
        *,
        secret: Secret | None,
        success: bool | Callable[[], bool],
    ) -> _Done:
        """One sign-in step as the defense and the audit log see it: precheck,
        the defense's block or delay, `step`, count (a success only if `success`,
        asked after the step), audit, and the failure timing."""
        auth = self.auth
        # One guess at a time per address and account, shared with the IMAP
        # logins (`auth.gate`): requests sent at once must not all pass one precheck.
        turn = auth.gate.turn() if auth.gate is not None else None
        with auth.timing.attempt(ctx.client.ip) as clock:
            verdict: Verdict | None = None
            try:
                attempt, verdict = await self._precheck(ctx, user, secret, turn)
                result = await self._gate(user, verdict) or await step()
                counted = success() if callable(success) else success
                if counted or result.outcome is not Outcome.OK:
                    await self._count(attempt, verdict, result, ctx)
            except StateUnavailable as exc:
                result = AuthResult(
                    Outcome.UNAVAILABLE, user, "portal", f"state store: {exc.detail}"
                )
            finally:
                if turn is not None:  # counted: the pair's next guess may go
                    turn.leave()
            self._audit_auth(mechanism, shown, result, verdict, ctx)
            if result.outcome is not Outcome.OK:
                await auth.timing.wait_out(clock)
                return _Done(ok=False, familiar=False)
            # Without a defense nothing is known about the source: not told.
            return _Done(ok=True, familiar=verdict is None or verdict.familiar)

    async def _has_factor(self, user: str) -> bool:
        """Has the account a second factor (TOTP or a passkey, configured or not)?"""
        if await self._has_totp(user):
            return True
        store = self._portal_store
        return store is not None and bool(await self._store(store.list_passkeys, user))

    async def _has_totp(self, user: str) -> bool:
        auth = self.auth
        return await auth.reads.call(auth.reader.get_totp, user) is not None

    async def _has_passkey(self, user: str) -> bool:
        store = self._portal_store
        if store is None or self.passkeys is None:
            return False
        return bool(await self._store(store.list_passkeys, user))

    # -- the steps -----------------------------------------------------------------

    async def _precheck(
        self, ctx: AuthContext, user: str | None, secret: Secret | None, turn: Turn | None
    ) -> tuple[Attempt | None, Verdict | None]:
        defense = self.auth.defense
        if defense is None:
            return None, None
        attempt = defense.attempt(
            ctx.client.ip,
            user,
            secret,
            method="portal",
            listener=ctx.listener,
            trusted_device=False,
            spray=secret is not None,
        )
        if turn is not None and user is not None and secret:
            return attempt, await turn.enter(attempt, defense.precheck)
        return attempt, await self.auth.reads.precheck(defense, attempt)

    async def _password(
        self, user: str | None, password: Secret, ctx: AuthContext
    ) -> AuthResult[Any]:
        if user is None:
            return AuthResult(Outcome.INVALID, None, None, "malformed user name")
        if not password:
            return AuthResult(Outcome.INVALID, user, "portal", "empty password")
        try:
            session = await self.auth.password_login(user, password, ctx)
        except UpstreamRefused as exc:
            reason = f"wrong password ({exc.detail})".replace(" ()", "")
            return AuthResult(Outcome.INVALID, user, "portal", reason)
        except UpstreamUnavailable as exc:
            return AuthResult(Outcome.UNAVAILABLE, user, "portal", f"upstream: {exc.detail}")
        await session.discard()
        return AuthResult(
            Outcome.OK, user, "portal", "password right, second factor next", factor=Factor.PASSWORD
        )

    async def _code(self, user: str, code: Secret, ctx: AuthContext) -> AuthResult[Any]:
        auth, now = self.auth, self._wall()
        record = await auth.reads.call(auth.reader.get_totp, user)
        if record is None or self._totp_key is None:
            return AuthResult(Outcome.MISSING_FACTOR, user, "portal", "no TOTP enrolled")
        if record.locked_until is not None and record.locked_until > now:
            return self._signal(user, ctx, "wrong one-time code (codes locked for the account)")
        secret = totp.unseal(self._totp_key, user, record.sealed)
        text = code.reveal().decode("ascii", "replace").strip()
        step = totp.verify(secret, text, now, last_step=record.last_step)
        if step is not None and await self._store(auth.store.use_totp_step, user, step):
            return AuthResult(Outcome.OK, user, "portal", "ok", factor=Factor.PASSWORD_TOTP)
        reason = "one-time code already used" if step is not None else "wrong one-time code"
        factors = auth.factors
        locked = await self._store(
            auth.store.record_totp_failure,
            user,
            now,
            factors.totp_lockout,
            factors.totp_max_failures,
            factors.totp_lockout,
        )
        if locked:
            reason += "; one-time codes now locked for the account"
        return self._signal(user, ctx, reason)

    async def _passkey(
        self,
        user: str,
        response: bytes,
        challenge: bytes,
        ctx: AuthContext,
    ) -> AuthResult[Any]:
        store = self._portal_store
        if self.passkeys is None or store is None:
            return AuthResult(Outcome.MISSING_FACTOR, user, "portal", "passkeys not configured")
        records = await self._store(store.list_passkeys, user)
        if not records:
            return AuthResult(Outcome.MISSING_FACTOR, user, "portal", "no passkey registered")
        try:
            proven = self.passkeys.verify_authentication(response, challenge, records)
        except PasskeyRefused as exc:
            return self._signal(user, ctx, f"passkey {exc.reason}")
        credential = proven.passkey.credential_id
        if not await self._store(store.use_passkey, credential, proven.sign_count, self._wall()):
            return self._signal(
                user,
                ctx,
                f"passkey {proven.passkey.id}: counter did not grow (a cloned authenticator?)",
            )
        return AuthResult(Outcome.OK, user, "portal", "ok", factor="password+passkey")

    async def _recovery(self, user: str, code: Secret, ctx: AuthContext) -> AuthResult[Any]:
        store, key = self._portal_store, self._recovery_key
        if store is None or key is None:
            return AuthResult(
                Outcome.MISSING_FACTOR, user, "portal", "recovery codes not configured"
            )
        normalized = recovery.normalize(code)
        if normalized is not None:
            digest = recovery.digest(key, user, normalized)
            if await self._store(store.use_recovery_code, user, digest, self._wall()):
                return AuthResult(Outcome.OK, user, "portal", "ok", factor="password+recovery-code")
        return self._signal(user, ctx, "wrong or used recovery code")

    def _signal(self, user: str, ctx: AuthContext, reason: str) -> AuthResult[Any]:
        """A right password with a wrong code: a compromise signal, as over IMAP."""
        reason = f"correct password, {reason}"
        self._audit.emit(
            events.CompromiseSignal(
                session=ctx.client.session, src=ctx.client.ip, user=user, reason=reason
            )
        )
        self._notice("compromise_signal", user, ctx)
        return AuthResult(Outcome.MISSING_FACTOR, user, "portal", reason, factor=Factor.PASSWORD)

    def _notice(self, kind: str, user: str, ctx: AuthContext) -> None:
        if self._on_notice is not None:
            try:
                self._on_notice(kind, user, ctx, None)
            except Exception:
                log.exception("notification hook failed")

    async def _known_upstream(self, user: str, ctx: AuthContext) -> AuthResult[Any] | None:
        """None when the mail server lets `user` in on their behalf (the master
        login an OAUTHBEARER login opens; closed at once), else the refusal."""
        try:
            session = await self.auth.upstream.login(user, None, ctx.client)
        except UpstreamRefused as exc:
            if exc.code == "AUTHORIZATIONFAILED":  # RFC 5530: no such account upstream
                reason = f"upstream refused the account ({exc.detail})"
                return AuthResult(Outcome.DENIED, user, "oauth", reason)
            # The gateway's own master credentials: its fault, not the user's.
            reason = f"upstream refused the master login ({exc.detail})"
            return AuthResult(Outcome.UNAVAILABLE, user, "oauth", reason)
        except UpstreamUnavailable as exc:
            return AuthResult(Outcome.UNAVAILABLE, user, "oauth", f"upstream: {exc.detail}")
        await session.discard()
        return None

    def _may(self, user: str, factor: Factor, ctx: AuthContext) -> AuthResult[Any] | None:
        """The policy's word on a token sign-in, as `Authenticator` asks it for
        OAUTHBEARER (`permission.py`): None to go on, else the refusal."""
        auth = self.auth
        method = next((m for m in TOKEN_METHODS if m in auth.methods), TOKEN_METHODS[0])
        return policy_refusal(
            auth.policy,
            user,
            ctx,
            method=method,
            factor=factor,
            own_certificate=False,
            shown_method="oauth",
        )

    async def _gate(self, user: str | None, verdict: Verdict | None) -> AuthResult[Any] | None:
        """The defense's word before any credential is looked at: a block is the
        answer; a delay is waited out (a coroutine waits, no thread does)."""
        if verdict is None:
            return None
        if verdict.action is Action.BLOCKED:
            reason = f"blocked: {verdict.reason} (until {verdict.expires:.0f})"
            return AuthResult(Outcome.INVALID, user, None, reason, blocked=True)
        if verdict.action is Action.DELAY:
            await self._sleep(verdict.delay)
        return None

    # -- what the defense and the audit log learn ------------------------------------

    async def _count(
        self,
        attempt: Attempt | None,
        verdict: Verdict | None,
        result: AuthResult[Any],
        ctx: AuthContext,
    ) -> None:
        counting = self.auth.counting
        if attempt is not None and verdict is not None and counting is not None:
            await counting.record(attempt, verdict, result, ctx, ctx.client.session)

    def _audit_auth(
        self,
        mechanism: str,
        username: str,
        result: AuthResult[Any],
        verdict: Verdict | None,
        ctx: AuthContext,
    ) -> None:
        # A token sign-in names its credential as the gateway's OAUTHBEARER line does.
        token = mechanism == MECHANISM_OIDC and result.user is not None
        self._audit.emit(
            events.Auth(
                session=ctx.client.session,
                src=ctx.client.ip,
                listener=ctx.listener,
                client_id=ctx.client_id,
                mechanism=mechanism,
                user=result.user or username[:64],
                method=result.method,
                factor=result.factor,
                credential="oauth" if token else None,
                rule=result.rule,
                delay=round(verdict.delay, 2) if verdict and verdict.delay else None,
                result=result.outcome.value,
                reason=result.reason,
            )
        )

    async def _store(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await on_thread(self._executor, fn, *args, **kwargs)


def _account(auth: Authenticator[Any], username: str) -> str | None:
    """The account under the gateway's name rule; None for a name that is not
    even UTF-8 (a lone surrogate from a form)."""
    try:
        raw = username.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return auth.names.canonical(raw)

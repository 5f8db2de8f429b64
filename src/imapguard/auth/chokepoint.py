"""The one authentication chokepoint: every login path of every listener calls
`Authenticator.authenticate()`, and nothing else decides who gets in.

Order (fixed, in one place): check the user name → check the factor (app
password keyed hash, or the primary password by logging in to the upstream as
the user) → open the upstream session (master login for factors that carry no
primary password). The result is typed: OK, INVALID, MISSING_FACTOR or
UNAVAILABLE, with the real reason for the audit log only. On the wire every
failure looks the same (`NO [AUTHENTICATIONFAILED] Authentication failed.`) and
is answered no sooner than `failure_delay` plus a random jitter after the
command arrived, so neither text nor timing tells an unknown user from a wrong
password. A dead state store fails closed (UNAVAILABLE).

State access: point reads go to `reader` on the event loop (WAL: never blocked
by a writer); writes a decision depends on are awaited on the store's worker
thread (`_store`); bookkeeping after a decision (last login, last use) is queued
on `bookkeeping` and written in batches.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from imapguard.audit import AuditEvent, AuditLog
from imapguard.auth import app_passwords
from imapguard.errors import StateUnavailable, UpstreamRefused, UpstreamUnavailable
from imapguard.gateway.upstream import (
    ClientAddress,
    UpstreamSession,
    UpstreamSettings,
    open_session,
)
from imapguard.imap.preauth import Credentials
from imapguard.secret import Secret
from imapguard.state.sqlite import SqliteStore
from imapguard.state.writebehind import WriteBehind

__all__ = ["AuthContext", "AuthResult", "Authenticator", "Outcome", "canonical_user"]

log = logging.getLogger("imapguard.auth")
T = TypeVar("T")

# RFC 5321's limit on a mailbox (local@domain); longer names are no account.
MAX_USER_BYTES = 255


class Outcome(enum.Enum):
    OK = "ok"
    INVALID = "invalid"
    MISSING_FACTOR = "missing_factor"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class AuthContext:
    client: ClientAddress
    client_id: str | None
    listener: str


@dataclass(frozen=True)
class AuthResult:
    outcome: Outcome
    user: str | None
    method: str | None
    reason: str
    session: UpstreamSession | None = None


def canonical_user(raw: bytes) -> str | None:
    """The account name: UTF-8, printable, bounded, lower case (accounts compare
    case-insensitively, and the upstream is always asked for this exact form)."""
    if not raw or len(raw) > MAX_USER_BYTES:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text) or '"' in text or "\\" in text:
        return None
    return text.lower()


class Authenticator:
    def __init__(
        self,
        *,
        methods: tuple[str, ...],
        store: SqliteStore,
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
        reader: SqliteStore | None = None,
        bookkeeping: WriteBehind | None = None,
    ) -> None:
        self.methods = methods
        self.store = store
        self.reader = reader or store
        self.bookkeeping = bookkeeping or WriteBehind(store, store_executor)
        self.upstream = upstream
        self._executor = store_executor
        self._key = app_password_key
        self._audit = audit
        self._delay = failure_delay
        self._jitter = failure_jitter
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._rng = rng or random.SystemRandom()
        self._connect = connect

    async def authenticate(
        self, credentials: Credentials, ctx: AuthContext, session: str
    ) -> AuthResult:
        started = self._clock()
        try:
            result = await self._decide(credentials, ctx)
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
                    "result": result.outcome.value,
                    "reason": result.reason,
                },
            )
        )
        if result.outcome is not Outcome.OK:
            # One timing profile for every failure (SPEC "Failures are uniform").
            target = self._delay + self._rng.uniform(0, self._jitter)
            remaining = target - (self._clock() - started)
            if remaining > 0:
                await self._sleep(remaining)
        return result

    async def _store(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _decide(self, credentials: Credentials, ctx: AuthContext) -> AuthResult:
        user = canonical_user(credentials.username)
        if user is None:
            return AuthResult(Outcome.INVALID, None, None, "malformed user name")
        if credentials.authzid and canonical_user(credentials.authzid) != user:
            return AuthResult(Outcome.INVALID, user, None, "authorization identity differs")
        if not credentials.secret:
            return AuthResult(Outcome.INVALID, user, None, "empty password")

        if "app-password" in self.methods:
            normalized = app_passwords.normalize(credentials.secret)
            if normalized is not None:
                digest = app_passwords.digest(self._key, user, normalized)
                record = self.reader.find_app_password(user, digest)
                if record is not None:
                    result = await self._open(user, None, "app-password", ctx)
                    if result.outcome is Outcome.OK:
                        self.bookkeeping.submit(
                            self.store.record_app_password_use,
                            record.id,
                            self._wall(),
                            ctx.client.ip,
                            ctx.client_id,
                        )
                    return result

        if "password" in self.methods:
            return await self._open(user, credentials.secret, "password", ctx)
        return AuthResult(Outcome.INVALID, user, "app-password", "not a valid app password")

    async def _open(
        self, user: str, password: Secret | None, method: str, ctx: AuthContext
    ) -> AuthResult:
        try:
            session = await self._connect(self.upstream, user, password, ctx.client)
        except UpstreamRefused as exc:
            reason = "wrong password" if password is not None else "upstream refused master login"
            return AuthResult(Outcome.INVALID, user, method, f"{reason} ({exc.detail})")
        except UpstreamUnavailable as exc:
            return AuthResult(Outcome.UNAVAILABLE, user, method, f"upstream: {exc.detail}")
        self.bookkeeping.submit(self.store.record_login, user, self._wall(), ctx.client.ip, method)
        return AuthResult(Outcome.OK, user, method, "ok", session)

    async def flush(self) -> None:
        """Write the queued bookkeeping now (tests; shutdown)."""
        await self.bookkeeping.flush()

"""Portal sessions: the cookie, its token, and the store row it finds.

Rules:

* The cookie is `__Host-imapguard` (Secure, HttpOnly, SameSite=Strict, Path=/,
  no Domain: the `__Host-` prefix makes browsers refuse it from anywhere but
  this exact host over HTTPS). Its value is 32 random bytes, base64url.
* The store keeps only HMAC-SHA256(the PORTAL_SESSION key, token): a copy of the
  database signs nobody in. A cookie that is not exactly a token is ignored
  before anything is computed from it.
* A session is found only while it is live (`find_portal_session` with the
  idle limit); its last use is recorded at most once a minute.
* Every sign-in step starts a new session with a new token and ends the one
  the browser had (session fixation): after the password a "password" session
  that only reaches the code step and lives `PENDING_LIFETIME`; after the code a
  new "full" one. Sign-out revokes the row and clears the cookie.
* Store calls run on the store's thread (`executor`), never on the event loop
  the gateway shares; a store failure answers 503, never a guess.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Final, ParamSpec, TypeVar

from starlette.requests import HTTPConnection, cookie_parser
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from imapguard.errors import StateError
from imapguard.state.on_thread import on_thread
from imapguard.state.portal import PortalSession, PortalSessionStore, SessionLevel

__all__ = [
    "COOKIE",
    "PENDING_LIFETIME",
    "PRE_COOKIE",
    "Current",
    "SessionLoader",
    "Sessions",
    "clear_cookie",
    "current",
    "is_token",
    "loaded",
    "new_token",
    "set_cookie",
    "token_digest",
]

T = TypeVar("T")
P = ParamSpec("P")

COOKIE: Final = "__Host-imapguard"
# Before sign-in: the random value the sign-in form's CSRF token is bound to.
PRE_COOKIE: Final = "__Host-imapguard-pre"
_TOKEN_BYTES = 32
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
# A session that proved the password only: this long to enter the code.
PENDING_LIFETIME = 300.0
# The last use of a session is written at most this often.
TOUCH_INTERVAL = 60.0
# What a session keeps of the browser's User-Agent (for the session list).
_MAX_USER_AGENT = 256
_STATE_KEY = "imapguard.portal.session"


def new_token() -> str:
    """32 random bytes, base64url without padding (43 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(_TOKEN_BYTES)).rstrip(b"=").decode()


def is_token(text: str | None) -> bool:
    return text is not None and _TOKEN.fullmatch(text) is not None


def token_digest(key: bytes, token: str) -> bytes:
    """What the store keeps of a cookie token: HMAC-SHA256(PORTAL_SESSION key, token)."""
    return hmac.new(key, token.encode("ascii"), hashlib.sha256).digest()


def set_cookie(name: str, value: str, max_age: int | None = None) -> str:
    """A Set-Cookie value for one of the portal's `__Host-` cookies."""
    age = f"; Max-Age={max_age}" if max_age is not None else ""
    return f"{name}={value}{age}; Path=/; SameSite=Strict; Secure; HttpOnly"


def clear_cookie(name: str) -> str:
    return set_cookie(name, "", 0)


@dataclass(frozen=True)
class Current:
    """The live session of a request and the token its cookie carried."""

    session: PortalSession
    token: str


@dataclass(frozen=True)
class Loaded:
    """What the request's cookies hold, once looked at."""

    current: Current | None
    # The pre-sign-in cookie's value, when it is a well-formed token.
    pre_token: str | None
    # The session cookie was sent but finds no live session (clear it).
    stale: bool


def loaded(conn: HTTPConnection) -> Loaded:
    """The request's session state (set by SessionLoader)."""
    value = conn.scope.get("state", {}).get(_STATE_KEY)
    if not isinstance(value, Loaded):
        raise RuntimeError("SessionLoader did not run for this request")
    return value


def current(conn: HTTPConnection) -> Current | None:
    return loaded(conn).current


def _client_ip(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client is not None else ""


class Sessions:
    """Sessions in the store, by cookie token."""

    def __init__(
        self,
        store: PortalSessionStore,
        key: bytes,
        *,
        idle: float,
        lifetime: float,
        clock: Callable[[], float],
        executor: Executor | None,
    ) -> None:
        self._store = store
        self._key = key
        self.idle = idle
        self.lifetime = lifetime
        self._clock = clock
        self._executor = executor

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await on_thread(self._executor, fn, *args, **kwargs)

    async def find(self, token: str) -> PortalSession | None:
        now = self._clock()
        session = await self._call(
            self._store.find_portal_session, token_digest(self._key, token), now, self.idle
        )
        if session is not None and now - session.last_seen_at >= min(TOUCH_INTERVAL, self.idle / 2):
            await self._call(self._store.touch_portal_session, session.id, now)
        return session

    async def start(self, conn: HTTPConnection, user: str, *, ending: Current | None) -> Current:
        """A new "password" session for `user` (the password was right); the
        browser's earlier session, whoever's it was, ends."""
        if ending is not None:
            await self.end(ending)
        now = self._clock()
        return await self._create(conn, user, "password", now, now + PENDING_LIFETIME)

    async def raise_to_full(
        self, conn: HTTPConnection, pending: Current, *, keep_expiry: bool = False
    ) -> Current | None:
        """The second factor was right: a new "full" session with a new token
        replaces `pending`. None if `pending` is gone. `keep_expiry`: the new
        session ends when `pending` would have (a fresh-factor check of a full
        session must not extend its absolute lifetime)."""
        now = self._clock()
        expires_at = pending.session.expires_at if keep_expiry else now + self.lifetime
        new = await self._create(conn, pending.session.user, "password", now, expires_at)
        # Raising rotates the token once more: the store finds the session by the
        # new digest only (what was issued before the second factor opens nothing).
        token = new_token()
        digest = token_digest(self._key, token)
        if not await self._call(self._store.raise_portal_session, new.session.id, digest, now):
            await self.end(new)
            return None
        await self.end(pending)
        session = await self.find(token)
        return None if session is None else Current(session, token)

    async def end(self, ending: Current) -> None:
        await self._call(self._store.revoke_portal_session, ending.session.user, ending.session.id)

    async def _create(
        self,
        conn: HTTPConnection,
        user: str,
        level: SessionLevel,
        now: float,
        expires_at: float,
    ) -> Current:
        token = new_token()
        agent = conn.headers.get("user-agent", "")[:_MAX_USER_AGENT]
        session = await self._call(
            self._store.create_portal_session,
            user,
            token_digest(self._key, token),
            level,
            now,
            expires_at,
            _client_ip(conn),
            agent,
        )
        return Current(session, token)

    def cookie(self, current: Current) -> str:
        """The Set-Cookie value that hands `current` to the browser."""
        remaining = int(current.session.expires_at - self._clock())
        return set_cookie(COOKIE, current.token, max(remaining, 0))


class SessionLoader:
    """Finds the request's session from its cookie before anything else runs
    (the CSRF check binds its token to it); a store failure answers 503."""

    def __init__(self, app: ASGIApp, sessions: Sessions) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        cookies = cookie_parser(conn.headers.get("cookie", ""))
        token = cookies.get(COOKIE)
        pre = cookies.get(PRE_COOKIE)
        found: Current | None = None
        # Static files need no session (and cost no store lookup).
        static = str(scope.get("path", "")).startswith("/static/")
        if token is not None and is_token(token) and not static:
            try:
                session = await self.sessions.find(token)
            except StateError:
                response = PlainTextResponse(
                    "The portal cannot reach its state store. Try again in a minute.",
                    status_code=503,
                )
                await response(scope, receive, send)
                return
            if session is not None:
                found = Current(session, token)
        state = scope.setdefault("state", {})
        state[_STATE_KEY] = Loaded(
            current=found,
            pre_token=pre if is_token(pre) else None,
            stale=token is not None and found is None and not static,
        )
        await self.app(scope, receive, send)

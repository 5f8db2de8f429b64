"""An in-memory portal for the unit tests: the app of `create_app` over a fake
session store and a fake sign-in service, driven by httpx over ASGI.

The fake store keeps the rules of `state.portal.PortalSessionStore` that the
portal relies on (found by digest; revoked, expired and idle sessions are not
found); the real SQLite store is held to them by tests/conformance/."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from starlette.types import ASGIApp

from imapguard.audit import AuditLog, read_events
from imapguard.auth.model import AuthContext
from imapguard.config import PortalConfig
from imapguard.portal.app import PortalDeps, PortalKeys, create_app
from imapguard.portal.ports import PasswordCheck
from imapguard.secret import Secret
from imapguard.state.portal import PortalSession, PortalStore, SessionLevel

ORIGIN = "https://portal.test"
PASSWORD = "correct horse battery staple"
CODE = "123456"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class _Row:
    session: PortalSession
    digest: bytes
    revoked: bool = False


class MemorySessions:
    """The PortalSessionStore part of a PortalStore, in a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, _Row] = {}
        self.touches = 0

    def create_portal_session(
        self,
        user: str,
        token_digest: bytes,
        level: SessionLevel,
        now: float,
        expires_at: float,
        address: str,
        user_agent: str,
    ) -> PortalSession:
        assert all(row.digest != token_digest for row in self.rows.values())
        session = PortalSession(
            id=secrets.token_hex(8),
            user=user,
            level=level,
            created_at=now,
            last_seen_at=now,
            expires_at=expires_at,
            second_factor_at=None,
            address=address,
            user_agent=user_agent,
        )
        self.rows[session.id] = _Row(session, token_digest)
        return session

    def find_portal_session(
        self, token_digest: bytes, now: float, idle: float
    ) -> PortalSession | None:
        for row in self.rows.values():
            s = row.session
            if row.digest == token_digest and not row.revoked:
                if now > s.expires_at or now - s.last_seen_at > idle:
                    return None
                return s
        return None

    def touch_portal_session(self, session_id: str, now: float) -> None:
        row = self.rows[session_id]
        self.touches += 1
        row.session = dataclasses.replace(row.session, last_seen_at=now)

    def raise_portal_session(self, session_id: str, token_digest: bytes, now: float) -> bool:
        # As tests/conformance states it: found by the new digest only from now on.
        row = self.rows.get(session_id)
        if row is None or row.revoked or now > row.session.expires_at:
            return False
        assert all(r.digest != token_digest for r in self.rows.values())
        row.digest = token_digest
        row.session = dataclasses.replace(
            row.session, level="full", second_factor_at=now, last_seen_at=now
        )
        return True

    def list_portal_sessions(self, user: str, now: float) -> list[PortalSession]:
        return [
            r.session
            for r in self.rows.values()
            if r.session.user == user and not r.revoked and r.session.expires_at >= now
        ]

    def revoke_portal_session(self, user: str, session_id: str) -> bool:
        row = self.rows.get(session_id)
        if row is None or row.session.user != user or row.revoked:
            return False
        row.revoked = True
        return True

    def revoke_portal_sessions(self, user: str, *, keep: str | None = None) -> int:
        ended = 0
        for row in self.rows.values():
            if row.session.user == user and row.session.id != keep and not row.revoked:
                row.revoked = True
                ended += 1
        return ended

    def forget_portal_sessions(self, now: float) -> int:
        gone = [i for i, r in self.rows.items() if r.session.expires_at < now]
        for i in gone:
            del self.rows[i]
        return len(gone)

    def live(self) -> list[PortalSession]:
        return [r.session for r in self.rows.values() if not r.revoked]


@dataclass
class FakeSignIn:
    """alice has a TOTP factor, bob has none; every call is recorded."""

    users: dict[str, tuple[str, bool]] = field(
        default_factory=lambda: {"alice": (PASSWORD, True), "bob": (PASSWORD, False)}
    )
    calls: list[tuple[str, str, AuthContext]] = field(default_factory=list)
    broken: bool = False

    async def check_password(
        self, username: str, password: Secret, ctx: AuthContext
    ) -> PasswordCheck:
        self.calls.append(("password", username, ctx))
        if self.broken:
            raise RuntimeError("the auth service fell over")
        known = self.users.get(username)
        if known is None or password != Secret(known[0]):
            return PasswordCheck(ok=False, user=None, has_totp=False)
        return PasswordCheck(ok=True, user=username, has_totp=known[1])

    async def check_totp(self, user: str, code: Secret, ctx: AuthContext) -> bool:
        self.calls.append(("totp", user, ctx))
        return code == Secret(CODE)


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


@dataclass
class Portal:
    app: ASGIApp
    client: httpx.AsyncClient
    store: MemorySessions
    service: FakeSignIn
    clock: Clock
    settings: PortalConfig
    audit_path: Path

    @contextlib.asynccontextmanager
    async def browser(self, client_ip: str = "192.0.2.10") -> AsyncIterator[Portal]:
        """Another browser (its own cookies) on the same portal, from `client_ip`."""
        async with _client(self.app, client_ip) as client:
            yield dataclasses.replace(self, client=client)

    def events(self, kind: str = "portal") -> list[dict[str, Any]]:
        return [e for e in read_events(str(self.audit_path)) if e["event"] == kind]

    async def post(
        self, path: str, data: dict[str, str], *, origin: str | None = ORIGIN, **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if origin is not None:
            headers["Origin"] = origin
        return await self.client.post(path, data=data, headers=headers, **kw)

    async def password_step(self, user: str = "alice", password: str = PASSWORD) -> httpx.Response:
        form = await self.client.get("/signin")
        return await self.post(
            "/signin", {"csrf": csrf_of(form), "username": user, "password": password}
        )

    async def code_step(self, code: str = CODE) -> httpx.Response:
        form = await self.client.get("/signin/code")
        return await self.post("/signin/code", {"csrf": csrf_of(form), "code": code})

    async def sign_in(self, user: str = "alice") -> str:
        """A full sign-in; the session cookie's token."""
        first = await self.password_step(user)
        assert first.status_code == 303, first.text
        second = await self.code_step()
        assert second.status_code == 303, second.text
        assert second.headers["location"] == "/"
        token = self.client.cookies.get("__Host-imapguard")
        assert token
        return token


@contextlib.asynccontextmanager
async def portal(
    tmp_path: Path,
    *,
    client_ip: str = "192.0.2.10",
    **settings: Any,
) -> AsyncIterator[Portal]:
    store = MemorySessions()
    service = FakeSignIn()
    clock = Clock()
    config = PortalConfig.checked(
        {"listen": "127.0.0.1:8443", "url": ORIGIN, **settings},
    )
    audit_path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(audit_path), clock=clock)
    keys = PortalKeys(*(secrets.token_bytes(32) for _ in range(4)))
    deps = PortalDeps(
        settings=config,
        # The fake implements only the session part of a PortalStore.
        store=cast(PortalStore, store),
        keys=keys,
        sign_in=service,
        audit=audit,
        clock=clock,
    )
    app = create_app(deps)
    try:
        async with _client(app, client_ip) as client:
            yield Portal(app, client, store, service, clock, config, audit_path)
    finally:
        audit.close()


def _client(app: ASGIApp, client_ip: str) -> httpx.AsyncClient:
    # A crash must come back as the 500 a browser gets, headers and all.
    transport = httpx.ASGITransport(app=app, client=(client_ip, 40000), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN)

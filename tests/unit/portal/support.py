"""The portal for the unit tests: the app of `create_app` over the real SQLite
store (in the test's tmp_path), a real defense and a fake sign-in service (the
real one, with the gateway's auth service against Dovecot, is in
tests/integration/test_portal_signin.py), driven by httpx over ASGI."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp

from imapguard.audit import AuditLog, read_events
from imapguard.auth import recovery, totp
from imapguard.auth.chokepoint import Authenticator
from imapguard.auth.model import AuthContext, ClientAddress
from imapguard.auth.oauth.tokens import VerifiedToken
from imapguard.auth.passkeys import Challenge, PasskeyRefused, Passkeys
from imapguard.auth.signin import TwoStepSignIn
from imapguard.config import PortalConfig
from imapguard.defense import Defense, DefenseSettings, Fingerprinter
from imapguard.errors import UpstreamRefused
from imapguard.policy.gate import PolicyGate
from imapguard.policy.rules import Groups
from imapguard.portal.admin_feed import LiveFeed
from imapguard.portal.app import PortalDeps, PortalKeys, PortalServices, create_app
from imapguard.portal.oidc import OidcSetup
from imapguard.portal.ports import OidcCheck, PasswordCheck, SignInService
from imapguard.secret import Secret
from imapguard.state.portal import PortalSession
from imapguard.state.sqlite import SqliteStore

ORIGIN = "https://portal.test"
PASSWORD = "correct horse battery staple"
CODE = "123456"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingStore(SqliteStore):
    """The real SQLite store, counting the session touches, with a test's view
    of the live sessions."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.touches = 0

    def touch_portal_session(self, session_id: str, now: float) -> None:
        self.touches += 1
        super().touch_portal_session(session_id, now)

    def live(self) -> list[PortalSession]:
        """Every session not revoked (expired ones included), any account."""
        return [s for u in self.list_users() for s in self.list_portal_sessions(u.name, 0.0)]

    def session_digests(self) -> list[bytes]:
        """What the store keeps of the cookie tokens, read from the file itself."""
        with sqlite3.connect(self.path) as db:
            return [bytes(row[0]) for row in db.execute("SELECT token_digest FROM portal_sessions")]


@dataclass
class Notices:
    """What the portal told owners and admins (the NoticeHook), in order."""

    sent: list[tuple[str, str, str]] = field(default_factory=list)

    def append_hook(self, kind: str, user: str, ctx: AuthContext, device: str | None) -> None:
        self.sent.append((kind, user, ctx.client.ip))


@dataclass
class FakeSignIn:
    """alice and carol have a TOTP factor, bob has none; every call is recorded."""

    users: dict[str, tuple[str, bool]] = field(
        default_factory=lambda: {
            "alice": (PASSWORD, True),
            "bob": (PASSWORD, False),
            "carol": (PASSWORD, True),
        }
    )
    calls: list[tuple[str, str, AuthContext]] = field(default_factory=list)
    broken: bool = False
    # Passkeys and recovery codes are checked for real, against the store, as
    # auth.signin.TwoStepSignIn does (set by `portal`).
    store: SqliteStore | None = None
    passkeys: Passkeys | None = None
    recovery_key: bytes = b""
    # The name rule of an OIDC sign-in (`OidcSetup.canonical`, set by `portal`).
    canonical: Callable[[str], str | None] | None = None

    async def check_password(
        self, username: str, password: Secret, ctx: AuthContext
    ) -> PasswordCheck:
        self.calls.append(("password", username, ctx))
        if self.broken:
            raise RuntimeError("the auth service fell over")
        known = self.users.get(username)
        if known is None or password != Secret(known[0]):
            return PasswordCheck(ok=False, user=None, has_totp=False)
        has_passkey = self.store is not None and bool(self.store.list_passkeys(username))
        return PasswordCheck(ok=True, user=username, has_totp=known[1], has_passkey=has_passkey)

    async def check_totp(self, user: str, code: Secret, ctx: AuthContext) -> bool:
        self.calls.append(("totp", user, ctx))
        return code == Secret(CODE)

    async def check_invited_password(
        self,
        username: str,
        password: Secret,
        redeem: Callable[[str], Awaitable[bool]],
        ctx: AuthContext,
    ) -> PasswordCheck:
        """As the real one: a right password of an account without a second
        factor (TOTP or passkey, as the store has them), then `redeem`."""
        self.calls.append(("invited_password", username, ctx))
        known = self.users.get(username)
        if known is None or password != Secret(known[0]) or self._has_factor(username):
            return PasswordCheck(ok=False, user=None, has_totp=False)
        if not await redeem(username):
            return PasswordCheck(ok=False, user=None, has_totp=False)
        return PasswordCheck(ok=True, user=username)

    def _has_factor(self, user: str) -> bool:
        if self.store is None:
            return self.users[user][1]
        return self.store.get_totp(user) is not None or bool(self.store.list_passkeys(user))

    async def check_oidc(self, token: VerifiedToken, ctx: AuthContext) -> OidcCheck:
        """As the real one without its defense and policy (those are proven with
        `portal(..., real_sign_in=True)`): MFA is both factors, else the
        account's own second factor comes next."""
        self.calls.append(("oidc", token.user, ctx))
        user = self.canonical(token.user) if self.canonical is not None else token.user
        if user is None:
            return OidcCheck(ok=False)
        if token.mfa:
            return OidcCheck(ok=True, user=user, full=True)
        has_totp = self.store is not None and self.store.get_totp(user) is not None
        has_passkey = self.store is not None and bool(self.store.list_passkeys(user))
        if not (has_totp or has_passkey):
            return OidcCheck(ok=False, user=user, no_factor=True)
        return OidcCheck(ok=True, user=user, has_totp=has_totp, has_passkey=has_passkey)

    async def check_recovery_code(self, user: str, code: Secret, ctx: AuthContext) -> bool:
        self.calls.append(("recovery", user, ctx))
        normalized = recovery.normalize(code)
        if self.store is None or normalized is None:
            return False
        digest = recovery.digest(self.recovery_key, user, normalized)
        return self.store.use_recovery_code(user, digest, 0.0)

    async def passkey_options(self, user: str) -> Challenge | None:
        if self.store is None or self.passkeys is None:
            return None
        records = self.store.list_passkeys(user)
        return self.passkeys.authentication(records) if records else None

    async def check_passkey(
        self, user: str, response: bytes, challenge: bytes, ctx: AuthContext
    ) -> bool:
        self.calls.append(("passkey", user, ctx))
        if self.store is None or self.passkeys is None:
            return False
        try:
            proven = self.passkeys.verify_authentication(
                response, challenge, self.store.list_passkeys(user)
            )
        except PasskeyRefused:
            return False
        return self.store.use_passkey(proven.passkey.credential_id, proven.sign_count, 1.0)


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


@dataclass
class Portal:
    app: ASGIApp
    client: httpx.AsyncClient
    store: RecordingStore
    service: FakeSignIn
    clock: Clock
    settings: PortalConfig
    audit_path: Path
    deps: PortalDeps
    notices: Notices

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
    admins: tuple[str, ...] = ("carol",),
    oidc: OidcSetup | None = None,
    executor: Executor | None = None,
    real_sign_in: bool = False,
    methods: tuple[str, ...] = ("password+totp", "oauthbearer"),
    live: LiveFeed | None = None,
    **settings: Any,
) -> AsyncIterator[Portal]:
    """The portal's app on a real SQLite store in `tmp_path`, a fake sign-in
    service (alice: password + TOTP; bob: password only; carol, an admin: password
    + TOTP) and a real defense; `admins` are the members of the admin group.
    `executor`: the store's thread, as compose gives it (None: store calls run
    inline, so requests never interleave between two of them). `live`: where
    the admin's live events come from (None: the audit log file)."""
    notices = Notices()
    store = RecordingStore(str(tmp_path / "state.db"))
    service = FakeSignIn()
    clock = Clock()
    config = PortalConfig.checked(
        {"listen": "127.0.0.1:8443", "url": ORIGIN, **settings},
    )
    audit_path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(audit_path), clock=clock)
    keys = PortalKeys(*(secrets.token_bytes(32) for _ in range(4)))
    defense = Defense(
        DefenseSettings(),
        store,
        clock,
        random.Random(1),
        fingerprints=Fingerprinter(Secret(secrets.token_bytes(32))),
    )
    service.store = store
    totp_key = secrets.token_bytes(32)
    for name, (_, has_totp) in service.users.items():
        if has_totp:  # the store agrees with the fake (the pages list the methods)
            store.set_totp(name, totp.seal(totp_key, name, totp.new_secret()), clock())
    service.passkeys = Passkeys(rp_id="portal.test", rp_name="Mail security", origin=ORIGIN)
    service.recovery_key = keys.recovery
    service.canonical = oidc.canonical if oidc is not None else None
    sign_in: SignInService = service
    if real_sign_in:
        sign_in = _real_sign_in(service, store, defense, audit, clock, notices, totp_key, methods)
    deps = PortalDeps(
        settings=config,
        store=store,
        keys=keys,
        sign_in=sign_in,
        audit=audit,
        clock=clock,
        executor=executor,
        is_admin=lambda user: user in admins,
        services=PortalServices(
            totp_key=totp_key,
            app_password_key=secrets.token_bytes(32),
            passkeys=Passkeys(rp_id="portal.test", rp_name="Mail security", origin=ORIGIN),
            defense=defense,
            policy=PolicyGate(None, Groups({"admins": admins})),
            notice=notices.append_hook,
            audit_path=str(audit_path),
            oidc=oidc,
            live_events=live,
        ),
    )
    app = create_app(deps)
    try:
        async with _client(app, client_ip) as client:
            yield Portal(app, client, store, service, clock, config, audit_path, deps, notices)
    finally:
        audit.close()
        store.close()


class StubUpstream:
    """The mail server of the real sign-in (`portal(..., real_sign_in=True)`):
    FakeSignIn's users with their passwords; a master login (password None) for
    them only, as Dovecot's master passdb with `result_success = continue`."""

    logs_in_for_users = True

    def __init__(self, users: dict[str, tuple[str, bool]]) -> None:
        self.users = users
        self.calls: list[tuple[str, bool]] = []

    async def login(self, user: str, password: Secret | None, client: ClientAddress) -> _Upstream:
        self.calls.append((user, password is None))
        known = self.users.get(user)
        if known is None and password is None:  # the master user accepted, the account not
            raise UpstreamRefused("upstream", "NO [AUTHORIZATIONFAILED]", "AUTHORIZATIONFAILED")
        if known is None or (password is not None and password != Secret(known[0])):
            raise UpstreamRefused("upstream", "NO [AUTHENTICATIONFAILED]")
        return _Upstream()


class _Upstream:
    async def discard(self) -> None:
        pass


class _Inline(Executor):
    """Runs each call at once on the caller's thread (the portal's tests do)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        done: Future[Any] = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            done.set_exception(exc)
        return done


def _real_sign_in(
    fake: FakeSignIn,
    store: RecordingStore,
    defense: Defense,
    audit: AuditLog,
    clock: Clock,
    notices: Notices,
    totp_key: bytes,
    methods: tuple[str, ...],
) -> TwoStepSignIn[Any]:
    """The auth service's own TwoStepSignIn over the portal's store, defense and
    audit log, with `StubUpstream` as the mail server."""
    executor = _Inline()

    async def no_sleep(seconds: float) -> None:
        clock.now += seconds

    auth: Authenticator[Any] = Authenticator(
        methods=methods,
        store=store,
        store_executor=executor,
        app_password_key=secrets.token_bytes(32),
        upstream=StubUpstream(fake.users),
        audit=audit,
        failure_delay=0.0,
        failure_jitter=0.0,
        clock=clock,
        wall_clock=clock,
        sleep=no_sleep,
        rng=random.Random(1),
        totp_key=totp_key,
        on_notice=notices.append_hook,
        policy=PolicyGate(),
        defense=defense,
    )
    return TwoStepSignIn(
        auth,
        audit=audit,
        executor=executor,
        totp_key=totp_key,
        passkeys=fake.passkeys,
        portal_store=store,
        recovery_key=fake.recovery_key,
        on_notice=notices.append_hook,
        wall_clock=clock,
        sleep=no_sleep,
    )


def _client(app: ASGIApp, client_ip: str) -> httpx.AsyncClient:
    # A crash must come back as the 500 a browser gets, headers and all.
    transport = httpx.ASGITransport(app=app, client=(client_ip, 40000), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN)

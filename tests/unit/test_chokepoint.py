"""The authentication chokepoint: typed results, uniform failure timing, fail closed.

The upstream login is replaced by a recording stub here; tests/integration prove
the real one against Dovecot.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from imapguard.audit import AuditLog
from imapguard.auth import app_passwords
from imapguard.auth.chokepoint import AuthContext, Authenticator, Outcome
from imapguard.auth.model import ClientAddress
from imapguard.errors import UpstreamRefused, UpstreamUnavailable
from imapguard.gateway.upstream import UpstreamSession
from imapguard.imap.preauth import Credentials
from imapguard.names import canonical_user
from imapguard.secret import Secret
from imapguard.state.sqlite import SqliteStore, open_store

KEY = b"k" * 32
CTX = AuthContext(ClientAddress("192.0.2.9", 40000, "127.0.0.1", 993, "s1"), "Mail/1", "l")


class Upstream:
    """Records logins; answers as told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | None]] = []
        self.fail: Exception | None = None

    logs_in_for_users = True  # a master user is configured

    async def login(
        self, user: str, password: Secret | None, client: ClientAddress
    ) -> UpstreamSession:
        self.calls.append((user, None if password is None else password.reveal()))
        if self.fail is not None:
            raise self.fail
        link: Any = _Link()
        return UpstreamSession(link=link, capabilities=["IMAP4rev1"], leftover=b"")


class _Link:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


_OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _close_resources() -> Iterator[None]:
    yield
    while _OPEN:
        resource = _OPEN.pop()
        if isinstance(resource, ThreadPoolExecutor):
            resource.shutdown()
        else:
            resource.close()


def _auth(
    store: SqliteStore, tmp_path: Path, methods: tuple[str, ...] = ("app-password",)
) -> tuple[Authenticator[UpstreamSession], Upstream, Clock]:
    upstream, clock = Upstream(), Clock()
    executor = ThreadPoolExecutor(1)
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    _OPEN.extend([executor, audit])
    auth = Authenticator(
        methods=methods,
        store=store,
        store_executor=executor,
        app_password_key=KEY,
        upstream=upstream,
        audit=audit,
        failure_delay=1.0,
        failure_jitter=0.5,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
    )
    return auth, upstream, clock


def _issue(store: SqliteStore, user: str) -> Secret:
    password = app_passwords.generate()
    normalized = app_passwords.normalize(password)
    assert normalized is not None
    store.add_app_password(user, "phone", app_passwords.digest(KEY, user, normalized), 1.0)
    return password


def _creds(user: bytes, secret: Secret | bytes, authzid: bytes = b"") -> Credentials:
    return Credentials(
        "LOGIN", user, secret if isinstance(secret, Secret) else Secret(secret), authzid
    )


@pytest.mark.asyncio
async def test_app_password_logs_in_upstream_as_master(store: SqliteStore, tmp_path: Path) -> None:
    auth, upstream, clock = _auth(store, tmp_path)
    password = _issue(store, "alice")
    result = await auth.authenticate(_creds(b"Alice", password), CTX, "s1")
    assert (result.outcome, result.user, result.method) == (Outcome.OK, "alice", "app-password")
    assert upstream.calls == [("alice", None)]  # master login: no user password upstream
    assert clock.slept == []
    await auth.flush()
    (record,) = store.list_app_passwords("alice")
    assert (record.last_used_address, record.last_used_client) == ("192.0.2.9", "Mail/1")


@pytest.mark.asyncio
async def test_primary_password_alone_is_refused_without_asking_upstream(
    store: SqliteStore, tmp_path: Path
) -> None:
    auth, upstream, _ = _auth(store, tmp_path)
    _issue(store, "alice")
    result = await auth.authenticate(_creds(b"alice", b"her-real-password"), CTX, "s1")
    assert result.outcome is Outcome.INVALID
    assert result.reason == "not a valid app password"
    assert upstream.calls == []


@pytest.mark.asyncio
async def test_scoped_app_password_from_elsewhere_or_too_late_is_refused(
    store: SqliteStore, tmp_path: Path
) -> None:
    """A stolen office-only app password used from the attacker's network, or a
    temporary one after its expiry: the uniform failure, nothing asked upstream."""
    auth, upstream, _ = _auth(store, tmp_path, ("app-password", "password"))
    password = app_passwords.generate()
    normalized = app_passwords.normalize(password)
    assert normalized is not None
    digest = app_passwords.digest(KEY, "alice", normalized)
    record = store.add_app_password(
        "alice", "office", digest, 1.0, network="198.51.100.0/24", expires_at=4e9
    )
    result = await auth.authenticate(_creds(b"alice", password), CTX, "s1")  # from 192.0.2.9
    assert (result.outcome, result.reason) == (
        Outcome.INVALID,
        f"app password {record.id} is not for this network",
    )
    assert upstream.calls == []  # not tried as her password either
    office = AuthContext(
        ClientAddress("198.51.100.20", 40000, "127.0.0.1", 993, "s"), "Mail/1", "l", "Mail", "1"
    )
    ok = await auth.authenticate(_creds(b"alice", password), office, "s2")
    assert (ok.outcome, ok.credential) == (Outcome.OK, f"app-password:{record.id}")
    store.revoke_app_password("alice", record.id)
    store.add_app_password("alice", "temp", digest, 1.0, expires_at=10.0)
    late = await auth.authenticate(_creds(b"alice", password), office, "s3")
    assert late.outcome is Outcome.INVALID
    assert late.reason.endswith("expired")


@pytest.mark.asyncio
async def test_app_password_of_another_user_is_refused(store: SqliteStore, tmp_path: Path) -> None:
    auth, upstream, _ = _auth(store, tmp_path)
    bobs = _issue(store, "bob")
    result = await auth.authenticate(_creds(b"alice", bobs), CTX, "s1")
    assert result.outcome is Outcome.INVALID
    assert upstream.calls == []


@pytest.mark.asyncio
async def test_every_failure_has_the_same_timing_profile(
    store: SqliteStore, tmp_path: Path
) -> None:
    auth, upstream, clock = _auth(store, tmp_path, ("app-password", "password"))
    upstream.fail = UpstreamRefused("u", "NO [AUTHENTICATIONFAILED]")
    cases = [
        _creds(b"nobody", b"x"),
        _creds(b"alice", b"wrong"),
        _creds(b"\xff\xfe", b"x"),
        _creds(b"alice", b"x", authzid=b"bob"),
        _creds(b"alice", b""),
    ]
    for creds in cases:
        clock.now += 5
        started = clock.now
        result = await auth.authenticate(creds, CTX, "s1")
        assert result.outcome is Outcome.INVALID
        assert 1.0 <= clock.now - started <= 1.5
    reasons = [e["reason"] for e in _events(tmp_path)]
    # The real reasons differ, in the log only (an unknown user and a wrong
    # password look the same to the upstream as well).
    assert len(set(reasons)) == len(cases) - 1


@pytest.mark.asyncio
async def test_password_method_checks_upstream_with_the_users_password(
    store: SqliteStore, tmp_path: Path
) -> None:
    auth, upstream, _ = _auth(store, tmp_path, ("password",))
    result = await auth.authenticate(_creds(b"alice", b"pw"), CTX, "s1")
    assert (result.outcome, result.method) == (Outcome.OK, "password")
    assert upstream.calls == [("alice", b"pw")]
    upstream.fail = UpstreamRefused("u", "NO")
    result = await auth.authenticate(_creds(b"alice", b"bad"), CTX, "s1")
    assert result.outcome is Outcome.INVALID
    assert result.reason.startswith("wrong password")


@pytest.mark.asyncio
async def test_upstream_down_is_unavailable(store: SqliteStore, tmp_path: Path) -> None:
    auth, upstream, _ = _auth(store, tmp_path)
    password = _issue(store, "alice")
    upstream.fail = UpstreamUnavailable("u", "connection refused")
    result = await auth.authenticate(_creds(b"alice", password), CTX, "s1")
    assert result.outcome is Outcome.UNAVAILABLE
    assert "connection refused" in result.reason


@pytest.mark.asyncio
async def test_a_refused_master_login_is_the_gateways_fault_not_a_wrong_password(
    store: SqliteStore, tmp_path: Path
) -> None:
    """The app password is right; the upstream refuses the gateway's master user.
    UNAVAILABLE (NO [UNAVAILABLE] on the wire, counted by no defense), with the
    upstream's words in the audit log."""
    auth, upstream, _ = _auth(store, tmp_path)
    password = _issue(store, "alice")
    upstream.fail = UpstreamRefused("u", "login: NO [AUTHENTICATIONFAILED] Authentication failed.")
    result = await auth.authenticate(_creds(b"alice", password), CTX, "s1")
    assert (result.outcome, result.user) == (Outcome.UNAVAILABLE, "alice")
    assert result.reason == (
        "upstream refused the master login "
        "(login: NO [AUTHENTICATIONFAILED] Authentication failed.)"
    )
    assert [e["result"] for e in _events(tmp_path)] == ["unavailable"]


@pytest.mark.asyncio
async def test_an_account_the_upstream_refuses_to_the_master_is_denied_not_an_outage(
    store: SqliteStore, tmp_path: Path
) -> None:
    """NO [AUTHORIZATIONFAILED] to a master login (RFC 5530): the master user was
    accepted, only this account refused. The node is healthy (no UNAVAILABLE, which
    tells clients and the load balancer's operators the service is down)."""
    auth, upstream, _ = _auth(store, tmp_path)
    password = _issue(store, "alice")
    upstream.fail = UpstreamRefused(
        "u", "login: NO [AUTHORIZATIONFAILED] Authorization failed", "AUTHORIZATIONFAILED"
    )
    result = await auth.authenticate(_creds(b"alice", password), CTX, "s1")
    assert (result.outcome, result.user) == (Outcome.DENIED, "alice")
    assert result.reason.startswith("upstream refused the account")
    assert [e["result"] for e in _events(tmp_path)] == ["denied"]


@pytest.mark.asyncio
async def test_dead_state_store_fails_closed(store: SqliteStore, tmp_path: Path) -> None:
    auth, upstream, _ = _auth(store, tmp_path)
    password = _issue(store, "alice")
    store.close()
    result = await auth.authenticate(_creds(b"alice", password), CTX, "s1")
    assert result.outcome is Outcome.UNAVAILABLE
    assert result.reason.startswith("state store")
    assert upstream.calls == []


@pytest.mark.asyncio
async def test_audit_event_never_holds_the_secret(store: SqliteStore, tmp_path: Path) -> None:
    auth, _, _ = _auth(store, tmp_path)
    password = _issue(store, "alice")
    await auth.authenticate(_creds(b"alice", password), CTX, "s1")
    await auth.authenticate(_creds(b"alice", b"hunter2-guess"), CTX, "s2")
    text = (tmp_path / "audit.jsonl").read_text()
    assert password.reveal().decode() not in text
    assert "hunter2-guess" not in text
    assert [e["result"] for e in _events(tmp_path)] == ["ok", "invalid"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Alice", "alice"),
        (b"alice@Example.ORG", "alice@example.org"),
        (b"", None),
        (b"a" * 256, None),
        (b"al ice", None),
        (b"al\x00ice", None),
        (b'al"ice', None),
        (b"\xff", None),
        # Dovecot's default auth_username_chars (imapguard.names).
        ("jörg".encode(), None),
        (b"alice*imapguard", None),
    ],
)
def test_canonical_user(raw: bytes, expected: str | None) -> None:
    assert canonical_user(raw) == expected


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]

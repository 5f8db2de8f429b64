"""The store implementations the conformance suite runs against.

Each test takes a store (or a `Backend`, to open several handles on one shared
state, the way several gateway nodes share it) from the fixtures below; the
fixtures are parametrised over the registries. To run the suite against a new
implementation (the cluster's PostgreSQL account store, its Redis counter
store), add an entry to the registries: a function that sets up an empty store
under test and returns its `Backend`. No test changes.

    COUNTER_STORES  imapguard.defense.counters.CounterStore implementations
    ACCOUNT_STORES  imapguard.state.accounts.AccountStore implementations
    PORTAL_STORES   imapguard.state.portal.PortalStore implementations

The Redis counter store runs on one private `redis-server` for the session
(tests/redis_server.py), each test under a key prefix of its own.

An implementation whose state other processes can reach (a file, a server) says
so (`processes=True`); the multi-process tests run over those only. The
in-memory counter store lives in one process, so it is not among them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from imapguard.defense.counters import CounterStore, MemoryCounterStore
from imapguard.state import SqliteStore, open_store
from imapguard.state.accounts import AccountStore
from imapguard.state.portal import PortalStore
from imapguard.state.postgres import PgStore
from imapguard.state.postgres import open_store as open_pg_store
from tests.postgres import PostgresServer, postgres
from tests.redis_server import counters_address, open_redis_counters, shared_server, stop_shared

__all__ = ["postgres"]  # the session's server, for `_postgresql`

S = TypeVar("S")


@dataclass
class Backend(Generic[S]):
    """One store under test: `open()` gives a new handle (a connection, for a
    networked store or a file) on the same shared state. `opener(address)` does
    the same in another process (both are picklable for an implementation that
    other processes can reach)."""

    name: str
    opener: Callable[[str], S]
    address: str
    close: Callable[[S], None] = lambda handle: None
    # Run once the handles are closed (a server's database is dropped).
    cleanup: Callable[[], None] = lambda: None
    _handles: list[S] = field(default_factory=list)

    def open(self) -> S:
        handle = self.opener(self.address)
        self._handles.append(handle)
        return handle

    def close_all(self) -> None:
        for handle in self._handles:
            self.close(handle)
        self._handles.clear()
        self.cleanup()


@dataclass(frozen=True)
class Implementation(Generic[S]):
    # (the test's tmp_path, its request: for a server's session fixture)
    make: Callable[[Path, pytest.FixtureRequest], Backend[S]]
    processes: bool  # other processes can reach its state


def _close(store: Any) -> None:
    store.close()


def _sqlite_url(tmp_path: Path) -> str:
    """One SQLite file; each handle its own read-write connection (`open_store`)."""
    return f"sqlite:///{tmp_path}/state.db"


def _sqlite_accounts(tmp_path: Path, _: pytest.FixtureRequest) -> Backend[AccountStore]:
    return Backend("sqlite", open_store, _sqlite_url(tmp_path), close=_close)


def _sqlite_counters(tmp_path: Path, _: pytest.FixtureRequest) -> Backend[CounterStore]:
    return Backend("sqlite", open_store, _sqlite_url(tmp_path), close=_close)


def _sqlite_portal(tmp_path: Path, _: pytest.FixtureRequest) -> Backend[PortalStore]:
    return Backend("sqlite", open_store, _sqlite_url(tmp_path), close=_close)


def _sqlite_is_a_portal_store(store: SqliteStore) -> PortalStore:
    """Never called: mypy proves here that SqliteStore has every method of
    PortalStore (AccountStore and the portal's protocols) with their types."""
    return store


def _memory_counters(tmp_path: Path, _: pytest.FixtureRequest) -> Backend[CounterStore]:
    """One MemoryCounterStore in this process: every handle is the same object."""
    store = MemoryCounterStore()
    return Backend("memory", lambda _: store, "")


def _postgresql(tmp_path: Path, request: pytest.FixtureRequest) -> Backend[Any]:
    """A new database (at the current schema) on the session's private server;
    each handle its own pool (`imapguard.state.postgres.open_store`), in this
    process or another; the database is dropped after the test."""
    server: PostgresServer = request.getfixturevalue("postgres")
    name = server.create_database()
    return Backend(
        "postgresql",
        open_pg_store,
        server.url_with_password(name),
        close=_close,
        cleanup=lambda: server.drop_database(name),
    )


def _pg_is_a_portal_store(store: PgStore) -> PortalStore:
    """Never called: mypy proves here that PgStore has every method of PortalStore."""
    return store


def _redis_counters(tmp_path: Path, _: pytest.FixtureRequest) -> Backend[CounterStore]:
    """The session's Redis under a fresh prefix; each handle its own client."""
    server = shared_server(tmp_path.parent / "redis-shared")
    address = counters_address(server, f"test{secrets.token_hex(4)}:")
    return Backend("redis", open_redis_counters, address, close=_close)


COUNTER_STORES: dict[str, Implementation[CounterStore]] = {
    "memory": Implementation(_memory_counters, processes=False),
    "sqlite": Implementation(_sqlite_counters, processes=True),
    "redis": Implementation(_redis_counters, processes=True),
}
ACCOUNT_STORES: dict[str, Implementation[AccountStore]] = {
    "sqlite": Implementation(_sqlite_accounts, processes=True),
    "postgresql": Implementation(_postgresql, processes=True),
}
PORTAL_STORES: dict[str, Implementation[PortalStore]] = {
    "sqlite": Implementation(_sqlite_portal, processes=True),
    "postgresql": Implementation(_postgresql, processes=True),
}


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_servers() -> Iterator[None]:
    yield
    stop_shared()


def _backend(
    registry: dict[str, Implementation[S]], request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Backend[S]]:
    backend = registry[request.param].make(tmp_path, request)
    try:
        yield backend
    finally:
        backend.close_all()


@pytest.fixture(params=sorted(COUNTER_STORES))
def counter_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Backend[CounterStore]]:
    yield from _backend(COUNTER_STORES, request, tmp_path)


@pytest.fixture(params=sorted(n for n, i in COUNTER_STORES.items() if i.processes))
def shared_counter_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Backend[CounterStore]]:
    yield from _backend(COUNTER_STORES, request, tmp_path)


@pytest.fixture
def counters(counter_backend: Backend[CounterStore]) -> CounterStore:
    return counter_backend.open()


@pytest.fixture(params=sorted(ACCOUNT_STORES))
def account_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Backend[AccountStore]]:
    yield from _backend(ACCOUNT_STORES, request, tmp_path)


@pytest.fixture(params=sorted(n for n, i in ACCOUNT_STORES.items() if i.processes))
def shared_account_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Backend[AccountStore]]:
    yield from _backend(ACCOUNT_STORES, request, tmp_path)


@pytest.fixture
def accounts(account_backend: Backend[AccountStore]) -> AccountStore:
    return account_backend.open()


@pytest.fixture(params=sorted(PORTAL_STORES))
def portal_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Backend[PortalStore]]:
    yield from _backend(PORTAL_STORES, request, tmp_path)


@pytest.fixture(params=sorted(n for n, i in PORTAL_STORES.items() if i.processes))
def shared_portal_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Backend[PortalStore]]:
    yield from _backend(PORTAL_STORES, request, tmp_path)


@pytest.fixture
def portal(portal_backend: Backend[PortalStore]) -> PortalStore:
    return portal_backend.open()

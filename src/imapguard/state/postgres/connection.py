"""A pool of connections to the PostgreSQL state database: transactions, batches,
errors, and the schema check at open.

psycopg 3 (synchronous) with psycopg_pool: the store's protocols are
synchronous and the gateway calls them on worker threads (`state.on_thread`),
so each call borrows a connection for its statement or transaction and returns
it. The pool holds `state.pool_size` connections at most (one per worker thread
that may call at once: the gateway's writer and its readers), opens one at start
and more on demand. Writes run in one transaction each (`_tx`), or join the
enclosing `batch()` of the same thread, which keeps its connection for the
batch. The stores' statements (`imapguard.state.sql`) are written with `?`
placeholders, which `PgDb` turns into psycopg's `%s`; `PgDialect` holds
PostgreSQL's spellings and the locks that make a read and a write atomic at
READ COMMITTED. Every psycopg and pool error leaves as `StateUnavailable`; its message
names the server, never a password (libpq does not print them).

TLS is libpq's: `sslmode=verify-full&sslrootcert=FILE` in the URL checks the
server's certificate and name. A URL that names a server on another host and
sets no sslmode gets verify-full (`tls_default`), not libpq's own default
(`prefer`: TLS if the server offers it, no certificate check, plain text if an
attacker on the path says so), under which whoever sits between the gateway
and its database could answer for it: an app password "found", a revocation
never seen. Loopback and Unix-socket servers keep libpq's default.

A connection attempt gives up after CONNECT_TIMEOUT seconds, a caller waiting
for a free connection after POOL_TIMEOUT, a statement after
STATEMENT_TIMEOUT_MS, so a dead server fails a login (closed) rather than hangs
it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from imapguard.errors import StateUnavailable
from imapguard.state.sql.dialect import Db as SqlDb
from imapguard.state.sql.dialect import Dialect, ensure_user
from imapguard.state.versions import HEAD, REVISIONS, VERSION_TABLE, check_revision

__all__ = ["CONNECT_TIMEOUT", "POOL_TIMEOUT", "PgConnection", "PgDb", "PgDialect", "tls_default"]

T = TypeVar("T")
Db = psycopg.Connection[Any]

CONNECT_TIMEOUT = 5  # seconds (libpq connect_timeout)
POOL_TIMEOUT = 5.0  # seconds to wait for a connection of the pool
STATEMENT_TIMEOUT_MS = 10_000
RECONNECT_TIMEOUT = 5.0
# pg_advisory_xact_lock keys: creating the schema, publishing a revocation.
LOCK_SCHEMA = 0x696D6170_0001
LOCK_REVOCATIONS = 0x696D6170_0002


def tls_default(url: str) -> dict[str, Any]:
    """`sslmode=verify-full` for a `url` that sets no sslmode (nor PGSSLMODE)
    and reaches a server on another host; nothing for one on loopback or a Unix
    socket, or whose URL (or environment) chooses its sslmode itself."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return {}  # libpq refuses it when it connects, with its reason
    if "sslmode" in params or os.environ.get("PGSSLMODE"):
        return {}
    names = [h for h in str(params.get("host", "")).split(",") if h]
    addresses = [a for a in str(params.get("hostaddr", "")).split(",") if a]
    if all(_local(h) for h in names) and all(_local(a) for a in addresses):
        return {}
    return {"sslmode": "verify-full"}


def _local(host: str) -> bool:
    if host.startswith(("/", "@")) or host == "localhost":  # a Unix socket, this host
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _detail(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """psycopg's `%s` for the stores' `?` (their SQL has no other `?` nor `%`)."""
    return sql.replace("?", "%s")


class PgDb:
    """A psycopg connection as the stores' `Db` (`state.sql.dialect`)."""

    __slots__ = ("raw",)

    def __init__(self, raw: Db) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self.raw.execute(_placeholders(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(_placeholders(sql), parameters)


class PgDialect(Dialect):
    """PostgreSQL at READ COMMITTED: a read that a write depends on takes a lock
    held to the end of the transaction, the account's (its `users` row, or an
    advisory lock where nothing is to be written) or the row's (`FOR UPDATE`);
    writers of different accounts do not wait for each other."""

    collate_c = ' COLLATE "C"'
    ord = "ord"  # the tables' identity column (`schema.py`)
    offset = "OFFSET ?"
    for_update = " FOR UPDATE"
    greatest = "GREATEST"
    is_distinct = "IS DISTINCT FROM"

    def lock_user(self, db: SqlDb, name: str, now: float) -> None:
        ensure_user(db, name, now)
        db.execute("SELECT 1 FROM users WHERE name = ? FOR UPDATE", (name,))

    def lock_account(self, db: SqlDb, name: str) -> None:
        # A transaction-level advisory lock keyed by a 64-bit hash of the name:
        # two accounts may share one, which only makes one wait for the other.
        db.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (name,))

    def lock_feed(self, db: SqlDb) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_REVOCATIONS,))


class PgConnection:
    """The pool that the store's parts share; safe to call from any thread."""

    dialect: ClassVar[Dialect] = PgDialect()

    def __init__(self, url: str, *, password: str | None = None, pool_size: int = 4) -> None:
        self.url = url
        self._local = threading.local()
        self._closed = False
        kwargs: dict[str, Any] = {"autocommit": True}
        if password is not None:
            kwargs["password"] = password
        # Unless the URL says otherwise: give up connecting after CONNECT_TIMEOUT,
        # notice a silent server within about half a minute (TCP keepalives), and
        # let no statement or lock wait run on past STATEMENT_TIMEOUT.
        defaults: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        }
        kwargs.update({k: v for k, v in defaults.items() if k not in url})
        kwargs.update(tls_default(url))
        # One connection first, in this thread: a wrong server, TLS or password
        # fails here with libpq's reason, not at the first login; it checks the
        # schema. The pool then connects in the background.
        try:
            with psycopg.connect(url, **kwargs) as db:
                _open_schema(db)
        except psycopg.Error as exc:
            raise StateUnavailable("open", _detail(exc)) from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            timeout=POOL_TIMEOUT,
            name="imapguard-state",
            # A connection attempt that keeps failing is given up after this
            # long (the pool tries again, from a short delay, at the next call):
            # a server back after an outage is used within seconds, not after
            # the pool's backoff has grown to minutes.
            reconnect_timeout=RECONNECT_TIMEOUT,
            open=True,
        )

    def close(self) -> None:
        self._closed = True
        self._pool.close()

    @contextmanager
    def _tx(self, operation: str) -> Iterator[PgDb]:
        """One write transaction; inside `batch()` (on this thread) it joins the batch's."""
        joined: PgDb | None = getattr(self._local, "db", None)
        if joined is not None:
            try:
                yield joined
            except psycopg.Error as exc:
                raise StateUnavailable(operation, _detail(exc)) from None
            return
        if self._closed:
            raise StateUnavailable(operation, "the store is closed")
        try:
            with self._pool.connection() as raw, raw.transaction():
                db = PgDb(raw)
                self._local.db = db
                try:
                    yield db
                finally:
                    self._local.db = None
        except psycopg.Error as exc:
            raise StateUnavailable(operation, _detail(exc)) from None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run several write calls of this thread in one transaction (all or nothing)."""
        with self._tx("batch"):
            yield

    def _read(self, operation: str, fn: Callable[[PgDb], T]) -> T:
        joined: PgDb | None = getattr(self._local, "db", None)
        try:
            if joined is not None:
                return fn(joined)
            if self._closed:
                raise StateUnavailable(operation, "the store is closed")
            with self._pool.connection() as raw:
                return fn(PgDb(raw))
        except psycopg.Error as exc:
            raise StateUnavailable(operation, _detail(exc)) from None


def _one(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cursor.fetchone()
    assert row is not None  # noqa: S101 - an aggregate has a row
    return tuple(row)


def _open_schema(db: Db) -> None:
    """Check the revision; a new empty database is created at HEAD."""
    revision = _revision(db)
    if revision is None:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_SCHEMA,))
            revision = _revision(db)  # again: another node may have made it
            if revision is None:
                (tables,) = _one(
                    db.execute("SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema()")
                )
                if tables == 0:
                    revision = _create_at_head(db)
    check_revision(revision)


def _revision(db: Db) -> str | None:
    (table,) = _one(db.execute("SELECT to_regclass('alembic_version')::text"))
    if table is None:
        return None
    row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else None


def _create_at_head(db: Db) -> str:
    from imapguard.state.postgres.schema import REVISIONS as STATEMENTS

    for name in REVISIONS:
        for statement in STATEMENTS[name]:
            db.execute(statement)
    db.execute(VERSION_TABLE)
    db.execute("INSERT INTO alembic_version(version_num) VALUES (%s)", (HEAD,))
    return HEAD

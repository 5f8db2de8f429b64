"""One connection to the state database: the file, its mode, transactions, errors.

A writer opens the file read-write in WAL mode and checks its schema revision
(`schema.open_schema`: a new file is created at the current one); a reader opens
it read-only and only checks the revision, since in WAL mode a reader never
waits for a writer. Writes run in one `BEGIN IMMEDIATE` transaction each, or
join the enclosing `batch()`. Every sqlite3 error leaves as `StateUnavailable`.
The database file is created mode 0600 before SQLite opens it
(`create_private`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, TypeVar

from imapguard.errors import StateUnavailable
from imapguard.state.sql.dialect import Dialect
from imapguard.state.sqlite.schema import open_schema

__all__ = ["Connection", "create_private", "url_path"]

T = TypeVar("T")


class Connection:
    """The connection that the store's parts (accounts, counters) share. One lock
    serialises its use across threads; calls are short (about 10 µs each)."""

    # SQLite's spellings; every write is `BEGIN IMMEDIATE`, so the stores' locks
    # need nothing more (`state.sql.dialect`).
    dialect: ClassVar[Dialect] = Dialect()

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._lock = threading.RLock()
        self._depth = 0
        try:
            if read_only:
                # A reader waits at most this long for a lock (only WAL recovery or
                # a schema change takes one); it runs on the event loop.
                self._db = sqlite3.connect(
                    Path(path).resolve().as_uri() + "?mode=ro",
                    uri=True,
                    timeout=0.25,
                    isolation_level=None,
                    check_same_thread=False,
                )
                self._db.execute("PRAGMA query_only=ON")
                open_schema(self._db, writable=False)
            else:
                self._db = sqlite3.connect(
                    path, timeout=2.0, isolation_level=None, check_same_thread=False
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA foreign_keys=ON")
                open_schema(self._db, writable=True)
        except sqlite3.Error as exc:
            self._close_quietly()
            raise StateUnavailable("open", f"{path}: {exc}") from None
        except BaseException:
            self._close_quietly()  # a schema of another revision: refused
            raise

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, operation: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; inside `batch()` it joins the batch's."""
        with self._lock:
            if self._depth:
                try:
                    yield self._db
                except sqlite3.Error as exc:
                    raise StateUnavailable(operation, str(exc)) from None
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._depth += 1
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                finally:
                    self._depth -= 1
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StateUnavailable(operation, str(exc)) from None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run several write calls in one transaction (all or nothing)."""
        with self._tx("batch"):
            yield

    def _read(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise StateUnavailable(operation, str(exc)) from None


def url_path(url: str) -> str:
    """The file of a `sqlite:///PATH` state URL."""
    if not url.startswith("sqlite:///"):
        raise StateUnavailable("open", f"unsupported state url {url!r}")
    return url.removeprefix("sqlite://")


def create_private(path: str) -> None:
    """Create the database file mode 0600 if it does not exist yet. SQLite would
    create it 0644 less the umask (SQLITE_DEFAULT_FILE_PERMISSIONS), readable by
    every local user; its -wal and -shm files take the database file's mode
    (os_unix.c: `findCreateFileMode`, `unixOpenSharedMemory`), so they are 0600
    too. An existing file is left as it is: `check-config` reports one that
    others may read."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StateUnavailable("open", f"{path}: {exc.strerror}") from None
    os.close(fd)

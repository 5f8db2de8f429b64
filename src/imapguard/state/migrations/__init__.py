"""Schema migrations by Alembic, for SQLite and PostgreSQL alike.

The scripts in `versions/` are the revisions `imapguard.state.versions` names;
each runs that module's statements for the database's dialect. `upgrade` is
what `imapguard db upgrade` runs; `current` reads the revision. Alembic runs
here with no alembic.ini: its configuration is built in `_config`, and the
connection is handed to `env.py`. Only these functions import Alembic and
SQLAlchemy; opening a store checks its revision without them
(`state.versions`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imapguard.errors import StateUnavailable

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["current", "upgrade"]


def _config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


@contextmanager
def _connect(url: str, password: str | None) -> Iterator[Connection]:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    if url.startswith("sqlite:///"):
        from imapguard.state.sqlite.connection import create_private, url_path
        from imapguard.state.sqlite.schema import stamp_legacy

        path = url_path(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        create_private(path)
        raw = sqlite3.connect(path, isolation_level=None)
        try:
            stamp_legacy(raw)
        except sqlite3.Error as exc:
            raise StateUnavailable("upgrade", f"{path}: {exc}") from None
        finally:
            raw.close()
        engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    else:
        import psycopg

        from imapguard.state.postgres.connection import tls_default

        def connect() -> psycopg.Connection[Any]:
            return psycopg.connect(url, password=password, connect_timeout=10, **tls_default(url))

        engine = create_engine("postgresql+psycopg://", creator=connect, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def upgrade(url: str, *, password: str | None = None) -> tuple[str | None, str | None]:
    """Bring the store at `url` to the newest revision; (before, after)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with _connect(url, password) as connection:
            before = MigrationContext.configure(connection).get_current_revision()
            command.upgrade(_config(connection), "head")
            after = MigrationContext.configure(connection).get_current_revision()
    except (SQLAlchemyError, OSError) as exc:
        raise StateUnavailable("upgrade", _first_line(exc)) from None
    return before, after


def current(url: str, *, password: str | None = None) -> str | None:
    """The store's revision (None: none yet; a SQLite file that does not exist
    is not created)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.exc import SQLAlchemyError

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite://")).exists():
        return None
    try:
        with _connect(url, password) as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except (SQLAlchemyError, OSError) as exc:
        raise StateUnavailable("read revision", _first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy appends the statement and a link; the first line is the cause.
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]

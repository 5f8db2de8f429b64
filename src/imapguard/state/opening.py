"""Opening the state store that `[state]` names, as `serve` and the CLI do.

`open_account_store` opens SQLite or PostgreSQL by `state.url`, checks its
schema revision (`state.versions`) and the server key against the store's check
value (`state.keycheck`), and turns what is wrong into one line: a ConfigError
naming `state.url` (another schema revision) or `state.key_file` (another key),
or StateUnavailable naming `state.url` (the store cannot be reached). A URL is
only ever shown redacted (`config.redacted_url`). `open_reader_for` and
`counter_store` give the login path's reader and the defense's counters.
"""

from __future__ import annotations

from collections.abc import Callable

from imapguard.config import StateConfig, redacted_url
from imapguard.defense.counters import CounterStore
from imapguard.errors import ConfigError, StateUnavailable
from imapguard.secret import Secret
from imapguard.state.keycheck import KeyMismatch, verify_server_key
from imapguard.state.portal import PortalStore
from imapguard.state.sqlite import SqliteStore, open_reader, open_store
from imapguard.state.versions import SchemaMismatch

__all__ = ["counter_store", "open_account_store", "open_reader_for", "state_password"]


def open_account_store(
    state: StateConfig,
    server_key: Secret,
    seal_key: bytes,
    opens_with: Callable[[bytes, str, bytes], bool | None],
) -> PortalStore:
    """The account and portal store `state.url` names, its schema revision and
    the server key checked. `opens_with(seal_key, user, sealed)` says whether a
    sealed TOTP secret opens with the key (`auth.totp.opens_with`: None when it
    cannot tell), for a store that has no check value yet."""
    store: PortalStore
    shown = redacted_url(state.url)
    try:
        if state.postgresql:
            from imapguard.state.postgres import open_store as open_postgresql

            store = open_postgresql(
                state.url, password=state_password(state), pool_size=state.pool_size
            )
        else:
            store = open_store(state.url)
    except SchemaMismatch as exc:
        raise ConfigError([("state.url", f"{shown}: {exc.detail}")]) from None
    except StateUnavailable as exc:
        raise StateUnavailable("open", f"{shown} (state.url): {exc.detail}") from None
    try:
        verify_server_key(
            store, server_key, lambda r: opens_with(seal_key, r.user, r.sealed) is not False
        )
    except KeyMismatch as exc:
        store.close()
        raise ConfigError(
            [
                (
                    "state.key_file",
                    f"{state.key_file} is not the key the state store {shown} (state.url)"
                    f" was sealed with ({exc}): restore that key file",
                )
            ]
        ) from None
    except BaseException:
        store.close()
        raise
    return store


def state_password(state: StateConfig) -> str | None:
    """The PostgreSQL password from `state.password_file` (None without one)."""
    if state.password_file is None:
        return None
    try:
        return Secret.from_file(state.password_file).reveal().decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("state.password_file", str(exc))]) from None


def counter_store(store: PortalStore) -> CounterStore:
    """The defense's counters when `state.counters_url` is not set: the SQLite
    state file itself. A PostgreSQL `state.url` requires `counters_url` (the
    configuration refuses it without), so it never gets here."""
    if isinstance(store, SqliteStore):
        return store
    raise ConfigError(
        [("state.counters_url", "required with a PostgreSQL url: the counters must be shared")]
    )


def open_reader_for(
    state: StateConfig, store: PortalStore, on_close: Callable[[Callable[[], None]], object]
) -> PortalStore:
    """The store that reads for the login path. SQLite reads through a
    read-only connection of its own (its close given to `on_close`;
    `state.sqlite.store` says why); a PostgreSQL pool serves reads and writes
    alike (on the read threads of `state.on_thread.read_executor`)."""
    if isinstance(store, SqliteStore):
        reader = open_reader(state.url)
        on_close(reader.close)
        return reader
    return store

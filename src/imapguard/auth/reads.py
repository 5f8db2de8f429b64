"""Where the login path's reads run: inline for an embedded store, on a read
thread for a networked one.

Every session of a process shares its event loop, so whatever the loop waits
for, every session waits for. An embedded store (SQLite) answers a point read in
about 10 µs from the read-only WAL connection, less than a thread hop would cost
(a hop per login was a third of the gateway's CPU per login, measured with
bench/gateway.py; see `state/sqlite/store.py`): it is read inline. A networked
store (PostgreSQL, Redis) answers after a network round trip, and a slow or
distant one would freeze every session of the node meanwhile: its reads run on
a read executor (a few threads: reads do not queue behind the store's one
writer thread) and are awaited.

`Reads` carries that choice, made once by the composition root
(`compose.read_executor`): `executor` for the account store, `counters` for the
defense's counter store (they may be different servers). None reads inline
(`state.on_thread`), so the embedded store's path is what it was, with no hop.
The deciding code stays synchronous: a caller awaits the read, then decides.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

from imapguard.auth.devices import AccountView
from imapguard.defense.engine import Attempt, Defense, Verdict
from imapguard.state.accounts import AccountStore, DeviceKey
from imapguard.state.on_thread import on_thread

__all__ = ["Reads"]

T = TypeVar("T")
P = ParamSpec("P")


class Reads:
    """The login path's reads of the account store (`store`, the reader) and of
    the counter store, each on its executor (None: inline on the event loop)."""

    def __init__(
        self,
        store: AccountStore,
        *,
        executor: Executor | None = None,
        counters: Executor | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.counters = counters

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """A read of the account store: `fn` (a method of `store`) on its executor."""
        return await on_thread(self.executor, fn, *args, **kwargs)

    async def account(self, key: DeviceKey) -> AccountView:
        """The account's factor records for one login. With an executor, the
        device and the TOTP record are read there at once (one hop), so the
        view's properties never touch the store on the event loop; inline, they
        are read when first asked for, as before."""
        view = AccountView(self.store, key)
        if self.executor is not None:
            await on_thread(self.executor, view.preload)
        return view

    async def precheck(self, defense: Defense, attempt: Attempt) -> Verdict:
        """The defense's precheck (its one read of the counter store, then the
        verdict) on the counter store's executor."""
        return await on_thread(self.counters, defense.precheck, attempt)

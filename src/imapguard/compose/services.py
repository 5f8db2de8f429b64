"""What outlives a configuration reload: the purpose keys, the stores, the
defense on them, the audit log, the notifier and the token verifier
(`open_services`, closed in reverse order whatever happens)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from imapguard.audit import AuditLog
from imapguard.auth import totp
from imapguard.auth.gate import RELEASE_DELAY
from imapguard.auth.history import SignInHistory
from imapguard.auth.model import AuthContext, NoticeHook
from imapguard.auth.oauth import TokenVerifier
from imapguard.compose.cluster import Cluster, announcing, open_cluster
from imapguard.compose.observing import count, timed_store
from imapguard.config import Config
from imapguard.defense.counters import CounterStore
from imapguard.defense.engine import Defense
from imapguard.defense.fingerprints import Fingerprinter
from imapguard.errors import ConfigError
from imapguard.keys import (
    APP_PASSWORD,
    GATE_TURNS,
    PORTAL_CSRF,
    PORTAL_INVITE,
    PORTAL_SESSION,
    RECOVERY_CODE,
    TOTP_SEAL,
    derive_key,
    load_server_key,
)
from imapguard.metrics import Metrics
from imapguard.notify import Notice, NoticeKind, Notifier
from imapguard.secret import Secret
from imapguard.state.announced import Announced
from imapguard.state.on_thread import read_executor
from imapguard.state.opening import open_account_store, open_reader_for
from imapguard.state.portal import PortalStore
from imapguard.state.redis import open_counters
from imapguard.state.sqlite.connection import url_path
from imapguard.state.sqlite.turns import FileTurns, turns_path
from imapguard.state.writebehind import WriteBehind

__all__ = [
    "Keys",
    "Services",
    "account_store",
    "defense",
    "keys",
    "open_services",
    "run_loop",
]

log = logging.getLogger("imapguard")


@dataclass(frozen=True)
class Keys:
    """The purpose keys derived from the server key (imapguard.keys)."""

    server: Secret
    app_password: bytes
    totp_seal: bytes
    portal_session: bytes
    portal_csrf: bytes
    portal_invite: bytes
    recovery_code: bytes


def keys(config: Config) -> Keys:
    """Read `state.key_file` and derive the purpose keys; a problem with the file
    is a ConfigError naming that key."""
    try:
        server = load_server_key(config.state.key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError([("state.key_file", str(exc))]) from None
    return Keys(
        server,
        app_password=derive_key(server, APP_PASSWORD),
        totp_seal=derive_key(server, TOTP_SEAL),
        portal_session=derive_key(server, PORTAL_SESSION),
        portal_csrf=derive_key(server, PORTAL_CSRF),
        portal_invite=derive_key(server, PORTAL_INVITE),
        recovery_code=derive_key(server, RECOVERY_CODE),
    )


def account_store(config: Config) -> PortalStore:
    """The account and portal store `state.url` names (SQLite or PostgreSQL), its
    schema revision and the server key checked (`state.opening`); with a
    cluster's Redis, the revocations written through it wake every gateway
    (`cluster.announcing`)."""
    return announcing(config, _checked_store(config))


def _checked_store(config: Config) -> PortalStore:
    k = keys(config)
    return open_account_store(config.state, k.server, k.totp_seal, totp.opens_with)


def defense(
    config: Config, store: CounterStore, k: Keys, *, reader: CounterStore | None = None
) -> Defense:
    """The defense engine as [defense] says, on `store` (reads from `reader`)."""
    settings = config.defense
    return Defense(
        settings,
        store,
        fingerprints=Fingerprinter(k.server, epoch_seconds=settings.fingerprint_epoch),
        reader=reader,
    )


@dataclass
class Services:
    """What outlives a configuration reload (`reads`: see `state.on_thread`)."""

    store: PortalStore
    reader: PortalStore
    executor: ThreadPoolExecutor
    bookkeeping: WriteBehind
    audit: AuditLog
    notifier: Notifier | None
    tokens: TokenVerifier | None
    reads: Executor | None = None
    counter_reads: Executor | None = None
    counters: CounterStore | None = None  # else the defense's state is in `store`
    metrics: Metrics | None = None  # this process's, with `[metrics]` (compose.observing)
    cluster: Cluster | None = None  # what reaches every node at once (with Redis)
    releases: WriteBehind | None = None  # the gate's turns given back (`auth.gate`)
    turns: FileTurns | None = None  # the gate's turns on one machine (SQLite counters)


@contextlib.asynccontextmanager
async def open_services(config: Config, *, metrics: bool = False) -> AsyncIterator[Services]:
    """Open the stores, the audit log, the notifier and the token verifier;
    close them in reverse order, whatever happens. With `metrics` (a gateway
    process) and `[metrics]`, this process's metrics count its audit events."""
    async with contextlib.AsyncExitStack() as stack:
        store = _checked_store(config)
        stack.callback(store.close)
        reader = open_reader_for(config.state, store, stack.callback)
        counters = open_counters(config.state) if config.state.counters_url else None
        if counters is not None:
            stack.callback(counters.close)
        cluster = open_cluster(config)
        if cluster is not None:
            stack.callback(cluster.close)
            store = Announced(store, cluster.revocations)
        audit = AuditLog(config.audit.path)
        stack.callback(audit.close)
        counted = count(config, audit) if metrics else None
        if cluster is not None:
            audit.subscribe(cluster.live_out)
            if counted is not None:
                cluster.live_out.on_drop = counted.live_dropped_total.inc
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imapguard-state")
        stack.callback(quietly, lambda: executor.shutdown(wait=True))
        reads = read_executor(config.state.url)
        if reads is not None:
            stack.callback(quietly, lambda: reads.shutdown(wait=True))
        counter_reads = reads
        if config.state.counters_url:  # the defense's reads go to Redis
            counter_reads = read_executor(config.state.counters_url)
            if counter_reads is not None:
                stack.callback(quietly, lambda: counter_reads.shutdown(wait=True))
        bookkeeping = WriteBehind(timed_store(store, counted), executor)
        stack.push_async_callback(quietly_async, bookkeeping.aclose)
        # Written before the executor stops: a turn left held would stop the
        # pair's logins on every other process and node for `engine.GATE_HOLD`.
        # Without `counters_url` the counters are in the SQLite state file: one
        # transaction of the store.
        releases = WriteBehind(counters or store, executor, delay=RELEASE_DELAY)
        stack.push_async_callback(quietly_async, releases.aclose)
        audit.subscribe(SignInHistory(store, bookkeeping))
        notifier: Notifier | None = None
        if config.notify is not None:
            notifier = Notifier(
                config.notify,
                should_send=_notice_limit(store, executor, config.notify.min_interval),
            )
            await notifier.__aenter__()
            stack.push_async_callback(quietly_async, notifier.aclose)
        tokens: TokenVerifier | None = None
        if config.oauth is not None:
            tokens = TokenVerifier(config.oauth)
            stack.push_async_callback(quietly_async, tokens.aclose)
        yield Services(
            store,
            reader,
            executor,
            bookkeeping,
            audit,
            notifier,
            tokens,
            reads,
            counter_reads,
            counters,
            counted,
            cluster,
            releases,
            gate_turns(config),
        )


def gate_turns(config: Config) -> FileTurns | None:
    """The gate's turns as byte-range locks beside a SQLite state whose counters
    it holds (every process sharing them is on this machine); None: networked
    counters, where a turn is a compare-and-set in the store (`auth.gate`)."""
    if config.state.counters_url or not config.state.url.startswith("sqlite:"):
        return None
    path = turns_path(os.path.realpath(url_path(config.state.url)))
    return FileTurns.for_file(path, derive_key(keys(config).server, GATE_TURNS))


def quietly(close: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):
        close()


async def quietly_async(close: Callable[[], Awaitable[object]]) -> None:
    with contextlib.suppress(Exception):
        await close()


def _notice_limit(
    store: PortalStore, executor: ThreadPoolExecutor, interval: float
) -> Callable[[str, str, float], Awaitable[bool]]:
    """At most one notice per account and kind per interval, in the shared store."""

    async def should_send(user: str, kind: str, now: float) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, store.claim_notice, user, kind, now, interval)

    return should_send


def notice_hook(notifier: Notifier) -> NoticeHook:
    def hook(kind: str, user: str, ctx: AuthContext, device: str | None) -> None:
        notice = Notice(NoticeKind(kind), user, ctx.client.ip, time.time(), ctx.client_id, device)
        if not notifier.submit(notice):
            log.warning("notification dropped (queue full): %s for %s", kind, user)

    return hook


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop: measured with Python 3.11, about 24 KiB per idle TLS
    connection instead of the default loop's 278 KiB, and 1.6 times the TLS
    handshakes per core."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-Linux
        runner = asyncio.Runner()
    else:
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        runner.run(main)

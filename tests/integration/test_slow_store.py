"""A slow or distant state store must not freeze every session of the node.

A networked store (PostgreSQL, Redis) answers after a round trip; the gateway's
sessions share one event loop, so a read made on the loop stalls all of them.
Here the real gateway (the composition root's runtime, run in this process so
that its store can be wrapped) reads a store behind a deliberately slow link
(every read blocks its thread 200 ms) on a read executor, as the composition
root sets one up for a networked store: while one client's login waits on those
reads, another client's logged-in session gets its NOOPs answered at once, and
the slow login still succeeds. The revocation feed, read each second from the
same slow store on the same executor, still ends a revoked session. Real
Dovecot, Python's imaplib.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import imaplib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from imapguard.compose import gateway_runtime, open_services
from imapguard.config import load_config
from imapguard.gateway.server import Gateway
from imapguard.metrics.stores import counter_operation
from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess, source_address
from tests.integration.conftest import GatewayIMAP4SSL, close_imap
from tests.integration.live_imap import lines_until_closed, start_idle

# What the portal promises for a revocation (the feed is read once a second).
REVOKED_WITHIN = 5.0

# Every read of the slow store blocks its thread this long (a distant server).
DELAY = 0.2
# A NOOP of a session already logged in must be answered well within one read.
PROMPT = DELAY / 2


class SlowStore:
    """The gateway's reader behind a slow link: each call blocks DELAY, then answers."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def slow(*args: Any, **kwargs: Any) -> Any:
            self.reads += 1
            time.sleep(DELAY)
            return attr(*args, **kwargs)

        return slow


class SlowCounters:
    """The defense's counters of this SQLite file: its reads through the slow
    reader, its writes (failures, the gate's turns) to the store itself, as the
    gateway's own composition gives them."""

    def __init__(self, reader: SlowStore, writer: Any) -> None:
        self._reader = reader
        self._writer = writer

    def __getattr__(self, name: str) -> Any:
        writes = counter_operation(name) in ("write", "purge")
        return getattr(self._writer if writes else self._reader, name)


@dataclasses.dataclass
class Running:
    gw: GatewayProcess
    store: SlowStore


@contextlib.contextmanager
def slow_store_gateway(base: Path, dovecot: DovecotServer) -> Iterator[Running]:
    """The gateway of `GatewayProcess.create`'s configuration, in a thread of
    this process, its reader wrapped in `SlowStore` and read on a read executor."""
    gw = GatewayProcess.create(
        base,
        dovecot,
        login="master",
        methods=("app-password", "password+totp"),
        extra_toml="[limits]\ndrain_timeout = 1.0\n",
    )
    config = load_config(str(gw.config_path))
    ready = threading.Event()
    started: dict[str, Any] = {}
    failure: list[BaseException] = []

    async def main() -> None:
        async with open_services(config) as services:
            slow = SlowStore(services.reader)
            with ThreadPoolExecutor(4, thread_name_prefix="test-reads") as reads:
                # The proxy stands in for the store (its methods, slowed down).
                reader: Any = slow
                # The defense's counters too (they are this SQLite file's).
                counters: Any = SlowCounters(slow, services.store)
                services = dataclasses.replace(
                    services, reader=reader, reads=reads, counter_reads=reads, counters=counters
                )
                gateway = Gateway(gateway_runtime(config, services), services.audit, slow, reads)
                started.update(loop=asyncio.get_running_loop(), gateway=gateway, store=slow)
                await gateway.serve(lambda _: ready.set())

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the gateway did not start"
        assert not failure, failure
        yield Running(gw, started["store"])
    finally:
        if "loop" in started:
            started["loop"].call_soon_threadsafe(started["gateway"].stop)
        thread.join(30)
        assert not thread.is_alive(), "the gateway did not stop"
        assert not failure, failure


def _user(gw: GatewayProcess, dovecot: DovecotServer) -> tuple[str, str, str]:
    """A new account with an app password: (user, its id, the password)."""
    user = f"slow{secrets.token_hex(3)}"
    dovecot.add_user(user, secrets.token_urlsafe(12))
    out = json.loads(gw.cli("app-password", "create", user, "--label", "phone", "--json").stdout)
    return user, str(out["id"]), str(out["password"])


def test_a_slow_store_does_not_freeze_every_session_of_the_node(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    with slow_store_gateway(tmp_path / "gw", dovecot) as running:
        gw = running.gw
        (alice, _, alice_pw), (bob, _, bob_pw) = _user(gw, dovecot), _user(gw, dovecot)
        relayed = GatewayIMAP4SSL(gw.implicit_port, source_address(215), gw.client_ssl())
        waiting = GatewayIMAP4SSL(gw.implicit_port, source_address(216), gw.client_ssl())
        try:
            assert relayed.login(alice, alice_pw)[0] == "OK"
            done = threading.Event()
            outcome: dict[str, Any] = {}

            def slow_login() -> None:
                started = time.monotonic()
                try:
                    outcome["answer"] = waiting.login(bob, bob_pw)[0]
                except imaplib.IMAP4.error as exc:
                    outcome["answer"] = str(exc)
                finally:
                    outcome["took"] = time.monotonic() - started
                    done.set()

            reads_before = running.store.reads
            login = threading.Thread(target=slow_login)
            login.start()
            noops: list[float] = []
            while not done.is_set():
                sent = time.monotonic()
                assert relayed.noop()[0] == "OK"
                noops.append(time.monotonic() - sent)
                time.sleep(0.02)
            login.join(30)

            # The login went through the slow store (several reads of 200 ms)...
            assert outcome["answer"] == "OK", outcome
            assert running.store.reads - reads_before >= 3
            assert outcome["took"] >= 3 * DELAY, outcome
            # ...while the other session's NOOPs were answered promptly all along.
            assert max(noops) < PROMPT, noops
            assert len(noops) >= 5, noops  # and they overlapped the login throughout
        finally:
            close_imap(waiting)
            close_imap(relayed)


def test_a_slow_store_still_ends_a_revoked_session(tmp_path: Path, dovecot: DovecotServer) -> None:
    with slow_store_gateway(tmp_path / "gw", dovecot) as running:
        gw = running.gw
        user, phone_id, phone = _user(gw, dovecot)
        idler = GatewayIMAP4SSL(gw.implicit_port, source_address(217), gw.client_ssl(), 15)
        try:
            start_idle(idler, user, phone)
            gw.cli("app-password", "revoke", user, phone_id, "--json")
            # From the revocation on record (the CLI's start-up is not the gateway's).
            revoked_at = time.monotonic()
            lines = lines_until_closed(idler)
            assert lines[-1].startswith(b"* BYE [ALERT]"), lines
            assert time.monotonic() - revoked_at < REVOKED_WITHIN
        finally:
            close_imap(idler)

"""`imapguard serve`: the gateway with its signals, and the portal beside it
(`serve`); the event loop everything runs on (`run_loop`)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable

from imapguard import hangup
from imapguard.audit import AuditLog, events
from imapguard.children import PARENT_FD, inherited, watch_parent
from imapguard.compose.observing import start_metrics
from imapguard.compose.portal import (
    portal_deps,
    portal_server,
    reload_portal,
    run_portal_beside,
    sign_in_service,
)
from imapguard.compose.runtime import gateway_runtime
from imapguard.compose.services import Services, open_services, run_loop
from imapguard.config import Config, load_config
from imapguard.errors import ConfigError
from imapguard.gateway.server import Gateway
from imapguard.portal.child import PortalChild
from imapguard.portal.serve import PortalServer, listen_socket
from imapguard.workers import state_lock

__all__ = [
    "reload_gateway",
    "run_gateway",
    "run_worker",
    "serve",
    "serve_worker",
]

log = logging.getLogger("imapguard")


def freeze_startup_heap() -> None:
    """Called once everything is built and before the first connection: the
    objects of the start (modules, classes, the configuration, the runtime) live
    as long as the process, yet each full collection of the cyclic garbage
    collector walked them all again while logins allocate (perf: its walks took
    3.4 % of a login's CPU, 1.5 % once frozen). `gc.freeze` moves them out of its
    reach (https://docs.python.org/3/library/gc.html#gc.freeze), after one
    collection so that no garbage of the start is frozen with them. Sessions come
    later and stay collectable."""
    gc.collect()
    gc.freeze()


async def serve(
    config: Config, config_path: str | None, ready: Callable[[Gateway], None] | None
) -> None:
    """Run the gateway until SIGTERM/SIGINT; SIGHUP reloads `config_path` for new
    connections (established ones keep what they started with). With `[portal]`
    the portal runs beside it, bound before the gateway listens (a port in use is
    a ConfigError), stopped with it, its certificate reloaded on SIGHUP: in a
    process of its own (`portal.child`) when there is a `config_path` for it to
    read, else on this event loop."""
    async with open_services(config, metrics=True) as services:
        audit = services.audit
        gateway = Gateway(
            gateway_runtime(config, services),
            audit,
            services.reader,
            services.reads,
            wakeups=services.cluster.revocations if services.cluster is not None else None,
        )
        await gateway.listen()  # a port in use: a ConfigError, before the portal starts
        metrics = await start_metrics(
            config, services.metrics, lambda: "draining" if gateway.draining else None
        )
        portal: PortalServer | None = None
        child: PortalChild | None = None
        if config.portal is not None and config_path is not None:
            child = PortalChild(
                config_path, listen_socket(config.portal.listen), on_exit=_portal_exited(audit)
            )
        elif config.portal is not None:
            portal = portal_server(
                config,
                portal_deps(
                    config,
                    services,
                    sign_in_service(config, services, gateway.runtime.authenticator),
                ),
            )
            portal.bind()
        loop = asyncio.get_running_loop()

        def reload() -> None:
            reload_gateway(gateway, services, config_path)
            if portal is not None:
                reload_portal(portal, audit)
            if child is not None:
                child.hangup()

        def stop() -> None:
            gateway.stop()
            if portal is not None:
                portal.stop()

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, stop)
        loop.add_signal_handler(signal.SIGINT, stop)
        if hangup.pending():  # one came while starting
            loop.call_soon(reload)
        freeze_startup_heap()
        audit.emit(events.Start(pid=os.getpid()))
        if portal is None and child is None:
            await gateway.serve(ready)
        else:
            async with asyncio.TaskGroup() as tg:
                if portal is not None:
                    tg.create_task(run_portal_beside(portal))
                elif child is not None:
                    tg.create_task(child.run())
                try:
                    await gateway.serve(ready)
                finally:
                    if portal is not None:
                        portal.stop()
                    if child is not None:
                        await child.stop()
        if metrics is not None:
            await metrics.close()
        audit.emit(events.Stop(pid=os.getpid()))


def reload_gateway(gateway: Gateway, services: Services, config_path: str | None) -> None:
    """SIGHUP: reopen the audit log (logrotate moved it away), then read the
    configuration again for new connections; a broken one is refused, logged and
    audited, and the running one kept."""
    services.audit.reopen()
    if config_path is None:
        return
    # What the start froze (freeze_startup_heap) includes the runtime a reload
    # replaces: back under the collector, or its cycles would never be freed.
    gc.unfreeze()
    try:
        gateway.reload(gateway_runtime(load_config(config_path), services))
        log.info("configuration reloaded")
    except (ConfigError, OSError, ssl.SSLError, ValueError) as exc:
        log.error("reload failed, keeping the running configuration: %s", exc)
        services.audit.emit(events.Reload(result="failed", reason=str(exc)))


async def serve_worker(config: Config, config_path: str, fds: dict[str, int]) -> None:
    """`imapguard worker`: one of `[server] workers` gateway processes, on the
    listening sockets its parent (`serve`) bound and handed down, until SIGTERM
    or the parent's end. Its metrics go to the parent's multiprocess directory."""
    sockets = [socket.socket(fileno=fds[f"listen{i}"]) for i in range(len(config.listen))]
    async with open_services(config, metrics=True) as services:
        audit = services.audit
        gateway = Gateway(
            gateway_runtime(config, services),
            audit,
            services.reader,
            services.reads,
            sockets,
            wakeups=services.cluster.revocations if services.cluster is not None else None,
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload_gateway, gateway, services, config_path)
        loop.add_signal_handler(signal.SIGTERM, gateway.stop)
        loop.add_signal_handler(signal.SIGINT, gateway.stop)
        if hangup.pending():  # one came while starting
            loop.call_soon(reload_gateway, gateway, services, config_path)
        freeze_startup_heap()
        audit.emit(events.Start(pid=os.getpid()))
        async with asyncio.TaskGroup() as tg:
            watch = tg.create_task(watch_parent(fds[PARENT_FD], gateway.stop, "this worker"))
            await gateway.serve()
            watch.cancel()
        audit.emit(events.Stop(pid=os.getpid()))


def _portal_exited(audit: AuditLog) -> Callable[[int], None]:
    def exited(code: int) -> None:
        audit.emit(events.Reload(result="failed", reason=f"the portal process exited ({code})"))

    return exited


def run_gateway(config_path: str, *, ready: Callable[[Gateway], None] | None = None) -> None:
    """`imapguard serve`: run until SIGTERM/SIGINT, reloading on SIGHUP: in this
    process, or in `[server] workers` processes this one supervises. A second
    `serve` on the same SQLite state is refused (`workers.state_lock`)."""
    config = load_config(config_path)
    with state_lock(config.state.url):
        if config.server.processes > 1:
            from imapguard.compose.supervising import serve_workers

            run_loop(serve_workers(config, config_path, config.server.processes))
        else:
            run_loop(serve(config, config_path, ready))


def run_worker(config_path: str) -> None:
    """`imapguard worker`: started by `serve` with its sockets, never by hand."""
    fds = inherited()
    if fds is None:
        raise ConfigError([("worker", "is started by `imapguard serve` ([server] workers)")])
    run_loop(serve_worker(load_config(config_path), config_path, fds))

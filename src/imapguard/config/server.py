"""`[server]`: how many processes serve the gateway on this node."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field

from imapguard.config.base import Section

__all__ = ["ServerConfig", "default_workers"]


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class ServerConfig(Section):
    section_key = "server"

    # Gateway processes sharing the listening addresses (SO_REUSEPORT), each on an
    # event loop of its own: one per core uses them all. 1 runs the gateway in
    # the `serve` process itself. Default: the cores this process may run on.
    workers: Annotated[int, Field(ge=1, le=256)] | None = None

    @property
    def processes(self) -> int:
        """`workers` with its default filled in."""
        return self.workers if self.workers is not None else default_workers()

"""Metrics of several worker processes, summed (prometheus-client's multiprocess mode).

Each process writes its values to memory-mapped files in one directory; the
process that serves /metrics reads them all. The mode is chosen when a metric
is constructed, from the environment: `prepare` sets it in the parent before any
`Metrics` exists, and the workers inherit it. The directory is private to one
run of `serve` (created empty, removed at the end), so counters start at zero
like a single process's; a worker that ended has its live gauges removed
(`worker_ended`), its counters stay in the sums.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["ENV", "collect", "finish", "prepare", "worker_ended"]

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare() -> Path:
    """A fresh private directory, set for this process and its children."""
    directory = Path(tempfile.mkdtemp(prefix="imapguard-metrics-"))
    os.environ[ENV] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


def collect(directory: Path) -> CollectorRegistry:
    """A registry that sums every process's files (a new one per scrape)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def worker_ended(pid: int, directory: Path) -> None:
    mark_process_dead(pid, path=str(directory))  # type: ignore[no-untyped-call]


def finish(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.environ.pop(ENV, None)

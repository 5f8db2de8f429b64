"""Fixtures shared by every test directory."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.dovecot import dovecot

__all__ = ["dovecot", "restore_logging"]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """A test that runs the CLI in-process points the root logger at its own
    captured stderr (`cli.run.setup_logging`); put back what was there, so a
    later test's log record never goes to that closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

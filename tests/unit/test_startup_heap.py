"""The objects of the start are frozen out of the cyclic collector's walks
(compose.serving.freeze_startup_heap), and a reload puts them back under it, so
that the runtime a reload replaces can be collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from imapguard.audit import AuditLog
from imapguard.compose.services import Services
from imapguard.compose.serving import freeze_startup_heap, reload_gateway
from imapguard.gateway.server import Gateway


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_the_start_is_frozen_and_its_garbage_collected_first() -> None:
    class Cycle:
        me: object

    garbage = Cycle()
    garbage.me = garbage
    gone = weakref.ref(garbage)
    del garbage
    freeze_startup_heap()
    assert gc.get_freeze_count() > 0
    # The cycle made before the freeze was collected, not frozen for ever.
    assert gone() is None


@pytest.mark.usefixtures("unfrozen")
def test_a_reload_puts_the_frozen_start_back_under_the_collector(tmp_path: Path) -> None:
    freeze_startup_heap()
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    services = cast(Services, SimpleNamespace(audit=audit))
    # A configuration that is no TOML: the reload is refused, the heap unfrozen.
    broken = tmp_path / "imapguard.toml"
    broken.write_text("[server\n")
    gateway = cast(Gateway, SimpleNamespace(reload=lambda runtime: pytest.fail("reloaded")))
    reload_gateway(gateway, services, str(broken))
    audit.close()
    assert gc.get_freeze_count() == 0
    assert '"event":"reload","result":"failed"' in (tmp_path / "audit.jsonl").read_text()

"""The under-attack posture through the gateway: a flood of failures from many
addresses raises it (a `posture` event), and it relaxes by itself once the flood
is over. Windows are shrunk to seconds here; the engine's real minutes and its
baseline are tested with an injected clock in tests/unit/test_defense_posture.py.

Source networks: 127.0.120.0/24 - 127.0.129.0/24.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.conftest import wait_for
from tests.integration.test_brute_force import add_users, defense_gateway, login

pytestmark = pytest.mark.dovecot

FAST_POSTURE = """
[defense]
posture_bucket = 1
posture_buckets = 3
posture_min_failures = 10
posture_min_duration = 3
posture_interval = 0.2
posture_initial_baseline = 0.05
delay_base = 0.05
delay_max = 0.2
"""


@pytest.fixture(scope="module")
def gw_posture(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    with defense_gateway(tmp_path_factory.mktemp("gw-posture"), dovecot, FAST_POSTURE) as gw:
        yield gw


def postures(gw: GatewayProcess) -> list[dict[str, Any]]:
    return gw.events("posture")


def test_posture_rises_under_a_failure_flood_and_falls_after(
    gw_posture: GatewayProcess, dovecot: DovecotServer
) -> None:
    gw = gw_posture
    (user,) = add_users(dovecot, "pos", 1)
    password = gw.create_app_password(user, "phone")
    assert login(gw, "127.0.120.1", user, password)
    assert postures(gw) == []

    sources = [f"127.0.{121 + n // 50}.{1 + n % 50}" for n in range(60)]

    def guess(src: str) -> bool:
        return login(gw, src, f"victim{secrets.token_hex(2)}", secrets.token_hex(8))

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        assert not any(pool.map(guess, sources))
    raised = wait_for(
        lambda: [p for p in postures(gw) if p["after"] == "under_attack"], 10, "posture up"
    )
    assert raised[0]["before"] == "normal"
    assert raised[0]["failures"] >= 10

    # The flood is over; legitimate logins go on and the posture relaxes by itself.
    def relaxed() -> list[dict[str, Any]]:
        login(gw, "127.0.120.1", user, password)
        time.sleep(0.5)
        return [p for p in postures(gw) if p["after"] == "normal"]

    fallen = wait_for(relaxed, 30, "posture down")
    assert fallen[0]["before"] == "under_attack"

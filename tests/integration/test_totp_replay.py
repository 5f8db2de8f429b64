"""Attack-named: one-time codes replayed. A code seen on the wire (shoulder-surfed,
phished, logged by a compromised client) must not open the mailbox a second time
from anywhere but the device that used it, and two connections racing with the
same fresh code get in once at most. Through the gateway to a real Dovecot.

Source networks: 127.0.40.0/24 - 127.0.49.0/24.
"""

from __future__ import annotations

import concurrent.futures

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.test_totp_devices import _enroll, _login, _user, gw_totp, hook, smtp

pytestmark = pytest.mark.dovecot

__all__ = ["gw_totp", "hook", "smtp"]


def test_replayed_code_from_another_network_is_refused(
    gw_totp: GatewayProcess, dovecot: DovecotServer
) -> None:
    user, password = _user(dovecot)
    otp = _enroll(gw_totp, user)
    typed = password + otp.now()
    assert _login(gw_totp, "127.0.40.1", user, typed)
    for n in (41, 42, 43):
        assert not _login(gw_totp, f"127.0.{n}.1", user, typed)
    signals = [e for e in gw_totp.events("compromise_signal") if e["user"] == user]
    assert [s["src"] for s in signals] == ["127.0.41.1", "127.0.42.1", "127.0.43.1"]
    assert all("one-time code" in s["reason"] for s in signals)


def test_racing_connections_with_one_fresh_code_get_in_once(
    gw_totp: GatewayProcess, dovecot: DovecotServer
) -> None:
    user, password = _user(dovecot)
    otp = _enroll(gw_totp, user)
    typed = password + otp.now()
    sources = [f"127.0.{n}.1" for n in (44, 45, 46, 47)]
    with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
        results = list(pool.map(lambda src: _login(gw_totp, src, user, typed), sources))
    assert results.count(True) == 1, results

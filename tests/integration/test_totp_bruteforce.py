"""Attack-named: guessing the one-time code with a stolen password. Wrong codes after
a correct password are counted per account, whatever address they come from; after
`auth.totp_max_failures` the account's codes are locked for `auth.totp_lockout`
(the right code included), each guess is a compromise signal the owner hears
about, and the owner's trusted device keeps working. Through the gateway to a
real Dovecot.

Source networks: 127.0.50.0/24 - 127.0.59.0/24.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.conftest import running_gateway
from tests.integration.test_totp_devices import _enroll, _login, _user

pytestmark = pytest.mark.dovecot


@pytest.fixture(scope="module")
def gw_guarded(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    def edit(text: str) -> str:
        return text.replace(
            "failure_jitter = 0.01",
            "failure_jitter = 0.01\nverified_cache_seconds = 0\n"
            "totp_max_failures = 3\ntotp_lockout = 600",
        )

    with running_gateway(
        tmp_path_factory.mktemp("gw-guarded"),
        dovecot,
        login="master",
        methods=("password+totp",),
        edit=edit,
    ) as gw:
        yield gw


def test_code_guessing_locks_codes_and_spares_the_trusted_device(
    gw_guarded: GatewayProcess, dovecot: DovecotServer
) -> None:
    gw = gw_guarded
    user, password = _user(dovecot)
    otp = _enroll(gw, user)
    # The owner's phone proved a code earlier: a trusted device.
    typed = password + otp.now()
    assert _login(gw, "127.0.50.1", user, typed)

    right = otp.now()
    guesses = [f"{(int(right) + k * 7919) % 1_000_000:06d}" for k in (1, 2, 3)]
    for n, guess in enumerate(guesses, start=51):
        assert not _login(gw, f"127.0.{n}.1", user, password + guess)
    # The attacker now even has the right code: locked, from a fresh network.
    assert not _login(gw, "127.0.55.1", user, password + otp.now())
    reasons = [e["reason"] for e in gw.events("auth") if e.get("user") == user][-2:]
    assert "now locked" in reasons[0]
    assert "locked" in reasons[1]
    shown = json.loads(gw.cli("user", "show", user, "--json").stdout)
    assert shown["totp"]["locked_until"] is not None
    # The owner's trusted device (sending what it stored, from its own address) is
    # not locked out.
    assert _login(gw, "127.0.50.1", user, typed)
    signals = [e for e in gw.events("compromise_signal") if e["user"] == user]
    assert len(signals) == 4

"""Attack-named: a timing oracle once the upstream's penalty passes the floor's cap.

A5. Dovecot delays every login from an address with recent failures (4, 8, then 15 s,
plus its 2 s failure delay for a refusal; a right password is answered after the
penalty alone). The gateway padded failures to a floor capped at 10 s, so with the
penalty at its 15 s maximum a right password without its second factor was answered
in 15.0 s and every wrong one in 17.0 s: a guesser who first provokes the penalty
learns which password is right. Now a failure is held until the upstream would have
refused it for that source (imapguard.auth.penalty): right, wrong and blocked alike.

Through a real `imapguard serve` (password+totp) in front of the real Dovecot fixture,
whose penalty is real. Two sources run at once (each about 70 s): one provokes the
penalty and then times a wrong and a right password; the other provokes it, gets
blocked by the gateway, and times the blocked attempt (which never reaches Dovecot).
Source addresses: 127.0.202.1, 127.0.202.2.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imapguard.defense.counters import Block, Target, TargetKind
from imapguard.state import open_store
from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway
from tests.integration.test_failure_timing import DEFENSE

pytestmark = [pytest.mark.dovecot, pytest.mark.timeout(300)]

# The defense itself neither delays nor blocks here (the failure-timing test's
# thresholds); the one block is placed by the test.
# Wrong passwords that take Dovecot's penalty to its maximum (refusals of 2, 6, 10, 17 s).
PROVOKE = 4
# Dovecot's own refusal times vary by a few milliseconds; 0.5 s is a quarter of the
# 2 s the oracle gave away.
TOLERANCE = 0.5


def _timed_login(gw: GatewayProcess, tls: ssl.SSLContext, src: str, user: str, pw: str) -> float:
    with RawClient(gw.implicit_port, src, tls=tls, timeout=60.0) as c:
        c.line()
        started = time.perf_counter()
        lines = c.command(b"a", f'LOGIN "{user}" "{pw}"'.encode())
        elapsed = time.perf_counter() - started
    assert lines == [b"a " + AUTH_FAILED], lines
    return elapsed


def _provoke(login: Callable[[str], float]) -> list[float]:
    return [login(f"wrong-{secrets.token_hex(4)}") for _ in range(PROVOKE)]


def test_timing_oracle_when_the_upstream_penalty_passes_the_floor_cap(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    user, password = f"pen{secrets.token_hex(3)}", f"pw-{secrets.token_urlsafe(9)}x"
    dovecot.add_user(user, password)
    with running_gateway(
        tmp_path,
        dovecot,
        login="master",
        methods=("password+totp",),
        edit=lambda text: (
            text.replace(
                "failure_jitter = 0.01", "failure_jitter = 0.01\nverified_cache_seconds = 0"
            )
            + DEFENSE
        ),
    ) as gw:
        tls = gw.client_ssl()
        gw.cli("totp", "enroll", user, "--json")

        def guesser() -> tuple[list[float], float, float]:
            def login(pw: str) -> float:
                return _timed_login(gw, tls, "127.0.202.1", user, pw)

            provoked = _provoke(login)
            wrong = login("a-wrong-password")
            right = login(password)  # right, but no code: a missing factor
            return provoked, wrong, right

        def blocked_guesser() -> tuple[list[float], float]:
            def login(pw: str) -> float:
                return _timed_login(gw, tls, "127.0.202.2", user, pw)

            provoked = _provoke(login)
            now = time.time()
            store = open_store(f"sqlite:///{gw.base}/state.db")
            try:
                store.block_put(
                    Block(Target(TargetKind.SOURCE, "127.0.202.2"), "timing", 1, now, now + 600)
                )
            finally:
                store.close()
            return provoked, login(password)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(guesser)
            second = pool.submit(blocked_guesser)
            provoked, wrong, right = first.result()
            provoked_b, blocked = second.result()

        events = [(e["src"], e["result"], e["reason"]) for e in gw.events("auth")]
        # The right password was right (a missing factor), the blocked try was blocked.
        assert ("127.0.202.1", "missing_factor") in {(s, r) for s, r, _ in events}, events
        assert any(s == "127.0.202.2" and x.startswith("blocked") for s, _, x in events), events
        detail = (
            f"provoked {[round(t, 2) for t in provoked]} / {[round(t, 2) for t in provoked_b]}; "
            f"wrong {wrong:.2f} s, right {right:.2f} s, blocked {blocked:.2f} s"
        )
        # The penalty really reached Dovecot's maximum (a refusal of about 17 s).
        assert wrong > 16.0, detail
        assert abs(right - wrong) < TOLERANCE, detail
        assert abs(blocked - wrong) < TOLERANCE, detail

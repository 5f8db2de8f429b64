"""The model of the upstream's per-address penalty (imapguard.auth.penalty) against
what Debian's Dovecot 2.3 was measured to do behind the gateway: refusals after 2,
6, 10, 17, 17 s from one address; a right password after 15 s, which clears it; 2 s
again after 16 s of quiet."""

from __future__ import annotations

from imapguard.auth.penalty import UpstreamPenalty, ident, penalty_seconds


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_measured_dovecot_sequence() -> None:
    clock = Clock()
    model = UpstreamPenalty(clock, default_delay=0.5)
    ip = "192.0.2.77"
    predicted = []
    for measured in (2.0, 6.0, 10.0, 17.0, 17.0):
        predicted.append(model.predicted_refusal(ip))
        clock.now += measured
        model.refused(ip, measured)
    # Before any refusal it knows only its default delay; before it saw the penalty
    # applied once, the delay alone; then it is exact.
    assert predicted == [0.5, 2.0, 10.0, 17.0, 17.0]
    assert model.penalizes
    assert model.refusal_delay() == 2.0
    # 16 s of quiet after the last refusal: the penalty has faded.
    clock.now += 16
    assert model.predicted_refusal(ip) == 2.0


def test_a_refusal_sent_early_by_the_upstreams_timer_is_outvoted() -> None:
    """Measured in CI: the first refusal from an address took 1.5 s (Dovecot flushes
    refusals on a 500 ms timer), every later one its penalty + 2.0 s. A right password's
    failure waits its check plus the learned delay: that delay must be the 2 s."""
    clock = Clock()
    model = UpstreamPenalty(clock, default_delay=0.05)
    for measured in (1.52, 6.02, 10.01, 17.03):
        clock.now += measured
        model.refused("192.0.2.9", measured)
    assert abs(model.refusal_delay() - 2.015) < 1e-9  # median of 1.52, 2.02, 2.01, 2.03
    assert abs(model.predicted_refusal("192.0.2.9") - 17.015) < 1e-9


def test_an_upstream_without_a_penalty_is_seen_as_such() -> None:
    clock = Clock()
    model = UpstreamPenalty(clock, default_delay=1.0)
    for _ in range(4):
        assert model.predicted_refusal("203.0.113.1") == 1.0
        clock.now += 1.0
        model.refused("203.0.113.1", 1.0)
    assert not model.penalizes


def test_a_success_clears_the_penalty() -> None:
    clock = Clock()
    model = UpstreamPenalty(clock, default_delay=2.0)
    for duration in (2.0, 6.0, 10.0):
        clock.now += duration
        model.refused("198.51.100.1", duration)
    assert model.level("198.51.100.1") == 3
    model.succeeded("198.51.100.1")
    assert model.predicted_refusal("198.51.100.1") == 2.0


def test_keys_as_dovecot_does() -> None:
    assert ident("2001:db8:1:2::5") == ident("2001:db8:1:ffff::9") == "2001:db8:1::/48"
    assert ident("::ffff:192.0.2.1") == "192.0.2.1"
    assert [penalty_seconds(n) for n in range(6)] == [0.0, 4.0, 8.0, 15.0, 15.0, 15.0]

"""The sign-in rate limit's window, and its memory under a flood of sources."""

from __future__ import annotations

from imapguard.portal.ratelimit import SlidingWindow, source_key


def test_the_window_slides() -> None:
    window = SlidingWindow(2)
    assert window.hit("192.0.2.1", 0.0) is None
    assert window.hit("192.0.2.1", 10.0) is None
    refusal = window.hit("192.0.2.1", 20.0)
    assert refusal is not None
    assert refusal.retry_after == 40
    assert refusal.first
    second = window.hit("192.0.2.1", 21.0)
    assert second is not None
    assert not second.first
    assert window.hit("192.0.2.1", 60.0) is None  # the first attempt left the window
    assert window.hit("192.0.2.1", 61.0) is not None


def test_refused_attempts_are_not_counted() -> None:
    # Retrying while refused does not push the wait further out.
    window = SlidingWindow(1)
    window.hit("192.0.2.1", 0.0)
    for t in range(1, 60):
        assert window.hit("192.0.2.1", float(t)) is not None
    assert window.hit("192.0.2.1", 60.0) is None


def test_a_clock_going_back_never_asks_for_more_than_the_window() -> None:
    window = SlidingWindow(1)
    window.hit("192.0.2.1", 1000.0)
    refusal = window.hit("192.0.2.1", 0.0)
    assert refusal is not None
    assert refusal.retry_after == 60


def test_memory_is_bounded_under_a_flood_of_sources() -> None:
    window = SlidingWindow(1, max_sources=100)
    for i in range(10_000):
        window.hit(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 0.0)
    assert len(window) == 100
    # The most recent sources are the ones kept.
    assert window.hit("10.0.39.15", 1.0) is not None


def test_sources_are_addresses_and_ipv6_64s() -> None:
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"

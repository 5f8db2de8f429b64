"""The portal server's per-source connection count (slowloris from one source)."""

from __future__ import annotations

from imapguard.portal.connections import ConnectionCounts


def test_one_source_cannot_hold_more_than_its_share() -> None:
    counts = ConnectionCounts(2)
    assert counts.take("192.0.2.1")
    assert counts.take("192.0.2.1")
    assert not counts.take("192.0.2.1")
    assert counts.take("192.0.2.2")
    counts.give_back("192.0.2.1")
    assert counts.take("192.0.2.1")


def test_closed_connections_leave_nothing_behind() -> None:
    counts = ConnectionCounts(4)
    for i in range(1000):
        counts.take(f"10.0.{i // 256}.{i % 256}")
    for i in range(1000):
        counts.give_back(f"10.0.{i // 256}.{i % 256}")
    assert counts._open == {}

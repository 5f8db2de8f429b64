"""What the admin pages count from the audit log, and the charts drawn from it.

`Tally` follows the audit log (`admin_feed.read_after`) and keeps, per minute
of the last day, how many `auth` events succeeded and failed, plus the newest
spray alerts and the accounts whose one-time codes were locked. It is fed
incrementally (each page view reads only what was written since the last
one), so a day of log is read once, not on every view; the first read goes
back at most `FIRST_READ` bytes. Its memory is bounded: 1,440 minutes, the
`MAX_ALERTS` newest alerts, `MAX_LOCKED` accounts.

The charts are SVG drawn here, on the server: no script, every text escaped,
a `<title>` and `<desc>` for screen readers, and the page shows the same
numbers as a table beside them.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from imapguard.portal.admin_feed import Position, read_after

__all__ = ["LOCK_MARKER", "Bar", "Series", "Tally", "bar_chart"]

DAY_MINUTES = 24 * 60
# How far back the first read of the log goes (a busy day can be far larger;
# the chart then starts where the read did).
FIRST_READ = 16 * 1024 * 1024
# Each later refresh reads at most this much (the rest on the next view).
REFRESH_READ = 8 * 1024 * 1024
# The events counted (the others are not even parsed).
_KINDS = ("auth", "spray_alert")
MAX_ALERTS = 50
MAX_LOCKED = 1000
# What an `auth` event's reason says when a wrong code locked the account's
# one-time codes (auth/chokepoint.py and auth/signin.py write it; a unit test
# keeps them in step).
LOCK_MARKER = "one-time codes now locked for the account"


@dataclass(frozen=True)
class Series:
    """Successes and failures per bucket, oldest first; `start` is the first
    bucket's time and `step` its length in seconds."""

    start: float
    step: int
    ok: tuple[int, ...]
    failed: tuple[int, ...]


class Tally:
    """Counts of `auth` results per minute, the newest spray alerts and the
    accounts whose codes were locked, from the audit log at `path`."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._position: Position | None = None
        self._ok: dict[int, int] = {}
        self._failed: dict[int, int] = {}
        self._alerts: deque[dict[str, Any]] = deque(maxlen=MAX_ALERTS)
        self._locked: dict[str, float] = {}

    def refresh(self, now: float) -> None:
        """Read what was written since the last refresh (blocking: call it
        off the event loop)."""
        with self._lock:
            if self._position is None:
                self._position = _start(self._path)
            batch = read_after(self._path, self._position, REFRESH_READ, _KINDS)
            self._position = batch.position
            for record in batch.records:
                self._count(record)
            self._forget(now)

    def _count(self, record: dict[str, Any]) -> None:
        ts = record.get("ts")
        if not isinstance(ts, int | float) or not math.isfinite(ts):
            return
        kind = record.get("event")
        if kind == "auth":
            minute = int(ts // 60)
            counts = self._ok if record.get("result") == "ok" else self._failed
            counts[minute] = counts.get(minute, 0) + 1
            user, reason = record.get("user"), record.get("reason")
            if isinstance(user, str) and isinstance(reason, str) and LOCK_MARKER in reason:
                self._locked[user] = float(ts)
                if len(self._locked) > MAX_LOCKED:
                    del self._locked[min(self._locked, key=self._locked.__getitem__)]
        elif kind == "spray_alert":
            self._alerts.append(record)

    def _forget(self, now: float) -> None:
        oldest = int(now // 60) - DAY_MINUTES
        for counts in (self._ok, self._failed):
            for minute in [m for m in counts if m <= oldest]:
                del counts[minute]
        for user in [u for u, at in self._locked.items() if at < now - 86400]:
            del self._locked[user]

    def series(self, now: float, step: int, buckets: int) -> Series:
        """The last `buckets` buckets of `step` seconds (a multiple of 60),
        the current one last."""
        per = step // 60
        last = int(now // step)
        first = last - buckets + 1
        ok, failed = [0] * buckets, [0] * buckets
        with self._lock:
            for source, target in ((self._ok, ok), (self._failed, failed)):
                for minute, n in source.items():
                    index = minute // per - first
                    if 0 <= index < buckets:
                        target[index] += n
        return Series(first * step, step, tuple(ok), tuple(failed))

    def alerts(self) -> list[dict[str, Any]]:
        """The newest spray alerts, newest first."""
        with self._lock:
            return list(reversed(self._alerts))

    def locked_accounts(self) -> list[str]:
        """Accounts whose one-time codes were locked in the last day (the page
        asks the store whether they still are)."""
        with self._lock:
            return sorted(self._locked)


def _start(path: str) -> Position:
    """Where the first read begins: at most FIRST_READ bytes before the end."""
    end = read_after(path, None).position
    return Position(end.inode, max(0, end.offset - FIRST_READ))


# -- drawing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    label: str  # the bucket, e.g. "14:05"
    ok: int
    failed: int


WIDTH, HEIGHT = 720, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 8, 12, 28


def bar_chart(title: str, description: str, bars: Sequence[Bar], chart_id: str) -> str:
    """Stacked bars (failures over successes) as a standalone SVG element."""
    peak = max((b.ok + b.failed for b in bars), default=0)
    top = _nice(peak)
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    slot = plot_w / max(len(bars), 1)
    width = max(slot * 0.8, 1.0)
    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" aria-labelledby="{escape(title_id)} {escape(desc_id)}">',
        f'<title id="{escape(title_id)}">{escape(title)}</title>',
        f'<desc id="{escape(desc_id)}">{escape(description)}</desc>',
    ]
    for tick in (0, top // 2, top):
        y = _TOP + plot_h - (plot_h * tick / top if top else 0)
        out.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - _RIGHT}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>'
        )
    label_every = max(1, math.ceil(len(bars) / 8))
    for i, bar in enumerate(bars):
        x = _LEFT + i * slot + (slot - width) / 2
        base = float(_TOP + plot_h)
        for cls, n in (("ok", bar.ok), ("failed", bar.failed)):
            if n <= 0 or not top:
                continue
            h = plot_h * n / top
            base -= h
            out.append(
                f'<rect class="{cls}" x="{x:.1f}" y="{base:.1f}" width="{width:.1f}"'
                f' height="{h:.1f}"><title>{escape(bar.label)}: {n} {_word(cls)}</title></rect>'
            )
        if i % label_every == 0:
            out.append(
                f'<text class="axis" x="{x + width / 2:.1f}" y="{HEIGHT - 8}"'
                f' text-anchor="middle">{escape(bar.label)}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def _word(cls: str) -> str:
    return "successful" if cls == "ok" else "failed"


def _nice(peak: int) -> int:
    """The axis top: the peak rounded up to an even multiple of a power of ten (an
    even number, so its half is a whole tick)."""
    if peak <= 0:
        return 0
    magnitude: int = 10 ** max(0, len(str(peak)) - 1)
    for factor in (2, 4, 6, 8, 10):
        top = factor * magnitude
        if top >= peak:
            return top
    return 10 * magnitude

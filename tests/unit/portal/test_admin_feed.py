"""The admin pages' reading of the audit log (complete lines only, rotation,
truncation, a reader far behind, a giant line), the event filters, the
per-minute tally, and the SVG charts (well-formed XML, no script, escaped)."""

from __future__ import annotations

import inspect
import ipaddress
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from imapguard.auth import chokepoint, signin
from imapguard.portal import admin_feed
from imapguard.portal.admin_charts import LOCK_MARKER, Bar, Tally, bar_chart
from imapguard.portal.admin_feed import (
    MAX_BACKLOG,
    AuthFilter,
    Position,
    read_after,
    shown,
    tail,
)
from imapguard.portal.admin_live import MAX_PER_ADMIN, MAX_STREAMS, Slots, frame


def _auth(**fields: Any) -> dict[str, Any]:
    return {
        "ts": 1_800_000_000.0,
        "event": "auth",
        "src": "192.0.2.1",
        "result": "ok",
        "user": "alice",
        **fields,
    }


def _write(path: Path, *records: dict[str, Any], mode: str = "a") -> None:
    with open(path, mode, encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")  # as to_json writes


# -- reading ---------------------------------------------------------------------------


def test_follow_reads_only_what_was_written_after(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, _auth(user="old"))
    start = read_after(str(log), None)
    assert start.records == []
    _write(log, _auth(user="new"))
    batch = read_after(str(log), start.position)
    assert [r["user"] for r in batch.records] == ["new"]
    assert not batch.skipped
    assert read_after(str(log), batch.position).records == []


def test_a_line_still_being_written_is_read_when_complete(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    start = read_after(str(log), None).position
    line = json.dumps(_auth(user="half"))
    with open(log, "a") as f:
        f.write(line[:20])
    partial = read_after(str(log), start)
    assert partial.records == []
    assert partial.position == start
    with open(log, "a") as f:
        f.write(line[20:] + "\n")
    assert [r["user"] for r in read_after(str(log), partial.position).records] == ["half"]


def test_rotation_starts_at_the_new_files_beginning(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, _auth(user="before"))
    position = read_after(str(log), None).position
    os.rename(log, tmp_path / "audit.jsonl.1")
    _write(log, _auth(user="after-rotation"))
    batch = read_after(str(log), position)
    assert [r["user"] for r in batch.records] == ["after-rotation"]
    assert batch.skipped


def test_truncation_starts_at_the_beginning(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, *[_auth(user=f"u{i}") for i in range(20)])
    position = read_after(str(log), None).position
    _write(log, _auth(user="fresh"), mode="w")
    batch = read_after(str(log), position)
    assert [r["user"] for r in batch.records] == ["fresh"]


def test_a_reader_far_behind_skips_to_the_newest(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    position = read_after(str(log), None).position
    filler = [_auth(user="x" * 200) for _ in range(MAX_BACKLOG // 200)]
    _write(log, *filler, _auth(user="newest"))
    batch = read_after(str(log), position)
    assert batch.skipped
    assert batch.records[-1]["user"] == "newest"
    assert all(isinstance(r, dict) for r in batch.records)  # began at a line's start
    assert len(batch.records) < len(filler)


def test_a_giant_line_is_passed_over(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    position = read_after(str(log), None).position
    with open(log, "a") as f:
        f.write('{"event":"auth","user":"' + "y" * (admin_feed.MAX_LINE + 10) + '"}\n')
    _write(log, _auth(user="after"))
    users: list[str] = []
    for _ in range(3):
        batch = read_after(str(log), position, limit=admin_feed.MAX_LINE)
        position = batch.position
        users += [r["user"] for r in batch.records]
    assert users == ["after"]


def test_tail_starts_at_a_whole_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, *[_auth(user=f"u{i:04d}") for i in range(1000)])
    batch = tail(str(log), limit=5000)
    assert batch.skipped
    assert batch.records[-1]["user"] == "u0999"
    assert all(r["user"].startswith("u") for r in batch.records)
    assert batch.position.offset == log.stat().st_size
    assert tail(str(tmp_path / "missing")).records == []


def test_position_parses_only_its_own_form() -> None:
    assert Position.parse("12.345") == Position(12, 345)
    for text in (None, "", "12", "a.b", "1.2.3", "-1.5", "1" * 30 + ".1", "1.2\n"):
        assert Position.parse(text) is None


# -- filters -----------------------------------------------------------------------


def test_filters_match_user_source_network_and_result() -> None:
    by_user = AuthFilter.parse("ALICE", "", "")
    assert by_user.matches(_auth(user="alice"))
    assert not by_user.matches(_auth(user="alicex"))
    by_net = AuthFilter.parse("", "192.0.2.0/24", "")
    assert by_net.matches(_auth(src="192.0.2.200"))
    assert not by_net.matches(_auth(src="192.0.3.1"))
    assert not by_net.matches(_auth(src="2001:db8::1"))
    assert not by_net.matches(_auth(src="not an address"))
    by_result = AuthFilter.parse("", "192.0.2.1", "invalid")
    assert by_result.source == ipaddress.ip_network("192.0.2.1/32")
    assert by_result.matches(_auth(result="invalid"))
    assert not by_result.matches(_auth(result="ok"))
    assert not AuthFilter().matches({**_auth(), "event": "connect"})


@pytest.mark.parametrize(
    ("user", "source", "result"),
    [("a" * 300, "", ""), ("bad\nname", "", ""), ("", "192.0.2.", ""), ("", "", "rooted")],
)
def test_bad_filters_are_refused(user: str, source: str, result: str) -> None:
    with pytest.raises(ValueError, match=r"\.$"):
        AuthFilter.parse(user, source, result)


def test_shown_keeps_only_the_displayed_fields_as_text() -> None:
    row = shown(_auth(password="hunter2", user=123, reason=None))
    assert "password" not in row
    assert row["user"] == "123"
    assert row["reason"] == ""
    assert row["ts"] == "1800000000.000"


def test_sse_frames_carry_json_on_one_line() -> None:
    data = frame("auth", [{"user": "a\nb\r\ndata: forged"}], "1.2")
    lines = data.decode().split("\n")
    assert lines[:2] == ["id: 1.2", "event: auth"]
    assert lines[2].startswith("data: ")
    assert lines[3:] == ["", ""]
    assert json.loads(lines[2][6:]) == [{"user": "a\nb\r\ndata: forged"}]


def test_stream_slots_are_bounded_per_admin_and_in_all() -> None:
    slots = Slots()
    assert all(slots.take("carol") for _ in range(MAX_PER_ADMIN))
    assert not slots.take("carol")
    others = [slots.take(f"admin{i}") for i in range(MAX_STREAMS)]
    assert others.count(True) == MAX_STREAMS - MAX_PER_ADMIN
    slots.give_back("carol")
    assert slots.take("carol")


# -- the tally and the charts -----------------------------------------------------------


def test_tally_counts_per_minute_and_reads_incrementally(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    now = 1_800_000_040.0  # 40 s into a minute
    _write(
        log,
        _auth(ts=now - 30, result="ok"),
        _auth(ts=now - 30, result="invalid"),
        _auth(ts=now - 90, result="invalid"),
        _auth(ts=now - 2 * 86400, result="invalid"),  # older than a day
        {"ts": now - 10, "event": "connect", "src": "192.0.2.1"},
    )
    tally = Tally(str(log))
    tally.refresh(now)
    minutes = tally.series(now, 60, 3)
    assert minutes.ok == (0, 0, 1)
    assert minutes.failed == (0, 1, 1)
    _write(log, _auth(ts=now, result="denied"))
    tally.refresh(now)
    hours = tally.series(now, 3600, 24)
    assert sum(hours.failed) == 3
    assert sum(hours.ok) == 1
    assert len(hours.ok) == 24


def test_tally_remembers_code_locks_and_spray_alerts(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    now = 1_800_000_000.0
    _write(
        log,
        _auth(user="bob", result="invalid", reason=f"wrong one-time code; {LOCK_MARKER}"),
        {"ts": now, "event": "spray_alert", "by": "fingerprint", "key": "k", "accounts": 9},
    )
    tally = Tally(str(log))
    tally.refresh(now)
    assert tally.locked_accounts() == ["bob"]
    assert [a["key"] for a in tally.alerts()] == ["k"]


def test_lock_marker_is_what_the_auth_service_writes() -> None:
    """The lockouts page finds code-locked accounts by this reason: the auth
    service's two code checks must still write it."""
    assert LOCK_MARKER in inspect.getsource(chokepoint)
    assert LOCK_MARKER in inspect.getsource(signin)


def test_chart_is_well_formed_svg_without_script() -> None:
    bars = [Bar(f"{h:02d}:00", h, 24 - h) for h in range(24)]
    bars.append(Bar('</text><script>alert("x")</script>', 3, 1))
    svg = bar_chart('Sign-ins <"today">', "a & b", bars, "chart-day")
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert root.find(f"{ns}title") is not None
    assert root.findtext(f"{ns}title") == 'Sign-ins <"today">'
    assert root.findtext(f"{ns}desc") == "a & b"
    assert root.get("role") == "img"
    assert [e for e in root.iter() if e.tag.endswith("script")] == []
    assert all(not k.startswith("on") for e in root.iter() for k in e.attrib)
    rects = root.findall(f".//{ns}rect")
    assert len(rects) == 23 + 24 + 1 + 1  # the 0-hour and 24-hour bars have one part


def test_empty_chart_is_well_formed() -> None:
    ET.fromstring(bar_chart("Nothing", "no sign-ins", [Bar("00:00", 0, 0)], "c"))  # noqa: S314
    ET.fromstring(bar_chart("Nothing", "no sign-ins", [], "c"))  # noqa: S314


def test_only_the_kinds_asked_for_are_parsed(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    start = read_after(str(log), None).position
    _write(
        log,
        {"ts": 1.0, "event": "connect", "src": "192.0.2.1"},
        {"ts": 1.0, "event": "connect", "user": '"event":"auth"'},  # a lookalike
        _auth(user="real"),
    )
    with open(log, "a") as f:  # not as the audit log writes it: passed over
        f.write('{"ts": 1.0, "event": "auth", "user": "spaced"}\n')
    batch = read_after(str(log), start, kinds=("auth",))
    assert [r["user"] for r in batch.records] == ["real"]
    assert batch.position.offset == log.stat().st_size
    assert len(read_after(str(log), start).records) == 4
    assert [r["user"] for r in tail(str(log), kinds=("auth",)).records] == ["real"]

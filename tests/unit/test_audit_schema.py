"""docs/audit-events.md is the audit log's schema: it must name every event kind
and every field of the record types, in their order, and nothing else."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from imapguard.audit import events

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit-events.md"


def _documented() -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in DOC.read_text().splitlines():
        heading = re.fullmatch(r"### `([a-z_]+)`", line)
        if heading:
            current = kinds.setdefault(heading.group(1), [])
            continue
        if line.startswith("## "):
            current = None
        row = re.match(r"\| `([a-z_]+)` \|", line)
        if row and current is not None:
            current.append(row.group(1))
    return kinds


def _declared() -> dict[str, list[str]]:
    return {
        kind: [f.name for f in dataclasses.fields(cls) if f.name != "session"]
        for kind, cls in events.all_kinds().items()
    }


def test_every_event_kind_and_field_is_documented_in_order() -> None:
    assert _documented() == _declared()


def test_the_common_fields_are_documented() -> None:
    text = DOC.read_text()
    for name in ("ts", "event", "session"):
        assert f"| `{name}` |" in text


def test_every_record_type_is_written_somewhere() -> None:
    # A kind documented but never emitted is a promise to SIEM users we do not keep.
    src = Path(events.__file__).resolve().parents[1]
    own = Path(events.__file__).resolve()
    code = "\n".join(p.read_text() for p in src.rglob("*.py") if p.resolve() != own)
    for cls in events.all_kinds().values():
        assert re.search(rf"\b(events|audit)\.{cls.__name__}\(", code), cls.__name__

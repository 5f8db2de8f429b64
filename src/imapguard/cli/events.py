"""Reading the audit log: `events` (and `events --follow`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from imapguard.audit import follow, read_events
from imapguard.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Subparsers,
    UsageError,
    config_opt,
    json_opt,
    load,
)
from imapguard.cli.output import print_json, shown, when

__all__ = ["COMMANDS", "add_parsers", "format_event"]

# The fields a one-line event shows, in this order (after time, event, session).
_EVENT_KEYS = (
    "user",
    "src",
    "result",
    "reason",
    "rule",
    "delay",
    "target",
    "by",
    "accounts",
    "before",
    "after",
    "would",
    "enforced",
    "method",
    "factor",
    "device",
    "mechanism",
    "client_id",
    "version",
    "cipher",
    "tls_mode",
    "listener",
    "duration",
    "bytes_in",
    "bytes_out",
    "count",
    "discarded_bytes",
)


def add_parsers(sub: Subparsers) -> None:
    events = sub.add_parser("events", help="read the audit log")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument(
        "--file",
        default=None,
        metavar="PATH",
        help="audit log to read (default: audit.path of the configuration)",
    )
    config_opt(events)
    json_opt(events)


def format_event(record: dict[str, Any]) -> str:
    """One audit record as one line, every field escaped."""
    ts = record.get("ts")
    stamp = when(ts) if isinstance(ts, int | float) else "?"
    parts = [stamp, shown(record.get("event", "?")).ljust(10), shown(record.get("session", "-"))]
    for key in _EVENT_KEYS:
        if key in record:
            parts.append(f"{key}={shown(record[key])}")
    return "  ".join(parts)


def _events(args: argparse.Namespace) -> int:
    path = args.file or load(args, check_files=False).audit.path
    if path == "-":
        raise UsageError("audit.path is standard output; pass --file")
    try:
        if args.follow:
            for record in follow(path):
                print(json.dumps(record) if args.json else format_event(record), flush=True)
            return EXIT_OK
        records = list(read_events(path))
    except FileNotFoundError:
        print(f"imapguard: no audit log at {shown(path)}", file=sys.stderr)
        return EXIT_PROBLEM
    if args.json:
        print_json(records)
    else:
        for record in records:
            print(format_event(record))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"events": _events}

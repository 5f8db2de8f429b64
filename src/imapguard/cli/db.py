"""The state store's schema: `db upgrade`, `db current` and `db check`.

`serve` and every other command refuse a store whose schema revision is not the
one this imapguard was written for; `db upgrade` brings an older one up to it
(Alembic, `imapguard.state.migrations`), `db current` shows where a store is,
and `db check` says (exit 0 or 1) whether it may be opened as it is. None of
them needs the server key.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from imapguard.cli.common import EXIT_OK, EXIT_PROBLEM, Subparsers, config_opt, json_opt, load
from imapguard.cli.output import print_json, shown
from imapguard.config import Config, redacted_url
from imapguard.errors import StateUnavailable

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: Subparsers) -> None:
    db = sub.add_parser("db", help="the state store's schema (upgrade after installing imapguard)")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("upgrade", "bring the store's schema up to this imapguard's (state.url)"),
        ("current", "the store's schema revision, and this imapguard's"),
        ("check", "exit 0 if the store's schema is this imapguard's, else 1"),
    ):
        p = db_sub.add_parser(name, help=text)
        config_opt(p)
        json_opt(p)


def _password(config: Config) -> str | None:
    from imapguard.state.opening import state_password

    return state_password(config.state)


def _state(revision: str | None) -> str:
    from imapguard.state.versions import HEAD, REVISIONS

    if revision == HEAD:
        return "current"
    if revision is None or revision in REVISIONS:
        return "older"
    return "newer"


def _db(args: argparse.Namespace) -> int:
    from imapguard.state import migrations
    from imapguard.state.versions import HEAD

    config = load(args, check_files=False)
    url = config.state.url
    shown_url = redacted_url(url)
    try:
        if args.action == "upgrade":
            before, after = migrations.upgrade(url, password=_password(config))
        else:
            revision = migrations.current(url, password=_password(config))
    except StateUnavailable as exc:
        raise StateUnavailable(exc.operation, f"{shown_url} (state.url): {exc.detail}") from None
    if args.action == "upgrade":
        if args.json:
            print_json({"url": shown_url, "before": before, "after": after})
        elif before == after:
            print(f"{shown(shown_url)}: already at {shown(after)}")
        else:
            print(
                f"{shown(shown_url)}: upgraded from {shown(before or '(empty)')} to {shown(after)}"
            )
        return EXIT_OK
    state = _state(revision)
    if args.json:
        print_json({"url": shown_url, "revision": revision, "head": HEAD, "state": state})
    elif args.action == "current":
        print(
            f"{shown(shown_url)}: {shown(revision or '(none)')} ({state}; this imapguard: {HEAD})"
        )
    elif state == "older":
        print(
            f"{shown(shown_url)}: schema {shown(revision or '(none)')} is older than {HEAD}:"
            " run `imapguard db upgrade`"
        )
    elif state == "newer":
        print(f"{shown(shown_url)}: schema {shown(revision)} was written by a newer imapguard")
    else:
        print(f"{shown(shown_url)}: schema {HEAD} is current")
    return EXIT_OK if args.action == "current" or state == "current" else EXIT_PROBLEM


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"db": _db}

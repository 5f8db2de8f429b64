"""The `imapguard` console script.

Exit codes: 0 success, 1 the command ran and found a problem, 2 usage or
configuration error, with a message naming the key or argument. Records print
as tables on a terminal, plain tab-separated lines on a pipe, or one JSON
document with `--json`; stored and client-supplied text is escaped
(`output.shown`).

One module per command family, each adding its parsers and naming its
handlers: `run` (demo, serve, check-config), `accounts` (user, app-password,
totp, device), `blocks`, `policy`, `scan`, `events`, `db` (the state
store's schema); what they share is in
`common` (exit codes, options, opening the configuration and stores) and
`output` (escaping, tables, JSON).
"""

from __future__ import annotations

import sys

from imapguard import hangup

# `serve`, `worker` and `portal` reload on SIGHUP; from here on, before the
# imports below and the seconds of their start, a SIGHUP is recorded for their
# handler instead of ending them (`imapguard.hangup`).
if sys.argv[1:2] in (["serve"], ["worker"], ["portal"]):
    hangup.defer()

import argparse
from collections.abc import Callable, Sequence

from imapguard import __version__
from imapguard.cli import accounts, blocks, db, events, policy, run, scan
from imapguard.cli.common import EXIT_PROBLEM, EXIT_USAGE, UsageError
from imapguard.cli.output import shown
from imapguard.errors import ConfigError, ImapguardError, StateError

__all__ = ["main"]

# In this order in `imapguard --help`.
_FAMILIES = (run, accounts, blocks, policy, scan, events, db)
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    name: handler for family in _FAMILIES for name, handler in family.COMMANDS.items()
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imapguard",
        description="A TLS-terminating IMAP gateway that demands a second factor.",
    )
    parser.add_argument("--version", action="version", version=f"imapguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in _FAMILIES:
        family.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        for key, message in exc.problems:
            print(f"config error: {shown(key)}: {shown(message)}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"imapguard: error: {shown(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except StateError as exc:
        print(f"imapguard: state store: {shown(exc)}", file=sys.stderr)
        return EXIT_PROBLEM
    except ImapguardError as exc:
        print(f"imapguard: {shown(exc)}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130

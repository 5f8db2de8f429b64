"""The mail-service scanner: `scan`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from imapguard.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Subparsers,
    UsageError,
    positive_float,
    positive_int,
)
from imapguard.cli.output import shown

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: Subparsers) -> None:
    scan = sub.add_parser(
        "scan",
        help="audit IMAP/POP3/SMTP services: TLS, plaintext authentication, grades, fixes",
        description="Audit hosts, host:port, CIDR ranges or @file of targets (see the "
        "README's scanner section for the checks and the grade table).",
    )
    scan.add_argument("targets", nargs="+", metavar="TARGET")
    scan.add_argument(
        "--ports",
        default=None,
        metavar="LIST",
        help="ports to probe: '143,993' replaces the defaults (143,993,110,995,587,465), "
        "'+25' adds to them; ranges a-b allowed",
    )
    scan.add_argument(
        "--format", choices=("table", "json", "sarif", "html"), default="table", dest="fmt"
    )
    scan.add_argument("--output", "-o", type=Path, default=None, metavar="FILE")
    scan.add_argument(
        "--fail-on",
        default=None,
        metavar="GRADE",
        help="exit 1 when a service grades below GRADE (for CI)",
    )
    scan.add_argument("--concurrency", type=positive_int, default=32, metavar="N")
    scan.add_argument(
        "--per-host",
        type=positive_int,
        default=4,
        metavar="N",
        help="TLS-audit connections at once per address (the mail checks use one)",
    )
    scan.add_argument("--timeout", type=positive_float, default=5.0, metavar="S")
    scan.add_argument(
        "--rate", type=positive_float, default=100.0, metavar="N", help="new connections/s"
    )
    scan.add_argument(
        "--ca-file", type=Path, default=None, metavar="FILE", help="a private CA to trust too"
    )
    scan.add_argument(
        "--server-name",
        default=None,
        metavar="NAME",
        help="the name certificates must match when a target is an address",
    )


def _scan(args: argparse.Namespace) -> int:
    import asyncio
    import warnings

    from imapguard.scanner.grade import GRADES
    from imapguard.scanner.report import progress, render
    from imapguard.scanner.run import ScanOptions, scan
    from imapguard.scanner.targets import TargetError, parse_ports

    fail_on = None
    if args.fail_on is not None:
        fail_on = args.fail_on.strip().upper()
        if fail_on not in GRADES:
            raise UsageError(f"--fail-on: {args.fail_on!r} is not a grade ({', '.join(GRADES)})")
    if args.ca_file is not None:
        from imapguard.scanner.tlsaudit import load_ca_file

        try:
            load_ca_file(args.ca_file)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    try:
        options = ScanOptions(
            ports=parse_ports(args.ports),
            concurrency=args.concurrency,
            per_host=args.per_host,
            timeout=args.timeout,
            rate=args.rate,
            ca_file=args.ca_file,
            server_name=args.server_name,
        )
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    # A progress bar on a terminal (stderr), nothing on a pipe.
    with progress(0, enabled=sys.stderr.isatty()) as bar, warnings.catch_warnings():
        # sslyze's bundled trust store has a certificate with a negative serial.
        warnings.simplefilter("ignore")
        try:
            report = asyncio.run(
                scan(args.targets, options, on_total=bar.set_total, advance=bar.advance)
            )
        except TargetError as exc:
            raise UsageError(str(exc)) from None
    to_file = args.output is not None
    text = render(report, args.fmt, color=not to_file and sys.stdout.isatty())
    if to_file:
        args.output.write_text(text, encoding="utf-8")
        print(f"imapguard: report written to {shown(args.output)}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if fail_on is not None:
        bar_rank = GRADES.index(fail_on)
        below = [s for s in report.services if GRADES.index(s.grade) > bar_rank]
        # A service that could not be fully tested has not shown that it meets the bar.
        unproven = [s for s in report.services if s not in below and not s.complete]
        if below:
            names = ", ".join(f"{s.name} {s.grade}" for s in below)
            print(f"imapguard: below {fail_on}: {shown(names)}", file=sys.stderr)
        if unproven:
            names = ", ".join(s.name for s in unproven)
            print(
                f"imapguard: not fully tested, so not shown to meet {fail_on}: {shown(names)}",
                file=sys.stderr,
            )
        if below or unproven:
            return EXIT_PROBLEM
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"scan": _scan}

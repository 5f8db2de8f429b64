"""The defense's blocks: `blocks list` and `blocks clear`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from imapguard.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Subparsers,
    UsageError,
    config_opt,
    json_opt,
    load,
    open_defense,
)
from imapguard.cli.output import print_json, shown, table, when

if TYPE_CHECKING:
    from imapguard.defense.counters import Target

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: Subparsers) -> None:
    blk = sub.add_parser("blocks", help="current blocks (sources, networks, accounts, passwords)")
    blk_sub = blk.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = blk_sub.add_parser("list", help="every block in force, with its reason and expiry")
    config_opt(p)
    json_opt(p)
    p = blk_sub.add_parser(
        "clear", help="lift one block: an address, a network, or KIND:VALUE as listed"
    )
    p.add_argument("target")
    config_opt(p)
    json_opt(p)


def _target(text: str) -> Target:
    """An address, a network, or KIND:VALUE (as `blocks list` prints it)."""
    import ipaddress

    from imapguard.defense.counters import Target, TargetKind

    try:
        return Target(TargetKind.SOURCE, str(ipaddress.ip_address(text)))
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(text, strict=False)
        return Target(TargetKind.NETWORK, str(network))
    except ValueError:
        pass
    try:
        return Target.parse(text)
    except ValueError as exc:
        raise UsageError(f"target: {exc}") from None


def _blocks(args: argparse.Namespace) -> int:
    config = load(args, check_files=False)
    defense = open_defense(config)
    if args.action == "list":
        blocks = defense.blocks()
        if args.json:
            print_json(
                [
                    {
                        "target": str(b.target),
                        "kind": b.target.kind.value,
                        "value": b.target.value,
                        "reason": b.reason,
                        "level": b.level,
                        "created": b.created,
                        "expires": b.expires,
                    }
                    for b in blocks
                ]
            )
        else:
            table(
                "Blocks",
                ("target", "reason", "level", "since", "until"),
                [
                    (str(b.target), b.reason, str(b.level), when(b.created), when(b.expires))
                    for b in blocks
                ],
            )
        return EXIT_OK
    target = _target(args.target)
    cleared = defense.clear(target)
    if args.json:
        print_json({"target": str(target), "cleared": cleared})
    elif cleared:
        print(f"cleared {shown(target)}")
    else:
        print(f"imapguard: no block on {shown(target)}", file=sys.stderr)
    return EXIT_OK if cleared else EXIT_PROBLEM


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"blocks": _blocks}

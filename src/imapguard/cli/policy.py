"""The access policy: `policy explain` (a decision without a login)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from imapguard.cli.common import (
    EXIT_OK,
    Subparsers,
    UsageError,
    config_opt,
    json_opt,
    load,
    user_name,
)
from imapguard.cli.output import print_json, shown

__all__ = ["COMMANDS", "add_parsers"]


def add_parsers(sub: Subparsers) -> None:
    pol = sub.add_parser("policy", help="the zero-trust access policy")
    pol_sub = pol.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = pol_sub.add_parser(
        "explain", help="evaluate the policy for a login without logging in: decision and rule"
    )
    p.add_argument("--user", required=True, help="the account")
    p.add_argument("--ip", required=True, help="the client's address")
    p.add_argument("--method", help="auth method, e.g. password+totp, oauthbearer, client-cert")
    p.add_argument("--factor", help="the proven factor, e.g. password+totp, oauth-mfa")
    p.add_argument(
        "--cert-subject", metavar="S", help="the client presented a verified certificate (S)"
    )
    p.add_argument("--listener", help="the listener address, as in [[listen]].address")
    config_opt(p)
    json_opt(p)


def _policy(args: argparse.Namespace) -> int:
    import ipaddress

    from imapguard.policy.gate import load_policy

    config = load(args, check_files=False)
    user = user_name(args.user, config)
    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        raise UsageError(f"--ip: not an IP address: {args.ip!r}") from None
    gate, warnings = load_policy(config.policy, config.groups)
    for warning in warnings:
        print(f"warning: {shown(warning)}", file=sys.stderr)
    request = gate.request(
        user,
        args.ip,
        method=args.method,
        factor=args.factor,
        listener=args.listener,
        client_cert=args.cert_subject is not None,
    )
    explanation = gate.explain(request)
    if args.json:
        print_json(explanation.to_dict())
    else:
        for line in explanation.explanation_lines():
            print(shown(line))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"policy": _policy}

"""Running the product: `demo`, `serve`, `portal` and `check-config`.

`check-config` validates the file and the files it names (certificates and
keys included), prints warnings (a certificate expired or expiring within
`tls.EXPIRY_WARNING_DAYS`, weak choices), and with `--connect` tries the
upstream as the gateway would (`gateway.upstream.check_upstream`). Every
problem is one line naming its key; exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from imapguard.audit import RedactingFilter
from imapguard.cli.common import EXIT_OK, Subparsers, config_opt
from imapguard.cli.output import shown
from imapguard.config import Config, default_config_path, load_config
from imapguard.errors import ConfigError

__all__ = ["COMMANDS", "add_parsers", "setup_logging"]


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pymap logs whole protocol lines, credentials included, at DEBUG.
    logging.getLogger("pymap").setLevel(logging.WARNING)


def add_parsers(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="run an all-in-one local demo (no root, no packages)")
    demo.add_argument(
        "--state",
        default="./imapguard-demo",
        metavar="DIR",
        help="where the demo keeps its state (default: ./imapguard-demo)",
    )
    demo.add_argument(
        "--port-base",
        type=int,
        default=10000,
        metavar="N",
        help="ports N+143 (STARTTLS), N+993 (TLS), N+144 (backend); default 10000",
    )

    serve = sub.add_parser("serve", help="run the gateway (and the portal, with [portal])")
    config_opt(serve)

    portal = sub.add_parser("portal", help="run the web portal alone (for a separate host)")
    config_opt(portal)

    worker = sub.add_parser("worker", help="one gateway process (started by serve, not by hand)")
    config_opt(worker)

    check = sub.add_parser("check-config", help="validate the configuration")
    config_opt(check)
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the upstream as the gateway does (TLS, certificate, "
        "master login) and say what fails",
    )


def _demo(args: argparse.Namespace) -> int:
    from imapguard.demo import run_demo

    setup_logging()
    return run_demo(args.state, args.port_base)


def _serve(args: argparse.Namespace) -> int:
    from imapguard.compose import run_gateway

    setup_logging()
    run_gateway(args.config or default_config_path())
    return EXIT_OK


def _worker(args: argparse.Namespace) -> int:
    from imapguard.compose import run_worker

    setup_logging()
    run_worker(args.config or default_config_path())
    return EXIT_OK


def _portal(args: argparse.Namespace) -> int:
    from imapguard.compose import run_portal

    setup_logging()
    run_portal(args.config or default_config_path())
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    from imapguard.policy.gate import load_policy

    path = args.config or default_config_path()
    config = load_config(path)
    _, warnings = load_policy(config.policy, config.groups)
    for warning in [*warnings, *_config_warnings(config)]:
        print(f"warning: {shown(warning)}", file=sys.stderr)
    connected = _connect(config) if args.connect else None
    print(f"{shown(path)}: configuration is valid")
    if connected is not None:
        print(shown(connected))
    return EXIT_OK


def _connect(config: Config) -> str:
    """`--connect`: what the upstream says, as the gateway would find it; a
    failure is a ConfigError naming the setting to look at."""
    import asyncio

    from imapguard.compose import upstream_settings
    from imapguard.gateway.upstream import check_upstream

    found = asyncio.run(check_upstream(upstream_settings(config)))
    if not found.ok:
        raise ConfigError([(found.key, found.message)])
    return found.message


def _config_warnings(config: Config) -> list[str]:
    """Valid choices that weaken something, for check-config to point out."""
    from imapguard.config.files import file_warnings
    from imapguard.tls import client_crl_problems

    warnings: list[str] = file_warnings(config)
    if config.tls.client_crl is not None and config.tls.client_ca is not None:
        warnings += client_crl_problems(config.tls.client_crl, config.tls.client_ca)[1]
    if config.oauth is not None and config.oauth.trust_unverified_email:
        warnings.append(
            "oauth.trust_unverified_email: a token without email_verified logs in as the "
            "account its email claim names; if users can set their own address at the "
            'issuer, anyone can log in as anyone ("nOAuth"). Prefer an issuer that sends '
            "email_verified, or a username_claim that users cannot change themselves"
        )
    portal = config.portal
    if portal is not None and "admin_group" not in portal.model_fields_set:
        groups = config.groups
        if (
            groups is not None
            and groups.groups_file is None
            and (portal.admin_group not in groups.members())
        ):
            warnings.append(
                f"portal.admin_group: no group {portal.admin_group!r} in [groups], "
                "so nobody can open the portal's admin pages"
            )
        elif groups is None:
            warnings.append(
                f"portal.admin_group: there is no [groups] section with {portal.admin_group!r}, "
                "so nobody can open the portal's admin pages"
            )
    return warnings


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _demo,
    "serve": _serve,
    "portal": _portal,
    "worker": _worker,
    "check-config": _check_config,
}

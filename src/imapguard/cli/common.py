"""What every command shares: exit codes, the usage error, the common options,
and opening the configuration, the state store, the keys and the defense (as
the composition root builds them for the gateway).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TypeAlias

from imapguard.config import Config, default_config_path, load_config
from imapguard.errors import ImapguardError

if TYPE_CHECKING:
    from imapguard.compose import Keys
    from imapguard.defense.engine import Defense
    from imapguard.state.portal import PortalStore

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_USAGE",
    "Subparsers",
    "UsageError",
    "config_opt",
    "json_opt",
    "keys",
    "load",
    "open_defense",
    "open_store",
    "positive_float",
    "positive_int",
    "user_name",
]

# What `add_subparsers` returns, to which each command family adds its parsers.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


class UsageError(ImapguardError):
    """A usage error found after argument parsing (exit 2)."""


def config_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="configuration file (default: $IMAPGUARD_CONFIG or ./imapguard.toml)",
    )


def json_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be above 0")
    return value


def load(args: argparse.Namespace, *, check_files: bool = True) -> Config:
    """The configuration named by --config, $IMAPGUARD_CONFIG or the default."""
    return load_config(args.config or default_config_path(), check_files=check_files)


def open_store(config: Config) -> PortalStore:
    """The account store, as the gateway opens it (its schema and the server key
    checked: `compose.account_store`)."""
    from imapguard.compose import account_store

    return account_store(config)


def user_name(raw: str, config: Config) -> str:
    """The account, in the form the gateway keys it by ([auth] username rules)."""
    from imapguard.config import account_names

    user = account_names(config).canonical(raw.encode())
    if user is None:
        raise UsageError(f"invalid user name {raw!r} (see auth.username_chars, auth.realms)")
    return user


def keys(config: Config) -> Keys:
    """The server key and its purpose keys; a problem names `state.key_file`."""
    from imapguard.compose import keys as read_keys

    return read_keys(config)


def open_defense(config: Config) -> Defense:
    """The defense engine on the configured store (the Redis of
    `state.counters_url`, if set), as the gateway builds it."""
    from imapguard.compose import defense
    from imapguard.state.opening import counter_store
    from imapguard.state.redis import open_counters

    counters = open_counters(config.state) if config.state.counters_url else None
    return defense(config, counters or counter_store(open_store(config)), keys(config))

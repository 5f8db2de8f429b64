"""What every command shares: exit codes, the usage error, the common options,
and opening the configuration, the state store, the server key and the defense.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, TypeAlias

from imapguard.config import Config, default_config_path, load_config
from imapguard.errors import ConfigError, ImapguardError

if TYPE_CHECKING:
    from imapguard.defense.engine import Defense
    from imapguard.secret import Secret

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_USAGE",
    "Subparsers",
    "UsageError",
    "config_opt",
    "json_opt",
    "load",
    "open_defense",
    "open_store",
    "positive_float",
    "positive_int",
    "server_key",
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


def open_store(config: Config) -> Any:
    from imapguard.state import open_store as open_state

    return open_state(config.state.url)


def user_name(raw: str, config: Config) -> str:
    """The account, in the form the gateway keys it by ([auth] username rules)."""
    from imapguard.config import account_names

    user = account_names(config).canonical(raw.encode())
    if user is None:
        raise UsageError(f"invalid user name {raw!r} (see auth.username_chars, auth.realms)")
    return user


def server_key(config: Config) -> Secret:
    """The root key (`state.key_file`); a problem with it names that key."""
    from imapguard.keys import load_server_key

    try:
        return load_server_key(config.state.key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError([("state.key_file", str(exc))]) from None


def open_defense(config: Config) -> Defense:
    """The defense engine on the configured store, as the gateway builds it."""
    from imapguard.defense.engine import Defense
    from imapguard.defense.fingerprints import Fingerprinter

    settings = config.defense
    root = server_key(config)
    return Defense(
        settings,
        open_store(config),
        fingerprints=Fingerprinter(root, epoch_seconds=settings.fingerprint_epoch),
    )

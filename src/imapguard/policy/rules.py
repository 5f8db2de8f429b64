"""Group membership for the policy, and the policy's vocabulary in one place.

The `[policy]` / `[groups]` schema, its validation and the groups-file format are
the configuration's (imapguard.config.policy); this module adds `Groups`, the
membership the engine looks users up in, read from the section and its
`groups_file` when the policy is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from imapguard.config.policy import (
    CONDITION_KEYS,
    COUNTRY_CODES,
    IMPLICIT_DENY,
    NO_POLICY,
    UNKNOWN_COUNTRY,
    GroupsConfig,
    PolicyConfig,
    Rule,
    parse_groups_file,
    policy_problems,
    policy_warnings,
)
from imapguard.errors import ConfigError
from imapguard.vocab import (
    FACTOR_STRENGTH,
    FACTORS,
    MAX_STRENGTH,
    METHOD_FACTORS,
    METHODS,
    strength,
)

__all__ = [
    "CONDITION_KEYS",
    "COUNTRY_CODES",
    "FACTORS",
    "FACTOR_STRENGTH",
    "IMPLICIT_DENY",
    "MAX_STRENGTH",
    "METHODS",
    "METHOD_FACTORS",
    "NO_POLICY",
    "UNKNOWN_COUNTRY",
    "Groups",
    "GroupsConfig",
    "PolicyConfig",
    "Rule",
    "parse_groups_file",
    "policy_problems",
    "policy_warnings",
    "strength",
]


class Groups:
    """Group membership, looked up by user (both case-insensitive)."""

    def __init__(self, members: Mapping[str, Iterable[str]] | None = None) -> None:
        by_group: dict[str, set[str]] = {}
        by_user: dict[str, set[str]] = {}
        for group, users in (members or {}).items():
            name = group.lower()
            by_group.setdefault(name, set())
            for user in users:
                by_group[name].add(user.lower())
                by_user.setdefault(user.lower(), set()).add(name)
        self._members = {g: frozenset(u) for g, u in by_group.items()}
        self._of = {u: frozenset(g) for u, g in by_user.items()}

    @classmethod
    def from_config(cls, config: GroupsConfig | None) -> Groups:
        """The section's groups plus those of its `groups_file` (read now).
        Raises ConfigError keyed `groups.groups_file`."""
        if config is None:
            return cls()
        merged: dict[str, set[str]] = {g: set(u) for g, u in config.members().items()}
        if config.groups_file is not None:
            path = config.groups_file
            try:
                text = Path(path).read_text(encoding="utf-8")
            except FileNotFoundError:
                raise ConfigError([("groups.groups_file", f"file not found: {path}")]) from None
            except OSError as exc:
                raise ConfigError(
                    [("groups.groups_file", f"cannot read {path}: {exc.strerror}")]
                ) from None
            except UnicodeDecodeError:
                raise ConfigError([("groups.groups_file", f"{path} is not UTF-8")]) from None
            try:
                parsed = parse_groups_file(text)
            except ValueError as exc:
                raise ConfigError([("groups.groups_file", f"{path}: {exc}")]) from None
            for group, users in parsed.items():
                merged.setdefault(group, set()).update(users)
        return cls(merged)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._members)

    def members(self, group: str) -> frozenset[str]:
        return self._members.get(group.lower(), frozenset())

    def groups_of(self, user: str) -> frozenset[str]:
        return self._of.get(user.lower(), frozenset())

"""The whole file: the `Config` model, reading it, and the rules between sections.

Rules: unknown keys are errors; secrets are only read from `*_file` keys; a
combination that cannot work is an error at load, not a surprise at run time;
every problem is reported with its key path (`upstream.login: ...`), all of them
at once, so `imapguard check-config` can print the whole list. What one section
can check on its own, its model checks; `validate_config` adds what needs
several sections, and the files (imapguard.config.files).
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from pydantic import Field, ValidationError

from imapguard.config.auth import AuthConfig, separator_problem
from imapguard.config.base import Section, problems_of
from imapguard.config.defense import DefenseConfig
from imapguard.config.files import file_problems
from imapguard.config.gateway import (
    LimitsConfig,
    ListenConfig,
    TlsConfig,
    UpstreamConfig,
    parse_address,
)
from imapguard.config.metrics import MetricsConfig
from imapguard.config.notify import NotifyConfig
from imapguard.config.oauth import OAuthConfig
from imapguard.config.policy import GroupsConfig, PolicyConfig, policy_problems
from imapguard.config.portal import PortalConfig
from imapguard.config.server import ServerConfig
from imapguard.config.state import AuditConfig, StateConfig
from imapguard.errors import ConfigError

__all__ = ["Config", "default_config_path", "load_config", "validate_config"]


class Config(Section):
    state: StateConfig = Field(default_factory=StateConfig)
    # How many gateway processes serve this node.
    server: ServerConfig = Field(default_factory=ServerConfig)
    listen: list[ListenConfig] = Field(min_length=1)
    tls: TlsConfig
    upstream: UpstreamConfig
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    oauth: OAuthConfig | None = None
    notify: NotifyConfig | None = None
    # Thresholds, windows, delays and blocks (imapguard.config.defense has every
    # key with the source of its default); absent: the defaults, enforced.
    defense: DefenseConfig = Field(default_factory=DefenseConfig)
    # Ordered zero-trust rules; absent: every authenticated login is allowed.
    policy: PolicyConfig | None = None
    groups: GroupsConfig | None = None
    # The web portal (HTTPS); absent: `serve` runs the gateway only.
    portal: PortalConfig | None = None
    # Prometheus metrics and the load balancer's health check; absent: not served.
    metrics: MetricsConfig | None = None


def default_config_path() -> str:
    return os.environ.get("IMAPGUARD_CONFIG", "./imapguard.toml")


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Read, parse and validate; raise ConfigError with every problem found."""
    try:
        with open(path, "rb") as f:
            raw: dict[str, Any] = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([("--config", f"file not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([("--config", f"cannot read {path}: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("--config", f"invalid TOML in {path}: {exc}")]) from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(problems_of(exc)) from None
    problems = validate_config(config, check_files=check_files)
    if problems:
        raise ConfigError(problems)
    return config


def validate_config(config: Config, *, check_files: bool = True) -> list[tuple[str, str]]:
    """The rules between sections, and (with `check_files`) the files."""
    problems: list[tuple[str, str]] = []
    add = problems.append

    seen: set[tuple[str, int]] = set()
    for i, listener in enumerate(config.listen):
        address = parse_address(listener.address)
        if address in seen:
            add((f"listen[{i}].address", "the same address is listed twice"))
        seen.add(address)

    methods = config.auth.methods
    up = config.upstream
    if up.login == "passthrough" and "app-password" in methods:
        add(
            (
                "upstream.login",
                "'passthrough' logs in with the user's own password, which the gateway never "
                'has with app passwords: use login = "master"',
            )
        )
    separator = separator_problem(up.master_separator, config.auth.username_chars)
    if separator is not None:
        add(separator)
    oauth_methods = [m for m in methods if m in ("oauthbearer", "xoauth2")]
    if oauth_methods and config.oauth is None:
        add(("oauth", f"required by auth.methods {oauth_methods} (issuer, audience)"))
    if oauth_methods and up.login != "master":
        add(
            (
                "upstream.login",
                'OAuth tokens carry no password to log in upstream with: use login = "master"',
            )
        )
    a = config.auth
    if (
        config.oauth is not None
        and a.username_format == "local"
        and not (a.realms or a.default_realm)
    ):
        add(
            (
                "auth.realms",
                'with username_format = "local" and [oauth], list the domains whose '
                "tokens name local accounts (else a token for alice@another.example "
                "could not be told from the local alice, and is refused)",
            )
        )
    if "client-cert" in methods:
        if config.tls.client_ca is None:
            add(("tls.client_ca", 'required by auth.methods "client-cert"'))
        if up.login != "master":
            add(
                (
                    "upstream.login",
                    'a client certificate carries no password: use login = "master" '
                    'with auth.methods "client-cert"',
                )
            )
    if config.policy is not None:
        problems.extend(
            policy_problems(config.policy, listen_addresses=[li.address for li in config.listen])
        )

    if config.portal is not None:
        problems.extend(_portal_problems(config, config.portal))

    if check_files:
        problems.extend(file_problems(config))
    return problems


def _portal_problems(config: Config, portal: PortalConfig) -> list[tuple[str, str]]:
    """[portal] beside the listeners and [groups]."""
    problems: list[tuple[str, str]] = []
    address = parse_address(portal.listen)
    for i, listener in enumerate(config.listen):
        if parse_address(listener.address) == address:
            problems.append(("portal.listen", f"the same address as listen[{i}]"))
    # A group named on purpose must exist; the default "admins" may be absent
    # (check-config warns: nobody reaches the admin pages then). A groups file is
    # read at start, so its groups cannot be checked here.
    groups = config.groups
    named = "admin_group" in portal.model_fields_set
    if named and (
        groups is None or (not groups.groups_file and portal.admin_group not in groups.members())
    ):
        problems.append(("portal.admin_group", f"no group {portal.admin_group!r} in [groups]"))
    if portal.oidc_client_id is not None and config.oauth is None:
        problems.append(
            ("portal.oidc_client_id", "sign-in through OpenID Connect needs [oauth] issuer")
        )
    return problems

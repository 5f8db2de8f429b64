"""The TOML configuration, typed and validated at load.

A leaf: it imports no layer of imapguard, only the shared primitives, and each
layer takes its own typed section (the defense engine a `DefenseConfig`, the
token verifier an `OAuthConfig`, the notifier a `NotifyConfig`, ...).

    base      what every section shares; pydantic errors as (key path, message)
    gateway   [[listen]], [tls], [upstream], [limits]
    auth      [auth]: methods, sufficient factors, the account-name rule
    oauth     [oauth]: the bearer-token issuer
    notify    [notify]: webhook and mail notices
    defense   [defense]: thresholds, windows, delays and blocks
    policy    [policy], [[policy.rules]], [groups] and the groups-file format
    portal    [portal]: the web portal's listener, origin and sessions
    state     [state] and [audit]
    files     the files a configuration names
    load      the whole file: Config, load_config, the rules between sections
"""

from imapguard.config.auth import (
    ALL_FACTORS,
    ALL_METHODS,
    SUPPORTED_METHODS,
    AuthConfig,
    account_names,
)
from imapguard.config.defense import MAX_DELAY, DefenseConfig
from imapguard.config.gateway import (
    LimitsConfig,
    ListenConfig,
    TlsConfig,
    UpstreamConfig,
    parse_address,
)
from imapguard.config.load import Config, default_config_path, load_config, validate_config
from imapguard.config.metrics import MetricsConfig
from imapguard.config.notify import NotifyConfig
from imapguard.config.oauth import OAuthConfig
from imapguard.config.policy import GroupsConfig, PolicyConfig, Rule
from imapguard.config.portal import PortalConfig
from imapguard.config.server import ServerConfig
from imapguard.config.state import AuditConfig, StateConfig, redacted_url

__all__ = [
    "ALL_FACTORS",
    "ALL_METHODS",
    "MAX_DELAY",
    "SUPPORTED_METHODS",
    "AuditConfig",
    "AuthConfig",
    "Config",
    "DefenseConfig",
    "GroupsConfig",
    "LimitsConfig",
    "ListenConfig",
    "MetricsConfig",
    "NotifyConfig",
    "OAuthConfig",
    "PolicyConfig",
    "PortalConfig",
    "Rule",
    "ServerConfig",
    "StateConfig",
    "TlsConfig",
    "UpstreamConfig",
    "account_names",
    "default_config_path",
    "load_config",
    "parse_address",
    "redacted_url",
    "validate_config",
]

"""The TOML configuration, typed and validated at load.

Rules: unknown keys are errors; secrets are only read from `*_file` keys; a
combination that cannot work is an error at load, not a surprise at run time;
every problem is reported with its key path (`upstream.login: ...`), all of them
at once, so `imapguard check-config` can print the whole list.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from imapguard.errors import ConfigError
from imapguard.names import DEFAULT_MASTER_SEPARATOR, DOVECOT_USERNAME_CHARS, AccountNames
from imapguard.net import is_loopback
from imapguard.policy.rules import GroupsConfig, PolicyConfig, policy_problems
from imapguard.secret import Secret
from imapguard.vocab import DEFAULT_SUFFICIENT, FACTORS, METHODS

if TYPE_CHECKING:
    from imapguard.auth.oauth import OAuthSettings
    from imapguard.defense.settings import DefenseSettings
    from imapguard.notify import NotifySettings

__all__ = [
    "SUPPORTED_METHODS",
    "AuditConfig",
    "AuthConfig",
    "Config",
    "LimitsConfig",
    "ListenConfig",
    "NotifyConfig",
    "OAuthConfig",
    "StateConfig",
    "TlsConfig",
    "UpstreamConfig",
    "account_names",
    "default_config_path",
    "defense_settings",
    "load_config",
    "notify_settings",
    "oauth_settings",
    "parse_address",
    "validate_config",
]

# The methods this build can enforce (all of them today; a method named in the
# vocabulary but not built yet would be refused here with its own message).
ALL_METHODS = METHODS
SUPPORTED_METHODS = METHODS
ALL_FACTORS = FACTORS

Seconds = Annotated[float, Field(gt=0, le=86400)]


def _check_method(method: str) -> str:
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(ALL_METHODS)})")
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"method {method!r} is not supported by this build yet")
    return method


Method = Annotated[str, AfterValidator(_check_method)]


def _check_factor(factor: str) -> str:
    if factor not in ALL_FACTORS:
        raise ValueError(f"unknown factor {factor!r} (known: {', '.join(ALL_FACTORS)})")
    return factor


Factor = Annotated[str, AfterValidator(_check_factor)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StateConfig(_Section):
    url: str = "sqlite:///var/lib/imapguard/state.db"
    # 32+ random bytes; app-password hashes are keyed with it. Create it with
    # `head -c 32 /dev/urandom > server.key && chmod 600 server.key`.
    key_file: str = "/etc/imapguard/server.key"


class ListenConfig(_Section):
    address: str
    tls: Literal["implicit", "starttls"]


class TlsConfig(_Section):
    certificate: str
    private_key: str
    min_version: Literal["1.2", "1.3"] = "1.2"
    # Client certificates (requested, not required, so other clients still connect):
    # a certificate that chains to this CA maps to an account by `client_cert_user`.
    client_ca: str | None = None
    # email: the subjectAltName rfc822Name (else the subject emailAddress) is the
    # account; email-local: its part before "@"; cn: the subject commonName.
    client_cert_user: Literal["email", "email-local", "cn"] = "email"
    # Revoked client certificates: PEM CRLs of the client_ca CAs (one or several
    # concatenated), read again on SIGHUP. "leaf" checks the client's certificate,
    # "chain" every CA certificate above it too (each CA then needs a CRL).
    client_crl: str | None = None
    client_crl_check: Literal["leaf", "chain"] = "leaf"


class UpstreamConfig(_Section):
    address: str
    tls: Literal["implicit", "starttls", "none"] = "starttls"
    ca: str | None = None
    # The name the upstream certificate must carry; defaults to the host of `address`.
    server_name: str | None = None
    # Plaintext to a non-loopback upstream needs this spelled out.
    insecure: bool = False
    login: Literal["master", "passthrough"] = "master"
    master_user: str | None = None
    master_password_file: str | None = None
    forward_client_ip: Literal["id", "proxy-v2", "none"] = "id"
    # The upstream's master-user separator (Dovecot's auth_master_user_separator):
    # an account name containing it is refused, whatever `login` is, so that
    # `alice*imapguard` plus a master password never reaches the upstream.
    master_separator: str = DEFAULT_MASTER_SEPARATOR
    connect_timeout: Seconds = 10.0
    login_timeout: Seconds = 30.0


class AuthConfig(_Section):
    methods: list[Method] = Field(default_factory=lambda: ["app-password"])
    # Every failure is answered no sooner than this after the command arrived,
    # plus up to `failure_jitter`: one timing profile for every reason. It rises by
    # itself to the upstream's refusal time; 2 s is Dovecot's default
    # auth_failure_delay, so even the first failures after a start look alike.
    failure_delay: Annotated[float, Field(ge=0, le=30)] = 2.0
    failure_jitter: Annotated[float, Field(ge=0, le=5)] = 0.25
    # Which proven factors let a login in (any one of them suffices).
    sufficient: list[Factor] = Field(default_factory=lambda: list(DEFAULT_SUFFICIENT))
    # A device (account, client /24 or /64, IMAP ID name and version) that proved
    # a code stays trusted this long, for the password followed by that code.
    device_trust_days: Annotated[int, Field(ge=1, le=400)] = 30
    # A pending device approved by its owner is trusted this long, for its exact
    # address and client only (it proved no code).
    approved_device_days: Annotated[int, Field(ge=1, le=400)] = 7
    # Wrong codes after a correct password, per account: past the limit, codes are
    # refused for `totp_lockout` seconds (trusted devices keep working).
    totp_max_failures: Annotated[int, Field(ge=1, le=100)] = 5
    totp_lockout: Seconds = 900.0
    totp_issuer: str = "imapguard"
    # A correct password with no factor from an unknown device of an enrolled
    # account creates a pending device for the owner to approve.
    new_device_approval: bool = True
    # A verified (user, credential, device) is remembered this long (0: never), so
    # that a client opening five connections does not cost five password checks.
    verified_cache_seconds: Annotated[float, Field(ge=0, le=3600)] = 300.0
    # Account names in the upstream's own form (imapguard.names): "full" is
    # Dovecot's %u (the name as given), "local" its %n (the part before "@").
    username_format: Literal["full", "local"] = "full"
    # A name without "@" gets "@default_realm" (Dovecot's auth_default_realm).
    default_realm: str = ""
    # When set, the only domains accepted after "@" (others: no such account).
    realms: list[str] = Field(default_factory=list)
    # The characters an account name may hold (Dovecot's auth_username_chars and
    # its default); "" allows any printable character.
    username_chars: str = DOVECOT_USERNAME_CHARS


class OAuthConfig(_Section):
    issuer: str
    audience: str
    username_claim: str = "email"
    # The token's amr must hold one of these (empty: no requirement)...
    require_amr: list[str] = Field(default_factory=list)
    # ... and its acr must be one of these (empty: no requirement).
    require_acr: list[str] = Field(default_factory=list)
    # A private CA for the issuer's HTTPS (default: the system's trust store).
    ca_file: str | None = None
    leeway: Annotated[float, Field(ge=0, le=300)] = 30.0
    jwks_cache_seconds: Annotated[float, Field(ge=10, le=86400)] = 3600.0
    min_refresh_interval: Annotated[float, Field(ge=1, le=3600)] = 60.0
    http_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    # The scope a client should ask for, told in the RFC 7628 error reply.
    scope: str = "openid email"
    # With username_claim = "email", a token must say "email_verified": true. This
    # accepts one without the claim, for an issuer that never sends it: then the
    # issuer alone must keep users from setting their own address ("nOAuth").
    trust_unverified_email: Annotated[bool, Field(strict=True)] = False


class NotifyConfig(_Section):
    webhook_url: str | None = None
    webhook_secret_file: str | None = None
    webhook_ca_file: str | None = None
    smtp_host: str | None = None
    # Default: 587 (starttls), 465 (implicit), 25 (none).
    smtp_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    smtp_tls: Literal["starttls", "implicit", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password_file: str | None = None
    smtp_ca_file: str | None = None
    mail_from: str | None = None
    # How an account name becomes its owner's address: "{user}" when account
    # names are addresses, or "{user}@example.org".
    owner_address: str = "{user}"
    admin_addresses: list[str] = Field(default_factory=list)
    # Named in the mails ("approve the device in the portal at ...").
    portal_url: str | None = None
    # At most one notice per account and kind in this many seconds.
    min_interval: Annotated[float, Field(ge=0, le=86400 * 7)] = 3600.0
    # And at most this many notices an hour in all (a flood of lockouts must not
    # turn the organisation's relay into a mailer for the attacker).
    max_per_hour: Annotated[int, Field(ge=1, le=100_000)] = 200
    timeout: Annotated[float, Field(gt=0, le=120)] = 10.0


class LimitsConfig(_Section):
    max_line: Annotated[int, Field(ge=1024, le=65536)] = 8192
    max_literal: Annotated[int, Field(ge=256, le=65536)] = 8192
    max_preauth_commands: Annotated[int, Field(ge=3, le=1000)] = 30
    max_bad_commands: Annotated[int, Field(ge=1, le=100)] = 3
    max_auth_failures: Annotated[int, Field(ge=1, le=100)] = 3
    preauth_timeout: Seconds = 60.0
    handshake_timeout: Seconds = 10.0
    # Connections not logged in yet, per source (an IPv4 address or an IPv6 /64)
    # and in total; one over a limit is closed at accept, before TLS.
    max_preauth_per_source: Annotated[int, Field(ge=1)] = 20
    max_preauth_total: Annotated[int, Field(ge=1)] = 2000
    # Of max_preauth_total, slots only familiar sources (defense.trusted_networks,
    # a successful login in the last 24 h) may take. Default: a tenth of it.
    familiar_reserve: Annotated[int, Field(ge=0)] | None = None
    # Concurrent TLS handshakes of unfamiliar sources at most (HAProxy's
    # maxsslconn); under load the limit follows the event loop's lag below it.
    # Default: max_preauth_total.
    max_handshakes: Annotated[int, Field(ge=1)] | None = None
    # SIGTERM: how long established sessions may go on before they are closed.
    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0

    @property
    def reserve(self) -> int:
        """familiar_reserve with its default filled in."""
        if self.familiar_reserve is None:
            return self.max_preauth_total // 10
        return self.familiar_reserve

    @property
    def handshakes(self) -> int:
        """max_handshakes with its default filled in."""
        return self.max_preauth_total if self.max_handshakes is None else self.max_handshakes


class AuditConfig(_Section):
    # "-" writes to standard output.
    path: str = "/var/log/imapguard/audit.jsonl"


class Config(_Section):
    state: StateConfig = Field(default_factory=StateConfig)
    listen: list[ListenConfig] = Field(min_length=1)
    tls: TlsConfig
    upstream: UpstreamConfig
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    oauth: OAuthConfig | None = None
    notify: NotifyConfig | None = None
    # Thresholds, windows, delays and blocks (imapguard.defense.settings has every
    # key with the source of its default); absent: the defaults, enforced.
    defense: dict[str, Any] = Field(default_factory=dict)
    # Ordered zero-trust rules; absent: every authenticated login is allowed.
    policy: PolicyConfig | None = None
    groups: GroupsConfig | None = None


def default_config_path() -> str:
    return os.environ.get("IMAPGUARD_CONFIG", "./imapguard.toml")


def parse_address(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` → (host, port). Raises ValueError with the reason."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [ipv6]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected host:port")
        if ":" in host:
            raise ValueError("write an IPv6 address as [addr]:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid port {port!r}")
    return host, int(port)


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Read, parse and validate; raise ConfigError with every problem found."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([("--config", f"file not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([("--config", f"cannot read {path}: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("--config", f"invalid TOML in {path}: {exc}")]) from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_pydantic_problem(err) for err in exc.errors()]) from None
    problems = validate_config(config, check_files=check_files)
    if problems:
        raise ConfigError(problems)
    return config


def _pydantic_problem(err: object) -> tuple[str, str]:
    from pydantic_core import ErrorDetails

    detail: ErrorDetails = err  # type: ignore[assignment]
    parts: list[str] = []
    for loc in detail["loc"]:
        if isinstance(loc, int):
            parts[-1:] = [f"{parts[-1]}[{loc}]" if parts else f"[{loc}]"]
        else:
            parts.append(str(loc))
    key = ".".join(parts) or "(top level)"
    if detail["type"] == "extra_forbidden":
        return key, "unknown key"
    if detail["type"] == "missing":
        return key, "required key is missing"
    if detail["type"] == "value_error":
        return key, str(detail["msg"]).removeprefix("Value error, ")
    return key, detail["msg"]


def validate_config(config: Config, *, check_files: bool = True) -> list[tuple[str, str]]:
    """Cross-field rules and file checks that a schema cannot express."""
    problems: list[tuple[str, str]] = []
    add = problems.append

    seen: set[tuple[str, int]] = set()
    for i, listener in enumerate(config.listen):
        try:
            host, port = parse_address(listener.address)
            if (host, port) in seen:
                add((f"listen[{i}].address", "the same address is listed twice"))
            seen.add((host, port))
        except ValueError as exc:
            add((f"listen[{i}].address", str(exc)))

    if not config.state.url.startswith("sqlite:///"):
        scheme = config.state.url.partition(":")[0]
        add(
            (
                "state.url",
                f"state store {scheme!r} is not supported by this build (use sqlite:///PATH)",
            )
        )

    methods = config.auth.methods
    if not methods:
        add(("auth.methods", "at least one method is required"))
    for i, method in enumerate(methods):
        if method not in ALL_METHODS:
            add(
                (
                    f"auth.methods[{i}]",
                    f"unknown method {method!r} (known: {', '.join(ALL_METHODS)})",
                )
            )
        elif method not in SUPPORTED_METHODS:
            add((f"auth.methods[{i}]", f"method {method!r} is not supported by this build yet"))
    if len(set(methods)) != len(methods):
        add(("auth.methods", "a method is listed twice"))

    up = config.upstream
    try:
        up_host, _ = parse_address(up.address)
    except ValueError as exc:
        add(("upstream.address", str(exc)))
        up_host = ""
    if up.tls == "none" and up_host and not is_loopback(up_host) and not up.insecure:
        add(
            (
                "upstream.tls",
                "'none' sends passwords in clear to a non-loopback address; "
                "use starttls/implicit or set upstream.insecure = true",
            )
        )
    if up.login == "passthrough" and "app-password" in methods:
        add(
            (
                "upstream.login",
                "'passthrough' logs in with the user's own password, which the gateway never "
                'has with app passwords: use login = "master"',
            )
        )
    if up.login == "master":
        if not up.master_user:
            add(("upstream.master_user", 'required when upstream.login = "master"'))
        if not up.master_password_file:
            add(("upstream.master_password_file", 'required when upstream.login = "master"'))
    if up.forward_client_ip == "proxy-v2":
        add(("upstream.forward_client_ip", "'proxy-v2' is not supported by this build yet"))
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
    if config.oauth is not None:
        try:
            oauth_settings(config.oauth)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if config.tls.client_crl is not None and config.tls.client_ca is None:
        add(("tls.client_crl", "needs tls.client_ca, the CAs whose certificates it revokes"))
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
    for i, factor in enumerate(config.auth.sufficient):
        if factor == "password":
            add(
                (
                    f"auth.sufficient[{i}]",
                    "'password' alone is single-factor; use auth.methods = [\"password\"] "
                    "for an encryption-only rollout instead",
                )
            )
    _check_names(config, add)
    if config.notify is not None:
        _check_notify(config.notify, add)
    if config.policy is not None:
        problems.extend(
            policy_problems(config.policy, listen_addresses=[li.address for li in config.listen])
        )
    try:
        defense_settings(config.defense)
    except ConfigError as exc:
        problems.extend(exc.problems)

    limits = config.limits
    if limits.familiar_reserve is not None and limits.familiar_reserve >= limits.max_preauth_total:
        add(("limits.familiar_reserve", "must be below limits.max_preauth_total"))

    if check_files:
        _check_file(problems, "tls.certificate", config.tls.certificate)
        _check_file(problems, "tls.private_key", config.tls.private_key, secret=True)
        _check_file(problems, "state.key_file", config.state.key_file, secret=True, min_size=32)
        if up.ca is not None:
            _check_file(problems, "upstream.ca", up.ca)
        if up.login == "master" and up.master_password_file:
            _check_file(
                problems, "upstream.master_password_file", up.master_password_file, secret=True
            )
        if config.state.url.startswith("sqlite:///"):
            parent = Path(config.state.url.removeprefix("sqlite://")).parent
            if not parent.is_dir():
                add(("state.url", f"directory {parent} does not exist"))
            _check_private_state(problems, config.state.url.removeprefix("sqlite://"))
        if config.tls.client_ca is not None:
            _check_file(problems, "tls.client_ca", config.tls.client_ca)
        if config.tls.client_crl is not None and config.tls.client_ca is not None:
            from imapguard.tls import client_crl_problems

            bad, _ = client_crl_problems(config.tls.client_crl, config.tls.client_ca)
            problems.extend(("tls.client_crl", message) for message in bad)
        if config.oauth is not None and config.oauth.ca_file is not None:
            _check_file(problems, "oauth.ca_file", config.oauth.ca_file)
        if config.notify is not None:
            for key in ("webhook_secret_file", "smtp_password_file"):
                value = getattr(config.notify, key)
                if value is not None:
                    _check_file(problems, f"notify.{key}", value, secret=True)
            for key in ("webhook_ca_file", "smtp_ca_file"):
                value = getattr(config.notify, key)
                if value is not None:
                    _check_file(problems, f"notify.{key}", value)
        if config.groups is not None and config.groups.groups_file is not None:
            _check_file(problems, "groups.groups_file", config.groups.groups_file)
        if config.audit.path != "-":
            parent = Path(config.audit.path).parent
            if not parent.is_dir():
                add(("audit.path", f"directory {parent} does not exist"))
    return problems


def _check_private_state(problems: list[tuple[str, str]], path: str) -> None:
    """The state database (and its -wal and -shm files, which share its mode) holds
    account names, addresses, devices and keyed password digests: no one but the
    gateway's user may read it. `open_store` creates it 0600; one made by an older
    version, or copied, may be 0644. In a directory that only its owner may enter
    (as `imapguard demo` makes its own) the files are out of others' reach."""
    try:
        if not os.stat(Path(path).parent).st_mode & (stat.S_IXGRP | stat.S_IXOTH):
            return
    except OSError:
        return  # the directory check above reports a missing directory
    for name in (path, path + "-wal", path + "-shm"):
        try:
            mode = os.stat(name).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(("state.url", f"cannot stat {name}: {exc.strerror}"))
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append(
                ("state.url", f"{name} is readable or writable by group or others: chmod 600")
            )


def _check_notify(notify: NotifyConfig, add: Callable[[tuple[str, str]], None]) -> None:
    # Secrets stand in at their minimum size; their files are checked on their own.
    placeholder = Secret(b"x" * 16)
    try:
        notify_settings(notify, webhook_secret=placeholder, smtp_password=placeholder)
    except ConfigError as exc:
        for problem in exc.problems:
            add(problem)


def notify_settings(
    notify: NotifyConfig,
    *,
    webhook_secret: Secret | None = None,
    smtp_password: Secret | None = None,
) -> NotifySettings:
    """The notifier's settings from `[notify]` (raises ConfigError). Without
    explicit secrets, they are read from their `*_file` keys."""
    from imapguard.notify import NotifySettings

    if webhook_secret is None and notify.webhook_secret_file is not None:
        webhook_secret = _read_secret(notify.webhook_secret_file, "notify.webhook_secret_file")
    elif notify.webhook_secret_file is None:
        webhook_secret = None
    if smtp_password is None and notify.smtp_password_file is not None:
        smtp_password = _read_secret(notify.smtp_password_file, "notify.smtp_password_file")
    elif notify.smtp_password_file is None:
        smtp_password = None
    return NotifySettings(
        webhook_url=notify.webhook_url,
        webhook_secret=webhook_secret,
        webhook_ca_file=notify.webhook_ca_file,
        smtp_host=notify.smtp_host,
        smtp_port=notify.smtp_port,
        smtp_tls=notify.smtp_tls,
        smtp_username=notify.smtp_username,
        smtp_password=smtp_password,
        smtp_ca_file=notify.smtp_ca_file,
        mail_from=notify.mail_from,
        owner_address=notify.owner_address,
        admin_addresses=tuple(notify.admin_addresses),
        portal_url=notify.portal_url,
        timeout=notify.timeout,
        min_interval=notify.min_interval,
        max_per_hour=notify.max_per_hour,
    )


def account_names(config: Config) -> AccountNames:
    """The account-name rule of `[auth]` and `[upstream]` (imapguard.names)."""
    a = config.auth
    return AccountNames(
        username_format=a.username_format,
        default_realm=a.default_realm.lower(),
        realms=tuple(r.lower() for r in a.realms),
        username_chars=a.username_chars,
        master_separator=config.upstream.master_separator,
    )


def _check_names(config: Config, add: Callable[[tuple[str, str]], None]) -> None:
    a, separator = config.auth, config.upstream.master_separator
    plain = AccountNames(username_chars="", master_separator="")
    for key, domain in [("auth.default_realm", a.default_realm)] + [
        (f"auth.realms[{i}]", r) for i, r in enumerate(a.realms)
    ]:
        if domain and (plain.canonical_text("x@" + domain) is None or "@" in domain):
            add((key, f"{domain!r} is not a domain name"))
    realms = [r.lower() for r in a.realms]
    if a.default_realm and realms and a.default_realm.lower() not in realms:
        add(("auth.default_realm", "must be one of auth.realms"))
    if not separator or any(c.isspace() or not c.isprintable() for c in separator):
        add(("upstream.master_separator", "must be printable characters without spaces"))
    elif separator.isalnum() or separator in ".-_@":
        add(
            (
                "upstream.master_separator",
                f"{separator!r} is part of ordinary account names; use Dovecot's usual '*'",
            )
        )
    elif a.username_chars and all(c in a.username_chars for c in separator):
        add(("auth.username_chars", f"must not allow the master separator {separator!r}"))
    if a.username_chars and any(c.isspace() or not c.isprintable() for c in a.username_chars):
        add(("auth.username_chars", "must be printable characters without spaces"))
    if "@" not in a.username_chars and a.username_chars and (a.realms or a.default_realm):
        add(("auth.username_chars", "realms need '@' in the allowed characters"))


def oauth_settings(oauth: OAuthConfig) -> OAuthSettings:
    """The token verifier's settings from `[oauth]` (raises ConfigError)."""
    from imapguard.auth.oauth import OAuthSettings

    return OAuthSettings(
        issuer=oauth.issuer,
        audience=oauth.audience,
        username_claim=oauth.username_claim,
        require_amr=tuple(oauth.require_amr),
        require_acr=tuple(oauth.require_acr),
        leeway=oauth.leeway,
        jwks_cache_seconds=oauth.jwks_cache_seconds,
        min_refresh_interval=oauth.min_refresh_interval,
        http_timeout=oauth.http_timeout,
        ca_file=oauth.ca_file,
        trust_unverified_email=oauth.trust_unverified_email,
    )


def defense_settings(section: dict[str, Any]) -> DefenseSettings:
    """`[defense]` as DefenseSettings (raises ConfigError naming each bad key)."""
    from dataclasses import fields

    from imapguard.defense.settings import DefenseSettings, SettingsError

    known = {f.name for f in fields(DefenseSettings)}
    problems: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in known:
            problems.append((f"defense.{key}", "unknown key"))
            continue
        default = getattr(DefenseSettings, key, None)
        if key in ("trusted_networks", "allowlist"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append((f"defense.{key}", "must be a list of networks"))
                continue
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                problems.append((f"defense.{key}", "must be true or false"))
                continue
        elif isinstance(default, int | float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append((f"defense.{key}", "must be a number"))
                continue
            if isinstance(default, int) and not isinstance(value, int):
                problems.append((f"defense.{key}", "must be a whole number"))
                continue
        values[key] = value
    if problems:
        raise ConfigError(problems)
    try:
        return DefenseSettings(**values)
    except SettingsError as exc:
        raise ConfigError([(f"defense.{key}", message) for key, message in exc.problems]) from None


def _read_secret(path: str, key: str) -> Secret:
    try:
        return Secret.from_file(path)
    except OSError as exc:
        raise ConfigError([(key, f"cannot read {path}: {exc.strerror}")]) from None


def _check_file(
    problems: list[tuple[str, str]], key: str, path: str, *, secret: bool = False, min_size: int = 1
) -> None:
    try:
        info = os.stat(path)
        with open(path, "rb") as f:
            size = len(f.read(min_size))
    except FileNotFoundError:
        problems.append((key, f"file not found: {path}"))
        return
    except OSError as exc:
        problems.append((key, f"cannot read {path}: {exc.strerror}"))
        return
    if not stat.S_ISREG(info.st_mode):
        problems.append((key, f"not a regular file: {path}"))
    elif size < min_size:
        problems.append((key, f"{path} must hold at least {min_size} bytes"))
    elif secret and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) & ~stat.S_IRGRP:
        problems.append((key, f"{path} is readable or writable by others: chmod 600 (or 640)"))

"""`[auth]`: which login methods the gateway offers, which factors let a login
in, and the account-name rule (imapguard.names)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from imapguard.config.base import Seconds, Section, raise_problems
from imapguard.names import DOVECOT_USERNAME_CHARS, AccountNames
from imapguard.vocab import DEFAULT_SUFFICIENT, FACTORS, METHODS

if TYPE_CHECKING:
    from imapguard.config.load import Config

__all__ = [
    "ALL_FACTORS",
    "ALL_METHODS",
    "SUPPORTED_METHODS",
    "AuthConfig",
    "Factor",
    "Method",
    "account_names",
]

# The methods this build can enforce (all of them today; a method named in the
# vocabulary but not built yet would be refused here with its own message).
ALL_METHODS = METHODS
SUPPORTED_METHODS = METHODS
ALL_FACTORS = FACTORS


def check_method(method: str) -> str:
    """A method name of imapguard.vocab (ValueError naming the known ones)."""
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(ALL_METHODS)})")
    return method


def _check_supported(method: str) -> str:
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"method {method!r} is not supported by this build yet")
    return method


def check_factor(factor: str) -> str:
    """A factor name of imapguard.vocab (ValueError naming the known ones)."""
    if factor not in ALL_FACTORS:
        raise ValueError(f"unknown factor {factor!r} (known: {', '.join(ALL_FACTORS)})")
    return factor


#: A method `auth.methods` may offer: known and built.
Method = Annotated[str, AfterValidator(check_method), AfterValidator(_check_supported)]
Factor = Annotated[str, AfterValidator(check_factor)]


class AuthConfig(Section):
    section_key = "auth"

    # The login methods offered: app-password, password+totp, oauthbearer, xoauth2, client-cert
    # (IMAP's AUTHENTICATE and LOGIN carry them).
    methods: list[Method] = Field(default_factory=lambda: ["app-password"])
    # Every failure is answered no sooner than this after the command arrived,
    # plus up to `failure_jitter`: one timing profile for every reason. It rises by
    # itself to the upstream's refusal time; 2 s is Dovecot's default
    # auth_failure_delay, so even the first failures after a start look alike.
    failure_delay: Annotated[float, Field(ge=0, le=30)] = 2.0
    # Up to this many seconds added at random to `failure_delay`.
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
    # Seconds codes stay refused after `totp_max_failures`.
    totp_lockout: Seconds = 900.0
    # The issuer name authenticator apps show beside the account.
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

    @model_validator(mode="after")
    def _consistent(self) -> AuthConfig:
        problems: list[tuple[str, str]] = []
        add = problems.append
        if not self.methods:
            add(("methods", "at least one method is required"))
        if len(set(self.methods)) != len(self.methods):
            add(("methods", "a method is listed twice"))
        for i, factor in enumerate(self.sufficient):
            if factor == "password":
                add(
                    (
                        f"sufficient[{i}]",
                        "'password' alone is single-factor; use auth.methods = [\"password\"] "
                        "for an encryption-only rollout instead",
                    )
                )
        plain = AccountNames(username_chars="", master_separator="")
        for key, domain in [("default_realm", self.default_realm)] + [
            (f"realms[{i}]", r) for i, r in enumerate(self.realms)
        ]:
            if domain and (plain.canonical_text("x@" + domain) is None or "@" in domain):
                add((key, f"{domain!r} is not a domain name"))
        realms = [r.lower() for r in self.realms]
        if self.default_realm and realms and self.default_realm.lower() not in realms:
            add(("default_realm", "must be one of auth.realms"))
        chars = self.username_chars
        if chars and any(c.isspace() or not c.isprintable() for c in chars):
            add(("username_chars", "must be printable characters without spaces"))
        if "@" not in chars and chars and (self.realms or self.default_realm):
            add(("username_chars", "realms need '@' in the allowed characters"))
        raise_problems(problems)
        return self


def separator_problem(separator: str, username_chars: str) -> tuple[str, str] | None:
    """Why `auth.username_chars` cannot work with `upstream.master_separator`, if it cannot."""
    if username_chars and all(c in username_chars for c in separator):
        return ("auth.username_chars", f"must not allow the master separator {separator!r}")
    return None


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

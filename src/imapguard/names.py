"""Account names: the one rule that turns what a client typed into an account.

Everything the gateway counts, trusts, decides and logs per account is keyed by
the name this module returns, and the upstream is asked for exactly that name.
So the name must be the upstream's own: if Dovecot strips the domain
(`auth_username_format = %n`), `alice@h0.example` and `alice@h1.example` are
both alice upstream, and must be one account here too, or an attacker gets a
fresh per-account counter with every domain he makes up. And a name the
upstream reads specially must never reach it: with
`auth_master_user_separator = *`, `alice*imapguard` is a master-user login as
alice, whatever the gateway believes the account is.

The rule, in order (any failure: no account, and the login gets the uniform
failure):

1. UTF-8, 1 to 255 bytes (RFC 5321's limit on a mailbox);
2. never: control characters (C0, DEL, C1), format characters (the bidi
   overrides U+202A-U+202E and U+2066-U+2069 among them), whitespace, `"` and
   `\\`, and the upstream's master-user separator;
3. when `username_chars` is set (the default is Dovecot's own default
   `auth_username_chars`), only those characters;
4. lower case (accounts compare case-insensitively);
5. the realm: at most one `@`; `realms`, when set, lists the domains accepted
   after it; a bare name gets `@default_realm` when one is set (Dovecot's
   `auth_default_realm`); with `username_format = "local"` (Dovecot's `%n`) the
   domain is then dropped.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MASTER_SEPARATOR",
    "DEFAULT_NAMES",
    "DOVECOT_USERNAME_CHARS",
    "MAX_USER_BYTES",
    "AccountNames",
    "canonical_user",
    "printable",
    "well_formed",
]

# RFC 5321's limit on a mailbox (local@domain); longer names are no account.
MAX_USER_BYTES = 255
# Dovecot's default auth_username_chars (doc/example-config/conf.d/10-auth.conf).
DOVECOT_USERNAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@"
# Dovecot's usual auth_master_user_separator.
DEFAULT_MASTER_SEPARATOR = "*"


def printable(text: str) -> bool:
    """No control, format (bidi), separator or unassigned character: what can be
    shown in a log line or a terminal as it is."""
    if text.isascii():
        # Every account name a login carries, nearly: printable ASCII has no
        # format character and no space but " ", so one pass in C decides.
        return text.isprintable() and " " not in text
    return all(
        c.isprintable() and not c.isspace() and unicodedata.category(c) != "Cf" for c in text
    )


def well_formed(text: str) -> bool:
    """What every account name is before any configured rule: 1 to
    `MAX_USER_BYTES` bytes of UTF-8 (no lone surrogate, which JSON can carry),
    printable, no `"` or `\\`."""
    if not text or not printable(text) or '"' in text or "\\" in text:
        return False
    try:
        return len(text.encode("utf-8")) <= MAX_USER_BYTES
    except UnicodeEncodeError:
        return False


@dataclass(frozen=True)
class AccountNames:
    """The configured rule ([auth] username_format, default_realm, realms,
    username_chars; [upstream] master_separator). The defaults accept what
    Dovecot's defaults accept."""

    username_format: str = "full"  # "full" (%u) | "local" (%n)
    default_realm: str = ""
    realms: tuple[str, ...] = ()
    username_chars: str = DOVECOT_USERNAME_CHARS
    master_separator: str = DEFAULT_MASTER_SEPARATOR

    def canonical(self, raw: bytes) -> str | None:
        """The account `raw` names, in the upstream's form; None if it names none."""
        if not raw or len(raw) > MAX_USER_BYTES:
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return self.canonical_text(text)

    def canonical_text(self, text: str) -> str | None:
        if not well_formed(text):
            return None
        if self.master_separator and self.master_separator in text:
            return None
        if self.username_chars and any(c not in self.username_chars for c in text):
            return None
        name = text.lower()
        local, at, domain = name.partition("@")
        if not local or "@" in domain or (at and not domain):
            return None
        if not at and self.default_realm:
            domain = self.default_realm.lower()
        if at and self.realms and domain not in self.realms:
            return None
        if self.username_format == "local":
            return local
        return f"{local}@{domain}" if domain else local

    def canonical_identity(self, text: str) -> str | None:
        """The account an identity provider's claim (an OAuth token's or an ID
        token's e-mail) names. Unlike a typed name, the claim's domain is the
        provider's word about *who* this is: with `username_format = "local"` a
        domain is dropped only when it is one of ours (`realms`, or
        `default_realm`), else `alice@elsewhere.example` (a guest account at
        the provider) would open the local alice. A claim without a domain is
        taken as `canonical_text` takes it."""
        name = self.canonical_text(text)
        if name is None or self.username_format != "local" or "@" not in text:
            return name
        domain = text.lower().rpartition("@")[2]
        ours = self.realms or ((self.default_realm.lower(),) if self.default_realm else ())
        return name if domain in ours else None


#: The rule with every setting at its default (Dovecot's own defaults): for names
#: read where no configuration applies, such as a client certificate's account
#: before the auth service applies the configured rule.
DEFAULT_NAMES = AccountNames()


def canonical_user(raw: bytes) -> str | None:
    """The account `raw` names under the default rule."""
    return DEFAULT_NAMES.canonical(raw)

"""The words every layer shares: login methods, the factors a login can prove,
and how strong each factor is.

A *method* is how a client logs in (the IMAP command and what it carries); a
*factor* is what the login proved once it succeeded. `password` is a method
whose login may end up proving `password`, `trusted-device`, `password+totp`
or `password+client-cert`, depending on what came with it. The configuration
(`auth.methods`, `auth.sufficient`), the policy (`methods`, `factors`,
`require_strength`) and the audit log use exactly these names.
"""

# ruff: noqa: S105  (method and factor names, not passwords)
from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "DEFAULT_SUFFICIENT",
    "FACTORS",
    "FACTOR_STRENGTH",
    "MAX_STRENGTH",
    "METHODS",
    "METHOD_FACTORS",
    "Factor",
    "Method",
    "strength",
]


class Method(enum.StrEnum):
    """How a client logs in."""

    APP_PASSWORD = "app-password"  # LOGIN / AUTHENTICATE PLAIN with a device password
    PASSWORD = "password"  # the account's primary password (a code or device may come with it)
    PASSWORD_TOTP = "password+totp"  # the password with a one-time code appended
    OAUTHBEARER = "oauthbearer"  # AUTHENTICATE OAUTHBEARER (RFC 7628)
    XOAUTH2 = "xoauth2"  # AUTHENTICATE XOAUTH2 (Google's and Microsoft's older mechanism)
    CLIENT_CERT = "client-cert"  # AUTHENTICATE EXTERNAL with a TLS client certificate


class Factor(enum.StrEnum):
    """What a successful login proved."""

    APP_PASSWORD = "app-password"
    PASSWORD_TOTP = "password+totp"
    TRUSTED_DEVICE = "trusted-device"
    OAUTH_MFA = "oauth-mfa"
    OAUTH = "oauth"
    CLIENT_CERT = "client-cert"
    PASSWORD_CLIENT_CERT = "password+client-cert"
    PASSWORD = "password"


METHODS: tuple[str, ...] = tuple(m.value for m in Method)

# How hard a factor is for an attacker of an IMAP door to get, weakest first.
#
# 1  one secret an attacker can guess, spray, phish or reuse from another breach:
#    "password"; "oauth", a token whose claims show no MFA, is a password sign-in
#    at the IdP.
# 2  "trusted-device": the primary password from a device that proved a code
#    within auth.device_trust_days. The binding (client /24 or /64, IMAP ID) is
#    not a secret: anyone on that network with that client name shares it.
# 3  what MFA buys, one way or another: "password+totp" (two factors, but the
#    code is phishable in real time); "oauth-mfa" (the IdP asserts MFA);
#    "app-password" (>= 128 random bits, so no guessing, spraying or reuse;
#    per device and revocable; minted only behind MFA in the portal or by an
#    admin; never typed into a web page — a single bearer secret, so not 4);
#    "client-cert" (a possession factor bound to the TLS handshake: it cannot
#    be phished or replayed, but it is one factor).
# 4  two independent factors, one of them phishing-resistant:
#    "password+client-cert".
# 0 is "nothing proven yet" (an unknown name counts as nothing).
FACTOR_STRENGTH: Mapping[str, int] = MappingProxyType(
    {
        Factor.PASSWORD.value: 1,
        Factor.OAUTH.value: 1,
        Factor.TRUSTED_DEVICE.value: 2,
        Factor.APP_PASSWORD.value: 3,
        Factor.PASSWORD_TOTP.value: 3,
        Factor.OAUTH_MFA.value: 3,
        Factor.CLIENT_CERT.value: 3,
        Factor.PASSWORD_CLIENT_CERT.value: 4,
    }
)
FACTORS: tuple[str, ...] = tuple(FACTOR_STRENGTH)
MAX_STRENGTH = max(FACTOR_STRENGTH.values())

# Which proofs are enough when `auth.sufficient` is not set: every factor of
# strength 2 or more. "password" alone (and "oauth" without MFA) is one guessable
# secret, never a default.
DEFAULT_SUFFICIENT: tuple[str, ...] = (
    Factor.APP_PASSWORD.value,
    Factor.PASSWORD_TOTP.value,
    Factor.TRUSTED_DEVICE.value,
    Factor.OAUTH_MFA.value,
    Factor.CLIENT_CERT.value,
    Factor.PASSWORD_CLIENT_CERT.value,
)

# What a login by each method can end up proving (for `policy explain` without a
# factor). The chokepoint reports password logins as method "password" whatever
# the code or device: restrict second factors with `factors`, not `methods`.
METHOD_FACTORS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        Method.APP_PASSWORD.value: (Factor.APP_PASSWORD.value,),
        Method.PASSWORD.value: (
            Factor.PASSWORD.value,
            Factor.TRUSTED_DEVICE.value,
            Factor.PASSWORD_TOTP.value,
            Factor.PASSWORD_CLIENT_CERT.value,
        ),
        Method.PASSWORD_TOTP.value: (Factor.TRUSTED_DEVICE.value, Factor.PASSWORD_TOTP.value),
        Method.OAUTHBEARER.value: (Factor.OAUTH.value, Factor.OAUTH_MFA.value),
        Method.XOAUTH2.value: (Factor.OAUTH.value, Factor.OAUTH_MFA.value),
        Method.CLIENT_CERT.value: (Factor.CLIENT_CERT.value,),
    }
)


def strength(factor: str | None) -> int:
    """The strength of a proven factor (0: none proven, or a name we do not know)."""
    if factor is None:
        return 0
    return FACTOR_STRENGTH.get(factor, 0)

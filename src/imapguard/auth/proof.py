"""Which factor a login proved, and whether that is enough: decided here, and
only here.

A login proves one factor (the names of `imapguard.vocab.Factor`): an app
password, a token with or without MFA claims, a client certificate, or the
primary password together with whatever came with it (a one-time code, the
account's own client certificate, a trusted device). `auth.sufficient` lists the
factors that let a login in; the `password` method, when an administrator
enables it, lets the password alone in. The policy then has its word on what is
sufficient (`imapguard.policy`), under the method name the factor came through.
"""

from __future__ import annotations

from collections.abc import Collection

from imapguard.vocab import Factor, Method

__all__ = ["bearer_factor", "password_factor", "policy_method", "shortfall"]


def password_factor(
    *, code_accepted: bool, own_certificate: bool, trusted_device: bool
) -> Factor | None:
    """What a right password proved with what came with it, strongest first:
    a one-time code accepted now, then the account's own client certificate,
    then a trusted device (None: the password alone)."""
    if code_accepted:
        return Factor.PASSWORD_TOTP
    if own_certificate:
        return Factor.PASSWORD_CLIENT_CERT
    if trusted_device:
        return Factor.TRUSTED_DEVICE
    return None


def bearer_factor(mfa: bool) -> Factor:
    """A verified token proves MFA only when its claims say so (amr/acr)."""
    return Factor.OAUTH_MFA if mfa else Factor.OAUTH


def shortfall(factor: str, sufficient: Collection[str]) -> str | None:
    """Why a login that proved `factor` may not go in (None: it may)."""
    if factor in sufficient or factor == Factor.PASSWORD:
        # "password" is proven only through the `password` method, which exists
        # to let the password alone in where an administrator enables it.
        return None
    if factor == Factor.OAUTH:
        return "token without the required MFA claims (amr/acr)"
    return f"{factor} is not sufficient (auth.sufficient)"


# The auth.methods name each password factor came through, for policy `methods`.
_POLICY_METHOD = {
    Factor.PASSWORD_TOTP.value: Method.PASSWORD_TOTP.value,
    Factor.TRUSTED_DEVICE.value: Method.PASSWORD_TOTP.value,
    Factor.PASSWORD_CLIENT_CERT.value: Method.CLIENT_CERT.value,
}


def policy_method(factor: str, method: str) -> str:
    """The method a policy `methods` condition sees for this login."""
    return _POLICY_METHOD.get(factor, method)

"""`[oauth]`: the issuer whose bearer tokens count as a login (OAUTHBEARER, XOAUTH2).

One set of bounds, the stricter of the two the code had before: the key set is
kept 10 s to a day, refetched at most once every 1 s to an hour, and each fetch
from the issuer takes at most a minute."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, StrictBool, model_validator

from imapguard.config.base import Section, raise_problems

__all__ = ["DEFAULT_ALGORITHMS", "SUPPORTED_ALGORITHMS", "OAuthConfig", "discovery_url"]

#: The JWS algorithms the token verifier can check (imapguard.auth.oauth matches
#: each to the key type it needs). Asymmetric only: an HMAC algorithm would need a
#: secret shared with the issuer, and `none` is no signature.
SUPPORTED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
#: Accepted unless `algorithms` says otherwise: all of them but ES512 (P-521, which
#: issuers rarely use), the list accepted before `algorithms` could be set.
DEFAULT_ALGORITHMS = tuple(alg for alg in SUPPORTED_ALGORITHMS if alg != "ES512")


def discovery_url(issuer: str) -> str:
    """OpenID Connect Discovery 1.0 §4: the issuer without a trailing slash, then
    `/.well-known/openid-configuration`."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


class OAuthConfig(Section):
    """Durations are seconds. `ca_file` replaces the system trust store for the
    issuer's HTTPS (a private CA); without it the usual public CAs are trusted."""

    section_key = "oauth"

    # The OpenID provider's issuer URL (its discovery document and keys are fetched from it over
    # HTTPS).
    issuer: str
    # The `aud` a token must carry: the client id the IMAP tokens are issued for.
    audience: str
    # The token claim that names the account (email, preferred_username, sub ...).
    username_claim: str = "email"
    # The token's amr must hold one of these (empty: no requirement)...
    require_amr: tuple[str, ...] = ()
    # ... and its acr must be one of these (empty: no requirement).
    require_acr: tuple[str, ...] = ()
    # A private CA for the issuer's HTTPS (default: the system's trust store).
    ca_file: str | None = None
    # Seconds of clock difference tolerated on exp, nbf and iat.
    leeway: Annotated[float, Field(ge=0, le=300)] = 30.0
    # How long the provider's signing keys are cached.
    jwks_cache_seconds: Annotated[float, Field(ge=10, le=86400)] = 3600.0
    # An unknown key id refetches the keys at most this often (seconds), so forged key ids cannot
    # make the gateway hammer the provider.
    min_refresh_interval: Annotated[float, Field(ge=1, le=3600)] = 60.0
    # Seconds for each HTTPS request to the provider.
    http_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    # The scope a client should ask for, told in the RFC 7628 error reply.
    scope: str = "openid email"
    # The JWS algorithms a token may be signed with (a subset of SUPPORTED_ALGORITHMS).
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    # With username_claim = "email", a token must say "email_verified": true. This
    # accepts one without the claim, for an issuer that never sends it: then the
    # issuer alone must keep users from setting their own address ("nOAuth").
    trust_unverified_email: StrictBool = False

    @model_validator(mode="after")
    def _consistent(self) -> OAuthConfig:
        problems: list[tuple[str, str]] = []

        def bad(key: str, message: str) -> None:
            problems.append((key, message))

        url = urlsplit(self.issuer)
        if url.scheme != "https" or not url.hostname:
            bad("issuer", "must be an https:// URL")
        elif url.query or url.fragment:
            bad("issuer", "must have no query or fragment (OpenID Connect Discovery §2)")
        if not self.audience:
            bad("audience", "must not be empty")
        if not self.username_claim:
            bad("username_claim", "must not be empty")
        if self.trust_unverified_email and self.username_claim != "email":
            bad("trust_unverified_email", 'applies only to username_claim = "email"')
        for key, values in (("require_amr", self.require_amr), ("require_acr", self.require_acr)):
            if not all(values):
                bad(key, "must be a list of non-empty strings")
        if not self.algorithms:
            bad("algorithms", "must not be empty")
        for alg in self.algorithms:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                bad("algorithms", f"{alg} is refused: only asymmetric signatures prove the issuer")
            elif alg not in SUPPORTED_ALGORITHMS:
                bad("algorithms", f"{alg} is not one of {', '.join(SUPPORTED_ALGORITHMS)}")
        raise_problems(problems)
        return self

    @property
    def discovery_url(self) -> str:
        return discovery_url(self.issuer)

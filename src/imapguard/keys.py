"""The server key and the purpose keys derived from it.

One secret file (`state.key_file`, at least 32 random bytes) is the root; each
use gets its own key, HMAC-SHA-256(root, "imapguard/<purpose>"), so a key leaked
from one use says nothing about another.
"""

from __future__ import annotations

import hashlib
import hmac

from imapguard.secret import Secret

__all__ = [
    "APP_PASSWORD",
    "DEVICE_SECRET",
    "GATE_TURNS",
    "PASSWORD_FINGERPRINT",
    "PORTAL_CSRF",
    "PORTAL_INVITE",
    "PORTAL_SESSION",
    "RECOVERY_CODE",
    "SPRAY_FINGERPRINT",
    "STORE_KEY_CHECK",
    "TOTP_SEAL",
    "VERIFIED_CACHE",
    "derive_key",
    "load_server_key",
]

APP_PASSWORD = "app-password/v1"  # noqa: S105 - a key purpose label
TOTP_SEAL = "totp-seal/v1"
# Keys the in-memory cache of verified (user, device, password) entries.
VERIFIED_CACHE = "verified-cache/v1"
# Digests of the code a trusted device proved (its secret: it sends it again).
DEVICE_SECRET = "device-secret/v1"  # noqa: S105 - a key purpose label
# Defense fingerprints of wrong passwords (imapguard.defense.fingerprints): per
# account, and login-free with a key per epoch derived from this one.
PASSWORD_FINGERPRINT = "password-fingerprint/v1"  # noqa: S105 - a key purpose label
SPRAY_FINGERPRINT = "spray-fingerprint/v1"
# The portal: digests of session cookie tokens (the store keeps only these), its
# CSRF tokens (bound to a cookie token), digests of invitation links and of
# recovery codes.
PORTAL_SESSION = "portal-session/v1"
PORTAL_CSRF = "portal-csrf/v1"
PORTAL_INVITE = "portal-invite/v1"
RECOVERY_CODE = "recovery-code/v1"
# The check value a store keeps of the key its secrets are sealed with
# (imapguard.state.keycheck): a wrong key file is found at start.
STORE_KEY_CHECK = "store-key-check/v1"
# Which byte of the gate's lock file a (source, account) pair locks
# (imapguard.state.sqlite.turns): not one an attacker can aim at.
GATE_TURNS = "gate-turns/v1"
MIN_KEY_BYTES = 32


def load_server_key(path: str) -> Secret:
    """The root key from `state.key_file`; ValueError if it is too short."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < MIN_KEY_BYTES:
        raise ValueError(f"{path} must hold at least {MIN_KEY_BYTES} bytes")
    return Secret(data)


def derive_key(root: Secret, purpose: str) -> bytes:
    """The 32-byte key of `purpose`. A root shorter than MIN_KEY_BYTES is refused:
    every derived key would be as weak as it."""
    if len(root) < MIN_KEY_BYTES:
        raise ValueError(f"a root key has at least {MIN_KEY_BYTES} bytes")
    return hmac.new(root.reveal(), b"imapguard/" + purpose.encode(), hashlib.sha256).digest()

"""Device app passwords: generation, normal form and keyed hash.

An app password is 28 characters from a 32-symbol alphabet with no look-alikes
(no 0/o, 1/l), shown in seven groups of four: 140 bits, easy to type on a phone.
It is stored only as HMAC-SHA-256 under a key derived from the server key, with
the user name in the message, so a digest is useless without the key and cannot
be replayed for another account. Its entropy makes a slow hash pointless and
keeps the check at about 2 µs: nothing a flood of logins can exhaust.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from imapguard.secret import Secret

__all__ = ["ALPHABET", "LENGTH", "digest", "generate", "normalize"]

ALPHABET = "23456789abcdefghijkmnpqrstuvwxyz"
LENGTH = 28
GROUP = 4


def generate() -> Secret:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    return Secret("-".join(raw[i : i + GROUP] for i in range(0, LENGTH, GROUP)))


def normalize(candidate: Secret) -> bytes | None:
    """The app password in normal form, or None when `candidate` cannot be one.

    Case, dashes and spaces do not matter (people type them from a screen)."""
    text = candidate.reveal().replace(b"-", b"").replace(b" ", b"").lower()
    if len(text) != LENGTH or text.strip(ALPHABET.encode()):
        return None
    return text


def digest(key: bytes, user: str, normalized: bytes) -> bytes:
    return hmac.new(key, user.encode() + b"\0" + normalized, hashlib.sha256).digest()

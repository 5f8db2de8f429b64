"""Recovery codes: the way back in when the phone with the authenticator app is
lost. A set of `COUNT` codes is shown once; each works once, as the second
factor of a portal sign-in, after the account's password.

A code is 10 characters of the Crockford base32 alphabet (50 bits: no online
guessing gets near it behind the defense's limits) shown as two groups of
five; typing is forgiving (case, spaces, dashes, and the letters Crockford maps
to digits: I and L to 1, O to 0). The store keeps HMAC-SHA-256(key, account NUL
code) only, so a copy of the database gives neither the codes nor a way to test
guesses offline without the server key, and a code of one account is worth
nothing for another.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from imapguard.secret import Secret

__all__ = ["COUNT", "digest", "generate", "normalize", "shown"]

COUNT = 10
LENGTH = 10
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
_TYPED = str.maketrans({"I": "1", "L": "1", "O": "0"})


def generate(count: int = COUNT) -> list[Secret]:
    """`count` new codes, normalized (what `normalize` makes of a typed one)."""
    return [
        Secret("".join(secrets.choice(ALPHABET) for _ in range(LENGTH)).encode())
        for _ in range(count)
    ]


def shown(code: Secret) -> str:
    """A code as the page shows it once: "ABCDE-12345"."""
    text = code.reveal().decode("ascii")
    return f"{text[:5]}-{text[5:]}"


def normalize(typed: Secret) -> Secret | None:
    """The code as stored, from what a person typed; None if it cannot be one."""
    try:
        text = typed.reveal().decode("ascii")
    except UnicodeDecodeError:
        return None
    text = "".join(text.split()).replace("-", "").upper().translate(_TYPED)
    if len(text) != LENGTH or any(c not in ALPHABET for c in text):
        return None
    return Secret(text.encode("ascii"))


def digest(key: bytes, user: str, code: Secret) -> bytes:
    """What the store keeps of a normalized code of `user`."""
    return hmac.new(key, user.encode() + b"\0" + code.reveal(), hashlib.sha256).digest()

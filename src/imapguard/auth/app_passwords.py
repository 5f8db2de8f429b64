"""Device app passwords: generation, normal form and keyed hash.

An app password is 28 characters from a 32-symbol alphabet with no look-alikes
(no 0/o, 1/l), shown in seven groups of four: 140 bits, easy to type on a phone.
It is stored only as HMAC-SHA-256 under a key derived from the server key, with
the user name in the message, so a digest is useless without the key and cannot
be replayed for another account. Its entropy makes a slow hash pointless and
keeps the check at about 2 µs: nothing a flood of logins can exhaust.

An app password may be scoped (`out_of_scope`): to the client network it works
from, and to an expiry. Outside its scope it is no password at all: the login
gets the uniform failure, and the audit log says why.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from imapguard.net import parse
from imapguard.secret import Secret
from imapguard.state.accounts import AppPasswordRecord

__all__ = ["ALPHABET", "LENGTH", "digest", "generate", "normalize", "out_of_scope"]

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


def out_of_scope(record: AppPasswordRecord, ip: str, now: float) -> str | None:
    """Why `record` does not work for a client at `ip` at `now`; None if it does.
    A network that cannot be read refuses (fails closed)."""
    if record.expires_at is not None and now >= record.expires_at:
        return f"app password {record.id} expired"
    if record.network is not None:
        address = parse(ip)
        try:
            allowed = ipaddress.ip_network(record.network, strict=False)
        except ValueError:
            return f"app password {record.id} has an unreadable network"
        if address is None or address not in allowed:
            return f"app password {record.id} is not for this network"
    return None

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

`create` is the one way a new one is made (the CLI and the portal both call it):
the label checked (`label_problem`), the network read (`scope_network`), the
password generated and only its digest stored. The password it returns is the
only copy; the caller shows it once.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from imapguard.net import parse
from imapguard.secret import Secret
from imapguard.state.accounts import AppPasswordRecord, AppPasswordStore

__all__ = [
    "ALPHABET",
    "LENGTH",
    "MAX_LABEL",
    "create",
    "digest",
    "generate",
    "label_problem",
    "normalize",
    "out_of_scope",
    "scope_network",
]

ALPHABET = "23456789abcdefghijkmnpqrstuvwxyz"
LENGTH = 28
GROUP = 4
# A label names a device ("phone", "laptop at home"): a short line of text.
MAX_LABEL = 64


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


def label_problem(label: str) -> str | None:
    """Why `label` (already stripped) cannot name an app password; None if it can."""
    if not label or len(label) > MAX_LABEL or not label.isprintable():
        return f"a label is 1 to {MAX_LABEL} printable characters"
    return None


def scope_network(text: str) -> str:
    """The client network an app password is scoped to, in CIDR form (an address
    alone is its /32 or /128; host bits are dropped). ValueError if it is none."""
    network = ipaddress.ip_network(text.strip(), strict=False)
    return str(network)


def create(
    store: AppPasswordStore,
    key: bytes,
    user: str,
    label: str,
    now: float,
    *,
    network: str | None = None,
    expires_at: float | None = None,
    max_count: int | None = None,
) -> tuple[AppPasswordRecord, Secret]:
    """A new app password of `user`: stored by its digest, returned once.
    ValueError for a bad label (`label_problem`); `AppPasswordLimit` when the
    account holds `max_count` already (the store checks it atomically)."""
    problem = label_problem(label)
    if problem is not None:
        raise ValueError(problem)
    password = generate()
    normalized = normalize(password)
    if normalized is None:  # generate() makes only valid ones
        raise AssertionError("generate() made an app password normalize() refuses")
    record = store.add_app_password(
        user,
        label,
        digest(key, user, normalized),
        now,
        network=network,
        expires_at=expires_at,
        max_count=max_count,
    )
    return record, password

"""Is the server key the one the store's secrets were sealed with?

A store keeps a check value of the key (`meta` row KEY_CHECK): an HMAC-SHA256 of
a fixed label under `keys.derive_key(server_key, keys.STORE_KEY_CHECK)`, never
the key itself nor anything a secret could be derived from. It is written once,
by the first process that opens the store with a key (the first writer wins:
`MetaStore.claim_meta`), and compared at every start after, so a wrong or
replaced `state.key_file` is found when `serve` or the CLI starts, not at the
first login that unseals a TOTP secret. A store written before the check existed
gets the value on its next start, but only after one of its sealed TOTP secrets
has been seen to open with the key, so an already wrong key is not written down
as the right one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from imapguard.errors import ImapguardError
from imapguard.keys import STORE_KEY_CHECK, derive_key
from imapguard.secret import Secret
from imapguard.state.accounts import MetaStore, TotpRecord

__all__ = ["KEY_CHECK", "KeyMismatch", "check_value", "verify_server_key"]

KEY_CHECK = "server-key-check"
_LABEL = b"imapguard: the server key of this state store"


class KeyMismatch(ImapguardError):
    """The server key is not the one the store was sealed with."""


def check_value(server_key: Secret) -> bytes:
    """The check value of `server_key` (32 bytes)."""
    return hmac.new(derive_key(server_key, STORE_KEY_CHECK), _LABEL, hashlib.sha256).digest()


def verify_server_key(
    store: MetaStore, server_key: Secret, opens: Callable[[TotpRecord], bool]
) -> None:
    """Raise KeyMismatch unless `server_key` is the store's key. `opens(record)`
    says whether a sealed TOTP secret opens with the key (the caller knows how
    secrets are sealed); it is asked only when the store has no check value yet."""
    mine = check_value(server_key)
    stored = store.get_meta(KEY_CHECK)
    if stored is None:
        sample = store.any_totp()
        if sample is not None and not opens(sample):
            raise KeyMismatch("a sealed TOTP secret in the store does not open with it")
        stored = store.claim_meta(KEY_CHECK, mine)
    if not hmac.compare_digest(stored, mine):
        raise KeyMismatch("the store was sealed with another key")

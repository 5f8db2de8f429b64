"""Keyed, truncated fingerprints of presented passwords: never the password.

Failures are counted as *distinct wrong passwords*: a phone retrying an old
password a hundred times is one failure, a guesser's every new guess counts.
weakforced, Dovecot's auth policy and Entra smart lockout all do this (wforce a
HyperLogLog of a 12-bit hash, Dovecot the last 10 CRC32s, Entra the last 3
bad-password hashes). Two fingerprints:

* **account**: HMAC(k_account, user ‖ 0x00 ‖ password) truncated to 16 bits.
  Hashing the login in (as wforce does) means it links nothing across accounts;
  16 bits keep a window's 3-50 distinct guesses apart (wforce uses 12) while one
  value matches one string in 65 536: even with the server key it confirms no
  password, so a near-miss typo stored in a counter is not a leak.
* **spray** (login-free): HMAC(k_epoch, password) truncated to 24 bits, to see
  one password tried against many accounts, which a per-account fingerprint
  cannot show. 24 bits: 5 accounts
  of a window colliding by chance among 10^5 distinct wrong passwords an hour is
  about 10^-6. k_epoch = HMAC(derive_key(root, SPRAY_FINGERPRINT), epoch) with
  `epoch = floor(now / epoch_seconds)` (a day by default): an attempt carries the
  current and the previous epoch's fingerprints, the engine counts both (so a
  window that spans a rotation still adds up) and checks blocks on both (so a
  block of at most one epoch outlives the rotation). The value names its epoch
  ("20123.a1b2c3"), so two epochs never share a value.

What rotation buys, and what it does not: the epoch key is derived from the
server key, so whoever holds the key file can recompute it. Without the key
file (a leaked state store, a Redis dump, a backup) a fingerprint is a keyed
hash and useless; values from two days cannot be linked; and a fingerprint
lives only as long as the counters and blocks that hold it (one window, at most
a block's expiry). With the key file, truncation still makes one value match
about one string in 16 million, so it narrows a dictionary but confirms nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import math

from imapguard.keys import PASSWORD_FINGERPRINT, SPRAY_FINGERPRINT, derive_key
from imapguard.secret import Secret

__all__ = ["ACCOUNT_BITS", "SPRAY_BITS", "Fingerprinter"]

ACCOUNT_BITS = 16
SPRAY_BITS = 24
# Epoch keys cached (current, previous, and one for a clock stepping back).
_EPOCH_KEYS_KEPT = 3


class Fingerprinter:
    def __init__(self, root: Secret, *, epoch_seconds: float = 86400.0) -> None:
        if epoch_seconds <= 0:
            raise ValueError("epoch_seconds must be positive")
        self._account_key = derive_key(root, PASSWORD_FINGERPRINT)
        self._spray_root = derive_key(root, SPRAY_FINGERPRINT)
        self.epoch_seconds = epoch_seconds
        self._epoch_keys: dict[int, bytes] = {}

    def account(self, user: str, password: Secret) -> str:
        """The per-account fingerprint ("" as user when there is no valid name)."""
        digest = hmac.new(
            self._account_key, user.encode() + b"\0" + password.reveal(), hashlib.sha256
        ).digest()
        return digest[: ACCOUNT_BITS // 8].hex()

    def epoch(self, now: float) -> int:
        return math.floor(now / self.epoch_seconds)

    def spray(self, password: Secret, now: float) -> tuple[str, str]:
        """The login-free fingerprints under the current and the previous epoch key."""
        epoch = self.epoch(now)
        return self._spray(epoch, password), self._spray(epoch - 1, password)

    def _spray(self, epoch: int, password: Secret) -> str:
        key = self._epoch_keys.get(epoch)
        if key is None:
            key = hmac.new(self._spray_root, b"epoch/%d" % epoch, hashlib.sha256).digest()
            # Called from the event loop and the store's worker thread: build a new
            # dict and swap it in, never mutate one a reader may be iterating.
            kept = sorted({**self._epoch_keys, epoch: key}.items())[-_EPOCH_KEYS_KEPT:]
            self._epoch_keys = dict(kept)
        digest = hmac.new(key, password.reveal(), hashlib.sha256).digest()
        return f"{epoch}.{digest[: SPRAY_BITS // 8].hex()}"

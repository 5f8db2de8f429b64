"""Passwords the upstream accepted a moment ago, remembered for a short while.

A mail client opens several connections at once, each logging in with the same
password and code. With a master user configured, a recent successful check of
the same (account, device, password) lets the next login skip the password
check and open its session with a master login: one upstream password check per
burst instead of one per connection. Entries are a keyed hash of all of it (the
key derived from the server key), never the password; they expire after
`auth.verified_cache_seconds` and the oldest go first beyond the size bound.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable

from imapguard.secret import Secret
from imapguard.state.accounts import DeviceKey

__all__ = ["VerifiedPasswords"]


class VerifiedPasswords:
    def __init__(
        self, key: bytes, clock: Callable[[], float], *, seconds: float, entries: int
    ) -> None:
        self._key = key
        self._clock = clock
        self._seconds = seconds
        self._entries = entries
        # keyed hash of (user, device, password) -> expiry (monotonic)
        self._verified: OrderedDict[bytes, float] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._seconds > 0

    def _id(self, device: DeviceKey, password: Secret) -> bytes:
        material = "\0".join(
            ("password", device.user, device.network, device.client_name, device.client_version)
        ).encode()
        return hmac.new(self._key, material + b"\0" + password.reveal(), hashlib.sha256).digest()

    def remembered(self, device: DeviceKey, password: Secret) -> bool:
        """Did the upstream accept this password from this device a moment ago?"""
        expiry = self._verified.get(self._id(device, password))
        return expiry is not None and expiry > self._clock()

    def remember(self, device: DeviceKey, password: Secret) -> None:
        """The upstream accepted it just now."""
        entry = self._id(device, password)
        self._verified[entry] = self._clock() + self._seconds
        self._verified.move_to_end(entry)
        while len(self._verified) > self._entries:
            self._verified.popitem(last=False)

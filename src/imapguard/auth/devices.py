"""Second factors that ride in the password field: the one-time code, and the
devices that proved one.

The password field of LOGIN / SASL PLAIN may hold the password followed by a
6-digit code (`totp.split_password_and_code`). How it is read is decided here,
before the upstream is asked, and the upstream is asked once (`Devices.read`):
a code that verifies now, or the code a trusted device proved (kept as a keyed
digest: the device's secret), makes it password+code; an owner-approved device
at its exact address, or a client certificate of the account, takes the field
as the password; an account with a code enrolled reads trailing digits as a
(wrong) code, so that a wrong code after a correct password is seen and counted.

A device is (account, client /24 or /64, IMAP ID name and version). None of
that is a secret: anyone on that network can send that client name. So a device
is trusted only with what only it has: the code it proved (what its mail client
stores and sends again after the password), or, for a device its owner
approved, the exact address it was approved at.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass

from imapguard.auth import totp
from imapguard.auth.model import AuthContext
from imapguard.keys import DEVICE_SECRET, derive_key
from imapguard.net import network
from imapguard.secret import Secret
from imapguard.state.accounts import AccountStore, DeviceKey, DeviceRecord, TotpRecord

__all__ = ["AccountView", "Devices", "Reading", "device_key"]


def device_key(user: str, ctx: AuthContext) -> DeviceKey:
    """The device a login comes from."""
    return DeviceKey(user, network(ctx.client.ip), ctx.id_name, ctx.id_version)


class AccountView:
    """One login's view of the account's factor records: each is read at most
    once per attempt (the defense's precheck and the factor checks share it).
    The properties read when first asked for; `preload` reads both at once, on
    a read thread when the store is networked (`auth.reads`)."""

    def __init__(self, reader: AccountStore, key: DeviceKey) -> None:
        self.key = key
        self._reader = reader

    @functools.cached_property
    def device(self) -> DeviceRecord | None:
        return self._reader.find_device(self.key)

    @functools.cached_property
    def totp(self) -> TotpRecord | None:
        return self._reader.get_totp(self.key.user)

    def preload(self) -> None:
        """Read the device and the TOTP record now (on the caller's thread)."""
        _ = (self.device, self.totp)

    def enrolled(self) -> bool:
        """Has the account any second factor (so a bare password is suspicious)?
        Reads the store: run it as `Reads.call(view.enrolled)`."""
        user = self.key.user
        return (
            self.totp is not None
            or bool(self._reader.list_app_passwords(user))
            or any(d.status == "trusted" for d in self._reader.list_devices(user))
        )


@dataclass(frozen=True)
class Reading:
    """How the password field is read: the password, and the code if any."""

    password: Secret
    code: str | None
    step: int | None = None  # the code verified for this time step
    # The code is the one this trusted device proved (its digest matched).
    device_code: bool = False


class Devices:
    """Reads the password field and recognises devices (keys from the server key)."""

    def __init__(self, server_key: bytes, totp_key: bytes | None) -> None:
        self._secret_key = derive_key(Secret(server_key), DEVICE_SECRET)
        self._totp_key = totp_key

    def read(
        self, secret: Secret, account: AccountView, ctx: AuthContext, own_cert: bool, now: float
    ) -> tuple[Reading, str | None]:
        """How to read the password field (one reading: the upstream is asked once
        per login), and why a code in it was not usable (for the audit log).

        Decided locally, from what the field and the account's records say, before
        the upstream is asked: a code that verifies now, or the code this trusted
        device proved, makes it password+code; a device its owner approved, or a
        client certificate of this account (`own_cert`), takes the field as the
        password; an account with a one-time code enrolled reads trailing digits as
        a (wrong or used) code, so that a right password with a wrong code is seen
        and counted; anything else is the password as typed. Every branch costs
        exactly one upstream check, so which one was taken does not show in the
        timing, and a correct password with a correct code is never also sent whole
        (a failed upstream login, and the upstream's per-address penalty for the
        user)."""
        whole = Reading(secret, None)
        split = totp.split_password_and_code(secret)
        device = account.device
        trusted = device is not None and device.trusted_at(now)
        if not split:
            return whole, None
        password, code = split[0]
        record = account.totp
        locked = (
            record is not None and record.locked_until is not None and (record.locked_until > now)
        )
        secret_key = None
        if record is not None and self._totp_key is not None:
            secret_key = totp.unseal(self._totp_key, account.key.user, record.sealed)
            if not locked:
                step = totp.verify(secret_key, code, now, last_step=record.last_step)
                if step is not None:
                    return Reading(password, code, step), None
        # While codes are locked, the stale code only from the device's own last
        # address: the lock must stop a guesser of the stale code too.
        if (
            trusted
            and device is not None
            and self.code_matches(device, code)
            and (not locked or ctx.client.ip == device.last_address)
        ):
            return Reading(password, code, device_code=True), None
        if trusted and device is not None and device.bound_address == ctx.client.ip:
            return whole, None
        if own_cert:
            return whole, None
        if secret_key is None or record is None:
            return whole, None
        if locked:
            problem = "one-time codes locked (too many wrong)"
        elif totp.verify(secret_key, code, now, last_step=None) is not None:
            # A current code already spent: a mail client resending what was typed
            # on another device, or a replay.
            problem = "one-time code already used"
        else:
            problem = "wrong or used one-time code"
        return Reading(password, code), problem

    def secret(self, key: DeviceKey, code: str) -> bytes:
        """The keyed digest of the code a device proved: its secret from then on."""
        material = "\0".join(
            (key.user, key.network, key.client_name, key.client_version, code)
        ).encode()
        return hmac.new(self._secret_key, material, hashlib.sha256).digest()

    def code_matches(self, device: DeviceRecord, code: str) -> bool:
        if device.secret is None:
            return False
        key = DeviceKey(device.user, device.network, device.client_name, device.client_version)
        return hmac.compare_digest(self.secret(key, code), device.secret)

    def looks_like(
        self, device: DeviceRecord | None, secret: Secret | None, ctx: AuthContext, now: float
    ) -> bool:
        """For the defense's precheck (is this one of the account's familiar
        sources?): the trusted device itself, by what only it has (its code after
        the password, or its approved address), not merely its network and client
        ID, which anyone on that network can copy."""
        if device is None or not device.trusted_at(now):
            return False
        if device.bound_address is not None:
            return device.bound_address == ctx.client.ip
        split = totp.split_password_and_code(secret) if secret else []
        return bool(split) and self.code_matches(device, split[0][1])

    @staticmethod
    def accepts(
        device: DeviceRecord | None, reading: Reading, ctx: AuthContext, now: float
    ) -> bool:
        """Is this login the trusted device itself? A device that proved a code is
        trusted for its password followed by that code (what its mail client stores
        and sends again), never for the password alone; a device its owner approved
        is trusted at the exact address it was approved for."""
        if device is None or not device.trusted_at(now):
            return False
        if reading.device_code:
            return True
        return reading.code is None and device.bound_address == ctx.client.ip

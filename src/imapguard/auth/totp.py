"""Password + one-time code: TOTP secrets (RFC 6238), codes and sealed storage.

Codes are HMAC-SHA-1, 6 digits, 30 s steps: the defaults of the otpauth URI
format, so every authenticator app agrees without being told. A code is accepted
for its own step and one step either side (±1 step, which covers
a phone clock up to 30 s off plus the time it takes to type), and only for a step
*later* than the last one accepted for the account: each code works once, and an
older code never works after a newer one did. `verify` is pure and returns the
step it matched; the caller stores that step as the account's new `last_step`
with a compare-and-set (write only if still greater than the stored one) and
refuses the login if it loses, so two connections racing with one code cannot
both get in.

The code travels in the password field, typed right after the password with no
separator; `split_password_and_code` says how the caller reads that field.

Secrets are stored sealed with AES-256-GCM under a key kept for this use alone
(`keys.derive_key(server_key, keys.TOTP_SEAL)`), with the account name as
associated data so a blob copied into another account's row does not open.
Blob layout: version (1 byte, 0x01) | nonce (12 random bytes) | ciphertext | tag
(16 bytes). A random 96-bit nonce is safe for up to 2**32 seals under one key
(NIST SP 800-38D §8.3); we seal once per enrollment.
"""

from __future__ import annotations

import hmac
import io
import secrets

import pyotp
import segno
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imapguard.errors import ImapguardError
from imapguard.secret import Secret

__all__ = [
    "DIGITS",
    "PERIOD",
    "WINDOW",
    "SealError",
    "new_secret",
    "opens_with",
    "provisioning_uri",
    "qr_svg",
    "qr_text",
    "seal",
    "split_password_and_code",
    "unseal",
    "verify",
]

DIGITS = 6  # the otpauth default, so the URI need not say it
PERIOD = 30  # seconds per step: RFC 6238 §5.2's recommendation and the otpauth default
WINDOW = 1  # steps accepted either side of the current one
SECRET_BYTES = 20  # 160 bits: RFC 4226 §4 recommends it; 32 base32 characters, no padding

SEAL_VERSION = 1
NONCE_BYTES = 12  # the GCM nonce size that needs no extra hashing (SP 800-38D §8.2)
TAG_BYTES = 16
SEAL_KEY_BYTES = 32  # AES-256


class SealError(ImapguardError):
    """A sealed TOTP secret does not open.

    `reason` says why without revealing anything: the blob is truncated, its
    version is unknown, or it fails authentication (wrong key, another account's
    blob, or tampered: AES-GCM cannot tell these apart, and nobody should)."""

    def __init__(self, user: str, reason: str) -> None:
        self.user = user
        self.reason = reason
        super().__init__(f"cannot unseal the TOTP secret of {user!r}: {reason}")


def new_secret() -> Secret:
    """A fresh 160-bit secret as 32 base32 characters, from the system CSPRNG."""
    return Secret(pyotp.random_base32(length=SECRET_BYTES * 8 // 5))


def _totp(secret: Secret) -> pyotp.TOTP:
    # Raises ValueError for a secret that is not base32 or shorter than 112 bits:
    # a corrupted store or a bug, never something a client can send.
    return pyotp.TOTP(secret.reveal().decode("ascii"), digits=DIGITS, interval=PERIOD)


def provisioning_uri(secret: Secret, account: str, issuer: str = "imapguard") -> str:
    """The otpauth://totp/ URI an authenticator app enrolls from.

    It holds the secret in clear: print it to the enrolling user, never log it."""
    return _totp(secret).provisioning_uri(name=account, issuer_name=issuer)


def qr_text(uri: str) -> str:
    """`uri` as a QR code drawn with half-block characters, two modules per line.

    segno draws the light modules as blocks, so the code reads correctly on a
    terminal with a dark background (the usual default); print the URI as well
    for terminals where it comes out inverted."""
    out = io.StringIO()
    # make_qr, not make: a short URI could otherwise become a Micro QR code,
    # which phone cameras and authenticator apps do not read.
    segno.make_qr(uri).terminal(out=out, compact=True)
    return out.getvalue()


def qr_svg(uri: str, scale: int = 4, light: str | None = None) -> str:
    """`uri` as a standalone SVG document (namespace, no XML declaration).

    It embeds as it is in an HTML page and also works as an image file.
    `light`: a colour for the light modules (default: transparent), e.g. white
    so the code reads on a page with a dark background."""
    out = io.BytesIO()
    segno.make_qr(uri).save(out, kind="svg", scale=scale, xmldecl=False, nl=False, light=light)
    return out.getvalue().decode("utf-8")


def _is_code(text: str) -> bool:
    return len(text) == DIGITS and text.isascii() and text.isdigit()


def verify(secret: Secret, code: str, now: float, *, last_step: int | None) -> int | None:
    """The time step `code` belongs to, or None when it is not accepted.

    Accepted: exactly six ASCII digits matching the step of `now` (a Unix time)
    or one step either side, and later than `last_step` (the step the account's
    previous code was accepted for; None when it never used one). Every
    candidate is compared in constant time, and all of them are compared
    whatever matches, so the timing says nothing about which step was close.
    If the code matches two steps (a one-in-a-million collision), the earliest
    acceptable one is returned, which spends the fewest future codes.

    The caller must store the returned step as the new `last_step` atomically
    (see the module docstring). Raises ValueError for a `now` before the epoch
    or after year 9999, or a malformed stored secret: bugs, not client input."""
    totp = _totp(secret)
    current = totp.timecode(now)
    if not _is_code(code):  # what a code looks like is no secret: refuse before any HMAC
        return None
    wanted = code.encode("ascii")
    matched = [
        step
        for step in range(max(0, current - WINDOW), current + WINDOW + 1)
        if hmac.compare_digest(totp.generate_otp(step).encode("ascii"), wanted)
    ]
    fresh = [step for step in matched if last_step is None or step > last_step]
    return min(fresh) if fresh else None


def split_password_and_code(password: Secret) -> list[tuple[Secret, str]]:
    """The ways to read the password field as (primary password, code).

    The field is the password followed directly by the 6-digit code, with no
    separator. Returns one candidate when the field is longer than 6 bytes and
    ends in 6 ASCII digits, else none. It never raises, whatever the bytes.

    The same field can also be a bare password: "hunter2123456" is "hunter2"
    plus a code, or a password that ends in digits. The caller decides with
    the code, which is cheap and local:

    1. for each candidate, `verify` its code; if it returns a step, the
       candidate's password is the primary password to check against the
       backend, with the code as the second factor;
    2. otherwise the whole field is the password alone, with no code. A code
       that does not verify is never a failure by itself: it means "no code".
       (A trusted device resending the same field with a stale code is policy:
       the caller may then accept the candidate's password without its code.)

    So a login costs one backend password check, except when the last digits of
    a bare password happen to be a valid code (3 chances in a million per
    login): the stripped password then fails at the backend, and the caller
    should try the whole field as a bare password before counting a failure.

    No separator, decided: the code is always exactly six digits, so the end of
    the field marks it; an optional "," or ":" would make every password ending
    in one of them mean two passwords, and trying the wrong one is a failed
    login at the backend and a distinct wrong password for the defense
    counters. Concatenation is also what LinOTP and privacyIDEA do (PIN then OTP).
    A user who types "secret,123456" has typed the password "secret,"."""
    raw = password.reveal()
    tail = raw[-DIGITS:]
    if len(raw) <= DIGITS or not tail.isdigit():  # bytes.isdigit: ASCII 0-9 only
        return []
    return [(Secret(raw[:-DIGITS]), tail.decode("ascii"))]


def _aad(user: str) -> bytes:
    # The version byte is bound too, so a blob cannot be relabelled as another format.
    return bytes([SEAL_VERSION]) + user.encode()


def _aesgcm(key: bytes) -> AESGCM:
    if len(key) != SEAL_KEY_BYTES:
        raise ValueError(f"the TOTP seal key must be {SEAL_KEY_BYTES} bytes (AES-256)")
    return AESGCM(key)


def seal(key: bytes, user: str, secret: Secret) -> bytes:
    """`secret` encrypted for storage in `user`'s row, under `key`.

    `key` is `keys.derive_key(server_key, keys.TOTP_SEAL)` (32 bytes, else
    ValueError); `user` is the account name exactly as it will be given to
    `unseal`."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = _aesgcm(key).encrypt(nonce, secret.reveal(), _aad(user))
    return bytes([SEAL_VERSION]) + nonce + sealed


def unseal(key: bytes, user: str, blob: bytes) -> Secret:
    """The secret `seal(key, user, ...)` produced; SealError for anything else."""
    aesgcm = _aesgcm(key)
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES:
        raise SealError(user, "truncated")
    if blob[0] != SEAL_VERSION:
        raise SealError(user, f"unknown format version {blob[0]}")
    nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        return Secret(aesgcm.decrypt(nonce, sealed, _aad(user)))
    except InvalidTag:
        raise SealError(user, "does not authenticate (wrong key, account or data)") from None


def opens_with(key: bytes, user: str, blob: bytes) -> bool | None:
    """Whether `blob` was sealed under `key` (the server key check at start,
    `state.keycheck`): True if it opens; False if it is in the sealed format and
    does not authenticate (another key); None if it is in no format known, which
    says nothing about the key."""
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[0] != SEAL_VERSION:
        return None
    try:
        unseal(key, user, blob)
    except SealError:
        return False
    return True

"""Enrolling a TOTP secret: a new secret is shown (QR code and text), and stored
only once the user typed a current code of it.

Between the two requests the pending secret travels in the page's form,
sealed (AES-256-GCM, `auth.totp.seal` under the TOTP_SEAL key) with associated
data that binds it to

* the account and a `binding` the caller chooses: the session's id on the
  security page, so a sealed secret copied from one browser's page opens in no
  other session; `invitation <session id>` for an invitation's "password"
  session (`invite`), so neither page's seal opens on the other;
* the time it was issued, so it opens for `PENDING_LIFETIME` only;
* a purpose label, so the blob can never be taken for the sealed secret of an
  account row (which carries the bare account name) nor the other way round.

The browser never holds the secret in the clear outside the page that shows it,
and a tampered or replanted field is refused by the tag. Storing the confirmed
secret also spends the code's time step (`use_totp_step`): the code typed to
enrol does not sign anyone in afterwards.

`begin_totp`, `pending_totp` and `enrol_totp` are all a page needs; `totp.html`
shows a `PendingTotp` (context: `pending`, `error`, `replacing`, `action`: where its
form posts, `cancel`: a link back, or "" for a Cancel button that signs out, on a
page before the full session).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from markupsafe import Markup

from imapguard.auth import totp
from imapguard.secret import Secret
from imapguard.state.accounts import TotpStore

__all__ = [
    "MAX_TOKEN",
    "PENDING_LIFETIME",
    "PendingTotp",
    "begin_totp",
    "enrol_totp",
    "pending_totp",
]

T = TypeVar("T")

# How long a shown secret can be confirmed: the fresh-factor window's maximum.
PENDING_LIFETIME = 600.0
# The hidden field is a few dozen bytes; anything longer is not ours.
MAX_TOKEN = 256
_PURPOSE = "portal totp enrolment"


@dataclass(frozen=True)
class PendingTotp:
    """A secret shown for enrolment: `token` goes into the form's hidden field."""

    secret: Secret
    token: str
    account: str
    issuer: str

    @property
    def uri(self) -> str:
        return totp.provisioning_uri(self.secret, self.account, self.issuer)

    def qr(self) -> Markup:
        """The QR code as inline SVG (no script, no style attribute: it passes the CSP)."""
        return Markup(totp.qr_svg(self.uri, light="#fff"))  # noqa: S704 - segno's own SVG

    def text(self) -> str:
        """The secret for typing, in groups of four."""
        raw = self.secret.reveal().decode("ascii")
        return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def _aad(binding: str, user: str, issued: int) -> str:
    return f"{_PURPOSE}\0{binding}\0{issued}\0{user}"


def begin_totp(
    key: bytes, binding: str, user: str, now: float, issuer: str = "imapguard"
) -> PendingTotp:
    """A new secret for `user` and its sealed form for the page."""
    secret = totp.new_secret()
    issued = int(now)
    blob = struct.pack(">Q", issued) + totp.seal(key, _aad(binding, user, issued), secret)
    token = base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")
    return PendingTotp(secret, token, user, issuer)


def pending_totp(
    key: bytes,
    binding: str,
    user: str,
    token: str,
    now: float,
    issuer: str = "imapguard",
) -> PendingTotp | None:
    """The secret `begin_totp` sealed into `token` for this binding and user,
    while it is fresh; None for anything else."""
    if not token or len(token) > MAX_TOKEN:
        return None
    try:
        blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(blob) < 8:
        return None
    (issued,) = struct.unpack(">Q", blob[:8])
    if not 0 <= now - issued <= PENDING_LIFETIME:
        return None
    try:
        secret = totp.unseal(key, _aad(binding, user, issued), blob[8:])
    except totp.SealError:
        return None
    return PendingTotp(secret, token, user, issuer)


async def enrol_totp(
    call: Callable[..., Awaitable[Any]],
    store: TotpStore,
    key: bytes,
    user: str,
    pending: PendingTotp,
    code: str,
    now: float,
) -> bool:
    """Store `pending`'s secret as `user`'s (replacing any) if `code` is a
    current code of it; False, and nothing stored, otherwise. `call` runs a
    store call on the store's thread (`Kit.call`)."""
    step = totp.verify(pending.secret, "".join(code.split()), now, last_step=None)
    if step is None:
        return False
    await call(store.set_totp, user, totp.seal(key, user, pending.secret), now)
    await call(store.use_totp_step, user, step)
    return True

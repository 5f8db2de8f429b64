"""What the portal keeps per account, as interfaces beside `state.accounts`.

Sign-in sessions, passkeys (WebAuthn credentials), recovery codes, invitations,
the sign-in history the user reviews ("this wasn't me") and the revocation feed
that ends live IMAP sessions in every process. `AccountStore` plus these is
`PortalStore`; `imapguard.state.sqlite.SqliteStore` implements all of them and
tests/conformance/ holds every implementation to the same behaviour.

The rules of `state.accounts` hold here too (synchronous short calls, every
failure `StateUnavailable`, time passed in, atomic check-and-sets, absence is not
an error, a write creates the user it names). In particular no secret is stored
in the clear: a session is found by the digest of its cookie token, an invitation
and a recovery code by the digest of theirs (the portal computes the digests
with a purpose key; the store compares bytes).

Credentials named in the sign-in history and the revocation feed are strings of
the form `KIND:ID` (`app-password:3f9c...`, `device:a1b2...`, `passkey:...`) or a
bare kind (`password`, `totp`, `oauth`, `certificate`, `portal-session`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from imapguard.state.accounts import AccountStore

__all__ = [
    "MAX_PASSKEYS",
    "MAX_RECOVERY_CODES",
    "MAX_SIGN_INS",
    "InviteStore",
    "PasskeyRecord",
    "PasskeyStore",
    "PortalSession",
    "PortalSessionStore",
    "PortalStore",
    "RecoveryCodeStore",
    "Revocation",
    "RevocationFeed",
    "SessionLevel",
    "SignInRecord",
    "SignInStore",
]

# Passkeys per account: a person has a few devices; an attacker with a session
# must not grow the store.
MAX_PASSKEYS = 20
# Recovery codes per set (shown once, each usable once).
MAX_RECOVERY_CODES = 16
# Sign-in history rows kept per account (the newest); older ones are forgotten.
MAX_SIGN_INS = 500

# "password": the first step of a sign-in is done (the password), the second
# factor is not; "full": both factors proved.
SessionLevel = Literal["password", "full"]


@dataclass(frozen=True)
class PortalSession:
    id: str  # public (listed, revoked by it); the cookie's token is not stored
    user: str
    level: SessionLevel
    created_at: float
    last_seen_at: float
    expires_at: float  # absolute expiry
    second_factor_at: float | None  # the last second-factor check (fresh-check window)
    address: str
    user_agent: str


class PortalSessionStore(Protocol):
    def create_portal_session(
        self,
        user: str,
        token_digest: bytes,
        level: SessionLevel,
        now: float,
        expires_at: float,
        address: str,
        user_agent: str,
    ) -> PortalSession:
        """A new session found by `token_digest` (unique in the store)."""
        ...

    def find_portal_session(
        self, token_digest: bytes, now: float, idle: float
    ) -> PortalSession | None:
        """The live session with this digest: None if there is none, it was
        revoked, `now` is past `expires_at`, or it was last seen more than `idle`
        seconds before `now`."""
        ...

    def touch_portal_session(self, session_id: str, now: float) -> None:
        """Record activity (bookkeeping: may be batched)."""
        ...

    def raise_portal_session(self, session_id: str, now: float) -> bool:
        """A second factor was just proved: level "full", `second_factor_at` = now.
        False if the session is gone."""
        ...

    def list_portal_sessions(self, user: str, now: float) -> list[PortalSession]:
        """The account's live sessions (not expired by `expires_at`), newest first."""
        ...

    def revoke_portal_session(self, user: str, session_id: str) -> bool:
        """End one session of this account (False if it has none with this id)."""
        ...

    def revoke_portal_sessions(self, user: str, *, keep: str | None = None) -> int:
        """End every session of the account but `keep`; how many ended."""
        ...

    def forget_portal_sessions(self, now: float) -> int:
        """Delete sessions past `expires_at`; how many."""
        ...


@dataclass(frozen=True)
class PasskeyRecord:
    id: str  # ours: short, random, for the page and the audit log
    user: str
    credential_id: bytes  # the authenticator's (unique in the store)
    public_key: bytes  # COSE_Key
    sign_count: int
    name: str
    aaguid: str
    created_at: float
    last_used_at: float | None


class PasskeyStore(Protocol):
    def user_handle(self, user: str, new_handle: bytes, now: float) -> bytes:
        """The account's WebAuthn user handle: the stored one, or `new_handle`
        (random, 32 bytes, from the caller) stored now if it has none."""
        ...

    def user_for_handle(self, handle: bytes) -> str | None: ...

    def add_passkey(
        self,
        user: str,
        credential_id: bytes,
        public_key: bytes,
        sign_count: int,
        name: str,
        aaguid: str,
        now: float,
    ) -> PasskeyRecord | None:
        """Store a new passkey; None if `credential_id` is already stored (for any
        account) or the account has MAX_PASSKEYS."""
        ...

    def list_passkeys(self, user: str) -> list[PasskeyRecord]: ...

    def find_passkey(self, credential_id: bytes) -> PasskeyRecord | None: ...

    def use_passkey(self, credential_id: bytes, sign_count: int, now: float) -> bool:
        """Atomic: record a use with the authenticator's new counter. False (and
        nothing recorded) when the stored counter is not below it, unless both are
        0 (authenticators that keep no counter): a cloned authenticator."""
        ...

    def rename_passkey(self, user: str, passkey_id: str, name: str) -> bool: ...

    def remove_passkey(self, user: str, passkey_id: str) -> bool: ...


class RecoveryCodeStore(Protocol):
    def set_recovery_codes(self, user: str, digests: list[bytes], now: float) -> None:
        """Replace the account's codes (at most MAX_RECOVERY_CODES)."""
        ...

    def use_recovery_code(self, user: str, digest: bytes, now: float) -> bool:
        """Atomic: True for exactly one caller with an unused code of this account."""
        ...

    def count_recovery_codes(self, user: str) -> int:
        """How many unused codes the account has."""
        ...


class InviteStore(Protocol):
    def add_invite(self, user: str, digest: bytes, now: float, expires_at: float) -> None:
        """An invitation for `user`; an earlier unused one of the account stays valid."""
        ...

    def use_invite(self, digest: bytes, now: float) -> str | None:
        """Atomic: the account of an unused, unexpired invitation with this digest,
        for exactly one caller; None otherwise."""
        ...


@dataclass(frozen=True)
class SignInRecord:
    id: str
    user: str
    at: float
    address: str
    method: str  # vocab.Method, or "portal"
    ok: bool
    reason: str  # the audit log's reason ("" on success)
    credential: str  # KIND:ID or a bare kind (module docstring)
    client: str  # the IMAP ID name and version, or the browser's user agent
    disowned: bool  # the owner said "this wasn't me"


class SignInStore(Protocol):
    def record_sign_in(
        self,
        user: str,
        at: float,
        address: str,
        method: str,
        ok: bool,
        reason: str,
        credential: str,
        client: str,
    ) -> None:
        """Bookkeeping (may be batched); keeps the newest MAX_SIGN_INS per account."""
        ...

    def list_sign_ins(self, user: str, since: float, limit: int) -> list[SignInRecord]:
        """The account's sign-ins at or after `since`, newest first."""
        ...

    def get_sign_in(self, user: str, sign_in_id: str) -> SignInRecord | None: ...

    def disown_sign_in(self, user: str, sign_in_id: str) -> bool: ...


@dataclass(frozen=True)
class Revocation:
    seq: int  # increasing across the store
    user: str
    credential: str | None  # None: every credential of the account
    at: float


class RevocationFeed(Protocol):
    def publish_revocation(self, user: str, credential: str | None, now: float) -> int:
        """Record that live sessions of `user` using `credential` must end; its seq."""
        ...

    def revocations_after(self, seq: int, limit: int) -> list[Revocation]:
        """Revocations with a larger seq, oldest first."""
        ...

    def last_revocation(self) -> int:
        """The largest seq (0 when there is none): where a new follower starts."""
        ...

    def forget_revocations(self, before: float) -> int: ...


class PortalStore(
    AccountStore,
    PortalSessionStore,
    PasskeyStore,
    RecoveryCodeStore,
    InviteStore,
    SignInStore,
    RevocationFeed,
    Protocol,
):
    """Everything the gateway and the portal keep."""

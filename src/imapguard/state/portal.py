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
with a purpose key; the store compares bytes). Two writes do not create the user
they name, on purpose: a sign-in (one of a name the store does not know is not
recorded, so a login's `record_login` comes first) and a revocation
(`SignInStore`, `RevocationFeed`).

An expiry is inclusive here: a session is live at its `expires_at` and `idle`
seconds after its last activity, and an invitation can be used at its
`expires_at`; one moment later they are not.

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
    "MAX_PASSWORD_SESSIONS",
    "MAX_RECOVERY_CODES",
    "MAX_SIGN_INS",
    "FactorRemoval",
    "InviteStore",
    "PasskeyRecord",
    "PasskeyStore",
    "PortalSession",
    "PortalSessionStore",
    "PortalStore",
    "RecoveryCodeStore",
    "Revocation",
    "RevocationFeed",
    "SecondFactorStore",
    "SessionLevel",
    "SignInRecord",
    "SignInStore",
]

# Sessions at level "password" kept per account (the most recently seen):
# whoever has the password must not grow the store. Full sessions are never
# dropped to make room.
MAX_PASSWORD_SESSIONS = 20
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

# What `remove_second_factor` did: "removed"; "last" (refused: nothing changed);
# "absent" (the account has no such factor).
FactorRemoval = Literal["removed", "last", "absent"]


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
        """A new session found by `token_digest`, with a fresh random id, last seen
        now; `second_factor_at` is `now` for level "full" (both factors proved at
        once), else None. A digest is unique in the store: one already stored
        raises `StateUnavailable` and stores nothing. Of the account's "password"
        sessions only the MAX_PASSWORD_SESSIONS most recently seen are kept (the
        others are deleted)."""
        ...

    def find_portal_session(
        self, token_digest: bytes, now: float, idle: float
    ) -> PortalSession | None:
        """The live session with this digest: None if there is none, it was
        revoked, `now` is past `expires_at`, or it was last seen more than `idle`
        seconds before `now`."""
        ...

    def touch_portal_session(self, session_id: str, now: float) -> None:
        """Record activity (bookkeeping: may be batched). `last_seen_at` never moves
        back (a late batched write of an earlier time is ignored); an unknown id
        (revoked since) is ignored."""
        ...

    def raise_portal_session(self, session_id: str, token_digest: bytes, now: float) -> bool:
        """A second factor was just proved: level "full", `second_factor_at` = now
        (and seen now), and the session is found by `token_digest` (a new cookie
        token) from now on: the old token, which existed before the second factor
        and may have been seen or planted by someone else, no longer finds it
        (session fixation). False, and nothing changed, if the session is gone or
        `now` is past its `expires_at`. A digest already stored raises
        `StateUnavailable`."""
        ...

    def list_portal_sessions(self, user: str, now: float) -> list[PortalSession]:
        """The account's live sessions (not expired by `expires_at`), newest
        (`created_at`) first."""
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
        (random, 32 bytes, from the caller) stored now if it has none. Atomic: of
        concurrent callers the first one's handle is stored and every caller gets
        it. A handle is unique in the store: `new_handle` stored for another
        account raises `StateUnavailable` (and stores nothing) when it would be
        stored."""
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
        """Store a new passkey under a fresh random id; None, and nothing stored, if
        `credential_id` is already stored (for any account: no account may take
        over another's authenticator) or the account has MAX_PASSKEYS. Atomic:
        concurrent callers never exceed the limit nor store one credential twice."""
        ...

    def list_passkeys(self, user: str) -> list[PasskeyRecord]:
        """The account's passkeys, oldest first."""
        ...

    def find_passkey(self, credential_id: bytes) -> PasskeyRecord | None: ...

    def use_passkey(self, credential_id: bytes, sign_count: int, now: float) -> bool:
        """Atomic: record a use with the authenticator's new counter. False (and
        nothing recorded) when the stored counter is not below it, unless both are
        0 (authenticators that keep no counter): a cloned authenticator."""
        ...

    def rename_passkey(self, user: str, passkey_id: str, name: str) -> bool:
        """True if the account has this passkey; another account's id changes nothing."""
        ...

    def remove_passkey(self, user: str, passkey_id: str) -> bool:
        """Delete it (it no longer signs in); True if the account had it."""
        ...


class SecondFactorStore(Protocol):
    """The account's second factors together: its TOTP secret (`TotpStore`) and
    its passkeys (`PasskeyStore`). Recovery codes are none: they stand in for one."""

    def remove_second_factor(self, user: str, factor: str) -> FactorRemoval:
        """Atomic: remove the account's `factor` (`"totp"`, or `"passkey:ID"` of
        one of its passkeys) unless it is the account's last second factor. Its
        TOTP and its passkeys are counted and the factor removed in one
        transaction, so concurrent removals (the TOTP and the last passkey, two
        passkeys) never leave the account without one. "removed"; "last" when it
        is the only one (nothing changes); "absent" when the account has no such
        factor (another account's passkey id included: nothing changes)."""
        ...


class RecoveryCodeStore(Protocol):
    def set_recovery_codes(self, user: str, digests: list[bytes], now: float) -> None:
        """Replace the account's codes, used or not, by these (an empty list removes
        them). More than MAX_RECOVERY_CODES, or the same digest twice, raises
        ValueError and changes nothing."""
        ...

    def use_recovery_code(self, user: str, digest: bytes, now: float) -> bool:
        """Atomic: True for exactly one caller with an unused code of this account."""
        ...

    def count_recovery_codes(self, user: str) -> int:
        """How many unused codes the account has."""
        ...


class InviteStore(Protocol):
    def add_invite(self, user: str, digest: bytes, now: float, expires_at: float) -> None:
        """An invitation for `user`, usable until `expires_at`; an earlier unused one
        of the account stays valid until one of them is used. A digest is unique in
        the store: one already stored raises `StateUnavailable`."""
        ...

    def use_invite(self, digest: bytes, user: str, now: float) -> bool:
        """Atomic: True for exactly one caller with an unused, unexpired
        invitation with this digest *for `user`*; False otherwise, and then
        nothing changes (a link of another account is not spent by a redemption
        that names this one). Using one voids every other invitation of the
        account: an older one, perhaps read by someone else on its way, must not
        set the account up a second time."""
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
        """Bookkeeping (may be batched), under a fresh random id; keeps the newest
        (`at`) MAX_SIGN_INS per account. Unlike other writes it does not create the
        user: a sign-in of an account the store does not know is not recorded, so
        failed logins with made-up names cannot grow the store."""
        ...

    def list_sign_ins(self, user: str, since: float, limit: int) -> list[SignInRecord]:
        """The account's sign-ins at or after `since`, newest first, at most
        `limit` of them (none for a limit below 1)."""
        ...

    def get_sign_in(self, user: str, sign_in_id: str) -> SignInRecord | None:
        """The account's sign-in with this id; None if none (or another account's)."""
        ...

    def disown_sign_in(self, user: str, sign_in_id: str) -> bool:
        """The owner says "this wasn't me"; True if the account has this sign-in
        (another account's id changes nothing)."""
        ...


@dataclass(frozen=True)
class Revocation:
    seq: int  # increasing across the store
    user: str
    credential: str | None  # None: every credential of the account
    at: float


class RevocationFeed(Protocol):
    """Followers poll `revocations_after(the last seq they saw)`, so a seq must
    become visible in order: once a reader sees seq N, no smaller seq appears
    later (a follower past it would never end those sessions). A seq is never
    reused, not even after `forget_revocations`. The feed names accounts but does
    not create them: it records events, not an account's records."""

    def publish_revocation(self, user: str, credential: str | None, now: float) -> int:
        """Record that live sessions of `user` using `credential` must end; its seq."""
        ...

    def revoke(self, user: str, credential: str | None, now: float) -> bool:
        """Atomic: remove what `credential` names (`app-password:ID`: that app
        password; `device:ID`: that device; None: every app password, device and
        portal session of the account) and publish the revocation, in one
        transaction, so that no process sees one without the other. False, and
        nothing published, when there was nothing of the account to remove."""
        ...

    def revocations_after(self, seq: int, limit: int) -> list[Revocation]:
        """Revocations with a larger seq, oldest first, at most `limit` (none for
        a limit below 1)."""
        ...

    def last_revocation(self) -> int:
        """The largest seq (0 when there is none): where a new follower starts."""
        ...

    def forget_revocations(self, before: float) -> int:
        """Delete revocations published before `before`; how many."""
        ...


class PortalStore(
    AccountStore,
    PortalSessionStore,
    PasskeyStore,
    SecondFactorStore,
    RecoveryCodeStore,
    InviteStore,
    SignInStore,
    RevocationFeed,
    Protocol,
):
    """Everything the gateway and the portal keep."""

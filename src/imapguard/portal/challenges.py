"""WebAuthn challenges the portal handed out and still waits for, kept on the
server, never in the page or a cookie.

Rules: a challenge belongs to one session and one purpose (registering a
passkey, the sign-in's second step, the fresh-factor check), so a challenge
issued to one browser or for one ceremony proves nothing for another; it is
handed back at most once (`take` removes it, whatever the answer turns out to
be), and not after `LIFETIME`; a new one for the same session and purpose
replaces the old. Memory is bounded: at most `MAX_PENDING` are kept, the oldest
forgotten first (its ceremony then fails and is simply started again).

They live in the portal's process: a ceremony starts and ends on the same
portal (one process serves it, `imapguard serve` or `imapguard portal`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

__all__ = ["LIFETIME", "MAX_PENDING", "Challenges", "Purpose"]

# A little more than the browser's own timeout (auth.passkeys.TIMEOUT_MS, two
# minutes) plus the time to pick a name and press the button.
LIFETIME = 300.0
# Outstanding challenges (32 bytes each): a bound on what sessions can make us keep.
MAX_PENDING = 10_000

Purpose = Literal["register", "sign_in", "confirm"]


class Challenges:
    def __init__(self) -> None:
        self._pending: OrderedDict[tuple[str, Purpose], tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def keep(self, session_id: str, purpose: Purpose, challenge: bytes, now: float) -> None:
        key = (session_id, purpose)
        self._pending.pop(key, None)
        self._pending[key] = (challenge, now)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def take(self, session_id: str, purpose: Purpose, now: float) -> bytes | None:
        """The challenge issued to this session for this purpose, once; None if
        there is none, it was taken, or it is older than LIFETIME."""
        kept = self._pending.pop((session_id, purpose), None)
        if kept is None:
            return None
        challenge, issued = kept
        return challenge if 0 <= now - issued <= LIFETIME else None

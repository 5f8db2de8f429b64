"""SIGHUP before the real handler is installed: recorded, never fatal.

`imapguard serve`, `worker` and `portal` reload on SIGHUP, but their handler
exists only once the event loop runs, seconds of imports and opening after the
process started. SIGHUP's default action ends a process, and systemd's
`Restart=on-failure` counts an end by SIGHUP as clean (systemd.service(5),
"Clean exit status"): a `systemctl reload` (logrotate) during a start or a
restart would stop the gateway for good. So:

* `defer()`, the first thing the command line does for those commands (this
  module imports nothing but `signal`), installs a handler that only records
  that a reload is pending, then unblocks SIGHUP. `children.Child` starts its
  processes with SIGHUP blocked (the signal mask survives fork and exec), so a
  SIGHUP passed on to a worker that is still starting waits, pending, for this
  handler instead of ending it.
* Once the real handler is installed, `pending()` says whether one came
  meanwhile; the caller then reloads once. It is not dropped: the
  configuration and the audit log were opened after `defer()`, and a SIGHUP
  between their opening and the real handler (a configuration edited, the
  audit log moved away by logrotate) would otherwise be lost.

What is left is the interpreter's own start, before this module runs (tens of
milliseconds) for a `serve` started by systemd: contrib/systemd's unit restarts
after an end by SIGHUP (`RestartForceExitStatus=SIGHUP`).
"""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["defer", "pending"]

_pending = False


def _record(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = True


def defer() -> None:
    """Record SIGHUP from now on instead of ending; unblock it (pending ones arrive)."""
    signal.signal(signal.SIGHUP, _record)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def pending() -> bool:
    """Whether a SIGHUP came before the real handler (asked once, after installing it)."""
    global _pending
    came, _pending = _pending, False
    return came

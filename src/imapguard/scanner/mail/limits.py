"""The waits and bounds of the mail checks, in one place.

The other modules read them at call time (`limits.QUIET_WAIT`), so a test can
shorten a wait with `monkeypatch.setattr(limits, ...)`.
"""

from __future__ import annotations

#: Seconds a cleartext greeting gets before we try TLS instead. Mail servers greet
#: at once (Dovecot, Postfix and Exim within milliseconds; Postfix's postscreen
#: sends the first line of its greeting at once too); an implicit-TLS port says
#: nothing until our ClientHello.
GREETING_WAIT = 1.5

#: Seconds of silence that show an injected command was not answered. testssl.sh
#: sleeps 1 s before it reads, EAST's tester uses a 2 s socket timeout; a server
#: that answers a command does so in milliseconds.
QUIET_WAIT = 1.0

#: Responses read while waiting for the one that answers our command (a server
#: sending endless untagged data must not keep us reading).
MAX_RESPONSES = 200

#: Seconds the answer to the dummy credential (AUTH-05) may take, whatever --timeout
#: says: servers delay authentication on purpose after failures from an address, and
#: the probe's own failure is one. Dovecot's is the longest we know: its anvil penalty
#: reaches AUTH_PENALTY_MAX_SECS = 15 s (src/auth/auth-penalty.h) on top of
#: auth_failure_delay = 2 s, so a scan run again soon after the last one waits up to 17 s.
AUTH_WAIT = 20.0

#: Runs of one step in all when it fails for a passing reason (a timeout, a reset, a
#: close before the answer); the runs are `Network.settings.backoff` seconds apart.
ATTEMPTS = 2

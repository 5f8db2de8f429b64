"""The mail checks of `imapguard scan`: what an IMAP, POP3 or SMTP service says
before, during and after TLS (the EXP, ST, AUTH and BAN families of the catalog).

The package, in the order a service meets it: `recognise` (what answers),
`service.audit_mail` (the steps), `imap`, `pop3` and `smtp` (each protocol's
dialogs, with `steps` for what they share), `sessions` (the client side of a
session), `connection` (one TCP connection and its failures), `audit` (the
findings as they are decided), `verdicts` (pure judgements on what was said) and
`limits` (the waits and bounds).

Theory of operation:
- `recognise()` learns the protocol from what answers, never from the port number:
  a cleartext greeting (`* OK`, `+OK`, `220`, ManageSieve's `"IMPLEMENTATION"`), or,
  when nothing arrives within `limits.GREETING_WAIT` seconds (or the bytes are none of
  these), a TLS handshake and the greeting inside it (implicit TLS).
- `audit_mail()` runs the checks of one recognised service as a few steps, one
  connection each, one after the other (at most about six connections a service;
  `net.Network` bounds the rest): the main dialog (capabilities, STARTTLS,
  capabilities again), the dummy-credential probe, the two STARTTLS injection
  variants, and where they apply the NTLM probe and the SMTP envelope checks.
  Every connection goes through `Network.slot()` / `Network.connect()`.
- The I/O here only collects what the server said; the verdicts are pure functions
  (`classify_*`, `disclosed_version`, `internal_name` ...) tested by tables, and
  parsing is `scanner/dialogs.py`'s (complete responses only).
- Reads are bounded: `dialogs` limits every response's size, and a command's
  answer gets one timeout in all, however slowly its responses trickle in.
- A step cut short for a passing reason (a timeout, a reset, a close before the
  answer, a temporary authentication failure) runs again from a clean state,
  `limits.ATTEMPTS` runs in all, `Network.settings.backoff` seconds apart, so one slow moment
  of the server or of this machine does not change the report. The answer to the
  dummy credential may take `limits.AUTH_WAIT` seconds: servers delay logins after failed
  ones from the same address, and the previous scan's probe was one.
- A check that could not run (timeout, reset, a reply the dialog cannot go on from,
  throttling) ends as `not_tested` with the reason and how to rerun, never as a pass
  or a fail. A check that does not apply (no STARTTLS at all, so nothing to inject
  into) leaves nothing; one that depends on a STARTTLS that is broken (ST-02) is
  `not_tested`.
- TLS here is only a means to reach the other side: certificate verification is
  off and old protocol versions are allowed, because judging TLS is `tlsaudit`'s
  job and a service that only speaks TLS 1.0 must still get its mail checks.
- The probe credential is a user name that says what it is and a fresh random
  password that exists only in memory; evidence shows `***` in its place.

Decisions worth knowing:
- ST-06 (STARTTLS on an implicit-TLS port): IMAP must answer a tagged BAD
  (RFC 9051 §6.2.1); POP3 anything but -ERR and SMTP a 2xx count as accepted. ST-04
  ("STARTTLS still advertised after TLS") is checked on implicit-TLS ports too:
  RFC 3207 §4.2 and RFC 9051 §6.2.1 speak of any established TLS.
- ST-07 is tested twice, each on a fresh connection, with the injected command
  in the same write as STARTTLS: the cleartext variant waits `limits.QUIET_WAIT` seconds
  after the STARTTLS reply, and any byte before our ClientHello convicts; the TLS
  variant completes the handshake and then sends a command of its own: IMAP
  convicts on a response tagged for the injected command, POP3 and SMTP on a
  second response (the injected command's) arriving besides the one we asked for.
  A handshake that fails after the injection passes (RFC 9051 §6.2.1 allows the
  server to read the extra bytes as the start of the handshake).
- AUTH-06 open relay: `MAIL FROM:<scanner address>` then `RCPT TO:` an address in
  the reserved `.invalid` domain (RFC 2606), then RSET. DATA is never sent, so
  nothing is ever queued, and an accepted recipient under `.invalid` could never
  be delivered anyway. 250/251 to that RCPT without AUTH is an open relay.
- AUTH-08 reports enumeration only when VRFY/EXPN tell a real mailbox
  (`postmaster`, which RFC 5321 §4.5.1 makes mandatory) from a random one: a
  positive answer for the first and 550/551/553 for the second. A `252` for both
  (aiosmtpd, Postfix with disable_vrfy_command) reveals nothing.
- Port 25 is the mail-exchanger port, where RFC 3207 §4 forbids requiring TLS: it
  gets every check except EXP-03 and the MAIL-before-TLS test (its exposure is
  EXP-04's, decided by the orchestrator). Every other SMTP port is treated as
  submission.
- EXP-01 also fails on ST-09: a PREAUTH greeting in cleartext is access without TLS.
- EXP-06 is reported for ManageSieve only; IMAP, POP3 or SMTP on an unusual port
  get the full audit of their protocol instead.
- ST-10 is an info finding on every cleartext service whose STARTTLS works (the
  lists before and after, and their difference), even when nothing changed.
- AUTH-04 keeps its high severity when PLAIN or LOGIN is offered before STARTTLS and
  is lowered to medium (said so in its evidence) when only challenge-response
  mechanisms are.
- BAN-03 reads the names in the SMTP greeting and the EHLO reply; HELP is not sent
  (its text is free-form, and a name there is the same name).
- AUTH-07 (NTLM) runs only where NTLM is advertised, inside TLS when it is offered
  there: a NEGOTIATE_MESSAGE naming nothing of ours, then `*` to cancel.
"""

from imapguard.scanner.mail.audit import MailResult
from imapguard.scanner.mail.recognise import Recognised, recognise
from imapguard.scanner.mail.service import audit_mail
from imapguard.scanner.mail.sessions import PROBE_USER, RELAY_PROBE_RCPT
from imapguard.scanner.mail.verdicts import (
    ProbeVerdict,
    capability_diff,
    classify_imap_login,
    classify_pop3_user,
    classify_relay,
    classify_smtp_auth,
    classify_state_reset,
    disclosed_version,
    internal_name,
    legacy_only,
    vrfy_enumerates,
)

__all__ = [
    "PROBE_USER",
    "RELAY_PROBE_RCPT",
    "MailResult",
    "ProbeVerdict",
    "Recognised",
    "audit_mail",
    "capability_diff",
    "classify_imap_login",
    "classify_pop3_user",
    "classify_relay",
    "classify_smtp_auth",
    "classify_state_reset",
    "disclosed_version",
    "internal_name",
    "legacy_only",
    "recognise",
    "vrfy_enumerates",
]

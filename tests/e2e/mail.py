"""The mail side of the browser tests: what a device does through the portal's
gateway while the test drives the page.

* `curl_login(portal, src, user, secret)`: an IMAP login with curl over
  implicit TLS (`imaps://localhost:PORT/`, the gateway's CA with `--cacert`, the
  source address bound with `--interface`); the credentials go to curl on its
  standard input (`-K -`), not on a command line other local users can read.
  curl's exit status says what happened: 0 logged in (and listed the
  mailboxes), 67 (CURLE_LOGIN_DENIED) the login was refused.
* `idle(portal, src, user, secret)`: imaplib logged in, INBOX selected and in
  IDLE; `ended(conn, since, within)` reads until the server closes and returns
  the lines and how long after `since` that was, `conn.sock`'s timeout bounding the wait.
"""

from __future__ import annotations

import imaplib
import subprocess
import time

from tests.e2e.portal import PortalServer
from tests.integration.conftest import close_imap, open_imap

__all__ = ["LOGGED_IN", "LOGIN_DENIED", "curl_login", "ended", "idle"]

LOGGED_IN = 0
LOGIN_DENIED = 67  # curl: "The remote server denied curl to login"


def curl_login(portal: PortalServer, src: str, user: str, secret: str) -> tuple[int, str]:
    """curl's exit status and output for an IMAP login through the gateway."""
    config = f'user = "{user}:{secret}"\n'
    assert '"' not in user + secret, "curl's config syntax would need quoting"
    assert "\\" not in user + secret, "curl's config syntax would need quoting"
    done = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--cacert",
            str(portal.gw.ca_cert),
            "--interface",
            src,
            "-K",
            "-",
            f"imaps://localhost:{portal.gw.implicit_port}/",
        ],
        input=config,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def idle(portal: PortalServer, src: str, user: str, secret: str) -> imaplib.IMAP4:
    """An IMAP session from `src`, logged in, in IDLE on INBOX."""
    conn = open_imap(portal.gw, "implicit", src, timeout=15)
    try:
        assert conn.login(user, secret)[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"
        conn.send(b"I1 IDLE\r\n")
        line = conn.readline()
        while line.startswith(b"* "):
            line = conn.readline()
        assert line.startswith(b"+ "), line
    except BaseException:
        close_imap(conn)
        raise
    return conn


def ended(conn: imaplib.IMAP4, since: float, within: float) -> tuple[list[bytes], float]:
    """The lines the server sends until it closes the session, and the seconds
    from `since` (time.monotonic() of the revocation) to the close; a session
    still open after a second longer than `within` without a line returns what
    it sent so far and the time waited."""
    conn.sock.settimeout(within + 1.0)
    lines: list[bytes] = []
    while True:
        try:
            line = conn.readline()
        except TimeoutError:  # still open: the caller's `after < within` fails
            return lines, time.monotonic() - since
        if not line:
            return lines, time.monotonic() - since
        lines.append(line.rstrip(b"\r\n"))

"""The portal the browser tests drive: `imapguard serve` with `[portal]` in a
child process, in front of the Dovecot fixture, and the users a test creates.

`PortalServer.start(base, dovecot)` runs the real gateway (tests.gateway's
GatewayProcess: its own trustme CA, state, audit log, IMAP listeners) with the
portal at `https://localhost:PORT` (WebAuthn refuses an IP address as origin or
relying party; Chromium maps `localhost` to loopback by itself).

Users: `portal.new_user("ada")` adds a Dovecot user with a random password;
`portal.user_with_totp("ada")` also enrolls a TOTP secret through the CLI
(`imapguard totp enroll U --json`), so the test computes its codes with
`user.code()` (two sign-ins of one user per 30 s step; a third waits for the
next step); `portal.new_admin()` is such a user in the admin group. Names must
be unique in a test session (Dovecot is shared with the integration tests, whose
users are alice, bob and carol); a fixed readable name keeps the screenshots the
same from run to run.

The shared portal is generous with its defenses on purpose: every browser test
signs in from 127.0.0.1 (Chromium cannot pick its source address), so one test's
wrong codes must not delay, block or rate-limit the next test. A test of the
defenses themselves starts a portal of its own with `defense=` (and its own
source trouble is then its own).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyotp

from tests.dovecot import DovecotServer, free_port
from tests.gateway import GatewayProcess

__all__ = ["ADMINS", "GENEROUS_DEFENSE", "PortalServer", "User", "source_address"]

#: The members of the portal's admin group (`[groups] admins`, read at start),
#: handed out one per test by `portal.new_admin()`.
ADMINS = ("grace", "hedy", "radia", "barbara", "frances", "margaret", "annie", "karen")

#: [defense] of the shared portal: no delay, block or spray verdict from what a
#: whole e2e run does from 127.0.0.1 (the limits of config/defense.py, raised).
GENEROUS_DEFENSE = """
[defense]
source_free = 1000
pair_free = 1000
source_failures = 5000
source_accounts = 5000
network_failures = 5000
network_accounts = 5000
spray_accounts = 5000
account_attacked = 1000
account_lockout = 1000
pair_block = 1000
"""

_STEP = 30  # TOTP seconds per step (auth/totp.py PERIOD)


def source_address(n: int) -> str:
    """A loopback source address of the browser tests' own (127.0.210.n, n in
    1..254) for an IMAP client beside the browser: Dovecot's penalty and the
    gateway's counters are per address (see tests/integration/conftest.py for the
    other tests' blocks). One n per test; note which in the test module."""
    if not 1 <= n <= 254:
        raise ValueError(n)
    return f"127.0.210.{n}"


@dataclass(eq=False)
class User:
    """A Dovecot account of one test, with its TOTP secret once enrolled."""

    name: str
    password: str
    totp: pyotp.TOTP | None = None
    # The last time step this test used a code of: the portal refuses a step it
    # already accepted (auth/totp.py), so the next code must be of a later one.
    _last_step: int = field(default=-1, repr=False)

    def code(self) -> str:
        """A TOTP code the portal will accept now and has not accepted before.

        The portal accepts the current step and one either side; the first
        unused of the current and the next step is taken, and when both were used
        this waits for the clock to reach the next step."""
        if self.totp is None:
            raise AssertionError(f"{self.name} has no TOTP secret: use portal.user_with_totp")
        while True:
            now = time.time()
            current = int(now // _STEP)
            step = max(current, self._last_step + 1)
            if step <= current + 1:
                self._last_step = step
                return str(self.totp.at(step * _STEP))
            time.sleep((current + 1) * _STEP - now + 0.05)

    def wrong_code(self) -> str:
        """Six digits that match no step the portal accepts now."""
        assert self.totp is not None
        now = time.time()
        near = {self.totp.at(now + d * _STEP) for d in (-2, -1, 0, 1, 2)}
        while True:
            guess = f"{secrets.randbelow(1_000_000):06d}"
            if guess not in near:
                return guess


@dataclass(eq=False)
class PortalServer:
    gw: GatewayProcess
    dovecot: DovecotServer
    port: int
    _names: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def start(
        cls,
        base: Path,
        dovecot: DovecotServer,
        *,
        defense: str = GENEROUS_DEFENSE,
        portal_toml: str = "",
        extra_toml: str = "",
        port: int | None = None,
        methods: tuple[str, ...] = ("app-password", "password+totp"),
    ) -> PortalServer:
        """Start `imapguard serve` with the portal on https://localhost:PORT.

        `portal_toml`: more lines for `[portal]`; `extra_toml`: more sections;
        `methods`: `[auth] methods` (a portal sign-in through the OpenID
        provider needs "oauthbearer", as a token login over IMAP does);
        `port`: the portal's (free) port, when the test must name it before the
        start (an OpenID provider's redirect URI). The device setup pages name
        the mail server as a deployment has it (localhost, 993 and 465), not the
        test gateway's ports."""
        port = port or free_port()
        gw = GatewayProcess.create(base, dovecot, methods=methods)
        with gw.config_path.open("a") as config:
            config.write(f"""
[limits]
drain_timeout = 1.0

[portal]
listen = "127.0.0.1:{port}"
url = "https://localhost:{port}"
max_sign_ins_per_minute = 100
{portal_toml}

[groups]
admins = {json.dumps(list(ADMINS))}
{defense}
{extra_toml}
""")
        gw.start()
        server = cls(gw=gw, dovecot=dovecot, port=port)
        deadline = time.monotonic() + 15
        while not gw.accepts(port):
            if gw.proc is None or gw.proc.poll() is not None or time.monotonic() > deadline:
                gw.stop()
                raise RuntimeError(f"the portal did not start:\n{gw.log_text()}")
            time.sleep(0.05)
        return server

    def stop(self) -> None:
        """Stop the gateway; it must have been running and logged no traceback."""
        alive = self.gw.proc is not None and self.gw.proc.poll() is None
        self.gw.stop()
        log = self.gw.log_text()
        assert alive, f"the portal's gateway died:\n{log}"
        assert "Traceback" not in log, log

    @property
    def url(self) -> str:
        """The portal's origin, as the browser and WebAuthn see it."""
        return f"https://localhost:{self.port}"

    # -- users ------------------------------------------------------------------

    def new_user(self, name: str | None = None) -> User:
        """A new Dovecot account (password only); `name` must be new in the session."""
        name = name or f"e2e-{secrets.token_hex(4)}"
        if name in self._names or name in self.dovecot.users:
            raise AssertionError(f"user name {name!r} is taken: pick one for this test alone")
        self._names.add(name)
        user = User(name, secrets.token_urlsafe(12))
        self.dovecot.add_user(user.name, user.password)
        return user

    def user_with_totp(self, name: str | None = None) -> User:
        """A new account whose TOTP secret the CLI enrolled (the admin's way)."""
        user = self.new_user(name)
        enrolled = json.loads(self.gw.cli("totp", "enroll", user.name, "--json").stdout)
        user.totp = pyotp.TOTP(enrolled["secret"])
        return user

    def new_admin(self) -> User:
        """A new member of the admin group, with a TOTP secret (admins always
        sign in with a second factor)."""
        free = [n for n in ADMINS if n not in self._names and n not in self.dovecot.users]
        if not free:
            raise AssertionError(f"all of {ADMINS} are taken: add names to ADMINS")
        return self.user_with_totp(free[0])

    def app_password(self, user: User, label: str = "device") -> str:
        """An app password of `user` made with the CLI."""
        return self.gw.create_app_password(user.name, label)

"""Attack-named: a client's own text reaching the administrator's terminal. The IMAP ID
a client sends (its name and version) is stored with the app password it used and
with the device it logged in from; `imapguard app-password list` and `device list`
print it in a rich table on a terminal. Rich markup in it (`x[/x]`) crashed the
listing with a MarkupError; `[bold red]...` restyled it; an escape sequence reached
the terminal. Here a real client sends the ID through the gateway to a real
Dovecot, and the CLI runs on a pseudo-terminal as an administrator would run it.

Source addresses: 127.0.1.245-249.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import secrets
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import IMAPGUARD, GatewayProcess, source_address
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway, wait_for

pytestmark = pytest.mark.dovecot

#: A closing tag that matches no opening one (a MarkupError in rich), markup that
#: would restyle the cell, and an escape sequence that would clear the screen.
NAME = "x[/x]"
VERSION = "[bold red]1[/bold red]\x1b[2J"
SHOWN_VERSION = "[bold red]1[/bold red]\\x1b[2J"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def gw_id(
    tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer
) -> Iterator[GatewayProcess]:
    def edit(text: str) -> str:
        return text.replace(
            "failure_jitter = 0.01", "failure_jitter = 0.01\nverified_cache_seconds = 0"
        )

    with running_gateway(
        tmp_path_factory.mktemp("gw-hostile-id"),
        dovecot,
        login="master",
        methods=("app-password", "password+totp"),
        edit=edit,
    ) as gw:
        yield gw


def cli_on_a_terminal(gw: GatewayProcess, *args: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run `imapguard ARGS --config ...` with a pseudo-terminal (300 columns) as its
    standard output; its exit status and everything it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 300, 0, 0))
    env = {**gw._env(), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(
        [*IMAPGUARD, *args, "--config", str(gw.config_path)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"imapguard {' '.join(args)} did not finish: {output!r}")
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
        code = proc.wait(timeout)
        assert proc.stderr is not None
        errors = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    assert "Traceback" not in errors, errors
    return code, output.decode(errors="replace")


def _id_then_login(gw: GatewayProcess, n: int, user: str, password: str) -> bytes:
    """IMAP ID with the hostile name and version, then LOGIN; the tagged answer."""
    with RawClient(gw.implicit_port, source_address(n), tls=gw.client_ssl()) as c:
        c.line()
        quoted = VERSION.encode()
        reply = c.command(b"a", b'ID ("name" "' + NAME.encode() + b'" "version" "' + quoted + b'")')
        assert reply[-1].startswith(b"a OK"), reply
        return c.command(b"b", b'LOGIN "' + user.encode() + b'" "' + password.encode() + b'"')[-1]


def test_rich_markup_in_the_imap_id_of_an_app_password_login(
    gw_id: GatewayProcess, dovecot: DovecotServer
) -> None:
    user = f"m{secrets.token_hex(3)}"
    dovecot.add_user(user, f"pw-{secrets.token_urlsafe(9)}")
    password = gw_id.create_app_password(user, "phone")
    assert _id_then_login(gw_id, 245, user, password).startswith(b"b OK")

    def stored() -> str | None:
        listed = json.loads(gw_id.cli("app-password", "list", user, "--json").stdout)
        client = listed[0]["last_used_client"]
        return client if isinstance(client, str) else None

    assert wait_for(stored, what="the app password's last use") == f"{NAME}/{VERSION}"
    code, out = cli_on_a_terminal(gw_id, "app-password", "list", user)
    assert code == 0, out
    shown = _ANSI.sub("", out)
    assert "\u2503" in shown  # a rich table, not the tab-separated form
    assert f"{NAME}/{SHOWN_VERSION}" in shown, shown
    assert "\x1b[2J" not in out


def test_rich_markup_in_the_imap_id_of_a_pending_device(
    gw_id: GatewayProcess, dovecot: DovecotServer
) -> None:
    user = f"m{secrets.token_hex(3)}"
    password = f"pw-{secrets.token_urlsafe(9)}x"
    dovecot.add_user(user, password)
    assert json.loads(gw_id.cli("totp", "enroll", user, "--json").stdout)["secret"]
    # The password without a code from an unknown device: refused, and a pending
    # device named by the client's ID waits for the owner's approval.
    assert _id_then_login(gw_id, 246, user, password) == b"b " + AUTH_FAILED

    def pending() -> list[dict[str, object]]:
        devices = json.loads(gw_id.cli("device", "list", user, "--json").stdout)
        return [d for d in devices if d["status"] == "pending"]

    (device,) = wait_for(pending, what="the pending device")
    assert (device["client_name"], device["client_version"]) == (NAME, VERSION)
    code, out = cli_on_a_terminal(gw_id, "device", "list", user)
    assert code == 0, out
    shown = _ANSI.sub("", out)
    assert "\u2503" in shown
    assert f"{NAME} {SHOWN_VERSION}" in shown, shown
    assert "\x1b[2J" not in out

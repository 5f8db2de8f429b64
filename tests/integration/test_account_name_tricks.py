"""Attack-named: account names that mean something else to the upstream.

A4. Dovecot reads `alice*imapguard` as "log in as alice through the master user
imapguard" (auth_master_user_separator = *, as in the test Dovecot). With
`methods = ["password"]` the gateway passed `LOGIN "alice*imapguard" <master password>`
through: alice's mailbox opened while audit, policy and defense saw an account
`alice*imapguard`, and the master password became an Internet-facing credential.
Now the separator (and every character outside Dovecot's default
auth_username_chars) makes the name no account at all.

A6. The test Dovecot's passdb strips the domain (username_format=%n), so
`alice@h0.example` ... `alice@h11.example` are all alice upstream; the gateway counted
them as twelve accounts and never locked alice. With `[auth] username_format =
"local"` (Dovecot's %n) they are one account, counted and locked as one.

Through a real `imapguard serve` in front of the real Dovecot fixture.
Source addresses: 127.0.201.0/24 (A4), 127.0.203.0/24 (A6).
"""

from __future__ import annotations

import concurrent.futures
import json
import ssl
from pathlib import Path

import pytest

from tests.dovecot import DovecotServer
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway

pytestmark = pytest.mark.dovecot


def _login(port: int, src: str, user: str, password: str, ctx: ssl.SSLContext) -> list[bytes]:
    with RawClient(port, src, tls=ctx) as c:
        c.line()  # greeting
        return c.command(b"a", f'LOGIN "{user}" "{password}"'.encode())


@pytest.mark.parametrize("username_chars", ["default", "any"])
def test_master_user_separator_in_the_name_never_reaches_dovecot(
    tmp_path: Path, dovecot: DovecotServer, username_chars: str
) -> None:
    def edit(text: str) -> str:
        if username_chars == "any":  # even when any printable character is allowed
            text = text.replace("[auth]\n", '[auth]\nusername_chars = ""\n')
        return text

    with running_gateway(
        tmp_path,
        dovecot,
        login="master",
        methods=("password",),
        edit=edit,
    ) as gw:
        src = "127.0.201.1" if username_chars == "default" else "127.0.201.2"
        before = len(dovecot.log_text())
        lines = _login(
            gw.implicit_port,
            src,
            "alice*" + dovecot.master_user,
            dovecot.master_password,
            gw.client_ssl(),
        )
        assert lines[-1] == b"a " + AUTH_FAILED, lines
        (event,) = [e for e in gw.events("auth") if e.get("src") == src]
        assert (event["result"], event["reason"]) == ("invalid", "malformed user name")
        # Dovecot never saw the name: no login, no master login, no auth attempt.
        assert "alice*" not in dovecot.log_text()[before:]


def test_domain_aliases_are_one_account_and_get_it_locked(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    dovecot.add_user("aliased", "the-real-password")

    def edit(text: str) -> str:
        text = text.replace("[auth]\n", '[auth]\nusername_format = "local"\n')
        # Lock an account after 5 distinct wrong passwords from unfamiliar sources.
        return text + "\n[defense]\naccount_lockout = 5\n"

    with running_gateway(
        tmp_path,
        dovecot,
        login="master",
        methods=("password",),
        edit=edit,
    ) as gw:

        def guess(i: int) -> list[bytes]:
            return _login(
                gw.implicit_port,
                f"127.0.203.{i + 1}",
                f"aliased@h{i}.example",
                f"guess-{i}",
                gw.client_ssl(),
            )

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(guess, range(12)))
        assert all(a[-1] == b"a " + AUTH_FAILED for a in answers)
        users = {e["user"] for e in gw.events("auth") if e["src"].startswith("127.0.203.")}
        assert users == {"aliased"}  # the upstream's own name, whatever the domain
        blocks = json.loads(gw.cli("blocks", "list", "--json").stdout)
        assert any(b["value"] == "aliased" and "account" in b["kind"] for b in blocks), blocks
        # The real password from another unfamiliar address is now refused too...
        late = _login(
            gw.implicit_port,
            "127.0.203.200",
            "aliased@h99.example",
            "the-real-password",
            gw.client_ssl(),
        )
        assert late[-1] == b"a " + AUTH_FAILED
        (event,) = [e for e in gw.events("auth") if e["src"] == "127.0.203.200"]
        assert event["reason"].startswith("blocked")

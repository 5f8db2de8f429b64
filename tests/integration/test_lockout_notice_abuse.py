"""Attack-named: making the organisation's relay mail whomever the attacker names.

A3. With `owner_address = "{user}"`, a lockout notice went to the locked account's
name as an address: a handful of wrong LOGINs as `director@victim-corp.example` made
the gateway mail that address, with the attacker's text in it, for any number of
made-up names. Now only accounts the gateway knows (it saw them log in, or they have
a factor or device) are told of a lockout, and all notices together are capped per
hour (`notify.max_per_hour`).

Through a real `imapguard serve` in front of the real Dovecot fixture, with the
SMTP and webhook sinks of tests/sinks.py. Source addresses: 127.0.200.0/24.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dovecot import DovecotServer
from tests.gateway import GatewayProcess
from tests.integration.conftest import AUTH_FAILED, RawClient, running_gateway, wait_for
from tests.sinks import SmtpSink, WebhookReceiver

pytestmark = pytest.mark.dovecot


@pytest.fixture
def sinks() -> Iterator[tuple[SmtpSink, WebhookReceiver]]:
    with SmtpSink(tls="none") as smtp, WebhookReceiver() as hook:
        yield smtp, hook


def _gateway(
    base: Path,
    dovecot: DovecotServer,
    smtp: SmtpSink,
    hook: WebhookReceiver,
    max_per_hour: int | None = None,
) -> contextlib.AbstractContextManager[GatewayProcess]:
    cap = "" if max_per_hour is None else f"max_per_hour = {max_per_hour}"
    notify = f"""
[notify]
webhook_url = "{hook.url}"
smtp_host = "{smtp.host}"
smtp_port = {smtp.port}
smtp_tls = "none"
mail_from = "imapguard@example.org"
owner_address = "{{user}}"
{cap}

[defense]
account_lockout = 3
"""
    return running_gateway(
        base,
        dovecot,
        login="master",
        methods=("password+totp",),
        edit=lambda text: text + notify,
    )


def _fail(gw: GatewayProcess, user: str, first: int) -> None:
    """Three wrong passwords for `user`, each from its own address (no delays)."""

    def one(i: int) -> list[bytes]:
        with RawClient(gw.implicit_port, f"127.0.200.{first + i}", tls=gw.client_ssl()) as c:
            c.line()
            return c.command(b"a", f'LOGIN "{user}" "wrong-{i}"'.encode())

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert all(r[-1] == b"a " + AUTH_FAILED for r in pool.map(one, range(3)))


def _locked(gw: GatewayProcess, user: str) -> bool:
    blocks = json.loads(gw.cli("blocks", "list", "--json").stdout)
    return any(b["value"] == user for b in blocks)


def test_lockout_notice_for_a_made_up_name_mails_nobody(
    tmp_path: Path, dovecot: DovecotServer, sinks: tuple[SmtpSink, WebhookReceiver]
) -> None:
    smtp, hook = sinks
    dovecot.add_user("known-owner@example.org", "owners-password")
    with _gateway(tmp_path, dovecot, smtp, hook) as gw:
        # A name the gateway never saw: locked (the defense works) but nobody mailed.
        victim = "director@victim-corp.example"
        _fail(gw, victim, 1)
        wait_for(lambda: _locked(gw, victim), 10.0, "the made-up account locked")
        # A known account (a factor enrolled): its owner is told.
        gw.cli("totp", "enroll", "known-owner@example.org", "--json")
        _fail(gw, "known-owner@example.org", 10)
        wait_for(lambda: _locked(gw, "known-owner@example.org"), 10.0, "the known account locked")
        wait_for(lambda: smtp.messages, 10.0, "the known owner's lockout mail")
        time.sleep(1.0)  # give a wrongly sent notice to the made-up name time to arrive
        recipients = [r for m in smtp.messages for r in m.rcpt_tos]
        assert recipients == ["known-owner@example.org"]
        assert [r.json()["user"] for r in hook.requests] == ["known-owner@example.org"]
        assert [r.json()["kind"] for r in hook.requests] == ["lockout"]


def test_notices_are_capped_per_hour_whatever_the_accounts(
    tmp_path: Path, dovecot: DovecotServer, sinks: tuple[SmtpSink, WebhookReceiver]
) -> None:
    smtp, hook = sinks
    names = [f"capped{i}@example.org" for i in range(3)]
    with _gateway(tmp_path, dovecot, smtp, hook, max_per_hour=2) as gw:
        for i, name in enumerate(names):
            dovecot.add_user(name, "owners-password")
            gw.cli("totp", "enroll", name, "--json")
            _fail(gw, name, 20 + 3 * i)
            wait_for(functools.partial(_locked, gw, name), 10.0, f"{name} locked")
        wait_for(lambda: len(hook.requests) >= 2, 10.0, "two notices")
        time.sleep(1.5)
        assert len(hook.requests) == 2
        assert len(smtp.messages) == 2
        assert "notify.max_per_hour" in gw.log_text()

"""The attacker's review of the portal, findings 1, 6, 7 and part of 8: each
test is named after the attack it stops (the proofs of concept of the review,
now passing).

1. "This wasn't me" and a rejected device block the address for that account;
   for everyone only when no other account logged in from it; a few reports
   per account and window.
6. Refused cross-site requests: one audit line per source and minute.
7. Deeply nested JSON in a passkey answer: a counted failure, not a 500.
8. webauthn.js follows only a same-origin path; the portal's connection
   limits; concurrent app password creates stay within the limit."""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.requests import HTTPConnection

from imapguard.auth import app_passwords
from imapguard.defense.engine import Action, Defense
from imapguard.defense.owner import OWNER_REPORTS
from imapguard.portal import serve
from imapguard.portal.app_passwords import MAX_APP_PASSWORDS
from imapguard.portal.csrf import RefusalAudit
from imapguard.portal.signin import MAX_CODE_FAILURES
from imapguard.secret import Secret
from imapguard.state.accounts import DeviceKey
from tests.unit.portal.support import CODE, Portal, csrf_of, portal
from tests.unit.portal.test_factors import passkey_options, register_passkey, soft_key

# The organisation's shared egress (campus NAT, the webmail server's address).
SHARED = "198.51.100.7"
STATIC = Path(__file__).resolve().parents[3] / "src" / "imapguard" / "portal" / "static"


def _defense(p: Portal) -> Defense:
    assert p.deps.services is not None
    assert p.deps.services.defense is not None
    return p.deps.services.defense


def _verdict(p: Portal, ip: str, user: str) -> Action:
    defense = _defense(p)
    attempt = defense.attempt(
        ip, user, None, method="LOGIN", listener="imap", trusted_device=False, spray=False
    )
    return defense.precheck(attempt).action


def _others_logged_in_from(p: Portal, ip: str, *users: str) -> None:
    """What makes an address shared for the defense: other accounts logged in
    from it (through the gateway, which records each success)."""
    defense = _defense(p)
    for user in users:
        attempt = defense.attempt(ip, user, Secret(b"their password"), method="LOGIN", listener="i")
        defense.record_success(attempt)


def _blocked(p: Portal) -> set[str]:
    return {str(b.target) for b in _defense(p).blocks()}


def _failed_sign_in(p: Portal, user: str, address: str) -> str:
    """A failed login of `user` from `address` in the account's history; its id."""
    p.store.ensure_user(user, p.clock.now - 3600)
    p.store.record_sign_in(
        user, p.clock.now - 60, address, "LOGIN", False, "wrong password", "password", ""
    )
    return next(r.id for r in p.store.list_sign_ins(user, 0.0, 200) if r.address == address)


async def _disown(p: Portal, sign_in_id: str) -> httpx.Response:
    page = await p.client.get("/sign-ins")
    return await p.post("/sign-ins/disown", {"csrf": csrf_of(page), "id": sign_in_id})


# -- 1. one user cannot shut a shared address for everyone --------------------------


@pytest.mark.asyncio
async def test_a_user_cannot_block_a_shared_address_for_everyone_by_disowning(
    tmp_path: Path,
) -> None:
    """alice (any user) makes one failed login to her own account through the
    shared address (a wrong password in the webmail form is enough), then says
    "this wasn't me" from home. carol and dave logged in from there this hour:
    the address stays open for them (and for erin, who has not yet); only
    alice's logins from there are refused."""
    async with portal(tmp_path) as p:
        _others_logged_in_from(p, SHARED, "carol", "dave")
        record = _failed_sign_in(p, "alice", SHARED)
        await p.sign_in()  # from 192.0.2.10, not the shared address: no confirmation asked
        done = await _disown(p, record)
        assert done.status_code == 200
        assert f"The address {SHARED} is blocked for your account." in done.text
        for neighbour in ("carol", "dave", "erin"):
            assert _verdict(p, SHARED, neighbour) is Action.ALLOW
        assert _verdict(p, SHARED, "alice") is Action.BLOCKED
        assert _blocked(p) == {f"account-source:{SHARED}|alice"}
        (event,) = p.events("disowned")
        assert event["blocked"] == f"account-source:{SHARED}|alice"


@pytest.mark.asyncio
async def test_an_address_nobody_else_uses_is_still_blocked_for_everyone(tmp_path: Path) -> None:
    """The thief's own address (only alice's account was seen there): as before,
    nobody signs in from it any more."""
    async with portal(tmp_path) as p:
        _others_logged_in_from(p, SHARED, "alice")  # the thief, with alice's password
        record = _failed_sign_in(p, "alice", SHARED)
        await p.sign_in()
        done = await _disown(p, record)
        assert f"The address {SHARED} is blocked." in done.text
        assert _verdict(p, SHARED, "carol") is Action.BLOCKED
        assert _blocked(p) == {f"account-source:{SHARED}|alice", f"source:{SHARED}"}


@pytest.mark.asyncio
async def test_a_user_cannot_block_a_shared_address_by_rejecting_their_own_new_device(
    tmp_path: Path,
) -> None:
    """alice logs in with her password alone from the webmail (a pending device)
    and rejects it from home."""
    async with portal(tmp_path) as p:
        _others_logged_in_from(p, SHARED, "carol")
        key = DeviceKey("alice", "198.51.100.0/24", "Evil Mail", "1")
        device = p.store.add_pending_device(key, p.clock.now - 60, SHARED)
        await p.sign_in()
        page = await p.client.get("/devices")
        done = await p.post("/devices/reject", {"csrf": csrf_of(page), "id": device.id})
        assert done.headers["location"] == "/devices?done=rejected"
        assert _verdict(p, SHARED, "carol") is Action.ALLOW
        assert _verdict(p, SHARED, "bob") is Action.ALLOW
        assert _verdict(p, SHARED, "alice") is Action.BLOCKED
        assert p.events()[-1]["reason"] == f"{device.id} blocked account-source:{SHARED}|alice"


@pytest.mark.asyncio
async def test_disown_is_rate_limited_per_account(tmp_path: Path) -> None:
    """A user disowning sign-in after sign-in (each a block that escalates, each
    a mail to the admins): past OWNER_REPORTS in the window nothing more is
    blocked, rejecting devices included; the sign-in is still marked and the
    page says why. carol's allowance is her own."""
    async with portal(tmp_path) as p:
        addresses = [f"203.0.113.{i}" for i in range(1, OWNER_REPORTS + 1)]
        ids = [_failed_sign_in(p, "alice", a) for a in addresses]
        await p.sign_in()
        for sign_in_id in ids:
            assert "is blocked" in (await _disown(p, sign_in_id)).text
        one_more = _failed_sign_in(p, "alice", "203.0.113.99")
        limited = await _disown(p, one_more)
        assert limited.status_code == 200
        assert "Nothing was blocked" in limited.text
        assert _verdict(p, "203.0.113.99", "alice") is Action.ALLOW
        disowned = p.store.get_sign_in("alice", one_more)
        assert disowned is not None
        assert disowned.disowned
        line = p.events()[-1]
        assert (line["action"], line["result"]) == ("disown", "ok")
        assert line["reason"] == f"{one_more} not blocked: {OWNER_REPORTS} reports in the window"
        assert p.events("disowned")[-1]["limited"] is True
        # A device rejection draws on the same allowance.
        key = DeviceKey("alice", "203.0.114.0/24", "Evil Mail", "1")
        device = p.store.add_pending_device(key, p.clock.now - 60, "203.0.114.5")
        page = await p.client.get("/devices")
        await p.post("/devices/reject", {"csrf": csrf_of(page), "id": device.id})
        assert p.store.get_device("alice", device.id) is None  # still removed
        assert _verdict(p, "203.0.114.5", "alice") is Action.ALLOW
        assert len(_blocked(p)) == 2 * OWNER_REPORTS  # each first report: pair and source
        # carol's reports are her own.
        carols = _failed_sign_in(p, "carol", "203.0.113.200")
        async with p.browser() as carol:
            await carol.sign_in("carol")
            assert "is blocked" in (await _disown(carol, carols)).text
        # A window on, alice may report again.
        p.clock.now += _defense(p).settings.window
        later = _failed_sign_in(p, "alice", "203.0.113.201")
        await p.sign_in()
        assert "is blocked" in (await _disown(p, later)).text


# -- 6. a flood of forged requests is one audit line a minute ----------------------


@pytest.mark.asyncio
async def test_audit_flood_foreign_origin_posts_write_one_line_a_minute(tmp_path: Path) -> None:
    """No sign-in needed: a script POSTs from a foreign origin as fast as the
    connection allows; every one is refused, one line is written."""
    async with portal(tmp_path) as p:
        for _ in range(50):
            refused = await p.post("/signin", {"username": "x"}, origin="https://evil.test")
            assert refused.status_code == 403
        csrf_lines = [e for e in p.events() if e.get("result") == "csrf"]
        assert len(csrf_lines) == 1
        assert csrf_lines[0]["src"] == "192.0.2.10"
        # Another source gets its own line.
        async with p.browser("198.51.100.60") as other:
            await other.post("/signin", {"username": "x"}, origin="https://evil.test")
        assert len([e for e in p.events() if e.get("result") == "csrf"]) == 2


def _conn(ip: str) -> HTTPConnection:
    return HTTPConnection({"type": "http", "client": (ip, 40000), "headers": []})


def test_refusal_audit_writes_one_line_a_minute_with_the_count_held_back() -> None:
    now = [1000.0]
    lines: list[tuple[str, str]] = []
    audit = RefusalAudit(
        lambda conn, reason: lines.append((conn.client.host if conn.client else "", reason)),
        clock=lambda: now[0],
        max_sources=3,
    )
    for _ in range(100):
        audit(_conn("203.0.113.9"), "no token")
    # The same IPv6 /64 is one source, as the rate limits count it.
    audit(_conn("2001:db8::1"), "no token")
    audit(_conn("2001:db8::2"), "no token")
    assert lines == [("203.0.113.9", "no token"), ("2001:db8::1", "no token")]
    now[0] += 60
    audit(_conn("203.0.113.9"), "wrong token")
    assert lines[-1] == ("203.0.113.9", "wrong token (99 more refused since the last line)")
    # Bounded: the least recently refused source is forgotten first.
    for i in range(10):
        audit(_conn(f"198.51.100.{i}"), "no token")
    assert len(audit) == 3


# -- 7. deeply nested JSON in a passkey answer ---------------------------------------


NESTED = "[" * 15_000
# Within the 64 KiB a passkey answer may have, inside clientDataJSON (parsed by
# py_webauthn itself, after our own parse of the outer JSON; it wraps the error).
NESTED_CLIENT_DATA = base64.urlsafe_b64encode(b"[" * 40_000).rstrip(b"=").decode()


def _nested_client_data(credential: str) -> str:
    document = json.loads(credential)
    document["response"]["clientDataJSON"] = NESTED_CLIENT_DATA
    return json.dumps(document)


@pytest.mark.asyncio
async def test_deeply_nested_passkey_json_is_a_counted_failure_not_a_500(tmp_path: Path) -> None:
    """json.loads of 15,000 "[" (within the 64 KiB body) raised RecursionError:
    a 500, no failure counted. Now it is refused like any bad passkey (and so
    is a nested clientDataJSON), at sign-in (where it counts towards the code
    failures that end the password session), at /confirm and at registration."""
    key = soft_key()
    async with portal(tmp_path, max_sign_ins_per_minute=100) as p:
        await p.sign_in()
        assert (await register_passkey(p, key)).status_code == 303
        async with p.browser() as other:
            assert (await other.password_step()).status_code == 303
            for _ in range(MAX_CODE_FAILURES - 2):
                await other.code_step("000000")
            for credential in (NESTED, "client data"):
                page = await other.client.get("/signin/code")
                options = await passkey_options(other, "/signin/passkey-options", page)
                assert options.status_code == 200
                if credential == "client data":
                    credential = _nested_client_data(key.sign(options.text).decode())
                answer = await other.post(
                    "/signin/code",
                    {"csrf": csrf_of(page), "method": "passkey", "credential": credential},
                )
                assert answer.status_code == 200
            assert "<h1>Sign in</h1>" in answer.text  # counted: the password session ended
            assert [s.level for s in p.store.live()] == ["full"]  # p's own only

        # /confirm, for a change that needs a fresh factor.
        p.clock.now += p.settings.fresh_factor + 1
        for credential in (NESTED, "client data"):
            page = await p.client.get("/confirm?next=/security/passkeys/new")
            options = await passkey_options(p, "/confirm/passkey-options", page)
            if credential == "client data":
                credential = _nested_client_data(key.sign(options.text).decode())
            form = {"csrf": csrf_of(page), "method": "passkey", "credential": credential}
            refused = await p.post("/confirm", form)
            assert refused.status_code == 200
            assert "That did not work" in refused.text
            assert p.events()[-1]["action"] == "confirm"
            assert p.events()[-1]["result"] == "failed"

        # Registration, with a fresh factor (the code, this time).
        page = await p.client.get("/confirm")
        fresh = await p.post("/confirm", {"csrf": csrf_of(page), "method": "totp", "code": CODE})
        assert fresh.status_code == 303
        for credential in (NESTED, "client data"):
            page = await p.client.get("/security/passkeys/new")
            options = await passkey_options(p, "/security/passkeys/options", page)
            assert options.status_code == 200
            if credential == "client data":
                credential = _nested_client_data(key.register(options.text).decode())
            form = {"csrf": csrf_of(page), "name": "Deep", "credential": credential}
            refused = await p.post("/security/passkeys", form)
            assert refused.status_code == 200
            assert "The passkey was refused." in refused.text
            line = p.events()[-1]
            assert (line["action"], line["result"]) == ("passkey_add", "failed")
        assert [k.name for k in p.store.list_passkeys("alice")] == ["Laptop"]


# -- 8. webauthn.js, the connection limits, concurrent creates -----------------------

_NODE_HARNESS = textwrap.dedent(
    """
    const fs = require("fs");
    const vm = require("vm");
    const [script, where] = process.argv.slice(1);  // node -e CODE SCRIPT WHERE
    const assigned = [];
    let submit = null;
    const form = {
      dataset: { webauthn: "get", options: "/signin/passkey-options" },
      querySelector(selector) {
        if (selector === ".webauthn-status") return { textContent: "" };
        return { value: selector === "input[name=credential]" ? "" : "token" };
      },
      addEventListener(kind, handler) { submit = handler; },
    };
    const context = {
      URL,
      console,
      window: {
        PublicKeyCredential: { parseCreationOptionsFromJSON() {} },
        location: { origin: "https://portal.test", assign(url) { assigned.push(url); } },
      },
      PublicKeyCredential: { parseCreationOptionsFromJSON() {} },
      document: {
        addEventListener(kind, handler) { handler(); },
        querySelectorAll() { return [form]; },
      },
      fetch: async () => ({
        ok: false,
        redirected: false,
        json: async () => ({ location: JSON.parse(where) }),
      }),
    };
    vm.runInNewContext(fs.readFileSync(script, "utf8"), context);
    submit({ currentTarget: form, preventDefault() {} });
    setTimeout(() => process.stdout.write(JSON.stringify(assigned)), 50);
    """
)


def _followed(location: str) -> list[str]:
    """Where static/webauthn.js sends the browser when the options request
    answers 401 with this `location` (run in node, as the script is)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    done = subprocess.run(
        [node, "-e", _NODE_HARNESS, str(STATIC / "webauthn.js"), json.dumps(location)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    followed: list[str] = json.loads(done.stdout)
    return followed


@pytest.mark.parametrize(
    "location",
    [
        "/\\evil.example/x",
        "//evil.example/x",
        "/\t/evil.example/x",
        "/\n/evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "evil",
    ],
)
def test_webauthn_js_refuses_a_location_that_leaves_the_portal(location: str) -> None:
    assert _followed(location) == []


def test_webauthn_js_follows_a_path_of_the_portal() -> None:
    assert _followed("/confirm?next=/security/passkeys/new") == [
        "/confirm?next=/security/passkeys/new"
    ]


def test_a_few_sources_cannot_take_every_portal_connection() -> None:
    """At 200 connections and 32 per source, seven sources held them all."""
    assert serve.MAX_PER_SOURCE <= 16  # a browser opens six, a live view one more
    assert serve.LIMIT_CONCURRENCY // serve.MAX_PER_SOURCE >= 64


def test_the_portal_raises_its_open_file_limit_for_its_connections() -> None:
    """With the common soft limit of 1,024 open files, 1,024 connections would
    fail to be accepted (EMFILE) before `LIMIT_CONCURRENCY` answered 503."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit on open files is {hard}")
    code = (
        "import resource; from imapguard.portal.serve import open_files;"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1];"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard));"
        "print(open_files(2048), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.split() == ["2048", "2048"]


@pytest.mark.asyncio
async def test_concurrent_creates_cannot_go_past_the_app_password_limit(tmp_path: Path) -> None:
    """A stolen session (or several tabs) fires creates at once, the store on
    its own thread as in the gateway: a count and then an insert let each see
    49 and all get in. The store counts and inserts in one transaction, so the
    limit holds; the ones past it get the page saying so and store nothing."""
    with ThreadPoolExecutor(1) as store_thread:
        async with portal(tmp_path, executor=store_thread) as p:
            await p.sign_in()
            key = p.deps.services.app_password_key if p.deps.services else b""
            for i in range(MAX_APP_PASSWORDS - 1):
                app_passwords.create(p.store, key, "alice", f"old {i}", p.clock.now)
            token = csrf_of(await p.client.get("/app-passwords"))
            answers = await asyncio.gather(
                *(p.post("/app-passwords", {"csrf": token, "label": f"new {i}"}) for i in range(5))
            )
            assert sorted(a.status_code for a in answers) == [200, 409, 409, 409, 409]
            assert len(p.store.list_app_passwords("alice")) == MAX_APP_PASSWORDS
            assert len([e for e in p.events() if e.get("result") == "limit"]) == 4

"""`imapguard user invite` and `imapguard user revoke`: links that work once,
all or none from a file, mail only to the account's own address, the token in
no log, the whole account's access revoked and published."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from imapguard.auth import invites
from imapguard.cli import main
from imapguard.compose import keys
from imapguard.config import load_config
from imapguard.state.sqlite import SqliteStore
from tests.sinks import SmtpSink
from tests.unit.test_cli import config as base_config

config = base_config
_LINK = re.compile(r"https://portal\.test/invite/([A-Za-z0-9_-]{43})")


@pytest.fixture
def portal_config(config: Path) -> Path:
    config.write_text(
        config.read_text() + '\n[portal]\nlisten = "127.0.0.1:18443"\nurl = "https://portal.test"\n'
    )
    return config


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _invite_from_file(
    capsys: pytest.CaptureFixture[str], config: Path, listing: Path, text: str, *options: str
) -> tuple[int, str, str]:
    """`imapguard user invite --from-file LISTING [options]`, `text` written to LISTING."""
    listing.write_text(text)
    argv = ["user", "invite", "--from-file", str(listing), *options, "--config", str(config)]
    return _run(capsys, *argv)


def _store(path: Path) -> SqliteStore:
    return SqliteStore(str(path.parent / "state.db"))


def _redeem(path: Path, token: str, now: float | None = None, user: str = "alice") -> str | None:
    """The account the link was spent for (tried for `user`), or None."""
    key = keys(load_config(str(path), check_files=False)).portal_invite
    store = _store(path)
    try:
        used = invites.redeem(store, key, token, user, time.time() if now is None else now)
        return user if used else None
    finally:
        store.close()


def _audit(path: Path) -> list[dict[str, Any]]:
    lines = (path.parent / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "admin"]


def test_invite_prints_a_link_that_works_once_and_logs_who_invited_whom(
    capsys: pytest.CaptureFixture[str], portal_config: Path
) -> None:
    code, out, err = _run(capsys, "user", "invite", "Alice", "--config", str(portal_config))
    assert code == 0, err
    (token,) = _LINK.findall(out)
    assert out.startswith("alice\t")
    (line,) = _audit(portal_config)
    assert (line["user"], line["action"], line["result"]) == ("alice", "invite", "ok")
    assert line["actor"]
    assert token not in (portal_config.parent / "audit.jsonl").read_text()
    assert _redeem(portal_config, token) == "alice"
    assert _redeem(portal_config, token) is None


def test_invite_reset_removes_the_factors_and_ends_the_portal_sessions(
    capsys: pytest.CaptureFixture[str], portal_config: Path
) -> None:
    store = _store(portal_config)
    try:
        store.set_totp("alice", b"sealed", 1.0)
        store.add_passkey("alice", b"cred-1", b"key", 0, "Phone", "", 1.0)
        store.set_recovery_codes("alice", [b"r" * 32], 1.0)
        store.create_portal_session("alice", b"t" * 32, "full", 1.0, 2e9, "192.0.2.1", "UA")
        store.set_totp("bob", b"bobs", 1.0)
    finally:
        store.close()
    code, out, err = _run(
        capsys, "user", "invite", "alice", "--reset", "--config", str(portal_config)
    )
    assert code == 0, err
    (token,) = _LINK.findall(out)
    reset, issued = _audit(portal_config)
    assert (reset["action"], reset["user"], reset["result"]) == ("reset_factors", "alice", "ok")
    assert reset["reason"] == (
        "removed TOTP, 1 passkey(s) and the recovery codes; ended 1 portal session(s)"
    )
    assert issued["action"] == "invite"
    store = _store(portal_config)
    try:
        assert store.get_totp("alice") is None
        assert store.list_passkeys("alice") == []
        assert store.count_recovery_codes("alice") == 0
        assert store.list_portal_sessions("alice", 0.0) == []
        assert store.get_totp("bob") is not None  # nobody else's
    finally:
        store.close()
    assert _redeem(portal_config, token) == "alice"


def test_invite_reset_takes_one_named_account_not_a_file(
    capsys: pytest.CaptureFixture[str], portal_config: Path, tmp_path: Path
) -> None:
    listing = tmp_path / "accounts.txt"
    code, out, err = _invite_from_file(capsys, portal_config, listing, "alice\nbob\n", "--reset")
    assert code != 0
    assert "--reset" in err
    assert out == ""


def test_invite_ttl_bounds_the_link(
    capsys: pytest.CaptureFixture[str], portal_config: Path
) -> None:
    code, out, _ = _run(
        capsys, "user", "invite", "alice", "--ttl", "1h", "--json", "--config", str(portal_config)
    )
    assert code == 0
    (doc,) = json.loads(out)
    token = _LINK.fullmatch(doc["link"]).group(1)  # type: ignore[union-attr]
    assert abs(doc["expires_at"] - time.time() - 3600) < 60
    assert _redeem(portal_config, token, time.time() + 3700) is None
    assert _redeem(portal_config, token) == "alice"
    for bad in ("1s", "31d", "soon", "-1h"):
        with pytest.raises(SystemExit):
            main(["user", "invite", "alice", "--ttl", bad, "--config", str(portal_config)])


def test_invite_from_file_issues_all_in_order_once_each(
    capsys: pytest.CaptureFixture[str], portal_config: Path, tmp_path: Path
) -> None:
    listing = tmp_path / "accounts.txt"
    names = [f"user{n}" for n in range(2000)]
    text = "# first-year students\n\n" + "\n".join([*names, "User1"]) + "\n"
    code, out, err = _invite_from_file(capsys, portal_config, listing, text)
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[0] for r in rows] == names
    assert len({r[1] for r in rows}) == 2000
    assert len(_audit(portal_config)) == 2000
    last = _LINK.fullmatch(rows[1999][1]).group(1)  # type: ignore[union-attr]
    assert _redeem(portal_config, last, user="user1999") == "user1999"


def test_invite_from_file_with_a_bad_line_invites_nobody(
    capsys: pytest.CaptureFixture[str], portal_config: Path, tmp_path: Path
) -> None:
    listing = tmp_path / "accounts.txt"
    code, out, err = _invite_from_file(
        capsys, portal_config, listing, "alice\nbad name\u202e\nbob\n"
    )
    assert code == 2
    assert f"{listing}:2: invalid user name" in err
    assert "nothing was invited" in err
    assert out == ""
    store = _store(portal_config)
    try:
        assert store.list_users() == []
    finally:
        store.close()


def test_invite_store_failure_leaves_no_invitation_behind(
    capsys: pytest.CaptureFixture[str],
    portal_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = invites.issue
    issued: list[str] = []

    def failing(store: Any, key: bytes, user: str, now: float, lifetime: float) -> str:
        if user == "carol":
            raise invites_error()
        token = real(store, key, user, now, lifetime)
        issued.append(token)
        return token

    monkeypatch.setattr(invites, "issue", failing)
    listing = tmp_path / "accounts.txt"
    code, out, err = _invite_from_file(capsys, portal_config, listing, "alice\nbob\ncarol\n")
    assert code == 1
    assert "state store" in err
    assert out == ""
    assert len(issued) == 2
    for token, user in zip(issued, ["alice", "bob"], strict=True):
        assert _redeem(portal_config, token, user=user) is None


def invites_error() -> Exception:
    from imapguard.errors import StateUnavailable

    return StateUnavailable("add_invite", "disk I/O error")


def test_invite_needs_the_portal(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, err = _run(capsys, "user", "invite", "alice", "--config", str(config))
    assert code == 2
    assert "[portal]" in err


def test_invite_mail_goes_only_to_the_accounts_own_address(
    capsys: pytest.CaptureFixture[str], portal_config: Path, tmp_path: Path
) -> None:
    """Redirection: an address in the file is an invalid account name, never a
    recipient; each link goes to the address the account name makes."""
    with SmtpSink() as sink:
        portal_config.write_text(
            portal_config.read_text()
            + f'[notify]\nsmtp_host = "127.0.0.1"\nsmtp_port = {sink.port}\nsmtp_tls = "none"\n'
            'mail_from = "imapguard@example.org"\nowner_address = "{user}@example.org"\n'
        )
        listing = tmp_path / "accounts.txt"
        code, out, err = _invite_from_file(capsys, portal_config, listing, "alice\nbob\n", "--mail")
        assert code == 0, err
        mails = sink.wait_for(2)
    assert _LINK.search(out) is None  # mailed, not printed
    by_rcpt = {m.rcpt_tos: m for m in mails}
    assert set(by_rcpt) == {("alice@example.org",), ("bob@example.org",)}
    body = by_rcpt[("alice@example.org",)].message.get_content()
    (token,) = _LINK.findall(body)
    assert token not in (portal_config.parent / "audit.jsonl").read_text()
    assert [e["result"] for e in _audit(portal_config)] == ["mailed", "mailed"]
    assert _redeem(portal_config, token) == "alice"
    # An address given as the account is no account: nothing is mailed anywhere.
    text = "alice\nmallory@evil.test, alice\n"
    code, _, err = _invite_from_file(capsys, portal_config, listing, text, "--mail")
    assert code == 2
    assert ":2: invalid user name" in err


def test_revoke_removes_all_access_and_publishes_it(
    capsys: pytest.CaptureFixture[str], portal_config: Path
) -> None:
    store = _store(portal_config)
    try:
        store.add_app_password("alice", "phone", b"d" * 32, time.time())
        store.add_app_password("bob", "phone", b"e" * 32, time.time())
        before = store.last_revocation()
    finally:
        store.close()
    code, out, err = _run(capsys, "user", "revoke", "alice", "--config", str(portal_config))
    assert code == 0, err
    assert "revoked all access of alice" in out
    store = _store(portal_config)
    try:
        assert store.list_app_passwords("alice") == []
        assert len(store.list_app_passwords("bob")) == 1
        (published,) = store.revocations_after(before, 10)
        assert (published.user, published.credential) == ("alice", None)
    finally:
        store.close()
    (line,) = _audit(portal_config)
    assert (line["user"], line["action"], line["result"]) == ("alice", "revoke", "ok")
    # Nothing left: exit 1, nothing published.
    code, _, _ = _run(capsys, "user", "revoke", "alice", "--config", str(portal_config))
    assert code == 1
    assert _audit(portal_config)[-1]["result"] == "none"

"""The console script: exit codes, --json documents, plain output on a pipe."""

from __future__ import annotations

import json
import re
import secrets
import sys
from pathlib import Path

import pytest

from imapguard.audit import AuditLog, events
from imapguard.cli import main
from imapguard.secret import Secret
from tests.pem import write_pair


@pytest.fixture
def config(tmp_path: Path) -> Path:
    write_pair(tmp_path / "cert.pem", tmp_path / "key.pem")
    key = tmp_path / "server.key"
    key.write_bytes(secrets.token_bytes(32))
    key.chmod(0o600)
    master = tmp_path / "master"
    master.write_text("pw")
    master.chmod(0o600)
    path = tmp_path / "imapguard.toml"
    path.write_text(
        f"""
[state]
url = "sqlite:///{tmp_path}/state.db"
key_file = "{key}"
[[listen]]
address = "127.0.0.1:10993"
tls = "implicit"
[tls]
certificate = "{tmp_path}/cert.pem"
private_key = "{tmp_path}/key.pem"
[upstream]
address = "127.0.0.1:143"
tls = "none"
master_user = "imapguard"
master_password_file = "{master}"
[audit]
path = "{tmp_path}/audit.jsonl"
"""
    )
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [
        ["demo"],
        ["serve"],
        ["portal"],
        ["check-config"],
        ["user", "list"],
        ["user", "show"],
        ["app-password", "create"],
        ["app-password", "list"],
        ["app-password", "revoke"],
        ["totp", "enroll"],
        ["totp", "remove"],
        ["device", "list"],
        ["device", "approve"],
        ["device", "revoke"],
        ["user", "unlock"],
        ["user", "invite"],
        ["user", "revoke"],
        ["blocks", "list"],
        ["blocks", "clear"],
        ["policy", "explain"],
        ["events"],
    ]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: imapguard" in capsys.readouterr().out


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["app-password", "create", "alice"])  # --label is required
    assert exit_info.value.code == 2
    assert "--label" in capsys.readouterr().err


def test_check_config(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    assert _run(capsys, "check-config", "--config", str(config))[0] == 0
    config.write_text(config.read_text() + '[auth]\nmethods = ["sms"]\nfoo = 1\n')
    code, _, err = _run(capsys, "check-config", "--config", str(config))
    assert code == 2
    assert "config error: auth.foo: unknown key" in err
    assert "auth.methods[0]" in err


def test_counters_url_to_another_host_without_tls_is_refused_by_check_config(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    text = config.read_text()
    config.write_text(text.replace("[state]\n", '[state]\ncounters_url = "redis://10.0.0.5/0"\n'))
    code, _out, err = _run(capsys, "check-config", "--config", str(config))
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("config error: state.counters_url: plain redis:// to another host")
    assert "10.0.0.5" not in err
    config.write_text(
        text.replace("[state]\n", '[state]\ncounters_url = "redis://127.0.0.1:6379/0"\n')
    )
    assert _run(capsys, "check-config", "--config", str(config))[0] == 0


def test_config_from_environment(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAPGUARD_CONFIG", str(config))
    assert _run(capsys, "check-config")[0] == 0
    monkeypatch.setenv("IMAPGUARD_CONFIG", str(config.parent / "missing.toml"))
    code, _, err = _run(capsys, "check-config")
    assert code == 2
    assert "--config: file not found" in err


def test_app_password_create_list_revoke(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    cfg = ("--config", str(config))
    code, out, _ = _run(
        capsys, "app-password", "create", "Alice", "--label", "phone", "--json", *cfg
    )
    assert code == 0
    created = json.loads(out)
    assert set(created) == {"id", "label", "password"}
    assert len(created["password"]) == 34
    code, out, _ = _run(capsys, "app-password", "list", "alice", "--json", *cfg)
    listed = json.loads(out)
    assert [r["id"] for r in listed] == [created["id"]]
    assert created["password"] not in out
    assert created["password"].encode() not in (config.parent / "state.db").read_bytes()
    code, out, _ = _run(capsys, "app-password", "list", "alice", *cfg)
    assert out.splitlines()[0].split("\t")[:2] == ["id", "label"]  # plain on a pipe
    assert _run(capsys, "app-password", "revoke", "alice", created["id"], *cfg)[0] == 0
    code, _, err = _run(capsys, "app-password", "revoke", "alice", created["id"], *cfg)
    assert code == 1
    assert "no app password" in err


def test_app_password_from_the_cli_is_the_one_the_gateway_checks(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """The CLI derives its keys through the composition root, as the gateway does:
    a password it prints is found by the digest the auth service computes."""
    from imapguard import compose
    from imapguard.auth import app_passwords
    from imapguard.config import load_config

    cfg = ("--config", str(config))
    code, out, _ = _run(capsys, "app-password", "create", "alice", "--label", "x", "--json", *cfg)
    assert code == 0
    password = json.loads(out)["password"].encode()
    loaded = load_config(config, check_files=False)
    normalized = app_passwords.normalize(Secret(password))
    assert normalized is not None
    digest = app_passwords.digest(compose.keys(loaded).app_password, "alice", normalized)
    store = compose.account_store(loaded)
    try:
        assert store.find_app_password("alice", digest) is not None
        wrong = app_passwords.digest(compose.keys(loaded).totp_seal, "alice", normalized)
        assert store.find_app_password("alice", wrong) is None
    finally:
        store.close()


@pytest.mark.parametrize("problem", ["missing", "short"])
def test_a_bad_server_key_is_one_line_naming_state_key_file(
    capsys: pytest.CaptureFixture[str], config: Path, problem: str
) -> None:
    key = config.parent / "server.key"
    if problem == "missing":
        key.unlink()
    else:
        key.write_bytes(b"short")
    for argv in (
        ("app-password", "create", "alice", "--label", "x"),
        ("totp", "enroll", "alice"),
        ("blocks", "list"),
    ):
        code, _, err = _run(capsys, *argv, "--config", str(config))
        assert code != 0, argv
        assert "state.key_file" in err, argv
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


def test_totp_enroll_remove(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    cfg = ("--config", str(config))
    code, out, _ = _run(capsys, "totp", "enroll", "Alice", "--json", *cfg)
    assert code == 0
    enrolled = json.loads(out)
    assert enrolled["uri"].startswith("otpauth://totp/imapguard:alice?secret=")
    assert enrolled["secret"] in enrolled["uri"]
    assert enrolled["secret"].encode() not in (config.parent / "state.db").read_bytes()
    # A second enrollment would break the user's authenticator: only with --replace.
    code, _, err = _run(capsys, "totp", "enroll", "alice", *cfg)
    assert code == 1
    assert "--replace" in err
    code, out, _ = _run(capsys, "totp", "enroll", "alice", "--replace", *cfg)
    assert code == 0
    assert "otpauth://" in out
    assert "\u2588" in out or "\u2580" in out or "\u2584" in out  # the QR code
    shown = json.loads(_run(capsys, "user", "show", "alice", "--json", *cfg)[1])
    assert shown["totp"]["locked_until"] is None
    assert _run(capsys, "totp", "remove", "alice", *cfg)[0] == 0
    assert _run(capsys, "totp", "remove", "alice", *cfg)[0] == 1


def test_device_commands_on_unknown_ids(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    cfg = ("--config", str(config))
    assert json.loads(_run(capsys, "device", "list", "alice", "--json", *cfg)[1]) == []
    code, out, _ = _run(capsys, "device", "approve", "alice", "nope", "--json", *cfg)
    assert (code, json.loads(out)) == (1, {"id": "nope", "approved": False})
    code, _, err = _run(capsys, "device", "revoke", "alice", "nope", *cfg)
    assert code == 1
    assert "no device nope" in err


def test_blocks_list_clear_and_unlock(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    import time

    from imapguard.defense.counters import Block, Target, TargetKind
    from imapguard.state import open_store

    cfg = ("--config", str(config))
    store = open_store(f"sqlite:///{config.parent}/state.db")
    now = time.time()
    for target in (
        Target(TargetKind.SOURCE, "203.0.113.9"),
        Target(TargetKind.NETWORK, "198.51.100.0/24"),
        Target(TargetKind.ACCOUNT_UNFAMILIAR, "alice"),
    ):
        store.block_put(Block(target, "test", 1, now, now + 600))
    store.close()
    code, out, _ = _run(capsys, "blocks", "list", "--json", *cfg)
    assert code == 0
    assert sorted(b["target"] for b in json.loads(out)) == [
        "account-unfamiliar:alice",
        "network:198.51.100.0/24",
        "source:203.0.113.9",
    ]
    # An address or a network is enough; KIND:VALUE works for the rest.
    assert _run(capsys, "blocks", "clear", "203.0.113.9", *cfg)[0] == 0
    assert _run(capsys, "blocks", "clear", "198.51.100.7/24", *cfg)[0] == 0
    assert _run(capsys, "blocks", "clear", "203.0.113.9", *cfg)[0] == 1
    assert _run(capsys, "blocks", "clear", "bogus:x", *cfg)[0] == 2
    code, out, _ = _run(capsys, "user", "unlock", "Alice", "--json", *cfg)
    assert code == 0
    assert json.loads(out)["lifted"] == ["account-unfamiliar:alice"]
    assert json.loads(_run(capsys, "blocks", "list", "--json", *cfg)[1]) == []


def test_user_list_and_show(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    cfg = ("--config", str(config))
    _run(capsys, "app-password", "create", "bob", "--label", "laptop", *cfg)
    code, out, _ = _run(capsys, "user", "list", "--json", *cfg)
    assert code == 0
    assert [(u["name"], u["app_passwords"]) for u in json.loads(out)] == [("bob", 1)]
    code, out, _ = _run(capsys, "user", "show", "bob", *cfg)
    assert code == 0
    assert "laptop" in out
    code, _, err = _run(capsys, "user", "show", "nobody", *cfg)
    assert code == 1
    assert "no such user" in err
    assert _run(capsys, "user", "show", "bad name", *cfg)[0] == 2


def test_events(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    log = AuditLog(str(config.parent / "audit.jsonl"))
    log.emit(
        events.Auth(
            session="s1",
            src="192.0.2.1",
            listener="l",
            mechanism="LOGIN",
            user="alice",
            result="invalid",
            reason="x",
        )
    )
    log.close()
    code, out, _ = _run(capsys, "events", "--config", str(config))
    assert code == 0
    assert "auth" in out
    assert "user=alice" in out
    assert "result=invalid" in out
    code, out, _ = _run(capsys, "events", "--json", "--config", str(config))
    assert json.loads(out)[0]["session"] == "s1"


# -- stored and client-supplied text on a terminal ------------------------------------

MARKUP = "x[/x]"  # rich markup: a closing tag that matches no opening one
STYLED = "[bold red]spoofed[/bold red]"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard output (capsys's, once the test runs) looks like a terminal, so
    records print as rich tables."""
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)


def _seed_hostile_store(config: Path) -> str:
    """Markup, an escape sequence and a bidi override in every stored text column
    that a table shows: labels, client IDs, addresses, methods, block reasons and
    targets, and an account name (as an older version may have stored it: the
    store takes any name). Returns an account the CLI accepts as an argument,
    whose records carry the hostile text."""
    import time

    from imapguard.defense.counters import Block, Target, TargetKind
    from imapguard.state import open_store
    from imapguard.state.sqlite import DeviceKey

    user = "alice"
    now = time.time()
    store = open_store(f"sqlite:///{config.parent}/state.db")
    record = store.add_app_password(user, STYLED, b"d" * 32, now)
    store.record_app_password_use(record.id, now, "203.0.113.9", f"{MARKUP}\x1b[2J/1")
    store.record_login(user, now, f"[link=https://evil.example]{MARKUP}", "[/]")
    store.record_login(MARKUP, now, "203.0.113.9", "app-password")
    store.add_pending_device(
        DeviceKey(user, "203.0.113.0/24", f"{MARKUP}\u202e", "[/version]"), now, "203.0.113.9"
    )
    for target in (
        Target(TargetKind.ACCOUNT_UNFAMILIAR, MARKUP),
        Target(TargetKind.ACCOUNT_SOURCE, f"203.0.113.9|{MARKUP}"),
    ):
        store.block_put(Block(target, f"failures {STYLED} {MARKUP}", 1, now, now + 600))
    store.close()
    return user


def test_rich_markup_injection_in_every_table(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored text with rich markup is printed as it is, not parsed: `x[/x]` used
    to crash `blocks list` with a MarkupError, `[bold red]` to style a cell."""
    cfg = ("--config", str(config))
    user = _seed_hostile_store(config)
    _terminal(monkeypatch)
    for argv, expected in (
        (("blocks", "list"), [f"account-unfamiliar:{MARKUP}", STYLED]),
        (("user", "list"), [MARKUP, "[link=https://evil.example]", "[/]"]),
        (("app-password", "list", user), [STYLED, f"{MARKUP}\\x1b[2J/1"]),
        (("device", "list", user), [f"{MARKUP}\\u202e [/version]"]),
    ):
        code, out, err = _run(capsys, *argv, *cfg)
        assert (code, err) == (0, ""), argv
        shown = ANSI.sub("", out)
        assert "\u2503" in shown or "\u2502" in shown or "\u2501" in shown, argv  # a table
        for text in expected:
            assert text in shown, (argv, text, shown)
        # No byte of the stored escape sequence or bidi override reaches the terminal
        # (rich's own styles are the only escape sequences).
        assert "\x1b[2J" not in out
        assert "\u202e" not in out


def test_stored_text_on_a_pipe_and_in_user_show(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """Tab-separated output: a tab or line feed in a stored value cannot forge a
    cell or a row; escape sequences are shown as escapes."""
    cfg = ("--config", str(config))
    user = _seed_hostile_store(config)
    from imapguard.state import open_store

    store = open_store(f"sqlite:///{config.parent}/state.db")
    store.add_app_password(user, "a\tb\nc", b"e" * 32, 0.0)
    store.close()
    code, out, _ = _run(capsys, "app-password", "list", user, *cfg)
    assert code == 0
    rows = out.splitlines()
    assert len(rows) == 3  # header and two passwords
    assert all(len(row.split("\t")) == 6 for row in rows)
    assert "a\\x09b\\x0ac" in out
    assert "\x1b" not in out
    code, out, _ = _run(capsys, "user", "show", user, *cfg)
    assert code == 0
    assert f"from [link=https://evil.example]{MARKUP} ([/])" in out
    assert f"  {STYLED}  created" in out
    assert "  a\\x09b\\x0ac  created" in out
    assert "\x1b" not in out
    assert "\u202e" not in out


def test_events_show_control_characters_as_escapes(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """An audit field cannot clear the screen, reorder the line or start a forged
    event line of its own."""
    # The gateway's AuditLog already makes such characters "?" (text.clean);
    # a log written otherwise (by hand, by an older version) is shown escaped.
    record = {
        "ts": 1.0,
        "event": "auth",
        "session": "s1",
        "user": "alice",
        "client_id": "mutt\u202e\u2028fake  auth  result=ok",
        "reason": MARKUP,
    }
    (config.parent / "audit.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n")
    code, out, _ = _run(capsys, "events", "--config", str(config))
    assert code == 0
    assert len(out.splitlines()) == 1
    assert "client_id=mutt\\u202e\\u2028fake" in out
    assert f"reason={MARKUP}" in out


def test_check_config_on_client_crls(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    import datetime

    import trustme

    from tests.unit.test_tls import NOW, crl

    ca = trustme.CA()
    ca_file, crl_file = config.parent / "devices-ca.pem", config.parent / "devices.crl"
    ca.cert_pem.write_to_path(str(ca_file))
    text = config.read_text()
    config.write_text(text.replace("[tls]\n", f'[tls]\nclient_crl = "{crl_file}"\n'))
    code, _, err = _run(capsys, "check-config", "--config", str(config))
    assert code == 2
    assert "config error: tls.client_crl: needs tls.client_ca" in err
    config.write_text(
        text.replace("[tls]\n", f'[tls]\nclient_ca = "{ca_file}"\nclient_crl = "{crl_file}"\n')
    )
    crl_file.write_bytes(crl(ca) + ca.cert_pem.bytes())
    code, _, err = _run(capsys, "check-config", "--config", str(config))
    assert code == 2
    assert "config error: tls.client_crl: " in err
    assert "'CERTIFICATE' block" in err
    day = datetime.timedelta(days=1)
    crl_file.write_bytes(crl(ca, last=NOW - 2 * day, next_=NOW - day))
    code, _, err = _run(capsys, "check-config", "--config", str(config))
    assert code == 0, err
    assert "warning: tls.client_crl: the CRL of " in err
    assert "expired at" in err
    crl_file.write_bytes(crl(ca))
    code, _, err = _run(capsys, "check-config", "--config", str(config))
    assert (code, err) == (0, "")


def test_check_config_on_unverified_email(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    text = config.read_text() + '[oauth]\nissuer = "https://idp.example.org"\naudience = "imap"\n'
    config.write_text(text)
    assert _run(capsys, "check-config", "--config", str(config))[:3:2] == (0, "")
    config.write_text(text + "trust_unverified_email = true\n")
    code, _, err = _run(capsys, "check-config", "--config", str(config))
    assert code == 0
    assert "warning: oauth.trust_unverified_email: " in err
    assert "nOAuth" in err
    config.write_text(text + 'trust_unverified_email = "yes"\n')
    code, _, err = _run(capsys, "check-config", "--config", str(config))
    assert (code, err.split(":")[:2]) == (2, ["config error", " oauth.trust_unverified_email"])
    config.write_text(text + 'trust_unverified_email = true\nusername_claim = "sub"\n')
    code, _, err = _run(capsys, "check-config", "--config", str(config))
    assert code == 2
    assert 'oauth.trust_unverified_email: applies only to username_claim = "email"' in err


def test_portal_without_a_portal_section_names_it(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, _, err = _run(capsys, "portal", "--config", str(config))
    assert code == 2
    assert err.startswith("config error: portal: ")
    assert "Traceback" not in err


def test_check_config_warns_when_no_admin_can_reach_the_admin_pages(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    portal = '\n[portal]\nlisten = "127.0.0.1:8443"\nurl = "https://portal.test"\n'
    config.write_text(config.read_text() + portal)
    code, _, err = _run(capsys, "check-config", "--config", str(config))
    assert code == 0
    assert "warning: portal.admin_group: there is no [groups] section" in err
    config.write_text(config.read_text() + '[groups]\nadmins = ["root"]\n')
    code, _, err = _run(capsys, "check-config", "--config", str(config))
    assert (code, err) == (0, "")

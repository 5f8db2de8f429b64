"""Configuration: typed, validated at load, every problem named by its key path."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from imapguard.config import load_config, parse_address
from imapguard.errors import ConfigError
from tests.pem import write_pair


def _files(tmp_path: Path) -> dict[str, Path]:
    cert, key, server_key, master = (
        tmp_path / "cert.pem",
        tmp_path / "key.pem",
        tmp_path / "server.key",
        tmp_path / "master.secret",
    )
    write_pair(cert, key)
    server_key.write_bytes(secrets.token_bytes(32))
    master.write_text("pw\n")
    for path in (key, server_key, master):
        path.chmod(0o600)
    return {"cert": cert, "key": key, "server_key": server_key, "master": master}


def _write(tmp_path: Path, body: str, *, upstream: str | None = None, auth: str = "") -> Path:
    f = _files(tmp_path)
    if upstream is None:
        upstream = f"""
[upstream]
address = "127.0.0.1:143"
tls = "none"
login = "master"
master_user = "imapguard"
master_password_file = "{f["master"]}"
"""
    path = tmp_path / "imapguard.toml"
    path.write_text(
        f"""
[state]
url = "sqlite:///{tmp_path}/state.db"
key_file = "{f["server_key"]}"

[[listen]]
address = "127.0.0.1:993"
tls = "implicit"

[tls]
certificate = "{f["cert"]}"
private_key = "{f["key"]}"

[audit]
path = "{tmp_path}/audit.jsonl"
{upstream}
{auth}
{body}
"""
    )
    return path


def _problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return dict(info.value.problems)


def test_valid_config_loads(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""))
    assert config.upstream.login == "master"
    assert config.auth.methods == ["app-password"]
    assert config.limits.max_line == 8192
    assert config.listen[0].tls == "implicit"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, "[limits]\nmax_lines = 5\n"))
    assert problems == {"limits.max_lines": "unknown key"}


def test_bad_enum_in_a_list_is_named_with_its_index(tmp_path: Path) -> None:
    body = '[[listen]]\naddress = "127.0.0.1:143"\ntls = "none"\n'
    problems = _problems(_write(tmp_path, body))
    assert list(problems) == ["listen[1].tls"]
    assert "implicit" in problems["listen[1].tls"]


def test_passthrough_with_app_passwords_is_refused(tmp_path: Path) -> None:
    upstream = '[upstream]\naddress = "127.0.0.1:143"\ntls = "none"\nlogin = "passthrough"\n'
    problems = _problems(_write(tmp_path, "", upstream=upstream))
    assert "upstream.login" in problems
    assert "master" in problems["upstream.login"]


def test_plaintext_upstream_to_a_remote_host_needs_insecure(tmp_path: Path) -> None:
    f = _files(tmp_path)
    upstream = (
        f'[upstream]\naddress = "10.0.0.5:143"\ntls = "none"\nmaster_user = "m"\n'
        f'master_password_file = "{f["master"]}"\n'
    )
    problems = _problems(_write(tmp_path, "", upstream=upstream))
    assert list(problems) == ["upstream.tls"]
    ok = _write(tmp_path, "", upstream=upstream + "insecure = true\n")
    assert load_config(ok).upstream.insecure is True


@pytest.mark.parametrize("method", ["oauthbearer", "xoauth2"])
def test_oauth_methods_need_an_oauth_section(tmp_path: Path, method: str) -> None:
    auth = f'[auth]\nmethods = ["app-password", "{method}"]\n'
    problems = _problems(_write(tmp_path, "", auth=auth))
    assert list(problems) == ["oauth"]
    ok = _write(
        tmp_path,
        '[oauth]\nissuer = "https://idp.example.org"\naudience = "imap"\n',
        auth=auth,
    )
    assert load_config(ok).oauth is not None


def test_local_names_with_oauth_need_the_domains_that_are_ours(tmp_path: Path) -> None:
    # Else a token for alice@another.example cannot be told from the local alice.
    oauth = '[oauth]\nissuer = "https://idp.example.org"\naudience = "imap"\n'
    auth = '[auth]\nmethods = ["app-password", "oauthbearer"]\nusername_format = "local"\n'
    problems = _problems(_write(tmp_path, oauth, auth=auth))
    assert list(problems) == ["auth.realms"]
    ok = _write(tmp_path, oauth, auth=auth + 'realms = ["example.org"]\n')
    assert load_config(ok).auth.realms == ["example.org"]


def test_oauth_issuer_must_be_https(tmp_path: Path) -> None:
    body = '[oauth]\nissuer = "http://idp.example.org"\naudience = "imap"\n'
    auth = '[auth]\nmethods = ["oauthbearer"]\n'
    assert list(_problems(_write(tmp_path, body, auth=auth))) == ["oauth.issuer"]


def test_client_cert_needs_a_ca_and_master_login(tmp_path: Path) -> None:
    upstream = '[upstream]\naddress = "127.0.0.1:143"\ntls = "none"\nlogin = "passthrough"\n'
    auth = '[auth]\nmethods = ["client-cert"]\n'
    problems = _problems(_write(tmp_path, "", upstream=upstream, auth=auth))
    assert set(problems) == {"tls.client_ca", "upstream.login"}


def test_password_alone_is_not_a_sufficient_factor(tmp_path: Path) -> None:
    auth = '[auth]\nsufficient = ["app-password", "password"]\n'
    problems = _problems(_write(tmp_path, "", auth=auth))
    assert "single-factor" in problems["auth.sufficient[1]"]
    bogus = '[auth]\nsufficient = ["sms"]\n'
    assert (
        "unknown factor 'sms'" in _problems(_write(tmp_path, "", auth=bogus))["auth.sufficient[0]"]
    )


@pytest.mark.parametrize(
    ("notify", "key"),
    [
        ('webhook_url = "http://hooks.example.org/x"', "notify.webhook_url"),
        (
            'smtp_host = "smtp.example.org"\nsmtp_tls = "none"\nmail_from = "a@b.org"',
            "notify.smtp_tls",
        ),
        (
            'webhook_url = "https://h.example.org/"\nowner_address = "admin@example.org"',
            "notify.owner_address",
        ),
        ("min_interval = 60", "notify.webhook_url"),
    ],
)
def test_notify_problems_are_named(tmp_path: Path, notify: str, key: str) -> None:
    problems = _problems(_write(tmp_path, "[notify]\n" + notify + "\n"))
    assert key in problems, problems


def test_unknown_method_is_refused(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, "", auth='[auth]\nmethods = ["sms"]\n'))
    assert "unknown method 'sms'" in problems["auth.methods[0]"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    body = "[limits]\nmax_line = 10\n[state]\n"  # also a duplicate table: TOML error
    path = _write(tmp_path, "[limits]\nmax_line = 10\nbogus = 1\n")
    problems = _problems(path)
    assert set(problems) == {"limits.max_line", "limits.bogus"}
    path.write_text(path.read_text() + body)
    assert "--config" in _problems(path)


def test_missing_and_world_readable_secret_files(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    (tmp_path / "server.key").chmod(0o644)
    (tmp_path / "master.secret").unlink()
    problems = _problems(path)
    assert "chmod 600" in problems["state.key_file"]
    assert "file not found" in problems["upstream.master_password_file"]


def test_short_server_key_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    (tmp_path / "server.key").write_bytes(b"short")
    assert "at least 32 bytes" in _problems(path)["state.key_file"]


def test_missing_file_and_invalid_toml(tmp_path: Path) -> None:
    assert "file not found" in _problems(tmp_path / "nope.toml")["--config"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[state\n")
    assert "invalid TOML" in _problems(bad)["--config"]


def test_redis_state_is_not_in_this_build(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    path.write_text(path.read_text().replace(f"sqlite:///{tmp_path}/state.db", "redis://h:6379/0"))
    assert "not supported" in _problems(path)["state.url"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:993", ("127.0.0.1", 993)), ("[::1]:143", ("::1", 143)), ("mail:1", ("mail", 1))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":993", "::1:143", "h:0", "h:70000", "[::1]143"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|invalid|IPv6"):
        parse_address(text)


def test_defense_keys_are_checked(tmp_path: Path) -> None:
    body = (
        '[defense]\nenforce = false\nbogus = 1\ndelay_base = "fast"\n'
        'trusted_networks = ["10.0.0.0/8"]\npair_free = 2.5\n'
    )
    problems = _problems(_write(tmp_path, body))
    assert problems == {
        "defense.bogus": "unknown key",
        "defense.delay_base": "must be a number",
        "defense.pair_free": "must be a whole number",
    }
    ok = _write(tmp_path, '[defense]\nenforce = false\ntrusted_networks = ["10.0.0.0/8"]\n')
    assert load_config(ok).defense.enforce is False


def test_defense_values_are_validated(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, "[defense]\ndelay_max = 40\n"))
    assert list(problems) == ["defense.delay_max"]
    problems = _problems(_write(tmp_path, '[defense]\nallowlist = ["not-a-network"]\n'))
    assert list(problems) == ["defense.allowlist"]


def test_config_is_a_leaf_that_imports_no_layer() -> None:
    """Each layer takes its typed section; the configuration knows none of them."""
    code = (
        "import sys, imapguard.config\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('imapguard'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    primitives = {"errors", "names", "net", "secret", "text", "tls", "vocab"}
    layers = [
        m
        for m in out
        if m != "imapguard"
        and not m.startswith("imapguard.config")
        and m.removeprefix("imapguard.") not in primitives
    ]
    assert "imapguard.config.defense" in out
    assert layers == []


def test_a_short_webhook_secret_is_refused_at_check_config(tmp_path: Path) -> None:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(b"too-short\n")
    secret.chmod(0o600)
    body = f'[notify]\nwebhook_url = "https://h.example.org/"\nwebhook_secret_file = "{secret}"\n'
    problems = _problems(_write(tmp_path, body))
    assert list(problems) == ["notify.webhook_secret_file"]
    assert "at least 16 bytes" in problems["notify.webhook_secret_file"]
    secret.write_bytes(b"0123456789abcdef\n")
    assert load_config(_write(tmp_path, body)).notify is not None


@pytest.mark.parametrize(
    ("oauth", "key", "message"),
    [
        ('algorithms = ["RS256", "HS256"]', "oauth.algorithms", "only asymmetric signatures"),
        ("jwks_cache_seconds = 5", "oauth.jwks_cache_seconds", "greater than or equal to 10"),
        ("min_refresh_interval = 0", "oauth.min_refresh_interval", "greater than or equal to 1"),
        ("http_timeout = 120", "oauth.http_timeout", "less than or equal to 60"),
        (
            'username_claim = "sub"\ntrust_unverified_email = true',
            "oauth.trust_unverified_email",
            "applies only to",
        ),
    ],
)
def test_oauth_keys_have_one_set_of_bounds(
    tmp_path: Path, oauth: str, key: str, message: str
) -> None:
    body = f'[oauth]\nissuer = "https://idp.example.org"\naudience = "imap"\n{oauth}\n'
    problems = _problems(_write(tmp_path, body))
    assert list(problems) == [key]
    assert message in problems[key]


def test_defense_cross_field_rules_name_their_key(tmp_path: Path) -> None:
    body = "[defense]\nblock_base = 7200\nblock_max = 3600\nposture_min_ratio = 0.95\n"
    problems = _problems(_write(tmp_path, body))
    assert problems == {
        "defense.block_max": "must be at least block_base",
        "defense.posture_min_ratio": "need 0 < min_ratio <= max_ratio <= 1",
    }
    assert (
        "must be positive"
        in _problems(_write(tmp_path, "[defense]\nwindow = 0\n"))["defense.window"]
    )


def test_key_paths_are_written_as_in_the_file() -> None:
    from imapguard.config.base import key_path

    assert key_path(("listen", 1, "tls")) == "listen[1].tls"
    assert key_path(("admin_addresses", 0), "notify") == "notify.admin_addresses[0]"
    assert key_path((), "defense") == "defense"


def test_a_section_checked_alone_names_its_keys_in_full() -> None:
    from imapguard.config import NotifyConfig, UpstreamConfig

    with pytest.raises(ConfigError) as caught:
        NotifyConfig.checked(
            smtp_host="mail.example.org",
            mail_from="imapguard@example.org",
            admin_addresses=["root@example.org", "x\r\nBcc: y@z"],
            bogus=1,
        )
    assert [key for key, _ in caught.value.problems] == ["notify.bogus"]
    with pytest.raises(ConfigError) as caught:
        NotifyConfig.checked(
            smtp_host="mail.example.org",
            mail_from="imapguard@example.org",
            admin_addresses=["root@example.org", "x\r\nBcc: y@z"],
        )
    assert [key for key, _ in caught.value.problems] == ["notify.admin_addresses[1]"]
    with pytest.raises(ConfigError) as caught:
        UpstreamConfig.checked(address="mail:143", master_user="m")
    assert caught.value.problems == [
        ("upstream.master_password_file", 'required when upstream.login = "master"')
    ]

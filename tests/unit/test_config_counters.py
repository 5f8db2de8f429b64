"""`[state] counters_*`: what a configuration of the Redis counter store may say,
each problem one line naming its key and never repeating the URL (it could hold
a password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.config import load_config
from imapguard.config.redis_url import RedisAddress, parse_redis_url
from imapguard.config.state import StateConfig, counters_problems
from imapguard.errors import ConfigError
from tests.unit.test_config import _write


def problems(**keys: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        StateConfig.checked(keys)
    return caught.value.problems


def test_urls_of_a_server_tls_and_sentinels() -> None:
    assert parse_redis_url("redis://10.0.0.5/2") == RedisAddress(
        tls=False, hosts=(("10.0.0.5", 6379),), service=None, db=2, username=None
    )
    assert parse_redis_url("rediss://imapguard@redis.example.org:6380") == RedisAddress(
        tls=True, hosts=(("redis.example.org", 6380),), service=None, db=0, username="imapguard"
    )
    assert parse_redis_url("redis+sentinel://s1,[2001:db8::7]:26380/mail/1") == RedisAddress(
        tls=False,
        hosts=(("s1", 26379), ("2001:db8::7", 26380)),
        service="mail",
        db=1,
        username=None,
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://redis.example.org/0", "must start with redis://"),
        ("redis://u:hunter2-x@h/0", "no password in the URL"),
        ("redis://h/zero", "the path is /DB"),
        ("redis://h:99999/0", "a port is not a number"),
        ("redis://a,b/0", "several hosts only with redis+sentinel://"),
        ("redis+sentinel://a:26379", "name the Sentinel service"),
        ("redis://h/0?password=hunter2-x", "takes no ?query"),
    ],
)
def test_a_bad_counters_url_is_one_line_without_the_url(url: str, message: str) -> None:
    ((key, text),) = problems(counters_url=url)
    assert key == "state.counters_url"
    assert message in text
    assert "hunter2" not in text
    assert url not in text


def test_tls_files_need_rediss_and_come_in_pairs() -> None:
    found = problems(
        counters_url="redis://h/0", counters_ca_file="/ca.pem", counters_cert_file="/c.pem"
    )
    assert ("state.counters_ca_file", "only used with rediss:// (TLS)") in found
    assert ("state.counters_cert_file", "only used with rediss:// (TLS)") in found
    assert any(k == "state.counters_cert_file" and "both" in m for k, m in found)
    assert problems(counters_password_file="/pw") == [
        ("state.counters_password_file", "is set but counters_url is not")
    ]


def test_a_postgresql_account_store_needs_shared_counters() -> None:
    """Counters in each node's own file would give an attacker one threshold
    per node: with the accounts in PostgreSQL the counters must be in Redis."""
    alone = StateConfig.model_construct(url="postgresql://db.example.org/imapguard")
    assert [key for key, _ in counters_problems(alone)] == ["counters_url"]
    shared = StateConfig.model_construct(
        url="postgresql://db.example.org/imapguard", counters_url="rediss://r/0"
    )
    assert counters_problems(shared) == []
    assert counters_problems(StateConfig()) == []  # SQLite alone: one node's own counters


def test_the_prefix_is_printable_without_spaces() -> None:
    assert [k for k, _ in problems(counters_url="rediss://h/0", counters_prefix="a b")] == [
        "state.counters_prefix"
    ]
    assert StateConfig.checked(counters_url="rediss://h/0", counters_prefix="site2:")


@pytest.mark.parametrize(
    "url",
    [
        "redis://redis.example.org:6379/0",
        "redis://imapguard@10.0.0.5/2",
        "redis://[2001:db8::7]:6379/0",
        "redis+sentinel://127.0.0.1:26379,s2.example.org:26379/mail/0",
    ],
)
def test_counters_url_to_another_host_without_tls_is_refused(tmp_path: Path, url: str) -> None:
    """An attacker on the path to a plain-text Redis answers the precheck with
    "no blocks" (the defense off) and reads the password: refused at load,
    one line naming the key and the fix, never the URL."""
    path = _write(tmp_path, "")
    path.write_text(path.read_text().replace("[state]\n", f'[state]\ncounters_url = "{url}"\n', 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    ((key, text),) = caught.value.problems
    assert key == "state.counters_url"
    assert "rediss://" in text
    assert "loopback" in text
    assert url not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost/0",
        "redis://[::1]:6380/1",
        "redis+sentinel://127.0.0.1:26379,[::1]:26380/mail/0",
        "rediss://redis.example.org:6380/0",
        "rediss+sentinel://s1.example.org,s2.example.org/mail/0",
    ],
)
def test_counters_url_on_loopback_or_with_tls_is_accepted(url: str) -> None:
    assert StateConfig.checked(counters_url=url).counters_url == url


def test_check_config_names_an_unreadable_or_shared_redis_password_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    password = tmp_path / "redis.password"
    password.write_text("secret-pw\n")
    password.chmod(0o644)  # readable by everyone
    path.write_text(
        path.read_text().replace(
            "[state]\n",
            f'[state]\ncounters_url = "rediss://r.example.org/0"\n'
            f'counters_password_file = "{password}"\n'
            f'counters_ca_file = "{tmp_path}/missing-ca.pem"\n',
            1,
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = dict(caught.value.problems)
    assert "chmod 600" in found["state.counters_password_file"]
    assert "file not found" in found["state.counters_ca_file"]
    assert "secret-pw" not in str(caught.value)
    password.chmod(0o600)
    (tmp_path / "missing-ca.pem").write_text("ca")
    assert load_config(path).state.counters_url == "rediss://r.example.org/0"

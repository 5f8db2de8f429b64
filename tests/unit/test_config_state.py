"""`[state]`: a SQLite file or a PostgreSQL URL, each problem one line naming
the key, and a password written in the URL never shown."""

from __future__ import annotations

import pytest

from imapguard.config import StateConfig, redacted_url
from imapguard.errors import ConfigError

COUNTERS = "rediss://redis.example.org:6380/0"  # a PostgreSQL url requires one


def _problems(**values: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as refused:
        StateConfig.checked(values)
    return refused.value.problems


def test_a_postgresql_url_with_a_password_file_is_accepted() -> None:
    url = "postgresql://imapguard@db:5432/ig?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    state = StateConfig.checked(
        url=url, password_file="/etc/imapguard/pg-password", counters_url=COUNTERS
    )
    assert state.postgresql
    assert not StateConfig.checked().postgresql


def test_an_unknown_scheme_names_state_url() -> None:
    assert _problems(url="mysql://db/ig") == [
        (
            "state.url",
            "state store 'mysql' is not supported (use sqlite:///PATH or"
            " postgresql://USER@HOST:PORT/DATABASE)",
        )
    ]


def test_a_bad_sslmode_and_a_bad_port_never_show_the_password() -> None:
    (problem,) = _problems(
        url="postgresql://ig:hunter2@db/ig?sslmode=verify", counters_url=COUNTERS
    )
    assert problem[0] == "state.url"
    assert "sslmode='verify' is not one of" in problem[1]
    assert "hunter2" not in problem[1]
    (problem,) = _problems(url="postgresql://ig:hunter2@db:port/ig", counters_url=COUNTERS)
    assert problem[0] == "state.url"
    assert "hunter2" not in problem[1]
    assert "postgresql://ig:***@db:port/ig" in problem[1]


def test_password_file_is_for_postgresql_only() -> None:
    assert _problems(password_file="/etc/pw") == [
        ("state.password_file", "only for a postgresql:// state.url")
    ]


def test_pool_size_is_bounded() -> None:
    assert _problems(pool_size=0) == [("state.pool_size", "must be between 1 and 100")]


def test_redacted_url_hides_every_form_of_password() -> None:
    assert redacted_url("postgresql://u:s3cret@h:5432/d?sslmode=require") == (
        "postgresql://u:***@h:5432/d?sslmode=require"
    )
    assert redacted_url("postgresql://u@h/d?password=s3cret") == "postgresql://u@h/d?password=***"
    assert redacted_url("sqlite:////var/lib/imapguard/state.db") == (
        "sqlite:////var/lib/imapguard/state.db"
    )

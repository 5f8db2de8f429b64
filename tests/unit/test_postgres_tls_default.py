"""Which PostgreSQL URLs get `sslmode=verify-full` when they set no sslmode
(`state.postgres.connection.tls_default`); the refusal itself is shown against a
real server in tests/integration/test_postgres_state.py."""

from __future__ import annotations

import pytest

from imapguard.state.postgres.connection import tls_default

VERIFY = {"sslmode": "verify-full"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://imapguard@db.example.org:5432/imapguard",
        "postgresql://imapguard@192.0.2.5/imapguard",
        "postgresql://imapguard@[2001:db8::5]/imapguard",
        # A remote name resolved by hand, and several hosts of which one is remote.
        "postgresql://imapguard@db.example.org/imapguard?hostaddr=127.0.0.1",
        "postgresql://imapguard@127.0.0.1,db.example.org/imapguard",
        "postgresql://imapguard@localhost/imapguard?hostaddr=192.0.2.5",
    ],
)
def test_an_unverified_database_on_another_host_is_not_libpqs_prefer(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    assert tls_default(url) == VERIFY


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://imapguard@127.0.0.1:5432/imapguard",
        "postgresql://imapguard@[::1]/imapguard",
        "postgresql://imapguard@localhost/imapguard",
        "postgresql:///imapguard",
        "postgresql://imapguard@%2Fvar%2Frun%2Fpostgresql/imapguard",
        # Chosen in the URL: kept, whatever it is.
        "postgresql://imapguard@db.example.org/imapguard?sslmode=require",
        "postgresql://imapguard@db.example.org/imapguard?sslmode=disable",
    ],
)
def test_loopback_sockets_and_a_chosen_sslmode_keep_their_own(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    assert tls_default(url) == {}


def test_pgsslmode_in_the_environment_is_a_choice_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSSLMODE", "verify-ca")
    assert tls_default("postgresql://imapguard@db.example.org/imapguard") == {}

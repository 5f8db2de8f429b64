"""App passwords: 140 bits, typable, stored only as a keyed hash bound to the user."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from imapguard.auth import app_passwords
from imapguard.secret import Secret
from imapguard.state.accounts import AppPasswordRecord
from imapguard.state.sqlite import SqliteStore


def test_generated_passwords_are_grouped_and_strong() -> None:
    seen = set()
    for _ in range(200):
        text = app_passwords.generate().reveal().decode()
        assert re.fullmatch(r"([2-9a-km-np-z]{4}-){6}[2-9a-km-np-z]{4}", text)
        seen.add(text)
    assert len(seen) == 200
    assert app_passwords.LENGTH * math.log2(len(app_passwords.ALPHABET)) >= 128


def test_normalize_accepts_what_people_type() -> None:
    password = app_passwords.generate()
    expected = password.reveal().replace(b"-", b"")
    assert app_passwords.normalize(password) == expected
    typed = Secret(password.reveal().upper().replace(b"-", b" "))
    assert app_passwords.normalize(typed) == expected


def test_normalize_refuses_what_cannot_be_one() -> None:
    for text in (b"hunter2", b"", b"0" * 28, b"l" * 28, b"a" * 27, b"a" * 29, b"a!" * 14):
        assert app_passwords.normalize(Secret(text)) is None


def test_digest_is_keyed_and_bound_to_the_user() -> None:
    normalized = b"a" * 28
    d1 = app_passwords.digest(b"k" * 32, "alice", normalized)
    assert d1 != app_passwords.digest(b"j" * 32, "alice", normalized)
    assert d1 != app_passwords.digest(b"k" * 32, "bob", normalized)
    assert normalized not in d1
    assert len(d1) == 32


def _scoped(network: str | None, expires_at: float | None) -> AppPasswordRecord:
    return AppPasswordRecord("ab12", "alice", "x", 0.0, None, None, None, network, expires_at)


def test_an_app_password_outside_its_network_or_time_is_no_password() -> None:
    office = _scoped("192.0.2.0/24", None)
    assert app_passwords.out_of_scope(office, "192.0.2.77", 10.0) is None
    assert app_passwords.out_of_scope(office, "::ffff:192.0.2.77", 10.0) is None
    assert "not for this network" in str(app_passwords.out_of_scope(office, "198.51.100.1", 10.0))
    assert "not for this network" in str(app_passwords.out_of_scope(office, "2001:db8::1", 10.0))
    v6 = _scoped("2001:db8::/48", None)
    assert app_passwords.out_of_scope(v6, "2001:db8:0:1::5", 10.0) is None
    assert app_passwords.out_of_scope(v6, "192.0.2.1", 10.0) is not None
    temporary = _scoped(None, 100.0)
    assert app_passwords.out_of_scope(temporary, "203.0.113.9", 99.9) is None
    assert "expired" in str(app_passwords.out_of_scope(temporary, "203.0.113.9", 100.0))
    broken = _scoped("not a network", None)
    assert "unreadable" in str(app_passwords.out_of_scope(broken, "192.0.2.1", 1.0))


def test_create_stores_only_the_digest_and_returns_the_password_once(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    try:
        key = b"k" * 32
        record, password = app_passwords.create(
            store, key, "alice", "phone", 1000.0, network="192.0.2.0/24", expires_at=2000.0
        )
        assert (record.label, record.network, record.expires_at) == (
            "phone",
            "192.0.2.0/24",
            2000.0,
        )
        normalized = app_passwords.normalize(password)
        assert normalized is not None
        found = store.find_app_password("alice", app_passwords.digest(key, "alice", normalized))
        assert found == record
        assert normalized not in (tmp_path / "state.db").read_bytes()
        with pytest.raises(ValueError, match="printable"):
            app_passwords.create(store, key, "alice", "tab\there", 1000.0)
        assert len(store.list_app_passwords("alice")) == 1
    finally:
        store.close()


def test_labels_and_networks_are_checked() -> None:
    assert app_passwords.label_problem("phone") is None
    for bad in ("", "x" * (app_passwords.MAX_LABEL + 1), "new\nline"):
        assert app_passwords.label_problem(bad) is not None
    assert app_passwords.scope_network(" 192.0.2.9/24 ") == "192.0.2.0/24"
    assert app_passwords.scope_network("2001:db8::1") == "2001:db8::1/128"
    for bad in ("192.0.2.0/33", "example.org", "", "192.0.2.0/24; DROP"):
        with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
            app_passwords.scope_network(bad)

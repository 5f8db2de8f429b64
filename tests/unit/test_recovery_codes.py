"""auth/recovery.py: codes are random, forgiving to type, and stored only as a
keyed digest bound to the account."""

from __future__ import annotations

import pytest

from imapguard.auth import recovery
from imapguard.secret import Secret

KEY = b"r" * 32


def test_a_set_is_ten_distinct_fifty_bit_codes() -> None:
    codes = recovery.generate()
    assert len({c.reveal() for c in codes}) == recovery.COUNT == 10
    for code in codes:
        assert recovery.normalize(code) == code
        assert len(code.reveal()) == 10
    assert recovery.shown(codes[0])[5] == "-"


@pytest.mark.parametrize("typed", ["abcde-12345", " ABCDE 12345 ", "abcde12345", "ABCDE-I2345"])
def test_typing_is_forgiving(typed: str) -> None:
    # (I is typed for 1, as Crockford's alphabet reads it)
    assert recovery.normalize(Secret(typed)) == Secret("ABCDE12345")


@pytest.mark.parametrize("typed", ["", "ABCDE-1234", "ABCDE-123456", "ABCDU-12345", "ÄBCDE-12345"])
def test_what_cannot_be_a_code_is_none(typed: str) -> None:
    assert recovery.normalize(Secret(typed)) is None


def test_the_digest_is_bound_to_the_account_and_the_key() -> None:
    code = recovery.generate(1)[0]
    mine = recovery.digest(KEY, "alice", code)
    assert mine != recovery.digest(KEY, "bob", code)
    assert mine != recovery.digest(b"x" * 32, "alice", code)
    assert code.reveal() not in mine

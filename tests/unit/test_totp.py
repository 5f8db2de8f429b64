"""TOTP: RFC 6238 codes accepted once within ±1 step, the password field split, sealed secrets."""

from __future__ import annotations

import base64

import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapguard import keys
from imapguard.auth import totp
from imapguard.secret import Secret

# RFC 6238 Appendix B: the SHA-1 seed is the ASCII string "12345678901234567890".
RFC_SECRET = Secret(base64.b32encode(b"12345678901234567890"))
# (time, 8-digit code) from the RFC's SHA-1 rows; we use 6 digits, the last six.
RFC_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]
NOW = 1_700_000_000.0
STEP = int(NOW) // 30
KEY = b"k" * 32


def code_at(step: int, secret: Secret = RFC_SECRET) -> str:
    """An independent reference: pyotp's own code for a step."""
    return pyotp.TOTP(secret.reveal().decode()).at(step * 30)


# -- verify ----------------------------------------------------------------------------


@pytest.mark.parametrize(("when", "code8"), RFC_VECTORS)
def test_rfc6238_sha1_vectors(when: int, code8: str) -> None:
    assert totp.verify(RFC_SECRET, code8[-6:], float(when), last_step=None) == when // 30


def test_codes_one_step_either_side_are_accepted() -> None:
    for offset in (-1, 0, 1):
        assert totp.verify(RFC_SECRET, code_at(STEP + offset), NOW, last_step=None) == (
            STEP + offset
        )


def test_codes_two_steps_away_are_refused() -> None:
    window = {code_at(STEP + offset) for offset in (-1, 0, 1)}
    for offset in (-3, -2, 2, 3):
        code = code_at(STEP + offset)
        assert code not in window  # no accidental collision with this fixed secret and time
        assert totp.verify(RFC_SECRET, code, NOW, last_step=None) is None


def test_a_code_matching_two_steps_spends_the_earlier_one() -> None:
    # Found by search: with the RFC secret, steps 57766335 and 57766336 share a code.
    first = 57766335
    assert code_at(first) == code_at(first + 1) == "251166"
    now = first * 30.0
    assert totp.verify(RFC_SECRET, "251166", now, last_step=None) == first
    assert totp.verify(RFC_SECRET, "251166", now, last_step=first) == first + 1
    assert totp.verify(RFC_SECRET, "251166", now, last_step=first + 1) is None


def test_the_first_steps_after_the_epoch_work() -> None:
    # The step before step 0 does not exist; it must be skipped, not crash.
    assert totp.verify(RFC_SECRET, code_at(0), 10.0, last_step=None) == 0
    assert totp.verify(RFC_SECRET, code_at(1), 10.0, last_step=None) == 1


def test_a_code_is_accepted_once() -> None:
    code = code_at(STEP)
    step = totp.verify(RFC_SECRET, code, NOW, last_step=STEP - 1)
    assert step == STEP
    assert totp.verify(RFC_SECRET, code, NOW, last_step=step) is None
    assert totp.verify(RFC_SECRET, code, NOW + 29, last_step=step) is None


def test_an_older_code_is_refused_after_a_newer_one() -> None:
    newer = totp.verify(RFC_SECRET, code_at(STEP + 1), NOW, last_step=None)
    assert newer == STEP + 1
    assert totp.verify(RFC_SECRET, code_at(STEP), NOW, last_step=newer) is None
    assert totp.verify(RFC_SECRET, code_at(STEP - 1), NOW, last_step=newer) is None
    # ... while the next one still works.
    assert totp.verify(RFC_SECRET, code_at(STEP + 2), NOW + 60, last_step=newer) == STEP + 2


def test_malformed_codes_are_refused() -> None:
    code = code_at(STEP)
    fullwidth = "".join(chr(ord(c) - ord("0") + 0xFF10) for c in code)  # NFKC folds these
    arabic = "".join(chr(ord(c) - ord("0") + 0x0660) for c in code)  # str.isdigit says yes
    for bad in (
        "",
        code[:5],
        code + "0",
        "0" + code,
        f" {code}",
        f"{code}\n",
        f"{code[:3]} {code[3:]}",
        fullwidth,
        arabic,
        "abcdef",
        code[:5] + "x",
    ):
        assert totp.verify(RFC_SECRET, bad, NOW, last_step=None) is None, repr(bad)
    assert totp.verify(RFC_SECRET, code, NOW, last_step=None) == STEP


def test_another_accounts_code_does_not_verify() -> None:
    other = Secret(base64.b32encode(b"abcdefghijabcdefghij"))
    assert code_at(STEP) not in {code_at(STEP + o, other) for o in (-1, 0, 1)}
    assert totp.verify(other, code_at(STEP), NOW, last_step=None) is None


def test_a_clock_before_the_epoch_is_a_bug() -> None:
    with pytest.raises(ValueError, match="epoch"):
        totp.verify(RFC_SECRET, "123456", -1.0, last_step=None)


# -- enrollment ------------------------------------------------------------------------


def test_new_secrets_are_160_bit_base32() -> None:
    seen = set()
    for _ in range(50):
        text = totp.new_secret().reveal()
        assert len(text) == 32
        assert len(base64.b32decode(text)) == 20
        seen.add(text)
    assert len(seen) == 50


def test_the_provisioning_uri_parses_back() -> None:
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, "alice@example.org")
    assert uri.startswith("otpauth://totp/imapguard:alice%40example.org?")
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert parsed.secret == secret.reveal().decode()
    assert parsed.name == "alice@example.org"
    assert parsed.issuer == "imapguard"
    assert (parsed.digits, parsed.interval) == (6, 30)
    assert parsed.digest().name == "sha1"
    # What the app will show is what verify accepts.
    assert totp.verify(secret, parsed.at(NOW), NOW, last_step=None) == STEP
    assert pyotp.parse_uri(totp.provisioning_uri(secret, "bob", issuer="Example Mail")).issuer == (
        "Example Mail"
    )


def test_qr_text_is_a_terminal_drawing_of_a_full_qr_code() -> None:
    text = totp.qr_text(totp.provisioning_uri(totp.new_secret(), "alice@example.org"))
    lines = text.splitlines()
    assert text.endswith("\n")
    assert len(lines) > 10
    assert set(text) <= {" ", "\u2580", "\u2584", "\u2588", "\n"}
    assert {"\u2588", " "} <= set(text)
    assert len({len(line) for line in lines}) == 1
    # A regular QR code is at least 21 modules plus a 4-module border each side;
    # a Micro QR code (which phones do not read) would be at most 17 + 2 + 2.
    assert len(lines[0]) >= 29
    assert len(totp.qr_text("a").splitlines()[0]) >= 29  # segno.make("a") is a Micro QR


def test_qr_svg_is_a_standalone_svg_document() -> None:
    svg = totp.qr_svg(totp.provisioning_uri(totp.new_secret(), "alice"))
    assert svg.startswith("<svg")
    assert 'xmlns="http://www.w3.org/2000/svg"' in svg
    assert svg.rstrip().endswith("</svg>")
    assert "<?xml" not in svg


# -- the password field ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (b"hunter2123456", [(b"hunter2", "123456")]),
        (b"12345678" + b"654321", [(b"12345678", "654321")]),
        (b"123456" + b"000000", [(b"123456", "000000")]),
        (b"1234567", [(b"1", "234567")]),
        (b"123456", []),  # a 6-digit password alone: no room for a code
        (b"", []),
        (b"correct horse", []),
        (b"pass12345", []),  # five digits are not a code
        (b"pass12345x", []),
        ("pass١٢٣٤٥٦".encode(), []),  # non-ASCII digits
        (b"secret,123456", [(b"secret,", "123456")]),  # no separator: the comma is password
        (b"secret:123456", [(b"secret:", "123456")]),
    ],
)
def test_split_password_and_code(field: bytes, expected: list[tuple[bytes, str]]) -> None:
    got = totp.split_password_and_code(Secret(field))
    assert [(p.reveal(), c) for p, c in got] == expected


def read_field(field: Secret, secret: Secret, now: float) -> tuple[Secret, int | None]:
    """The caller's procedure from split_password_and_code's docstring."""
    for password, code in totp.split_password_and_code(field):
        step = totp.verify(secret, code, now, last_step=None)
        if step is not None:
            return password, step
    return field, None


def test_passwords_ending_in_digits_work_with_and_without_a_code() -> None:
    code = code_at(STEP)
    for password in (b"hunter2", b"12345678", b"123456", b"x"):
        with_code = read_field(Secret(password + code.encode()), RFC_SECRET, NOW)
        assert (with_code[0].reveal(), with_code[1]) == (password, STEP)
        bare = read_field(Secret(password), RFC_SECRET, NOW)
        assert (bare[0].reveal(), bare[1]) == (password, None)
    # A password that ends in six digits which are not a valid code is a bare password.
    window = {code_at(STEP + o) for o in (-1, 0, 1)}
    not_a_code = next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in window)
    field = Secret(b"hunter2" + not_a_code.encode())
    assert read_field(field, RFC_SECRET, NOW) == (field, None)


# Arbitrary bytes, often followed by a few ASCII digits so that splits happen.
FIELDS = st.builds(
    bytes.__add__, st.binary(max_size=32), st.text("0123456789", max_size=8).map(str.encode)
)


@given(FIELDS)
def test_split_never_raises_and_only_cuts_off_six_digits(raw: bytes) -> None:
    got = totp.split_password_and_code(Secret(raw))
    ends_in_a_code = len(raw) > 6 and all(0x30 <= b <= 0x39 for b in raw[-6:])
    assert len(got) == (1 if ends_in_a_code else 0)
    for password, code in got:
        assert password.reveal() + code.encode() == raw
        assert len(code) == 6
        assert code.isascii()
        assert code.isdigit()
        assert password


# -- sealed storage --------------------------------------------------------------------


def test_seal_roundtrip_and_layout() -> None:
    secret = totp.new_secret()
    blob = totp.seal(KEY, "alice", secret)
    assert totp.unseal(KEY, "alice", blob) == secret
    assert blob[0] == 1
    assert len(blob) == 1 + 12 + len(secret) + 16
    assert secret.reveal() not in blob
    assert totp.seal(KEY, "alice", secret) != blob  # a fresh nonce every time


def test_a_tampered_blob_does_not_open() -> None:
    blob = totp.seal(KEY, "alice", totp.new_secret())
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(totp.SealError):
            totp.unseal(KEY, "alice", bytes(tampered))
    for truncated in (blob[:-1], blob[:29], blob[:1], b""):
        with pytest.raises(totp.SealError, match=r"truncated|authenticate"):
            totp.unseal(KEY, "alice", truncated)


def test_a_blob_copied_to_another_account_does_not_open() -> None:
    secret = totp.new_secret()
    blob = totp.seal(KEY, "alice", secret)
    with pytest.raises(totp.SealError) as info:
        totp.unseal(KEY, "bob", blob)
    assert info.value.user == "bob"
    assert "authenticate" in info.value.reason
    assert secret.reveal().decode() not in str(info.value)
    with pytest.raises(totp.SealError):
        totp.unseal(KEY, "Alice", blob)


def test_the_wrong_key_does_not_open() -> None:
    blob = totp.seal(KEY, "alice", totp.new_secret())
    with pytest.raises(totp.SealError, match="authenticate"):
        totp.unseal(b"j" * 32, "alice", blob)


def test_an_unknown_version_is_refused() -> None:
    blob = totp.seal(KEY, "alice", totp.new_secret())
    with pytest.raises(totp.SealError) as info:
        totp.unseal(KEY, "alice", b"\x02" + blob[1:])
    assert info.value.reason == "unknown format version 2"


def test_the_seal_key_must_be_aes_256() -> None:
    for key in (b"k" * 16, b"k" * 24, b""):
        with pytest.raises(ValueError, match="32 bytes"):
            totp.seal(key, "alice", Secret("x"))
        with pytest.raises(ValueError, match="32 bytes"):
            totp.unseal(key, "alice", totp.seal(KEY, "alice", Secret("x")))


def test_the_seal_key_is_derived_for_this_purpose_alone() -> None:
    root = Secret(b"r" * 32)
    key = keys.derive_key(root, keys.TOTP_SEAL)
    assert len(key) == 32
    assert key != keys.derive_key(root, keys.APP_PASSWORD)
    secret = totp.new_secret()
    assert totp.unseal(key, "alice", totp.seal(key, "alice", secret)) == secret


@given(secret=st.binary(max_size=128), user=st.text(max_size=64))
def test_unseal_inverts_seal(secret: bytes, user: str) -> None:
    assert totp.unseal(KEY, user, totp.seal(KEY, user, Secret(secret))).reveal() == secret

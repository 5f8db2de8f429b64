"""The server key and the purpose keys derived from it (`imapguard.keys`).

What is stored depends on these keys (app password digests, sealed TOTP
secrets, trusted-device digests, defense fingerprints): a derivation that
changed between releases would lock every user out, so one known answer pins
it; distinct purposes must give unrelated keys; a short root is refused."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from imapguard import keys
from imapguard.keys import MIN_KEY_BYTES, derive_key, load_server_key
from imapguard.secret import Secret

ROOT = Secret(bytes(range(32)))
PURPOSES = (
    keys.APP_PASSWORD,
    keys.TOTP_SEAL,
    keys.VERIFIED_CACHE,
    keys.DEVICE_SECRET,
    keys.PASSWORD_FINGERPRINT,
    keys.SPRAY_FINGERPRINT,
    keys.PORTAL_SESSION,
    keys.PORTAL_CSRF,
    keys.PORTAL_INVITE,
    keys.RECOVERY_CODE,
)


def test_the_derivation_is_pinned() -> None:
    # HMAC-SHA-256(root = 00 01 .. 1f, "imapguard/app-password/v1")
    assert derive_key(ROOT, keys.APP_PASSWORD).hex() == (
        "c8b837b5c7bcd80308860f214cb8477a70c910332d4c7012fd7c4653b844f705"
    )


def test_same_root_and_purpose_same_key() -> None:
    assert derive_key(ROOT, keys.TOTP_SEAL) == derive_key(Secret(bytes(range(32))), "totp-seal/v1")


def test_every_purpose_has_its_own_key() -> None:
    derived = [derive_key(ROOT, purpose) for purpose in PURPOSES]
    assert len(set(PURPOSES)) == len(PURPOSES)
    assert len(set(derived)) == len(PURPOSES)
    assert all(len(key) == 32 for key in derived)
    # No key is the root itself or another purpose's key under another root.
    assert ROOT.reveal() not in derived
    other = Secret(bytes(range(1, 33)))
    assert not set(derived) & {derive_key(other, purpose) for purpose in PURPOSES}


def test_a_purpose_is_not_a_prefix_of_another() -> None:
    """Labels are hashed whole, so a purpose that extends another still differs."""
    for a, b in itertools.permutations(PURPOSES, 2):
        assert not b.startswith(a)
    assert derive_key(ROOT, "app-password/v1") != derive_key(ROOT, "app-password/v10")


@pytest.mark.parametrize("length", [0, 1, MIN_KEY_BYTES - 1])
def test_a_short_root_derives_nothing(length: int) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        derive_key(Secret(b"k" * length), keys.APP_PASSWORD)


def test_the_server_key_file(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    path.write_bytes(b"\x01" * 64)
    key = load_server_key(str(path))
    assert isinstance(key, Secret)
    assert key.reveal() == b"\x01" * 64
    assert "\x01" not in repr(key)


@pytest.mark.parametrize("length", [0, 16, MIN_KEY_BYTES - 1])
def test_a_short_key_file_is_refused_naming_it(tmp_path: Path, length: int) -> None:
    path = tmp_path / "server.key"
    path.write_bytes(b"k" * length)
    with pytest.raises(ValueError, match=f"{path} must hold at least 32 bytes"):
        load_server_key(str(path))


def test_a_missing_key_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_server_key(str(tmp_path / "missing.key"))

"""`[portal] oidc_client_id` / `oidc_client_secret_file`: both or neither, only
with `[oauth]`, the secret file checked like every secret file."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.config import PortalConfig, load_config
from imapguard.errors import ConfigError
from tests.unit.test_config import _write
from tests.unit.test_config_portal import GOOD, _portal_toml

OAUTH = '[oauth]\nissuer = "https://idp.example.org"\naudience = "imap"\n'


def _oidc_portal_toml(tmp_path: Path, mode: int) -> str:
    """A [portal] table with OIDC sign-in; its client secret file has `mode`."""
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret")
    secret.chmod(mode)
    return _portal_toml(
        listen="127.0.0.1:8443",
        url="https://portal.test",
        oidc_client_id="portal",
        oidc_client_secret_file=str(secret),
    )


def test_client_id_and_secret_file_come_together() -> None:
    with pytest.raises(ConfigError) as info:
        PortalConfig.checked({**GOOD, "oidc_client_id": "portal"})
    assert [key for key, _ in info.value.problems] == ["portal.oidc_client_secret_file"]
    with pytest.raises(ConfigError) as info:
        PortalConfig.checked({**GOOD, "oidc_client_secret_file": "/etc/secret"})
    assert [key for key, _ in info.value.problems] == ["portal.oidc_client_id"]
    portal = PortalConfig.checked(GOOD)
    assert portal.oidc_client_id is None
    assert portal.oidc_redirect_uri == "https://mail-security.example.org/signin/oidc/callback"


def test_oidc_needs_the_oauth_issuer(tmp_path: Path) -> None:
    portal = _oidc_portal_toml(tmp_path, 0o600)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, portal))
    assert [key for key, _ in info.value.problems] == ["portal.oidc_client_id"]
    config = load_config(_write(tmp_path, portal + OAUTH))
    assert config.portal is not None
    assert config.portal.oidc_client_id == "portal"


def test_oidc_client_secret_file_must_be_private(tmp_path: Path) -> None:
    portal = _oidc_portal_toml(tmp_path, 0o644)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, portal + OAUTH))
    assert [key for key, _ in info.value.problems] == ["portal.oidc_client_secret_file"]

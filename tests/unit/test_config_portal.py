"""`[portal]`: every bad key named by its path; an https origin and nothing
else; an rp_id that WebAuthn accepts (a host name, never an IP literal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imapguard.config import Config, PortalConfig, load_config, validate_config
from imapguard.errors import ConfigError
from tests.unit.test_config import _write

GOOD = {"listen": "127.0.0.1:8443", "url": "https://mail-security.example.org"}


def _problems(**keys: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        PortalConfig.checked({**GOOD, **keys})
    return dict(info.value.problems)


def _portal_toml(**keys: Any) -> str:
    lines = [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in keys.items()]
    return "[portal]\n" + "\n".join(lines).replace("'", '"') + "\n"


def test_defaults() -> None:
    portal = PortalConfig.checked(GOOD)
    assert portal.relying_party == "mail-security.example.org"
    assert portal.origin == "https://mail-security.example.org"
    assert (portal.session_idle, portal.session_lifetime) == (1800, 43200)
    assert (portal.fresh_factor, portal.max_sign_ins_per_minute) == (600, 10)
    assert portal.admin_group == "admins"
    assert portal.certificate is None
    assert portal.private_key is None


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Portal.Example.org", "https://portal.example.org"),
        ("https://portal.example.org/", "https://portal.example.org"),
        ("https://portal.example.org:443", "https://portal.example.org"),
        ("https://localhost:8443", "https://localhost:8443"),
    ],
)
def test_the_origin_is_what_a_browser_sends(url: str, origin: str) -> None:
    assert PortalConfig.checked({**GOOD, "url": url}).origin == origin


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://portal.example.org", "https://"),
        ("portal.example.org", "https://"),
        ("https://user:pw@portal.example.org", "credentials"),
        ("https://portal.example.org/portal", "no path"),
        ("https://portal.example.org/?a=b", "no path"),
        ("https://portal.example.org#top", "no path"),
        ("https://portal.example.org?", "no path"),
        ("https://", "no host"),
        ("https://192.0.2.1", "IP address"),
        ("https://[2001:db8::1]:8443", "IP address"),
        ("https://portal.example.org:99999", "not a URL"),
        ("https://portal.example.org:0", "port 0"),
        ("https://exa mple.org", "no host name"),
        ("https://bücher.example", "ASCII"),
        ("https://-bad-.example.org", "no host name"),
    ],
)
def test_url_must_be_an_https_origin_with_a_host_name(url: str, says: str) -> None:
    problems = _problems(url=url)
    assert list(problems) == ["portal.url"]
    assert says in problems["portal.url"]


@pytest.mark.parametrize("rp_id", ["127.0.0.1", "::1", "[::1]", "192.0.2.1"])
def test_rp_id_is_never_an_ip_address(rp_id: str) -> None:
    problems = _problems(rp_id=rp_id)
    assert "IP address" in problems["portal.rp_id"]


@pytest.mark.parametrize("rp_id", ["mail-security.example.org", "example.org", "EXAMPLE.org"])
def test_rp_id_may_be_the_host_or_a_registrable_suffix(rp_id: str) -> None:
    assert PortalConfig.checked({**GOOD, "rp_id": rp_id}).relying_party == rp_id.lower()


@pytest.mark.parametrize("rp_id", ["org", "other.example.org", "ample.org", "security.example.org"])
def test_rp_id_must_be_a_suffix_of_the_url_host(rp_id: str) -> None:
    assert "suffix" in _problems(rp_id=rp_id)["portal.rp_id"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("session_idle", 59),
        ("session_idle", 86401),
        ("session_lifetime", 299),
        ("session_lifetime", 30 * 86400 + 1),
        ("fresh_factor", 59),
        ("fresh_factor", 601),
        ("max_sign_ins_per_minute", 0),
        ("max_sign_ins_per_minute", 101),
        ("admin_group", "no spaces"),
        ("listen", "8443"),
        ("listen", "::1:8443"),
        ("unknown", 1),
    ],
)
def test_each_bad_key_is_named(key: str, value: object) -> None:
    assert list(_problems(**{key: value})) == [f"portal.{key}"]


def test_lifetime_must_cover_idle() -> None:
    problems = _problems(session_idle=7200, session_lifetime=3600)
    assert problems == {"portal.session_lifetime": "must be at least portal.session_idle"}


def test_certificate_and_key_come_together() -> None:
    assert list(_problems(certificate="/etc/cert.pem")) == ["portal.private_key"]
    assert list(_problems(private_key="/etc/key.pem")) == ["portal.certificate"]


def test_required_keys_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        PortalConfig.checked({})
    assert dict(info.value.problems) == {
        "portal.listen": "required key is missing",
        "portal.url": "required key is missing",
    }


def test_a_bad_portal_key_is_named_in_the_whole_file(tmp_path: Path) -> None:
    path = _write(tmp_path, _portal_toml(listen="127.0.0.1:8443", url="http://portal.test"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [key for key, _ in info.value.problems] == ["portal.url"]


def test_the_portal_cannot_take_a_gateway_listener_address(tmp_path: Path) -> None:
    path = _write(tmp_path, _portal_toml(listen="127.0.0.1:993", url="https://portal.test"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert dict(info.value.problems) == {"portal.listen": "the same address as listen[0]"}


def test_a_named_admin_group_must_exist(tmp_path: Path) -> None:
    portal = _portal_toml(listen="127.0.0.1:8443", url="https://portal.test", admin_group="ops")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, portal + '[groups]\nadmins = ["root"]\n'))
    assert dict(info.value.problems) == {"portal.admin_group": "no group 'ops' in [groups]"}
    config = load_config(_write(tmp_path, portal + '[groups]\nops = ["root"]\n'))
    assert config.portal is not None
    assert config.portal.admin_group == "ops"


def test_the_default_admin_group_may_be_absent(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path, _portal_toml(listen="127.0.0.1:8443", url="https://portal.test"))
    )
    assert validate_config(config, check_files=False) == []


def test_portal_certificate_files_are_checked(tmp_path: Path) -> None:
    portal = _portal_toml(
        listen="127.0.0.1:8443",
        url="https://portal.test",
        certificate=str(tmp_path / "missing.pem"),
        private_key=str(tmp_path / "missing.key"),
    )
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, portal))
    assert {key for key, _ in info.value.problems} == {"portal.certificate", "portal.private_key"}


def test_the_section_is_optional() -> None:
    assert Config.model_fields["portal"].default is None

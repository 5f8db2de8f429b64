"""`[[listen]] proxy_protocol` / `trusted_proxies` and `[upstream] forward_client_ip`:
each mistake is one problem naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapguard.cli import main
from imapguard.config import load_config
from imapguard.config.files import file_warnings
from tests.unit.test_config import _problems, _write

PROXIED = '[[listen]]\naddress = "127.0.0.1:10993"\ntls = "implicit"\n'


def test_proxy_listener_loads_with_its_trusted_proxies(tmp_path: Path) -> None:
    body = PROXIED + 'proxy_protocol = true\ntrusted_proxies = ["10.0.0.0/24", "2001:db8::5"]\n'
    config = load_config(_write(tmp_path, body))
    assert config.listen[0].proxy_protocol is False
    assert config.listen[1].proxy_protocol is True
    assert config.listen[1].trusted_proxies == ("10.0.0.0/24", "2001:db8::5")


def test_proxy_protocol_without_trusted_proxies_is_refused(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, PROXIED + "proxy_protocol = true\n"))
    assert list(problems) == ["listen[1].trusted_proxies"]
    assert "required" in problems["listen[1].trusted_proxies"]


def test_empty_trusted_proxies_is_refused(tmp_path: Path) -> None:
    body = PROXIED + "proxy_protocol = true\ntrusted_proxies = []\n"
    assert list(_problems(_write(tmp_path, body))) == ["listen[1].trusted_proxies"]


def test_a_bad_trusted_proxy_is_named(tmp_path: Path) -> None:
    body = PROXIED + 'proxy_protocol = true\ntrusted_proxies = ["10.0.0.0/33", "haproxy"]\n'
    problems = _problems(_write(tmp_path, body))
    assert list(problems) == ["listen[1].trusted_proxies"]
    assert "'10.0.0.0/33'" in problems["listen[1].trusted_proxies"]
    assert "'haproxy'" in problems["listen[1].trusted_proxies"]


@pytest.mark.parametrize("everyone", ["0.0.0.0/0", "::/0", "10.0.0.2/0"])
def test_trusted_proxies_of_everyone_is_refused_and_a_wide_range_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], everyone: str
) -> None:
    """A /0 lets anyone on the internet send a PROXY header naming any source:
    a blocked attacker names a fresh address per login, or an allowed network.
    Refused; a range wider than a balancer pair's /24 or /64 is warned about by
    check-config (and serve, which logs the same warnings)."""
    body = PROXIED + f'proxy_protocol = true\ntrusted_proxies = ["10.0.0.2", "{everyone}"]\n'
    problems = _problems(_write(tmp_path, body))
    assert list(problems) == ["listen[1].trusted_proxies"]
    assert f"{everyone} is every address" in problems["listen[1].trusted_proxies"]

    wide = '["10.0.0.0/16", "10.1.0.0/24", "2001:db8::/48", "2001:db8:1::/64"]'
    path = _write(tmp_path, PROXIED + f"proxy_protocol = true\ntrusted_proxies = {wide}\n")
    warned = [w for w in file_warnings(load_config(path)) if "trusted_proxies" in w]
    assert [w.split(" is ")[0] for w in warned] == [
        "listen[1].trusted_proxies: 10.0.0.0/16",
        "listen[1].trusted_proxies: 2001:db8::/48",
    ]
    assert main(["check-config", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: listen[1].trusted_proxies: 10.0.0.0/16 is wider than a /24" in err
    assert "warning: listen[1].trusted_proxies: 2001:db8::/48 is wider than a /64" in err
    assert "10.1.0.0/24" not in err


def test_trusted_proxies_without_proxy_protocol_is_refused(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, PROXIED + 'trusted_proxies = ["10.0.0.1"]\n'))
    assert "proxy_protocol" in problems["listen[1].trusted_proxies"]


def test_forward_client_ip_proxy_v2_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "master.secret"
    upstream = (
        '[upstream]\naddress = "127.0.0.1:143"\ntls = "none"\nlogin = "master"\n'
        f'master_user = "imapguard"\nmaster_password_file = "{f}"\n'
        'forward_client_ip = "proxy-v2"\n'
    )
    config = load_config(_write(tmp_path, "", upstream=upstream))
    assert config.upstream.forward_client_ip == "proxy-v2"

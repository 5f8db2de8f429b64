"""The offline country database: both record layouts, IPv4 / IPv6 / v4-mapped /
non-global addresses, typed errors, the null object, and the caller's path into
the policy. The .mmdb files are built here with mmdb_writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from imapguard.errors import ImapguardError
from imapguard.policy import (
    CountryDatabase,
    CountryDatabaseError,
    CountryLookup,
    DecisionKind,
    NoCountryDatabase,
    PolicyConfig,
    PolicyRequest,
    compile_policy,
    evaluate,
)


def _write(path: Path, networks: dict[str, Any], *, ip_version: int = 6, kind: str) -> Path:
    writer = MMDBWriter(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=kind,
        description="imapguard test",
    )
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture
def maxmind(tmp_path: Path) -> Path:
    """The GeoLite2 / DB-IP layout."""
    return _write(
        tmp_path / "GeoLite2-Country.mmdb",
        {
            "81.2.69.0/24": {
                "continent": {"code": "EU"},
                "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
                "registered_country": {"iso_code": "GB"},
            },
            "2a02:ff00::/24": {"country": {"iso_code": "IT"}},
            # Satellite / anycast blocks carry only the registered country.
            "198.18.200.0/24": {"registered_country": {"iso_code": "US"}},
            "89.160.20.0/24": {"registered_country": {"iso_code": "SE"}, "country": {}},
            # Records without a usable code.
            "1.0.0.0/24": {"country": {"iso_code": "Sweden"}},
            "1.0.1.0/24": {"country": "DE"},
            "1.0.2.0/24": 7,
            # Private space that a database might (wrongly) hold.
            "10.0.0.0/8": {"country": {"iso_code": "DE"}},
            "fd00::/8": {"country": {"iso_code": "DE"}},
        },
        kind="GeoLite2-Country",
    )


@pytest.fixture
def ip_location_db(tmp_path: Path) -> Path:
    """The ip-location-db layout (geo-whois-asn-country)."""
    return _write(
        tmp_path / "geo-whois-asn-country.mmdb",
        {
            "81.2.69.0/24": {"country_code": "GB"},
            "2a02:ff00::/24": {"country_code": "it"},
            "5.6.7.0/24": {"country_code": "??"},
        },
        kind="geo-whois-asn-country",
    )


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("81.2.69.160", "GB"),
        ("::ffff:81.2.69.160", "GB"),  # a dual-stack listener's view of an IPv4 client
        ("2a02:ff00::1", "IT"),
        ("2a02:ffff:1::", "IT"),
        ("198.51.100.0", None),  # documentation range: not global
        ("198.18.200.1", None),  # benchmarking range: not global either
        ("89.160.20.112", "SE"),  # registered_country when country is empty
        ("8.8.8.8", None),  # not in the database
        ("2001:4860::8888", None),
        ("1.0.0.1", None),  # "Sweden" is no code
        ("1.0.1.1", None),  # country is not a map
        ("1.0.2.1", None),  # the record is not a map
        ("10.1.2.3", None),  # private: never looked up
        ("::ffff:10.1.2.3", None),
        ("fd00::1", None),
        ("127.0.0.1", None),
        ("::1", None),
        ("fe80::1", None),
        ("fe80::1%eth0", None),
        ("100.64.0.1", None),  # carrier-grade NAT
        ("0.0.0.0", None),
        ("not an address", None),
        ("", None),
    ],
)
def test_maxmind_layout(maxmind: Path, ip: str, country: str | None) -> None:
    with CountryDatabase.open(maxmind) as db:
        assert db.country(ip) == country


def test_registered_country_fallback(tmp_path: Path) -> None:
    # 198.18.0.0/15 above is not global, so use a public block for the fallback.
    path = _write(
        tmp_path / "db.mmdb",
        {"81.2.70.0/24": {"registered_country": {"iso_code": "us"}}},
        kind="GeoIP2-Country",
    )
    with CountryDatabase.open(path) as db:
        assert db.country("81.2.70.9") == "US"


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("81.2.69.160", "GB"),
        ("::ffff:81.2.69.1", "GB"),
        ("2a02:ff00:1234::1", "IT"),  # lower case in the file, upper case out
        ("5.6.7.8", None),  # "??" is no code
        ("81.2.68.255", None),
        ("192.168.0.1", None),
    ],
)
def test_ip_location_db_layout(ip_location_db: Path, ip: str, country: str | None) -> None:
    db = CountryDatabase.open(ip_location_db)
    try:
        assert db.country(ip) == country
    finally:
        db.close()


def test_ipv4_only_database(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "v4.mmdb", {"81.2.69.0/24": {"country_code": "GB"}}, ip_version=4, kind="v4"
    )
    with CountryDatabase.open(path) as db:
        assert db.country("81.2.69.5") == "GB"
        assert db.country("::ffff:81.2.69.5") == "GB"
        assert db.country("2a02:ff00::1") is None  # no IPv6 in this file: unknown, no error


def test_description_names_the_data(maxmind: Path) -> None:
    with CountryDatabase.open(maxmind) as db:
        assert db.available is True
        assert db.path == str(maxmind)
        assert db.description.startswith("GeoLite2-Country (IPv6, built ")
        assert str(maxmind) in repr(db)


def test_missing_file_is_a_typed_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mmdb"
    with pytest.raises(CountryDatabaseError) as info:
        CountryDatabase.open(missing)
    assert (info.value.path, info.value.detail) == (str(missing), "file not found")
    assert str(info.value) == f"country database {missing}: file not found"
    assert isinstance(info.value, ImapguardError)


def test_directory_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(CountryDatabaseError) as info:
        CountryDatabase.open(tmp_path)
    assert info.value.path == str(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"country,code\n81.2.69.0/24,GB\n", b"\xab\xcd\xefMaxMind.com" + b"\x00" * 8],
)
def test_not_an_mmdb_file_is_a_typed_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "countries.csv"
    path.write_bytes(content)
    with pytest.raises(CountryDatabaseError) as info:
        CountryDatabase.open(path)
    assert info.value.path == str(path)
    assert info.value.detail.startswith(("not a MaxMind DB (.mmdb) file", "unusable metadata"))


def test_no_country_database() -> None:
    db = NoCountryDatabase()
    assert db.available is False
    assert db.country("81.2.69.160") is None
    db.close()


def test_both_classes_are_country_lookups(maxmind: Path) -> None:
    lookups: list[CountryLookup] = [NoCountryDatabase(), CountryDatabase.open(maxmind)]
    assert [lookup.available for lookup in lookups] == [False, True]


@pytest.mark.parametrize("database", ["present", "absent"])
def test_the_callers_path_into_the_policy(maxmind: Path, database: str) -> None:
    """Look the country up, build the request, evaluate; without a database a
    countries rule never matches (and a not_countries rule neither)."""
    config = PolicyConfig.model_validate(
        {
            "geoip_database": str(maxmind),
            "rules": [
                {"name": "no-gb", "action": "deny", "countries": ["GB"]},
                {"name": "no-unknown", "action": "deny", "countries": ["unknown"]},
                {"name": "rest", "action": "allow"},
            ],
        }
    )
    db: CountryLookup = (
        CountryDatabase.open(maxmind) if database == "present" else NoCountryDatabase()
    )
    compiled = compile_policy(config, countries_available=db.available)

    def decide(ip: str) -> tuple[DecisionKind, str]:
        decision = evaluate(compiled, PolicyRequest(user="u", ip=ip, country=db.country(ip)))
        return decision.kind, decision.rule

    if database == "present":
        assert decide("::ffff:81.2.69.160") == (DecisionKind.DENY, "no-gb")
        assert decide("2a02:ff00::1") == (DecisionKind.ALLOW, "rest")
        assert decide("10.0.0.1") == (DecisionKind.DENY, "no-unknown")
    else:
        for ip in ("::ffff:81.2.69.160", "2a02:ff00::1", "10.0.0.1"):
            assert decide(ip) == (DecisionKind.ALLOW, "rest")

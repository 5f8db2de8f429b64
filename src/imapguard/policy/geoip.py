"""IP address → country (ISO 3166-1 alpha-2), offline, for policy `countries`.

Which database: we recommend ip-location-db's `geo-whois-asn-country` in MaxMind
format (CC BY 4.0, IPv4 and IPv6, rebuilt daily from RIR whois and ASN data, no
account or licence key; published on the npm registry as
`@ip-location-db/geo-whois-asn-country-mmdb`, file `geo-whois-asn-country.mmdb`).
Any GeoLite2-Country, GeoIP2-Country, City or DB-IP (Lite) Country `.mmdb` the
admin already has works as well. Point `policy.geoip_database` at the file. The
gateway never downloads anything: updating the file is the admin's job (a cron
job, then SIGHUP).

Rules:

- The file is opened (memory-mapped, `maxminddb.MODE_AUTO`) at load; a missing,
  unreadable or non-MMDB file raises `CountryDatabaseError` with the path. The
  caller degrades: `NoCountryDatabase`, countries conditions never match, a
  warning at start (`imapguard.policy.rules.policy_warnings`).
- `country(ip)` never raises. An address that is not globally routable (private,
  loopback, link-local, CGNAT, documentation, ...), one the database does not
  hold, or a record without a usable code gives None: "unknown" to the policy.
- Two record layouts: MaxMind / DB-IP `{"country": {"iso_code": "DE"}}` (falling
  back to `registered_country`, which is all some satellite and anycast
  networks have) and ip-location-db `{"country_code": "DE"}`.
- IPv4-mapped IPv6 addresses are looked up as IPv4: a dual-stack listener sees
  IPv4 clients as ::ffff:a.b.c.d, and MMDB trees keep IPv4 under ::/96, which not
  every database aliases at ::ffff:0:0/96.

Exceptions: `CountryDatabaseError(ImapguardError)` with `.path` and `.detail`.
"""

from __future__ import annotations

import datetime
import os
from types import TracebackType
from typing import Protocol

import maxminddb
from maxminddb.types import Record

from imapguard.errors import ImapguardError
from imapguard.net import parse

__all__ = [
    "CountryDatabase",
    "CountryDatabaseError",
    "CountryLookup",
    "NoCountryDatabase",
]


class CountryDatabaseError(ImapguardError):
    """The country database cannot be used (missing, unreadable, not an MMDB)."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"country database {path}: {detail}")


class CountryLookup(Protocol):
    """What the policy's caller needs: `available` (does a database back the
    answers?) and `country(ip)`."""

    @property
    def available(self) -> bool: ...

    def country(self, ip: str) -> str | None: ...


def _code(value: Record | None) -> str | None:
    if isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalpha():
        return value.upper()
    return None


def _country_of(record: Record | None) -> str | None:
    if not isinstance(record, dict):
        return None
    # ip-location-db
    code = _code(record.get("country_code"))
    if code is not None:
        return code
    # MaxMind GeoLite2 / GeoIP2, DB-IP
    for key in ("country", "registered_country"):
        section = record.get(key)
        if isinstance(section, dict):
            code = _code(section.get("iso_code"))
            if code is not None:
                return code
    return None


class CountryDatabase:
    """An open MaxMind-format database. Thread-safe for lookups."""

    available = True

    def __init__(self, path: str, reader: maxminddb.Reader) -> None:
        self.path = path
        self._reader = reader
        meta = reader.metadata()
        built = datetime.datetime.fromtimestamp(meta.build_epoch, datetime.UTC).date()
        # For the start-up log line: which data the decisions rest on.
        self.description = f"{meta.database_type} (IPv{meta.ip_version}, built {built})"

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CountryDatabase:
        name = os.fspath(path)
        try:
            reader = maxminddb.open_database(name, maxminddb.MODE_AUTO)
        except FileNotFoundError:
            raise CountryDatabaseError(name, "file not found") from None
        except IsADirectoryError:
            raise CountryDatabaseError(name, "is a directory") from None
        except OSError as exc:
            raise CountryDatabaseError(name, f"cannot read: {exc.strerror or exc}") from None
        except (maxminddb.InvalidDatabaseError, ValueError) as exc:
            raise CountryDatabaseError(name, f"not a MaxMind DB (.mmdb) file: {exc}") from None
        try:
            return cls(name, reader)
        except (TypeError, ValueError, OverflowError, OSError) as exc:
            reader.close()
            raise CountryDatabaseError(name, f"unusable metadata: {exc}") from None

    def country(self, ip: str) -> str | None:
        address = parse(ip)
        if address is None or not address.is_global:
            return None
        try:
            record = self._reader.get(address)
        except (ValueError, maxminddb.InvalidDatabaseError):
            # An IPv6 address in an IPv4-only database, or a damaged record.
            return None
        return _country_of(record)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> CountryDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CountryDatabase({self.path!r}: {self.description})"


class NoCountryDatabase:
    """The null object: no database configured or it could not be opened."""

    available = False
    description = "no country database"

    def country(self, ip: str) -> str | None:
        return None

    def close(self) -> None:
        pass

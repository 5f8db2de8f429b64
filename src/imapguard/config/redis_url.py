"""`[state] counters_url`: where the defense's Redis is, read without a network.

    redis://HOST[:PORT][/DB]                       one Redis (port 6379, db 0)
    rediss://HOST[:PORT][/DB]                      the same over TLS
    redis+sentinel://H1[:PORT],H2[:PORT]/SERVICE[/DB]
                                                   the master of SERVICE, as the
                                                   Sentinels (port 26379) say
    rediss+sentinel://...                          the same, TLS to every one

A user name (Redis 6 ACL) may be given (`redis://imapguard@HOST/0`); the
password never: it goes in `counters_password_file`. Messages never repeat the
URL, which could hold one.

Plain `redis://` (and `redis+sentinel://`) only reaches this host's loopback:
whoever sits on the path to another host could answer for Redis (no blocks:
the defense off) and read the password, so a Redis or a Sentinel elsewhere is
reached with TLS (`rediss://`), and a Sentinel on loopback that names a master
elsewhere is not followed (`state.redis.connect`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from imapguard.net import is_loopback

__all__ = ["PLAIN_TO_ANOTHER_HOST", "RedisAddress", "parse_redis_url", "plain_to_another_host"]

SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class RedisAddress:
    tls: bool
    # The server, or the Sentinels to ask.
    hosts: tuple[tuple[str, int], ...]
    # The Sentinel service (the master's name); None for a server.
    service: str | None
    db: int
    username: str | None


PLAIN_TO_ANOTHER_HOST = (
    "plain redis:// to another host: anyone on the path could answer for Redis"
    " (no blocks, the defense off) and read its password; use rediss:// (TLS),"
    " or reach Redis on this host's loopback (127.0.0.1, ::1, localhost)"
)


def plain_to_another_host(address: RedisAddress) -> bool:
    """True if `address` is plain TCP (no TLS) to a host that is not loopback."""
    return not address.tls and not all(is_loopback(host) for host, _ in address.hosts)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("a bracketed IPv6 address is [ADDRESS]:PORT")
        port_text = rest[1:]
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError("a host is missing")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("a port is not a number from 1 to 65535")
    return host, int(port_text)


def parse_redis_url(url: str) -> RedisAddress:
    """The address in `url`; ValueError (without the URL) if it is not one."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            "must start with redis://, rediss://, redis+sentinel:// or rediss+sentinel://"
        )
    parts = urlsplit("redis://" + rest)
    if parts.query or parts.fragment:
        raise ValueError("takes no ?query or #fragment")
    netloc = parts.netloc
    username: str | None = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        if ":" in userinfo:
            raise ValueError("no password in the URL: put it in state.counters_password_file")
        username = unquote(userinfo) or None
    sentinel = scheme.endswith("+sentinel")
    default_port = 26379 if sentinel else 6379
    hosts = tuple(_host_port(h, default_port) for h in netloc.split(","))
    path = [unquote(p) for p in parts.path.split("/")[1:] if p]
    service: str | None = None
    if sentinel:
        if not path:
            raise ValueError("name the Sentinel service: redis+sentinel://HOST:26379/SERVICE/DB")
        service, path = path[0], path[1:]
    elif len(hosts) > 1:
        raise ValueError("several hosts only with redis+sentinel://")
    if len(path) > 1 or (path and not path[0].isdigit()):
        raise ValueError("the path is /DB, a database number")
    return RedisAddress(
        tls=scheme.startswith("rediss"),
        hosts=hosts,
        service=service,
        db=int(path[0]) if path else 0,
        username=username,
    )

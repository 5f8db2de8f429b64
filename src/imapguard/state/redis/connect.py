"""Opening the Redis of `[state] counters_url` with redis-py's sync client.

One client per store handle, with its own pool of connections (the defense
calls it from the store's worker thread and, for the precheck, from the event
loop). Timeouts are short because a login waits on them: a Redis that does not
answer costs a login at most `CONNECT_TIMEOUT` to connect plus
`COMMAND_TIMEOUT` for the reply (about 2 s), then `StateUnavailable`; a refused
connection fails at once (a pooled connection that broke is retried once, at
once, on a new one, which is what lets a restarted Redis be used again).

Without TLS the configuration only names loopback hosts; a Sentinel there that
names a master on another host is not followed either (`_LoopbackSentinel`):
the connection would carry the password and the defense's answers in plain
text over the network.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from imapguard.config.redis_url import RedisAddress, parse_redis_url
from imapguard.config.state import StateConfig
from imapguard.errors import StateUnavailable
from imapguard.net import is_loopback
from imapguard.state.redis.counters import RedisCounterStore

__all__ = ["COMMAND_TIMEOUT", "CONNECT_TIMEOUT", "open_counters"]

CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 1.0
# Connections per handle, at most: one per thread using it at once (the store's
# worker, the event loop, reader threads); one more caller gets StateUnavailable.
MAX_CONNECTIONS = 64


def _password(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()[0].strip() or None
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        detail = getattr(exc, "strerror", None) or "empty or not UTF-8 text"
        raise StateUnavailable("open counters", f"state.counters_password_file: {detail}") from None


def _tls(state: StateConfig) -> dict[str, Any]:
    return {
        "ssl": True,
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
        "ssl_ca_certs": state.counters_ca_file,
        "ssl_certfile": state.counters_cert_file,
        "ssl_keyfile": state.counters_key_file,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }


def client_options(state: StateConfig, address: RedisAddress) -> dict[str, Any]:
    """What every connection to the Redis (or a Sentinel) is opened with."""
    return {
        "socket_timeout": COMMAND_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "health_check_interval": 30,
        "client_name": "imapguard",
        **(_tls(state) if address.tls else {}),
    }


class _LoopbackSentinel(Sentinel):
    """Sentinels asked without TLS: the master they name must be on loopback."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        host, port = super().discover_master(service_name)
        if not is_loopback(str(host)):
            raise MasterNotFoundError(
                "the Sentinels name a master on another host, not reached without TLS:"
                " use rediss+sentinel:// (state.counters_url)"
            )
        return host, port


def open_client(state: StateConfig, url: str) -> redis.Redis:
    """A client on the Redis at `url` (the configured counters_url), or on the
    master the Sentinels there name."""
    address = parse_redis_url(url)
    options: dict[str, Any] = client_options(state, address)
    auth: dict[str, Any] = {
        "username": address.username,
        "password": _password(state.counters_password_file),
    }
    if address.service is None:
        ((host, port),) = address.hosts
        return redis.Redis(
            host=host,
            port=port,
            db=address.db,
            decode_responses=True,
            max_connections=MAX_CONNECTIONS,
            **auth,
            **options,
        )
    # The Sentinels are asked without the password (it is the data nodes').
    kind = Sentinel if address.tls else _LoopbackSentinel
    sentinel = kind(list(address.hosts), sentinel_kwargs=dict(options), **options)
    client: redis.Redis = sentinel.master_for(
        address.service,
        db=address.db,
        decode_responses=True,
        max_connections=MAX_CONNECTIONS,
        **auth,
    )
    return client


def open_counters(state: StateConfig) -> RedisCounterStore:
    """The counter store `[state] counters_url` names (not contacted yet: the
    first call, or `ping()`, connects)."""
    if state.counters_url is None:
        raise ValueError("state.counters_url is not set")
    return RedisCounterStore(open_client(state, state.counters_url), prefix=state.counters_prefix)

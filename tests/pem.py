"""Certificate files for tests: a real PEM certificate and its key, because the
configuration check loads them (imapguard.tls.server_pair_problems)."""

from __future__ import annotations

import datetime
import functools
from pathlib import Path

import trustme

__all__ = ["write_pair"]


@functools.cache
def _ca() -> trustme.CA:
    return trustme.CA()


@functools.cache
def _valid_leaf() -> trustme.LeafCert:
    return _ca().issue_cert("localhost", "127.0.0.1")


def write_pair(
    certificate: Path,
    private_key: Path,
    *,
    not_after: datetime.datetime | None = None,
) -> trustme.CA:
    """A certificate chain for localhost and its key (mode 0600); `not_after` for
    one that ends then (in the past: an expired one). Returns the issuing CA."""
    if not_after is None:
        leaf = _valid_leaf()
    else:
        not_before = min(not_after, datetime.datetime.now(datetime.UTC)) - datetime.timedelta(
            days=30
        )
        leaf = _ca().issue_cert(
            "localhost", "127.0.0.1", not_before=not_before, not_after=not_after
        )
    with open(certificate, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(private_key))
    private_key.chmod(0o600)
    return _ca()

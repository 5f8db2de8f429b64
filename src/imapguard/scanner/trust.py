"""Which chains a mail client would trust (CERT-01), decided here, not by sslyze.

sslyze 6 validates with cryptography's web-PKI (CA/B Forum) policy, which also
fails a chain for a wrong name or an expired leaf (those are CERT-02 / CERT-03)
and rejects what mail clients accept from a private CA, e.g. a critical
subjectAltName next to a non-empty subject (trustme's certificates; RFC 5280
§4.2.1.6 says only SHOULD). So the received chain is path-validated (RFC 5280:
signatures, CA basic constraints, validity) against Mozilla's root store as
bundled in sslyze plus the `--ca-file` certificates, without any name or
extended-key-usage rule, at the current time -- or, when the leaf itself is
outside its validity period, at a moment inside it, so an expired leaf is
CERT-03 and not also CERT-01.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from imapguard.scanner import sslyze_adapter

__all__ = ["ChainVerdict", "TrustAnchors", "load_anchors", "load_ca_file"]


@dataclasses.dataclass(frozen=True, slots=True)
class ChainVerdict:
    trusted: bool
    anchor: str = ""  # "Mozilla" or "--ca-file" when trusted
    error: str = ""
    validated_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TrustAnchors:
    """Mozilla's root store (as bundled with sslyze) plus the --ca-file certificates."""

    public: tuple[x509.Certificate, ...]
    private: tuple[x509.Certificate, ...] = ()
    private_name: str = "--ca-file"

    def describe(self) -> str:
        stores = []
        if self.public:
            stores.append(f"Mozilla's root store ({len(self.public)} roots)")
        if self.private:
            stores.append(f"{self.private_name} ({len(self.private)} certificates)")
        return " and ".join(stores) or "no trust anchors"

    def validate(self, chain: Sequence[x509.Certificate], now: dt.datetime) -> ChainVerdict:
        """RFC 5280 path validation of the received chain, without name or EKU rules
        (see the module docstring), at `now` or inside the leaf's validity period."""
        anchors = list(self.public) + list(self.private)
        if not chain or not anchors:
            return ChainVerdict(False, error="no certificate or no trust anchor")
        leaf = chain[0]
        at = now
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            at = (
                leaf.not_valid_before_utc
                + (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 2
            )
        builder = (
            PolicyBuilder()
            .store(Store(anchors))
            .time(at)
            .extension_policies(
                # The verifier insists that a CA certificate carries basicConstraints;
                # everything else (key usage, EKU, SAN criticality) is left to clients.
                ca_policy=ExtensionPolicy.permit_all().require_present(
                    x509.BasicConstraints, Criticality.AGNOSTIC, None
                ),
                ee_policy=ExtensionPolicy.permit_all(),
            )
        )
        try:
            # The client verifier: the one that checks no server name.
            verified = builder.build_client_verifier().verify(leaf, list(chain[1:]))
        except VerificationError as exc:
            return ChainVerdict(False, error=str(exc), validated_at=at)
        root = verified.chain[-1]
        anchor = "Mozilla" if root in self.public else self.private_name
        return ChainVerdict(True, anchor=anchor, validated_at=at)


@functools.cache
def _mozilla_roots() -> tuple[x509.Certificate, ...]:
    with warnings.catch_warnings():
        # A few roots in the bundled stores have a negative serial number, which
        # cryptography still parses but warns about (CryptographyDeprecationWarning).
        # Loading sslyze's repository here, once, also keeps that warning out of
        # sslyze's worker threads, which load the same singleton.
        warnings.simplefilter("ignore")
        return tuple(x509.load_pem_x509_certificates(sslyze_adapter.mozilla_root_pems()))


def load_ca_file(path: Path) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM file (--ca-file). Raises ValueError, with the file
    name, when the file cannot be read or holds no certificate."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--ca-file {path}: {exc.strerror or exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            certs = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise ValueError(f"--ca-file {path}: no PEM certificate found ({exc})") from exc
    return certs


def load_anchors(ca_file: Path | None) -> TrustAnchors:
    private = load_ca_file(ca_file) if ca_file is not None else ()
    return TrustAnchors(public=_mozilla_roots(), private=private)

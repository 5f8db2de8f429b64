"""The one module that touches sslyze beyond its documented API.

sslyze's API is what its top-level package exports (`from sslyze import ...`);
the rest of the TLS audit uses only that and this module. Written against
sslyze 6.3.1 (the pin in pyproject.toml) and the nassl 5.4 it installs; when
sslyze is upgraded, check each name below first (tests/unit/scanner/
test_tlsaudit.py and tests/integration/scanner/test_tls_audit.py exercise them):

- `TrustStoresRepository` (sslyze.plugins.certificate_info.trust_stores.
  trust_store_repository): the Mozilla root store bundled with sslyze. CERT-01
  validates chains itself (scanner/trust.py), and sslyze exports no way to read
  the store it ships.
- `WorkaroundForTls12ForCipherSuites.requires_legacy_openssl`
  (sslyze.plugins.openssl_cipher_suites._tls12_workaround): which of sslyze's two
  OpenSSL builds (modern, or legacy 1.0.2) can offer a given TLS 1.2 suite; the
  TLS-07 order probe must offer both of its suites from one build.
- `ServerConnectivityInfo.get_preconfigured_tls_connection`
  (sslyze.server_connectivity, not exported): a TLS connection to a scanned
  server, STARTTLS included, set up the way sslyze's own plugins do it. sslyze 6
  does not report the server's cipher order, so TLS-07 makes two handshakes of
  its own with it.
- `CipherSuiteAcceptedByServer` (sslyze.plugins.openssl_cipher_suites.
  _test_cipher_suite) and `RobotScanResultEnum` (sslyze.plugins.robot.
  _robot_tester): exported by sslyze's package, but defined in private modules
  and not re-exported explicitly, so a type checker only finds them there.
- `DhEphemeralKeyInfo`, `EcDhEphemeralKeyInfo` (nassl.ephemeral_key_info): the
  types of an accepted suite's ephemeral key (TLS-08); sslyze exports only their
  base class, and nassl is sslyze's dependency, not ours.
"""

from __future__ import annotations

from nassl.ephemeral_key_info import DhEphemeralKeyInfo, EcDhEphemeralKeyInfo
from sslyze.plugins.certificate_info.trust_stores.trust_store_repository import (
    TrustStoresRepository,
)
from sslyze.plugins.openssl_cipher_suites._test_cipher_suite import CipherSuiteAcceptedByServer
from sslyze.plugins.openssl_cipher_suites._tls12_workaround import WorkaroundForTls12ForCipherSuites
from sslyze.plugins.robot._robot_tester import RobotScanResultEnum
from sslyze.scanner.models import ServerScanResult
from sslyze.server_connectivity import ServerConnectivityInfo, TlsVersionEnum

__all__ = [
    "CipherSuiteAcceptedByServer",
    "DhEphemeralKeyInfo",
    "EcDhEphemeralKeyInfo",
    "RobotScanResultEnum",
    "mozilla_root_pems",
    "needs_legacy_openssl",
    "negotiated_tls12_suite",
]


def mozilla_root_pems() -> bytes:
    """The PEM file of Mozilla's root store as bundled with sslyze."""
    return TrustStoresRepository.get_default().get_main_store().path.read_bytes()


def needs_legacy_openssl(openssl_name: str) -> bool:
    """Whether only sslyze's legacy OpenSSL can offer this TLS 1.2 suite."""
    return bool(WorkaroundForTls12ForCipherSuites.requires_legacy_openssl(openssl_name))


def negotiated_tls12_suite(scan: ServerScanResult, cipher_list: str, *, legacy: bool) -> str:
    """The OpenSSL name of the suite the server of `scan` picks in one TLS 1.2
    handshake offering `cipher_list` (OpenSSL syntax, our preference first).
    Raises whatever sslyze and nassl raise when the handshake fails."""
    if scan.connectivity_result is None:
        raise ValueError("the server was not reachable in this scan")
    info = ServerConnectivityInfo(
        server_location=scan.server_location,
        network_configuration=scan.network_configuration,
        tls_probing_result=scan.connectivity_result,
    )
    connection = info.get_preconfigured_tls_connection(
        override_tls_version=TlsVersionEnum.TLS_1_2, should_use_legacy_openssl=legacy
    )
    try:
        connection.ssl_client.set_cipher_list(cipher_list)
        connection.connect()
        name: str = connection.ssl_client.get_current_cipher_name()
    finally:
        connection.close()
    return name

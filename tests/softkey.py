"""A software WebAuthn authenticator for unit tests: ES256 (P-256), "none"
attestation, a signature counter, built from the WebAuthn Level 2 structures
(authenticator data §6.1, attested credential data §6.5.1, client data §5.8.1).
The end-to-end tests use Chromium's virtual authenticator instead; this one lets
the unit tests forge what a browser would never send."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["SoftKey"]

FLAG_UP = 0x01
FLAG_UV = 0x04
FLAG_AT = 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftKey:
    rp_id: str
    origin: str
    counter: int = 0
    credential_id: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,  # kty: EC2
                3: -7,  # alg: ES256
                -1: 1,  # crv: P-256
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def _auth_data(self, flags: int, attested: bytes = b"", rp_id: str | None = None) -> bytes:
        rp_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        return rp_hash + bytes([flags]) + struct.pack(">I", self.counter) + attested

    def _client_data(self, kind: str, challenge: str, origin: str | None = None) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": origin or self.origin}
        ).encode()

    def register(self, options_json: str, *, origin: str | None = None) -> bytes:
        options = json.loads(options_json)
        attested = (
            b"\0" * 16  # AAGUID
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + self._cose_key()
        )
        auth_data = self._auth_data(FLAG_UP | FLAG_UV | FLAG_AT, attested)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client = self._client_data("webauthn.create", options["challenge"], origin)
        return json.dumps(
            {
                "id": b64url(self.credential_id),
                "rawId": b64url(self.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client),
                    "attestationObject": b64url(attestation),
                },
            }
        ).encode()

    def sign(
        self,
        options_json: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: str | None = None,
        bump: int = 1,
    ) -> bytes:
        options: dict[str, Any] = json.loads(options_json)
        self.counter += bump
        auth_data = self._auth_data(FLAG_UP | FLAG_UV, rp_id=rp_id)
        client = self._client_data("webauthn.get", challenge or options["challenge"], origin)
        signed = auth_data + hashlib.sha256(client).digest()
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return json.dumps(
            {
                "id": b64url(self.credential_id),
                "rawId": b64url(self.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client),
                    "authenticatorData": b64url(auth_data),
                    "signature": b64url(signature),
                },
            }
        ).encode()

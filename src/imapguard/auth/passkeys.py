"""Passkeys (WebAuthn Level 2): registering one, and proving one as the second
factor of a portal sign-in. The ceremony's cryptography is py_webauthn's; what
is ours is the rules around it:

* the relying party is the portal's `rp_id` (a host name: browsers refuse IP
  addresses) and the only accepted origin is the portal's own URL, port included;
* a challenge is 32 random bytes, used once: the caller keeps it in the
  server-side session and passes it back exactly once (`Challenge`);
* user verification is preferred, presence required (py_webauthn checks the
  flags); no attestation is asked for (the authenticator's make is no factor);
* a credential belongs to one account: an assertion is checked only against a
  passkey of the account that proved its password, so a passkey of another
  account proves nothing here;
* the signature counter must grow (the store's `use_passkey`, atomic): a
  counter that did not is a cloned authenticator, refused and audited. Both 0
  means an authenticator that keeps no counter (allowed, as the spec says).

Inputs from the browser are JSON of bounded size (`MAX_RESPONSE_BYTES`) and
nesting (`MAX_JSON_DEPTH`, checked before parsing: `json.loads` of a few
thousand "[" raises RecursionError); any malformed one (a nested clientDataJSON
inside it too) is `PasskeyRefused` with a short reason, never an exception
reaching the page, so the caller counts it as the failure it is.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import webauthn
from webauthn.helpers import options_to_json
from webauthn.helpers.exceptions import (
    InvalidAuthenticationResponse,
    InvalidCBORData,
    InvalidJSONStructure,
    InvalidRegistrationResponse,
)
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from imapguard.errors import ImapguardError
from imapguard.state.portal import PasskeyRecord

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_RESPONSE_BYTES",
    "Challenge",
    "NewPasskey",
    "PasskeyRefused",
    "Passkeys",
    "Proven",
]

# A registration or assertion response is a few KiB (an attestation statement
# with a certificate chain is the largest); anything bigger is refused unread.
MAX_RESPONSE_BYTES = 64 * 1024
# `PublicKeyCredential.toJSON()` nests four deep (the credential, its response,
# the transports list; clientExtensionResults with a nested extension); this
# leaves room for extensions and stays far below Python's recursion limit.
MAX_JSON_DEPTH = 16
CHALLENGE_BYTES = 32
TIMEOUT_MS = 120_000


class PasskeyRefused(ImapguardError):
    """A registration or assertion that does not prove what it claims."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Challenge:
    """What the browser is asked to sign (`options`, JSON for
    `PublicKeyCredential.parse*OptionsFromJSON`) and what the server keeps."""

    options: str
    challenge: bytes


@dataclass(frozen=True)
class NewPasskey:
    credential_id: bytes
    public_key: bytes
    sign_count: int
    aaguid: str


@dataclass(frozen=True)
class Proven:
    """An assertion verified against `passkey`; `sign_count` is the new counter
    (store it with `use_passkey`, which refuses a counter that did not grow)."""

    passkey: PasskeyRecord
    sign_count: int


class Passkeys:
    def __init__(self, *, rp_id: str, rp_name: str, origin: str) -> None:
        self.rp_id = rp_id
        self.rp_name = rp_name
        self.origin = origin

    def registration(
        self, user: str, user_handle: bytes, existing: list[PasskeyRecord]
    ) -> Challenge:
        """Options to create a passkey for `user`; its existing ones are excluded
        (an authenticator holds one credential per account)."""
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        options = webauthn.generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self.rp_name,
            user_name=user,
            user_id=user_handle,
            user_display_name=user,
            challenge=challenge,
            timeout=TIMEOUT_MS,
            attestation=AttestationConveyancePreference.NONE,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=p.credential_id) for p in existing
            ],
        )
        return Challenge(options_to_json(options), challenge)

    def verify_registration(self, response: bytes, challenge: bytes) -> NewPasskey:
        credential = _parse(response)
        try:
            verified = webauthn.verify_registration_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                require_user_presence=True,
            )
        except (InvalidRegistrationResponse, InvalidJSONStructure, InvalidCBORData) as exc:
            raise PasskeyRefused(f"registration refused: {_short(exc)}") from None
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            # RecursionError: py_webauthn wraps its own parse of clientDataJSON
            # today; whatever else of it parses deeper than the stack, no 500.
            raise PasskeyRefused(f"registration malformed: {type(exc).__name__}") from None
        return NewPasskey(
            credential_id=verified.credential_id,
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            aaguid=str(verified.aaguid),
        )

    def authentication(self, passkeys: list[PasskeyRecord]) -> Challenge:
        """Options to prove one of `passkeys` (the account's, after its password)."""
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        options = webauthn.generate_authentication_options(
            rp_id=self.rp_id,
            challenge=challenge,
            timeout=TIMEOUT_MS,
            allow_credentials=[PublicKeyCredentialDescriptor(id=p.credential_id) for p in passkeys],
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        return Challenge(options_to_json(options), challenge)

    def verify_authentication(
        self, response: bytes, challenge: bytes, passkeys: list[PasskeyRecord]
    ) -> Proven:
        """Which of `passkeys` signed `challenge`; PasskeyRefused otherwise."""
        credential = _parse(response)
        raw_id = credential.get("rawId") or credential.get("id")
        if not isinstance(raw_id, str):
            raise PasskeyRefused("assertion malformed: no credential id")
        try:
            wanted = webauthn.base64url_to_bytes(raw_id)
        except (ValueError, TypeError):
            raise PasskeyRefused("assertion malformed: credential id") from None
        passkey = next(
            (p for p in passkeys if secrets.compare_digest(p.credential_id, wanted)), None
        )
        if passkey is None:
            raise PasskeyRefused("not a passkey of this account")
        try:
            verified = webauthn.verify_authentication_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                credential_public_key=passkey.public_key,
                credential_current_sign_count=passkey.sign_count,
            )
        except (InvalidAuthenticationResponse, InvalidJSONStructure, InvalidCBORData) as exc:
            raise PasskeyRefused(f"assertion refused: {_short(exc)}") from None
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise PasskeyRefused(f"assertion malformed: {type(exc).__name__}") from None
        return Proven(passkey, verified.new_sign_count)


# A JSON string, escapes included (unterminated: to the end, so each byte is
# read once), or a bracket outside strings.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _too_deep(document: bytes, limit: int) -> bool:
    """Do the arrays and objects of `document` nest deeper than `limit`? One
    pass (text that is no JSON gets some answer; json.loads refuses it then)."""
    depth = 0
    for token in _TOKEN.finditer(document):
        first = token.group()[:1]
        if first in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif first in (b"]", b"}"):
            depth -= 1
    return False


def _parse(response: bytes) -> dict[str, Any]:
    if len(response) > MAX_RESPONSE_BYTES:
        raise PasskeyRefused(f"response larger than {MAX_RESPONSE_BYTES} bytes")
    if _too_deep(response, MAX_JSON_DEPTH):
        raise PasskeyRefused(f"response nested deeper than {MAX_JSON_DEPTH}")
    try:
        document = json.loads(response)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise PasskeyRefused("response is not JSON") from None
    if not isinstance(document, dict):
        raise PasskeyRefused("response is not a JSON object")
    return document


def _short(exc: Exception) -> str:
    """py_webauthn's reason, bounded (it names what failed, never a secret)."""
    return str(exc)[:160]

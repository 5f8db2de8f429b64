"""auth/passkeys.py against a software authenticator (tests/softkey.py): a
registration and an assertion verify; every forgery a browser would never send
is refused with a reason and no exception (deep nesting included). Chromium's virtual authenticator
proves the same end to end (tests/e2e)."""

from __future__ import annotations

import json
import time

import pytest

from imapguard.auth.passkeys import (
    MAX_JSON_DEPTH,
    MAX_RESPONSE_BYTES,
    PasskeyRefused,
    Passkeys,
    _too_deep,
)
from imapguard.state.portal import PasskeyRecord
from tests.softkey import SoftKey, b64url

RP = "portal.test"
ORIGIN = "https://portal.test:8443"


def service() -> Passkeys:
    return Passkeys(rp_id=RP, rp_name="imapguard", origin=ORIGIN)


def registered(key: SoftKey, user: str = "alice") -> PasskeyRecord:
    keys = service()
    challenge = keys.registration(user, b"h" * 32, [])
    new = keys.verify_registration(key.register(challenge.options), challenge.challenge)
    return PasskeyRecord(
        "p1", user, new.credential_id, new.public_key, new.sign_count, "key", new.aaguid, 0.0, None
    )


def test_register_then_prove() -> None:
    key = SoftKey(RP, ORIGIN)
    record = registered(key)
    assert record.credential_id == key.credential_id
    challenge = service().authentication([record])
    assert json.loads(challenge.options)["rpId"] == RP
    proven = service().verify_authentication(
        key.sign(challenge.options), challenge.challenge, [record]
    )
    assert (proven.passkey, proven.sign_count) == (record, 1)


def test_registration_options_exclude_the_accounts_passkeys() -> None:
    record = registered(SoftKey(RP, ORIGIN))
    options = json.loads(service().registration("alice", b"h" * 32, [record]).options)
    assert [c["id"] for c in options["excludeCredentials"]] == [b64url(record.credential_id)]
    assert options["attestation"] == "none"


def test_assertion_for_another_challenge_is_refused() -> None:
    """Replay: an assertion captured for one sign-in proves nothing for the next."""
    key = SoftKey(RP, ORIGIN)
    record = registered(key)
    first = service().authentication([record])
    captured = key.sign(first.options)
    second = service().authentication([record])
    with pytest.raises(PasskeyRefused, match="assertion refused"):
        service().verify_authentication(captured, second.challenge, [record])


def test_assertion_made_for_a_phishing_origin_is_refused() -> None:
    key = SoftKey(RP, ORIGIN)
    record = registered(key)
    challenge = service().authentication([record])
    phished = key.sign(challenge.options, origin="https://portal-test.example")
    with pytest.raises(PasskeyRefused, match="assertion refused"):
        service().verify_authentication(phished, challenge.challenge, [record])


def test_assertion_for_another_relying_party_is_refused() -> None:
    key = SoftKey(RP, ORIGIN)
    record = registered(key)
    challenge = service().authentication([record])
    other = key.sign(challenge.options, rp_id="evil.test")
    with pytest.raises(PasskeyRefused, match="assertion refused"):
        service().verify_authentication(other, challenge.challenge, [record])


def test_passkey_of_another_account_proves_nothing() -> None:
    """Mallory signs with her own passkey after typing Alice's password."""
    alices = registered(SoftKey(RP, ORIGIN), "alice")
    mallory_key = SoftKey(RP, ORIGIN)
    registered(mallory_key, "mallory")
    challenge = service().authentication([alices])
    with pytest.raises(PasskeyRefused, match="not a passkey of this account"):
        service().verify_authentication(
            mallory_key.sign(challenge.options), challenge.challenge, [alices]
        )


def test_signature_by_another_key_with_the_same_credential_id_is_refused() -> None:
    key = SoftKey(RP, ORIGIN)
    record = registered(key)
    forger = SoftKey(RP, ORIGIN, credential_id=key.credential_id)
    challenge = service().authentication([record])
    with pytest.raises(PasskeyRefused, match="assertion refused"):
        service().verify_authentication(
            forger.sign(challenge.options), challenge.challenge, [record]
        )


def test_registration_for_a_phishing_origin_is_refused() -> None:
    keys = service()
    challenge = keys.registration("alice", b"h" * 32, [])
    response = SoftKey(RP, ORIGIN).register(challenge.options, origin="https://evil.example")
    with pytest.raises(PasskeyRefused, match="registration refused"):
        keys.verify_registration(response, challenge.challenge)


@pytest.mark.parametrize(
    "response",
    [
        b"",
        b"not json",
        b"[]",
        b'{"id": 5}',
        b'{"id": "!!!", "rawId": "!!!"}',
        json.dumps({"id": "AA", "rawId": "AA", "response": {}}).encode(),
        b"{" + b" " * MAX_RESPONSE_BYTES + b"}",
    ],
)
def test_malformed_assertions_are_refused_not_raised(response: bytes) -> None:
    record = registered(SoftKey(RP, ORIGIN))
    challenge = service().authentication([record])
    with pytest.raises(PasskeyRefused):
        service().verify_authentication(response, challenge.challenge, [record])


@pytest.mark.parametrize("response", [b"", b"{}", b'{"id": "AA", "response": {"x": 1}}'])
def test_malformed_registrations_are_refused_not_raised(response: bytes) -> None:
    challenge = service().registration("alice", b"h" * 32, [])
    with pytest.raises(PasskeyRefused):
        service().verify_registration(response, challenge.challenge)


# Deep nesting: json.loads of a few thousand "[" raises RecursionError, in our
# parse of the answer and in py_webauthn's parse of the clientDataJSON in it.
NESTED = b"[" * 15_000
NESTED_OBJECT = b'{"id": ' * 5_000


def _deep_client_data(answer: bytes) -> bytes:
    document = json.loads(answer)
    document["response"]["clientDataJSON"] = b64url(b"[" * 40_000)
    return json.dumps(document).encode()


@pytest.mark.parametrize("response", [NESTED, NESTED_OBJECT])
def test_deeply_nested_answers_are_refused_not_raised(response: bytes) -> None:
    record = registered(SoftKey(RP, ORIGIN))
    challenge = service().authentication([record])
    with pytest.raises(PasskeyRefused, match=f"nested deeper than {MAX_JSON_DEPTH}"):
        service().verify_authentication(response, challenge.challenge, [record])
    registration = service().registration("alice", b"h" * 32, [])
    with pytest.raises(PasskeyRefused, match="nested"):
        service().verify_registration(response, registration.challenge)


def test_deeply_nested_client_data_is_refused_not_raised() -> None:
    key = SoftKey(RP, ORIGIN)
    record = registered(key)
    challenge = service().authentication([record])
    signed = _deep_client_data(key.sign(challenge.options))
    with pytest.raises(PasskeyRefused):
        service().verify_authentication(signed, challenge.challenge, [record])
    registration = service().registration("bob", b"h" * 32, [])
    made = _deep_client_data(SoftKey(RP, ORIGIN).register(registration.options))
    with pytest.raises(PasskeyRefused):
        service().verify_registration(made, registration.challenge)


def test_the_nesting_is_measured_in_one_pass() -> None:
    """Brackets inside strings do not count; a string of escaped quotes (each
    one a would-be string start) costs one pass, not one per quote."""
    inside = json.dumps({"id": "[" * 100, "rawId": "{" * 100}).encode()
    assert not _too_deep(inside, 1)
    assert _too_deep(b'{"a": [[1]]}', 2)
    assert not _too_deep(b'{"a": [[1]]}', 3)
    started = time.perf_counter()
    assert not _too_deep(b'"' + b'\\"' * (MAX_RESPONSE_BYTES // 2 - 1), 1)
    assert time.perf_counter() - started < 1.0

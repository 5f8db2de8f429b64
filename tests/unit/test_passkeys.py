"""auth/passkeys.py against a software authenticator (tests/softkey.py): a
registration and an assertion verify; every forgery a browser would never send
is refused with a reason and no exception. Chromium's virtual authenticator
proves the same end to end (tests/e2e)."""

from __future__ import annotations

import json

import pytest

from imapguard.auth.passkeys import MAX_RESPONSE_BYTES, PasskeyRefused, Passkeys
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

"""The account-name rule (imapguard.names): one account per upstream account,
and nothing the upstream reads specially."""

from __future__ import annotations

import unicodedata

import pytest

from imapguard.names import AccountNames, printable

LOCAL = AccountNames(username_format="local")
LOCAL_ORG = AccountNames(username_format="local", realms=("example.org",))
ANY = AccountNames(username_chars="")


@pytest.mark.parametrize(
    ("rule", "raw", "expected"),
    [
        (AccountNames(), "Alice", "alice"),
        (AccountNames(), "alice@Example.ORG", "alice@example.org"),
        # The master-user separator never reaches the upstream (A4).
        (AccountNames(), "alice*imapguard", None),
        (ANY, "alice*imapguard", None),
        (AccountNames(master_separator="%"), "alice%master", None),
        # Dovecot's %n: every domain is the same account upstream, so here too (A6).
        (LOCAL, "alice@h0.example", "alice"),
        (LOCAL, "ALICE@h11.example", "alice"),
        (LOCAL, "alice", "alice"),
        (LOCAL_ORG, "alice@evil.test", None),
        (LOCAL_ORG, "alice@example.org", "alice"),
        # Dovecot's auth_default_realm: a bare name is the realm's.
        (AccountNames(default_realm="example.org"), "alice", "alice@example.org"),
        (AccountNames(default_realm="example.org"), "alice@example.org", "alice@example.org"),
        (AccountNames(realms=("example.org",)), "alice@other.test", None),
        # One @ at most, none dangling.
        (AccountNames(), "a@b@c", None),
        (AccountNames(), "@example.org", None),
        (AccountNames(), "alice@", None),
        # Characters: Dovecot's default set, or any printable one.
        (AccountNames(), "jörg", None),
        (ANY, "jörg", "jörg"),
        (AccountNames(), "x[/x]", None),
        (ANY, "x[/x]", "x[/x]"),
        # Never, whatever username_chars says (A8): C1 controls, bidi overrides,
        # other format characters, whitespace, quotes.
        (ANY, "alice\u0085", None),
        (ANY, "alice\u009b31m", None),
        (ANY, "ecila\u202e", None),
        (ANY, "al\u2066ice", None),
        (ANY, "al\u200bice", None),
        (ANY, "al ice", None),
        (ANY, "al\u00a0ice", None),
        (ANY, 'al"ice', None),
        (ANY, "al\\ice", None),
        (ANY, "al\x00ice", None),
        (ANY, "a" * 256, None),
    ],
)
def test_canonical(rule: AccountNames, raw: str, expected: str | None) -> None:
    assert rule.canonical(raw.encode()) == expected
    assert rule.canonical_text(raw) == expected


def test_invalid_utf8_and_empty_name_no_account() -> None:
    assert ANY.canonical(b"\xff") is None
    assert ANY.canonical(b"") is None
    assert ANY.canonical_text("\ud800") is None  # a lone surrogate from JSON


def test_printable() -> None:
    assert printable("alice@example.org")
    assert not printable("a\u202eb")
    assert not printable("a\u0090b")


@pytest.mark.parametrize("code", range(128))
def test_printable_ascii_shortcut_decides_as_the_full_rule(code: int) -> None:
    # printable() decides ASCII text in one pass; every ASCII character must get
    # the answer of the per-character rule (a non-ASCII neighbour forces that path).
    c = chr(code)
    full = c.isprintable() and not c.isspace() and unicodedata.category(c) != "Cf"
    assert printable(f"a{c}b") is full
    assert printable(f"a{c}b\u00e9") is full


LOCAL_OURS = AccountNames(username_format="local", realms=("example.org",))
LOCAL_DEFAULT = AccountNames(username_format="local", default_realm="example.org")
LOCAL_BARE = AccountNames(username_format="local")


@pytest.mark.parametrize(
    ("rule", "claim", "expected"),
    [
        (LOCAL_OURS, "alice@example.org", "alice"),
        (LOCAL_OURS, "alice@elsewhere.example", None),
        (LOCAL_DEFAULT, "alice@example.org", "alice"),
        (LOCAL_DEFAULT, "alice@elsewhere.example", None),
        # No domain of ours is known: a claim with a domain names nobody here.
        (LOCAL_BARE, "alice@elsewhere.example", None),
        (LOCAL_BARE, "alice", "alice"),
        # username_format = "full" keeps the domain: another domain is another account.
        (AccountNames(), "alice@elsewhere.example", "alice@elsewhere.example"),
    ],
)
def test_a_provider_claim_at_another_domain_is_not_the_local_account(
    rule: AccountNames, claim: str, expected: str | None
) -> None:
    # A guest or brokered account alice@elsewhere at the identity provider must not
    # open the local alice, whom Dovecot's %n would find under that name.
    assert rule.canonical_identity(claim) == expected
    # A typed name keeps Dovecot's rule: the upstream checks the password itself.
    if rule is LOCAL_BARE:
        assert rule.canonical_text(claim) == "alice"

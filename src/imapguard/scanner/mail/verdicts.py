"""Pure verdicts on what a mail server said: no I/O, tested by tables.

How a server treated the dummy credential (`classify_*`), whether VRFY/EXPN
enumerate mailboxes, whether only legacy SASL is left, how the capabilities
changed across TLS, and which greeting or host name gives away too much
(`disclosed_version`, `internal_name`).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence

from imapguard.scanner import dialogs as d


class ProbeVerdict(enum.StrEnum):
    """How a server treated the dummy credential sent before TLS (AUTH-05)."""

    REFUSED = "refused"  # refused before looking at it: the check passes
    EVALUATED = "evaluated"  # checked it (and said no): a real password would have leaked
    ACCEPTED = "accepted"  # let the dummy credential in
    UNCLEAR = "unclear"  # cannot tell (backend down, odd reply): not tested


#: Response codes that only come after the credential was looked at (RFC 5530).
_IMAP_EVALUATED_CODES = frozenset(
    {"AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "EXPIRED", "CONTACTADMIN"}
)

#: Response codes that say nothing about the credential.
_IMAP_UNCLEAR_CODES = frozenset({"UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE"})


def classify_imap_login(tagged: d.ImapResponse, *, logindisabled: bool) -> ProbeVerdict:
    """The tagged answer to `LOGIN <probe> <random>` sent in cleartext.

    `NO [PRIVACYREQUIRED]` and `BAD` refuse before evaluation; a `NO` is a refusal
    too when the server advertised LOGINDISABLED (RFC 9051 §7.2.2: "their validity
    will not be checked"), unless its code says it did check. Any other NO means
    the password was evaluated."""
    if tagged.status == "OK":
        return ProbeVerdict.ACCEPTED
    if tagged.status == "BAD":
        return ProbeVerdict.REFUSED
    if tagged.status != "NO":
        return ProbeVerdict.UNCLEAR
    if tagged.code == "PRIVACYREQUIRED":
        return ProbeVerdict.REFUSED
    if tagged.code in _IMAP_EVALUATED_CODES:
        return ProbeVerdict.EVALUATED
    if tagged.code in _IMAP_UNCLEAR_CODES:
        return ProbeVerdict.UNCLEAR
    return ProbeVerdict.REFUSED if logindisabled else ProbeVerdict.EVALUATED


def classify_smtp_auth(reply: d.SmtpReply) -> ProbeVerdict:
    """The final reply to `AUTH PLAIN <probe>` (or the AUTH LOGIN exchange).

    530 (STARTTLS first) and 538 (encryption required, RFC 4954 §6) refuse; so do
    500/501/502/503/504 (no AUTH, or not this mechanism, in cleartext) and 534
    (mechanism too weak). 535 (RFC 4954 §6: credentials invalid) means evaluated;
    235 means accepted; anything else (454 temporary failure ...) is unclear."""
    if reply.code == 235:
        return ProbeVerdict.ACCEPTED
    if reply.code == 535:
        return ProbeVerdict.EVALUATED
    if reply.code in (500, 501, 502, 503, 504, 530, 534, 538):
        return ProbeVerdict.REFUSED
    return ProbeVerdict.UNCLEAR


def classify_pop3_user(response: d.Pop3Response) -> ProbeVerdict:
    """The answer to `USER <probe>` in cleartext: +OK means the server takes user
    names (and next the password) without TLS; -ERR refuses."""
    if response.kind is d.Pop3Kind.OK:
        return ProbeVerdict.EVALUATED
    if response.kind is d.Pop3Kind.ERR:
        return ProbeVerdict.REFUSED
    return ProbeVerdict.UNCLEAR


def classify_state_reset(reply: d.SmtpReply) -> bool | None:
    """ST-08: the reply to MAIL sent right after STARTTLS, without a new EHLO.
    True: the pre-TLS state was kept (MAIL accepted); False: reset (503, "send
    EHLO first"); None: refused for some other reason, so we cannot tell."""
    if reply.positive:
        return True
    if reply.code == 503:
        return False
    return None


def classify_relay(mail: d.SmtpReply, rcpt: d.SmtpReply | None) -> bool:
    """AUTH-06: an unauthenticated MAIL and a RCPT to a foreign domain accepted."""
    return mail.positive and rcpt is not None and rcpt.code in (250, 251)


def vrfy_enumerates(known: d.SmtpReply, unknown: d.SmtpReply) -> bool:
    """AUTH-08: VRFY/EXPN tell an existing mailbox from a random one."""
    return known.code in (250, 251, 252) and unknown.code in (550, 551, 553)


def legacy_only(mechanisms: Iterable[str]) -> bool:
    """AUTH-09: a non-empty SASL list made of legacy mechanisms only."""
    names = {m.upper() for m in mechanisms}
    return bool(names) and names <= d.LEGACY_SASL


def capability_diff(
    before: Sequence[str], after: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(added after TLS, removed after TLS), each in its list's order."""
    upper_before = {c.upper() for c in before}
    upper_after = {c.upper() for c in after}
    added = tuple(c for c in after if c.upper() not in upper_before)
    removed = tuple(c for c in before if c.upper() not in upper_after)
    return added, removed


def _ids(text: str) -> tuple[str, ...]:
    """Words of a string: short lists of check IDs and keywords stay readable."""
    return tuple(text.split())


_VERSION = re.compile(r"v?[0-9]+(?:\.[0-9]+)+(?:[-+~_][0-9A-Za-z.+~_-]*)?", re.IGNORECASE)

_JOINED_VERSION = re.compile(
    r"([A-Za-z][A-Za-z]+)[-_](v?[0-9]+(?:\.[0-9]+)+(?:[-+~_][0-9A-Za-z.+~_-]*)?)", re.IGNORECASE
)

_IPV4_SHAPE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")

#: Words before a dotted quad that make it an address, not a version.
_NOT_PRODUCTS = frozenset(_ids("at by for from host ip on to via esmtp smtp lmtp imap pop3 ready"))


_NOT_PRODUCTS |= frozenset(_ids("server service hello helo"))


def disclosed_version(text: str) -> str | None:
    """A "product version" pair in a greeting or an IMPLEMENTATION string
    ("Exim 4.96", "Cyrus v3.2.6-184", "Version 15.1.2507.23"), or None.

    Heuristics, tested by table: response codes and address literals in brackets
    are dropped; a dotted quad counts only after a product-like word (so "Dovecot
    2.3.19.1" is a version, "ready at 10.0.0.1" is not); host names never match
    because a version token must stand alone between separators."""
    text = re.sub(r"\[[^\]]*\]", " ", text)
    previous = ""
    for raw in re.split(r"[\s/;,()]+", text):
        word = raw.strip(".:!\"'<>")
        if not word:
            continue
        joined = _JOINED_VERSION.fullmatch(word)
        if joined is not None:  # "Qpopper-4.1.0", "Dovecot_2.3.19"
            return f"{joined.group(1)} {joined.group(2)}"
        if _VERSION.fullmatch(word):
            is_address = _IPV4_SHAPE.fullmatch(word) is not None and (
                not previous[:1].isalpha() or previous.lower() in _NOT_PRODUCTS
            )
            if not is_address:
                return f"{previous} {word}".strip() if previous[:1].isalpha() else word
        previous = word
    return None


#: Suffixes of names that only resolve inside an organisation (RFC 6762 .local,
#: RFC 8375 home.arpa, and the common private habits).
_INTERNAL_SUFFIXES = (
    ".local",
    ".localdomain",
    ".lan",
    ".internal",
    ".intranet",
    ".corp",
    ".home",
    ".home.arpa",
    ".private",
)


def internal_name(name: str) -> str | None:
    """Why `name` (an EHLO or greeting host name, or an address literal) looks
    internal, or None. Single-label names, internal suffixes and private or
    loopback addresses (RFC 1918, RFC 4193 ...) count."""
    host = name.strip().rstrip(".").lower()
    if not host:
        return None
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    literal = literal.removeprefix("ipv6:")
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        pass
    else:
        return "a private address" if address.is_private else None
    if "." not in host:
        return "a single-label name"
    for suffix in _INTERNAL_SUFFIXES:
        if host.endswith(suffix):
            return f"an internal domain ({suffix})"
    return None

"""The sign-in history in words a person understands: how they signed in (the web
portal in a browser, or a mail app over IMAP and what it calls itself), with
what (a device password by its label, not its id), and why a refusal happened
("address blocked", not the defense's counters).

Everything here is text for a Jinja template (autoescaped there): the user
agent and the IMAP ID are the client's own words, shortened, never markup.
"""

from __future__ import annotations

import re

from imapguard.state.accounts import AppPasswordRecord, DeviceRecord

__all__ = ["Labels", "client_text", "credential_text", "labels_of", "result_text"]

# KIND:ID -> what the owner calls it ("tablet", "Thunderbird 115").
Labels = dict[str, str]

PORTAL_METHOD = "portal"  # SignInRecord.method of the portal's own sign-ins
MAX_CLIENT = 64  # the longest client text shown

# KIND:ID, and the bare kinds: auth.model.AuthResult.credential's factors
# (vocab.Factor) and auth.history.PORTAL_CREDENTIALS.
_KINDS = {
    "app-password": "device password",
    "device": "trusted device",
    "trusted-device": "trusted device",
    "password": "account password",
    "totp": "password and one-time code",
    "password+totp": "password and one-time code",
    "one-time-code": "one-time code",
    "passkey": "passkey",
    "recovery-code": "recovery code",
    "oauth": "organisation sign-in",
    "oauth-mfa": "organisation sign-in with a second factor",
    "certificate": "client certificate",
    "client-cert": "client certificate",
    "password+client-cert": "password and client certificate",
    "portal-session": "portal session",
}
# A credential of the account that is gone since (revoked or removed).
_GONE = {"app-password": "a revoked device password", "device": "a removed trusted device"}

# Browser tokens of a user agent, most specific first (Edge and Opera also say
# Chrome, Chrome also says Safari).
_BROWSERS = (
    ("Edge", re.compile(r"\bEdg(?:e|A|iOS)?/(\d+)")),
    ("Opera", re.compile(r"\bOPR/(\d+)")),
    ("Firefox", re.compile(r"\b(?:Firefox|FxiOS)/(\d+)")),
    ("Chrome", re.compile(r"\b(?:Headless)?Chrom(?:e|ium)/(\d+)|\bCriOS/(\d+)")),
    ("Safari", re.compile(r"\bVersion/(\d+)[.\d]* (?:Mobile/\S+ )?Safari/")),
)
_SYSTEMS = (
    ("Android", re.compile(r"\bAndroid\b")),
    ("iOS", re.compile(r"\b(?:iPhone|iPad|iPod)\b")),
    ("Windows", re.compile(r"\bWindows\b")),
    ("macOS", re.compile(r"\bMac OS X\b|\bMacintosh\b")),
    ("ChromeOS", re.compile(r"\bCrOS\b")),
    ("Linux", re.compile(r"\bLinux\b")),
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def labels_of(passwords: list[AppPasswordRecord], devices: list[DeviceRecord]) -> Labels:
    """The labels of the account's own credentials (the lists are the signed-in
    account's: a record id of another account never finds a label here)."""
    labels = {f"app-password:{p.id}": p.label for p in passwords}
    for d in devices:
        name = f"{d.client_name} {d.client_version}".strip()
        labels[f"device:{d.id}"] = name or "unnamed mail app"
    return labels


def credential_text(credential: str, labels: Labels | None = None) -> str:
    """ "app-password:ID" -> 'device password "tablet"' (its label), or "a revoked
    device password" when the account has it no more; without `labels`, the id."""
    kind, _, ident = credential.partition(":")
    if not kind:
        return ""
    words = _KINDS.get(kind, kind)
    if not ident:
        return words
    if labels is None:
        return f"{words} {ident}"
    label = labels.get(credential)
    if label is None:
        return _GONE.get(kind, words)
    return f"{words} “{_clean(label)}”"


def client_text(method: str, client: str) -> str:
    """ "Web portal (browser: Chrome 131 on Linux)" or "Mail app (IMAP, Thunderbird
    115.0)"; the client part is left out when unknown."""
    if method == PORTAL_METHOD:
        browser = short_user_agent(client)
        return f"Web portal (browser: {browser})" if browser else "Web portal (browser)"
    # The gateway's IMAP ID label is "name/version" (gateway/connection.py).
    name = _clean(client).replace("/", " ", 1)
    return f"Mail app (IMAP, {name})" if name else "Mail app (IMAP)"


def short_user_agent(agent: str) -> str:
    """ "Mozilla/5.0 (X11; Linux x86_64) ... Chrome/131.0.0.0 Safari/537.36" ->
    "Chrome 131 on Linux"; an agent naming no known browser, its start."""
    browser = ""
    for name, pattern in _BROWSERS:
        found = pattern.search(agent)
        if found:
            version = next((g for g in found.groups() if g), "")
            browser = f"{name} {version}".strip()
            break
    system = next((name for name, pattern in _SYSTEMS if pattern.search(agent)), "")
    if browser and system:
        return f"{browser} on {system}"
    return browser or _clean(agent)


def result_text(ok: bool, reason: str) -> str:
    """ "Signed in", or "Refused: " and why in the owner's words."""
    if ok:
        return "Signed in"
    if reason.startswith("blocked:"):
        if "unfamiliar sources" in reason:
            return "Refused: account locked for new addresses"
        return "Refused: address blocked"
    if not reason:
        return "Refused"
    return f"Refused: {_clean(reason)}"


def _clean(text: str) -> str:
    """The client's text, one short line."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= MAX_CLIENT else text[: MAX_CLIENT - 1] + "…"

"""The check catalog: one registry of every finding the scanner can report.

The table itself is data, `catalog.toml` next to this module (its header lists
the fields), loaded and validated once at import. An ID never changes meaning:
reports, SARIF consumers and baselines key on it. Each check is registered there
once, with its title, default severity, the exact standard section, the concrete
fix, and where it applies: which protocols' cleartext or implicit-TLS services
get it, whether it needs a working STARTTLS, which checks decide an exposure
finding, and the grade a failure caps at. The checks themselves only name the ID
and give the evidence (`finding`); the mail checks, the grade rules, SARIF rules,
the README catalog and the HTML report are all derived from this one table.

A fix is plain text an administrator can paste (it is printed under every
finding): one summary sentence, then one block per product, each a label line
ending in ``:`` followed by the lines to put in that product's configuration,
indented by two spaces::

    Refuse every login on port 143 until STARTTLS has succeeded.
    Dovecot 2.3:
      disable_plaintext_auth = yes
    Dovecot 2.4:
      auth_allow_cleartext = no

A label that names software (Dovecot, Postfix, Exim, Cyrus, Exchange, imapguard: the
values of `model.Software`) is for that software only; a label naming none
(nftables, Certificate, Check, Any server ...) is for every server. The report shows
`fix_for(id, software)`: on a service whose software was recognised, only the blocks
for it and for every server, so imapguard is never told to set a Dovecot setting; on
one nobody recognised, every block.

Rules for the blocks (tests/unit/scanner/test_catalog.py holds them):
- a Dovecot setting is given for 2.3 and for 2.4, which renamed many settings
  (``ssl_cert = <file`` became ``ssl_server_cert_file = file``,
  ``disable_plaintext_auth = yes`` became ``auth_allow_cleartext = no``,
  ``ssl_prefer_server_ciphers`` became ``ssl_server_prefer_ciphers``; Dovecot's
  upgrade notes "2.3 to 2.4", converted settings); a label naming both versions
  means the lines are valid in both;
- paths use the certbot layout (``/etc/letsencrypt/live/NAME/fullchain.pem``),
  names use mail.example.org and the LAN 10.0.0.0/8 (fd00::/8): the reader
  substitutes their own;
- nftables rules assume Debian's default ``table inet filter`` with its
  ``input`` chain (/etc/nftables.conf); they were checked with ``nft -c``;
- imapguard blocks are imapguard.toml fragments (valid TOML, keys of imapguard.config);
- cipher strings are Mozilla's "intermediate" TLS 1.2 suites (ECDHE with
  AES-GCM or ChaCha20-Poly1305, which includes the RFC 9051 §11.1 mandatory
  TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256), written the short OpenSSL way.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from imapguard.scanner.model import GRADES, Finding, Protocol, Severity, Software, Status, TlsMode

__all__ = [
    "CATALOG",
    "CatalogError",
    "Check",
    "block_software",
    "catalog_markdown",
    "checks_for",
    "exposure_check",
    "finding",
    "fix_blocks",
    "fix_for",
    "graded_at",
    "load_catalog",
    "needing_starttls",
    "not_tested",
    "standard_links",
]

#: The protocols the mail checks audit (ManageSieve only gets EXP-06).
MAIL_PROTOCOLS = (Protocol.IMAP, Protocol.POP3, Protocol.SMTP)


class CatalogError(ValueError):
    """`catalog.toml` does not hold a valid catalog (a packaging bug, found at import)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    id: str
    severity: Severity
    title: str
    standard: str
    fix: str
    help_uri: str = ""
    #: Protocols whose cleartext (STARTTLS) service gets this check.
    cleartext: frozenset[Protocol] = frozenset()
    #: Protocols whose implicit-TLS service gets this check.
    implicit: frozenset[Protocol] = frozenset()
    #: On a cleartext port, decided only through a working STARTTLS.
    needs_starttls: bool = False
    #: An exposure check's inputs, in the order its evidence lists them.
    decided_by: tuple[str, ...] = ()
    #: The grade a failure caps the service at whatever its severity, or "".
    grade_cap: str = ""

    @property
    def family(self) -> str:
        return self.id.split("-", 1)[0]


def _fix(summary: str, *blocks: tuple[str, ...]) -> str:
    """Summary sentence, then each block as ``label:`` and its indented lines."""
    out = [summary]
    for label, *lines in blocks:
        out.append(f"{label}:")
        out.extend(f"  {line}" for line in lines)
    return "\n".join(out)


def fix_blocks(fix: str) -> list[tuple[str, list[str]]]:
    """The product blocks of a fix text: [(label, lines)], summary excluded."""
    blocks: list[tuple[str, list[str]]] = []
    for line in fix.splitlines()[1:]:
        if line.startswith("  ") and blocks:
            blocks[-1][1].append(line[2:])
        elif line.endswith(":"):
            blocks.append((line[:-1], []))
    return blocks


def block_software(label: str) -> frozenset[Software]:
    """The software a fix block is for, by the names in its label; empty: any server."""
    return frozenset(s for s in Software if re.search(rf"\b{re.escape(s.value)}\b", label))


def _blocks_text(summary: str, blocks: Iterable[tuple[str, list[str]]]) -> str:
    return _fix(summary, *((label, *lines) for label, lines in blocks))


# -- standards as links ----------------------------------------------------------

_RFC = re.compile(r"RFC\s*(\d{3,5})")
_SECTION = re.compile(r"§\s*([\d.]+\d|\d)")
_CVE = re.compile(r"CVE-\d{4}-\d{4,}")
_FIXED_LINKS = {
    "BOD 18-01": "https://www.cisa.gov/news-events/directives/bod-18-01-enhance-email-and-web-security",
    "Mozilla Server Side TLS": "https://wiki.mozilla.org/Security/Server_Side_TLS",
}


def standard_links(standard: str) -> list[tuple[str, str]]:
    """Each reference in a `standard` text with a link: [(text, url)].

    "RFC 9051 §6.2.3, §7.2.2" gives two links into RFC 9051 (a bare section
    refers to the RFC before it); CVE numbers link to cve.org. References with
    no stable public URL (CA/B Forum sections, "—") are left out."""
    links: list[tuple[str, str]] = []
    rfc = ""
    for part in re.split(r"[,;]", standard):
        text = part.strip()
        if match := _RFC.search(text):
            rfc = match.group(1)
        if cve := _CVE.search(text):
            links.append((cve.group(0), f"https://www.cve.org/CVERecord?id={cve.group(0)}"))
            continue
        for name, url in _FIXED_LINKS.items():
            if text.startswith(name):
                links.append((text, url))
        if not rfc or not (match or text.startswith("§")):
            continue
        url = f"https://www.rfc-editor.org/rfc/rfc{rfc}"
        if section := _SECTION.search(text):
            url += f"#section-{section.group(1)}"
        links.append((text if match else f"RFC {rfc} {text}", url))
    return links


def _with_help_uri(check: Check) -> Check:
    if check.help_uri:
        return check
    links = standard_links(check.standard)
    return dataclasses.replace(check, help_uri=links[0][1]) if links else check


# -- loading -----------------------------------------------------------------------

_FIELDS = frozenset(
    {
        "id", "severity", "title", "standard", "fix", "cleartext", "implicit",
        "needs_starttls", "decided_by", "grade_cap",
    }
)  # fmt: skip
_ID = re.compile(r"(EXP|ST|AUTH|BAN|TLS|CERT)-[0-9]{2}")


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where}.{key}: a non-empty string is required")
    return value


def _protocols(entry: Mapping[str, Any], key: str, where: str) -> frozenset[Protocol]:
    values = entry.get(key, [])
    if not isinstance(values, list) or any(v not in MAIL_PROTOCOLS for v in values):
        names = ", ".join(p.value for p in MAIL_PROTOCOLS)
        raise CatalogError(f"{where}.{key}: a list of {names} is required")
    return frozenset(Protocol(v) for v in values)


def _check(entry: Mapping[str, Any], where: str) -> Check:
    check_id = _text(entry, "id", where)
    if not _ID.fullmatch(check_id):
        raise CatalogError(f"{where}.id: {check_id!r} is not an ID like EXP-01")
    where = f"check {check_id}"
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise CatalogError(f"{where}: unknown keys {', '.join(unknown)}")
    severity = _text(entry, "severity", where)
    if severity not in Severity.__members__.values():
        raise CatalogError(f"{where}.severity: {severity!r} is not a severity")
    fix = _text(entry, "fix", where).removesuffix("\n")
    decided_by = entry.get("decided_by", [])
    if not isinstance(decided_by, list) or not all(isinstance(i, str) for i in decided_by):
        raise CatalogError(f"{where}.decided_by: a list of check IDs is required")
    grade_cap = entry.get("grade_cap", "")
    if grade_cap not in ("", *GRADES):
        raise CatalogError(f"{where}.grade_cap: {grade_cap!r} is not a grade")
    needs_starttls = entry.get("needs_starttls", False)
    if not isinstance(needs_starttls, bool):
        raise CatalogError(f"{where}.needs_starttls: true or false is required")
    return Check(
        id=check_id,
        severity=Severity(severity),
        title=_text(entry, "title", where),
        standard=_text(entry, "standard", where),
        fix=fix,
        cleartext=_protocols(entry, "cleartext", where),
        implicit=_protocols(entry, "implicit", where),
        needs_starttls=needs_starttls,
        decided_by=tuple(decided_by),
        grade_cap=grade_cap,
    )


def load_catalog(text: str) -> dict[str, Check]:
    """The checks of a catalog file's text, in file order; `CatalogError` names the
    check and key of the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog.toml: {exc}") from None
    entries = data.get("check")
    if set(data) != {"check"} or not isinstance(entries, list) or not entries:
        raise CatalogError("catalog.toml: only [[check]] tables are allowed, at least one")
    checks: dict[str, Check] = {}
    for index, entry in enumerate(entries):
        check = _check(entry, f"check #{index + 1}")
        if check.id in checks:
            raise CatalogError(f"check {check.id}: listed twice")
        checks[check.id] = _with_help_uri(check)
    for check in checks.values():
        missing = [i for i in check.decided_by if i not in checks]
        if missing:
            raise CatalogError(f"check {check.id}.decided_by: unknown {', '.join(missing)}")
    return checks


CATALOG: dict[str, Check] = load_catalog(
    importlib.resources.files(__package__).joinpath("catalog.toml").read_text("utf-8")
)


# -- where the checks apply -----------------------------------------------------------


def checks_for(protocol: Protocol, tls_mode: TlsMode) -> tuple[str, ...]:
    """Every check the mail checks give a service of `protocol` on a port of
    `tls_mode`, in catalog order (the not-tested list when it is throttled)."""
    cleartext = tls_mode is TlsMode.CLEARTEXT
    return tuple(
        c.id for c in CATALOG.values() if protocol in (c.cleartext if cleartext else c.implicit)
    )


def needing_starttls(protocol: Protocol) -> tuple[str, ...]:
    """The checks of a cleartext `protocol` service that need a working STARTTLS."""
    return tuple(c.id for c in CATALOG.values() if protocol in c.cleartext and c.needs_starttls)


def exposure_check(protocol: Protocol) -> Check | None:
    """The exposure check (EXP-01..03) of a cleartext `protocol` service: the one
    decided by other checks, or None."""
    return next((c for c in CATALOG.values() if protocol in c.cleartext and c.decided_by), None)


def graded_at(cap: str) -> frozenset[str]:
    """The checks whose failure caps the grade at `cap` whatever their severity."""
    return frozenset(c.id for c in CATALOG.values() if c.grade_cap == cap)


# -- findings ---------------------------------------------------------------------


def finding(
    check_id: str,
    evidence: Iterable[str],
    *,
    severity: Severity | None = None,
    standard: str | None = None,
    title: str | None = None,
) -> Finding:
    """A problem found by check `check_id`. A check that raises or lowers the
    default severity says why in its evidence."""
    check = CATALOG[check_id]
    return Finding(
        id=check.id,
        severity=severity or check.severity,
        title=title or check.title,
        evidence=tuple(evidence),
        standard=standard or check.standard,
        fix=check.fix,
    )


def fix_for(check_id: str, software: Software | None) -> str:
    """The fix of `check_id` for a service running `software`: its own blocks and
    those for any server; every block when the software is not known. When the
    catalog has no block for that software, a last block says so."""
    fix = CATALOG[check_id].fix
    if software is None:
        return fix
    summary = fix.splitlines()[0]
    kept = [
        (label, lines)
        for label, lines in fix_blocks(fix)
        if not (products := block_software(label)) or software in products
    ]
    if not any(software in block_software(label) for label, _ in kept):
        kept.append(
            (
                f"{software.value} (recognised on this port)",
                [f"no {software.value} setting is listed for this; the first line says what to do"],
            )
        )
    return _blocks_text(summary, kept)


def not_tested(check_id: str, reason: str) -> Finding:
    """A check that could not run: never a pass, never a fail."""
    check = CATALOG[check_id]
    return Finding(
        id=check.id,
        severity=Severity.INFO,
        title=check.title,
        evidence=(f"not tested: {reason}",),
        standard=check.standard,
        fix="",
        status=Status.NOT_TESTED,
    )


def catalog_markdown() -> str:
    """The catalog as the README prints it (a test checks the README holds it)."""
    rows = ["| ID | Default severity | Finding | Standard |", "|---|---|---|---|"]
    for check in CATALOG.values():
        rows.append(f"| {check.id} | {check.severity.value} | {check.title} | {check.standard} |")
    return "\n".join(rows)

"""The check catalog: the IDs and default severities (a contract: reports and SARIF
consumers key on them), and fixes an
administrator can paste (Dovecot 2.3 and 2.4 names right, cipher strings that
mean what they say, nftables rules on the exposure findings)."""

from __future__ import annotations

import re
import subprocess
import tomllib
import typing
from typing import Any

import pydantic
import pytest

from imapguard.config import Config
from imapguard.scanner.catalog import (
    CATALOG,
    block_software,
    finding,
    fix_blocks,
    fix_for,
    not_tested,
    standard_links,
)
from imapguard.scanner.model import Severity, Software, Status

#: The contract: every ID with its default severity (an ID never changes meaning).
CONTRACT = {
    "EXP-01": "high", "EXP-02": "high", "EXP-03": "medium", "EXP-04": "medium",
    "EXP-05": "medium", "EXP-06": "info", "EXP-07": "critical",
    "ST-01": "high", "ST-02": "high", "ST-03": "low", "ST-04": "low", "ST-05": "low",
    "ST-06": "low", "ST-07": "critical", "ST-08": "medium", "ST-09": "high",
    "ST-10": "info", "ST-11": "info",
    "AUTH-01": "high", "AUTH-02": "high", "AUTH-03": "high", "AUTH-04": "high",
    "AUTH-05": "critical", "AUTH-06": "high", "AUTH-07": "low", "AUTH-08": "low",
    "AUTH-09": "info",
    "BAN-01": "low", "BAN-02": "low", "BAN-03": "info",
    "TLS-01": "critical", "TLS-02": "high", "TLS-03": "medium", "TLS-04": "critical",
    "TLS-05": "medium", "TLS-06": "info", "TLS-07": "info", "TLS-08": "high",
    "TLS-09": "high", "TLS-10": "critical", "TLS-11": "low",
    "CERT-01": "high", "CERT-02": "high", "CERT-03": "critical", "CERT-04": "medium",
    "CERT-05": "high", "CERT-06": "high", "CERT-07": "low", "CERT-08": "info",
    "CERT-09": "low",
}  # fmt: skip

#: Dovecot 2.3 names that 2.4 renamed or replaced (Dovecot's "Upgrading 2.3 to
#: 2.4", converted settings), and the 2.4 names 2.3 does not know.
RENAMED_IN_24 = (
    "disable_plaintext_auth",
    "ssl_cert",
    "ssl_key",
    "ssl_dh",
    "ssl_ca",
    "ssl_alt_cert",
    "ssl_alt_key",
    "ssl_prefer_server_ciphers",
    "ssl_verify_client_cert",
)
NEW_IN_24 = ("auth_allow_cleartext", "ssl_server_")

EXPOSURE = ("EXP-01", "EXP-02", "EXP-04", "EXP-06", "EXP-07", "ST-07", "ST-09", "AUTH-05")


def test_catalog_holds_exactly_the_contract_ids_and_severities() -> None:
    assert {c.id: c.severity.value for c in CATALOG.values()} == CONTRACT
    assert list(CATALOG) == list(CONTRACT)  # the order the reports list rules in


def test_every_check_has_a_title_standard_and_a_fix_with_blocks() -> None:
    for check in CATALOG.values():
        assert check.title, check.id
        assert check.standard, check.id
        summary = check.fix.splitlines()[0]
        assert summary.endswith("."), check.id
        assert not summary.endswith(":"), check.id
        blocks = fix_blocks(check.fix)
        assert blocks, check.id
        for label, lines in blocks:
            assert lines, (check.id, label)


def test_fix_text_is_summary_then_labelled_indented_blocks() -> None:
    for check in CATALOG.values():
        for line in check.fix.splitlines()[1:]:
            assert line.endswith(":") or line.startswith("  "), (check.id, line)


def test_dovecot_settings_are_given_for_both_23_and_24() -> None:
    for check in CATALOG.values():
        labels = [label for label, _ in fix_blocks(check.fix) if label.startswith("Dovecot")]
        has_23 = any("2.3" in label for label in labels)
        has_24 = any("2.4" in label for label in labels)
        assert has_23 == has_24, check.id


def _setting_names(lines: list[str]) -> list[str]:
    """`name = value` settings at the top level of a Dovecot block."""
    names = []
    depth = 0
    for line in lines:
        match = re.match(r"([a-z0-9_]+) = ", line.strip())
        if match and depth == 0:
            names.append(match.group(1))
        depth += line.count("{") - line.count("}")
    return names


def test_dovecot_24_blocks_use_24_names_and_23_blocks_use_23_names() -> None:
    checked = 0
    for check in CATALOG.values():
        for label, lines in fix_blocks(check.fix):
            if not label.startswith("Dovecot"):
                continue
            text = "\n".join(lines)
            for name in _setting_names(lines):
                checked += 1
                if "2.4" in label:
                    assert name not in RENAMED_IN_24, (check.id, label, name)
                    assert "= <" not in text, (check.id, label)  # 2.4 *_file takes a path
                if "2.3" in label:
                    assert not name.startswith(NEW_IN_24), (check.id, label, name)
    assert checked > 40


@pytest.mark.dovecot
def test_dovecot_23_setting_names_exist_in_debians_dovecot() -> None:
    # Debian 12 ships Dovecot 2.3: every top-level name we tell a 2.3 admin to
    # set must be one `doveconf -a` knows.
    output = subprocess.run(
        ["doveconf", "-a"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    known = set(re.findall(r"^([a-z0-9_]+) = ", output, re.MULTILINE))
    assert "disable_plaintext_auth" in known
    used = {
        name
        for check in CATALOG.values()
        for label, lines in fix_blocks(check.fix)
        if label.startswith("Dovecot") and "2.3" in label
        for name in _setting_names(lines)
    }
    assert len(used) >= 8
    assert used <= known, used - known


def test_cipher_string_expands_to_ecdhe_aead_suites_only() -> None:
    strings = {
        m.group(1)
        for check in CATALOG.values()
        for m in re.finditer(r"(?:ssl_cipher_list|tls_medium_cipherlist) = (\S+)", check.fix)
    }
    assert strings == {"ECDHE+AESGCM:ECDHE+CHACHA20"}
    listing = subprocess.run(
        ["openssl", "ciphers", "-v", "-tls1_2", strings.pop()],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    suites = {line.split()[0]: line for line in listing.splitlines() if "TLSv1.2" in line}
    assert "ECDHE-RSA-AES128-GCM-SHA256" in suites  # RFC 9051 §11.1's mandatory suite
    assert len(suites) == 6
    for name, line in suites.items():
        assert name.startswith("ECDHE-"), name
        assert "Mac=AEAD" in line, name


def test_exposure_findings_carry_an_nftables_rule() -> None:
    for check_id in EXPOSURE:
        rules = [
            line
            for label, lines in fix_blocks(CATALOG[check_id].fix)
            if label.startswith("nftables")
            for line in lines
        ]
        assert rules, check_id
        for rule in rules:
            assert re.fullmatch(
                r"nft add rule inet filter input tcp dport (\d+|\{ \d+(, \d+)* \})"
                r"( ip6? saddr != [0-9a-f.:]+(/\d+)?)? (drop|accept)",
                rule,
            ), rule


def test_lan_only_rules_cover_ipv4_and_ipv6() -> None:
    for check in CATALOG.values():
        for label, lines in fix_blocks(check.fix):
            if label.startswith("nftables") and any(" ip saddr" in line for line in lines):
                assert any(" ip6 saddr" in line for line in lines), check.id


def test_certificate_findings_give_certificate_steps() -> None:
    for check in CATALOG.values():
        if check.family != "CERT" or check.id in ("CERT-08", "CERT-09"):
            continue
        assert "certbot" in check.fix or "fullchain.pem" in check.fix, check.id
    assert "deploy-hook" in CATALOG["CERT-03"].fix  # renewal without reload serves the old one
    assert "fullchain.pem" in CATALOG["CERT-04"].fix


@pytest.mark.parametrize(
    ("check_id", "setting"),
    [
        ("EXP-01", "disable_plaintext_auth = yes"),
        ("EXP-01", "auth_allow_cleartext = no"),
        ("AUTH-04", "smtpd_tls_auth_only = yes"),
        ("AUTH-04", "auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}}"),
        ("EXP-03", "-o smtpd_tls_security_level=encrypt"),
        ("TLS-02", "ssl_min_protocol = TLSv1.2"),
        ("TLS-02", "smtpd_tls_protocols = >=TLSv1.2"),
        ("TLS-02", "openssl_options = +no_sslv2 +no_sslv3 +no_tlsv1 +no_tlsv1_1"),
        ("EXP-07", "ssl_server_cert_file = /etc/letsencrypt/live/mail.example.org/fullchain.pem"),
        ("EXP-07", "ssl_cert = </etc/letsencrypt/live/mail.example.org/fullchain.pem"),
        ("TLS-07", "ssl_server_prefer_ciphers = server"),
        ("TLS-07", "ssl_prefer_server_ciphers = yes"),
        ("TLS-04", "tls_require_ciphers = ECDHE+AESGCM:ECDHE+CHACHA20"),
    ],
)
def test_known_settings_appear_verbatim(check_id: str, setting: str) -> None:
    assert setting in CATALOG[check_id].fix.splitlines()[1:] or any(
        line.strip() == setting for line in CATALOG[check_id].fix.splitlines()
    )


def test_finding_copies_the_catalog_and_keeps_overrides() -> None:
    made = finding("EXP-01", ["S: * OK", "no LOGINDISABLED"], severity=Severity.CRITICAL)
    assert made.fix == CATALOG["EXP-01"].fix
    assert made.severity is Severity.CRITICAL
    assert made.evidence == ("S: * OK", "no LOGINDISABLED")
    assert made.status is Status.FAIL
    assert finding("EXP-01", []).severity is Severity.HIGH


def test_not_tested_has_its_reason_and_no_fix() -> None:
    made = not_tested("TLS-10", "throttled")
    assert made.status is Status.NOT_TESTED
    assert made.evidence == ("not tested: throttled",)
    assert made.fix == ""


def test_standard_links_resolve_sections_and_bare_section_references() -> None:
    assert standard_links("RFC 9051 §6.2.3, §7.1; RFC 4954 §6") == [
        ("RFC 9051 §6.2.3", "https://www.rfc-editor.org/rfc/rfc9051#section-6.2.3"),
        ("RFC 9051 §7.1", "https://www.rfc-editor.org/rfc/rfc9051#section-7.1"),
        ("RFC 4954 §6", "https://www.rfc-editor.org/rfc/rfc4954#section-6"),
    ]
    assert standard_links("RFC 8996 §2-3, RFC 8997")[0][1].endswith("rfc8996#section-2")
    assert standard_links("CVE-2011-0411") == [
        ("CVE-2011-0411", "https://www.cve.org/CVERecord?id=CVE-2011-0411")
    ]
    assert standard_links("—") == []
    assert standard_links("CA/B Forum BR §6.3.2") == []


def test_help_uri_is_the_first_standard_link() -> None:
    assert CATALOG["AUTH-01"].help_uri == "https://www.rfc-editor.org/rfc/rfc9051#section-6.2.3"
    assert CATALOG["TLS-05"].help_uri == "https://wiki.mozilla.org/Security/Server_Side_TLS"
    assert CATALOG["ST-11"].help_uri == ""


# -- fixes for the software found (catalog.fix_for) -----------------------------------

#: The checks that can be reported on an imapguard gateway, each with imapguard's own
#: block (its TLS is fixed, so most of these point at something in front of it).
IMAPGUARD_FIXES = (
    "EXP-01", "EXP-05", "ST-02", "ST-11",
    "TLS-01", "TLS-02", "TLS-03", "TLS-04", "TLS-05", "TLS-06", "TLS-08", "TLS-09",
    "TLS-10", "TLS-11",
    "CERT-01", "CERT-02", "CERT-03", "CERT-04", "CERT-09",
)  # fmt: skip
#: Settings of other software that must never be shown to an imapguard admin.
FOREIGN_SETTINGS = (
    "ssl_alt_cert", "ssl_server_alt_cert_file", "ssl_cert", "ssl_min_protocol",
    "disable_plaintext_auth", "auth_allow_cleartext", "smtpd_", "tls_require_ciphers",
    "login_trusted_networks", "systemctl reload dovecot",
)  # fmt: skip


def test_imapguard_gets_imapguard_fixes_and_never_another_servers_settings() -> None:
    # The example: TLS-06 on imapguard named Dovecot's ssl_alt_cert.
    tls06 = fix_for("TLS-06", Software.IMAPGUARD)
    assert "ssl_alt_cert" not in tls06
    assert 'certificate = "/etc/letsencrypt/live/mail.example.org/fullchain.pem"' in tls06
    assert "--key-type rsa" in tls06
    for check in CATALOG.values():
        text = fix_for(check.id, Software.IMAPGUARD)
        assert text.splitlines()[0] == check.fix.splitlines()[0], check.id
        for label, _ in fix_blocks(text):
            assert block_software(label) <= {Software.IMAPGUARD}, (check.id, label)
        for setting in FOREIGN_SETTINGS:
            assert setting not in text, (check.id, setting)
        own = [label for label, _ in fix_blocks(text) if block_software(label)]
        assert own, check.id  # its own block, or one saying there is none
        if check.id in IMAPGUARD_FIXES:
            assert "no imapguard setting is listed" not in text, check.id


def test_imapguard_blocks_are_imapguard_toml_with_its_config_keys() -> None:
    """Every imapguard block is a fragment of imapguard.toml: it parses, and each key
    is one imapguard.config defines, with a value it accepts."""
    checked = 0
    for check in CATALOG.values():
        for label, lines in fix_blocks(check.fix):
            if Software.IMAPGUARD not in block_software(label) or not lines[0].startswith("["):
                continue
            document = tomllib.loads("\n".join(lines))
            for section, value in document.items():
                annotation: Any = Config.model_fields[section].annotation
                model: type[pydantic.BaseModel] = (
                    typing.get_args(annotation)[0] if section == "listen" else annotation
                )
                for table in value if isinstance(value, list) else [value]:
                    for key, item in table.items():
                        assert key in model.model_fields, (check.id, section, key)
                        info = model.model_fields[key]
                        kind: Any = info.annotation
                        if info.metadata:
                            kind = typing.Annotated[kind, *info.metadata]
                        pydantic.TypeAdapter(kind).validate_python(item)
                        checked += 1
    assert checked >= 15


def test_other_software_gets_its_own_and_the_generic_blocks() -> None:
    dovecot = fix_for("TLS-06", Software.DOVECOT)
    assert "ssl_alt_cert = </etc/ssl/mail-rsa.pem" in dovecot
    assert "imapguard" not in dovecot
    assert "Postfix" not in dovecot
    postfix = fix_for("EXP-01", Software.POSTFIX)  # nothing for Postfix: generic + a note
    labels = [label for label, _ in fix_blocks(postfix)]
    assert labels == [
        "nftables (keep the port for the LAN only)",
        "Postfix (recognised on this port)",
    ]
    # ST-11's "scan again" block is for any server: it is about the scanner.
    assert "imapguard scan --rate 2" in fix_for("ST-11", Software.DOVECOT)


def test_unknown_software_gets_every_block() -> None:
    for check in CATALOG.values():
        assert fix_for(check.id, None) == check.fix


@pytest.mark.parametrize(
    ("label", "software"),
    [
        ("Dovecot 2.3 and 2.4, Postfix (reload after each renewal)",
         {Software.DOVECOT, Software.POSTFIX}),
        ("imapguard (imapguard.toml)", {Software.IMAPGUARD}),
        ("Exchange (PowerShell)", {Software.EXCHANGE}),
        ("Scan again, slowly", set()),
        ("TLS proxy (stunnel, haproxy) in front", set()),
        ("nftables (open the twins)", set()),
    ],
)  # fmt: skip
def test_block_software_reads_the_label(label: str, software: set[Software]) -> None:
    assert block_software(label) == software

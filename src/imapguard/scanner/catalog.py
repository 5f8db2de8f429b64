"""The check catalog: one registry of every finding the scanner can report.

IDs, default severities and standards come from SCANNER-CHECKS.md (a contract:
an ID never changes meaning). Each check is registered here once, with its title,
the exact standard section and the concrete fix; the checks themselves only name
the ID and give the evidence (`finding`). SARIF rules, the README catalog and the
HTML report are all rendered from this table.

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
- imapguard blocks are imapguard.toml fragments (valid TOML, keys of config.py);
- cipher strings are Mozilla's "intermediate" TLS 1.2 suites (ECDHE with
  AES-GCM or ChaCha20-Poly1305, which includes the RFC 9051 §11.1 mandatory
  TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256), written the short OpenSSL way.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from imapguard.scanner.model import Finding, Severity, Software, Status

__all__ = [
    "CATALOG",
    "Check",
    "block_software",
    "catalog_markdown",
    "finding",
    "fix_blocks",
    "fix_for",
    "not_tested",
    "standard_links",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    id: str
    severity: Severity
    title: str
    standard: str
    fix: str
    help_uri: str = ""

    @property
    def family(self) -> str:
        return self.id.split("-", 1)[0]


_C, _H, _M, _L, _I = (
    Severity.CRITICAL,
    Severity.HIGH,
    Severity.MEDIUM,
    Severity.LOW,
    Severity.INFO,
)


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


# -- the shared pieces of the fixes ---------------------------------------------

_LIVE = "/etc/letsencrypt/live/mail.example.org"
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# GnuTLS priority string (Debian's exim4 is built with GnuTLS): TLS 1.2 and 1.3,
# the same AEAD suites with ECDHE key exchange. Checked with `gnutls-cli -l`.
_GNUTLS = (
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM"
    ":+CHACHA20-POLY1305:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA"
)
_EXIM_AUTH_TLS = "auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}}"

_DOVECOT23_CERT = (
    f"ssl_cert = <{_LIVE}/fullchain.pem",
    f"ssl_key = <{_LIVE}/privkey.pem",
)
_DOVECOT24_CERT = (
    f"ssl_server_cert_file = {_LIVE}/fullchain.pem",
    f"ssl_server_key_file = {_LIVE}/privkey.pem",
)
_IMAPGUARD_CERT = (
    "[tls]",
    f'certificate = "{_LIVE}/fullchain.pem"',
    f'private_key = "{_LIVE}/privkey.pem"',
)
_POSTFIX_CERT = (
    f"smtpd_tls_chain_files = {_LIVE}/privkey.pem,",
    f"    {_LIVE}/fullchain.pem",
)
_EXIM_CERT = (
    f"tls_certificate = {_LIVE}/fullchain.pem",
    f"tls_privatekey = {_LIVE}/privkey.pem",
)
#: imapguard's TLS is fixed (imapguard.tls: TLS 1.2 or 1.3, ECDHE with AES-GCM or
#: ChaCha20-Poly1305, no compression or renegotiation, server order): anything else on
#: its port comes from something in front of it.
_IMAPGUARD_FIXED = (
    "imapguard",
    "its TLS is fixed (TLS 1.2 or later, ECDHE with AES-GCM or ChaCha20-Poly1305, no",
    "compression or renegotiation): a TLS proxy or load balancer in front of it answered;",
    "pass the TCP connections through to imapguard instead",
)
_PROTOCOLS = (
    ("Dovecot 2.3 and 2.4", "ssl_min_protocol = TLSv1.2"),
    (
        "Postfix main.cf (3.6 and later; older: !SSLv2, !SSLv3, !TLSv1, !TLSv1.1)",
        "smtpd_tls_protocols = >=TLSv1.2",
        "smtpd_tls_mandatory_protocols = >=TLSv1.2",
    ),
    ("Exim (OpenSSL build)", "openssl_options = +no_sslv2 +no_sslv3 +no_tlsv1 +no_tlsv1_1"),
    ("Exim (GnuTLS build, Debian's exim4)", f"tls_require_ciphers = {_GNUTLS}"),
    _IMAPGUARD_FIXED,
)
_SUITES = (
    ("Dovecot 2.3 and 2.4", f"ssl_cipher_list = {_CIPHERS}"),
    (
        "Postfix main.cf",
        "smtpd_tls_mandatory_ciphers = medium",
        f"tls_medium_cipherlist = {_CIPHERS}",
        "smtpd_tls_exclude_ciphers = aNULL, eNULL, EXPORT, DES, 3DES, RC4, MD5",
    ),
    ("Exim (OpenSSL build)", f"tls_require_ciphers = {_CIPHERS}"),
    ("Exim (GnuTLS build, Debian's exim4)", f"tls_require_ciphers = {_GNUTLS}"),
    _IMAPGUARD_FIXED,
)
_TRUSTED_NOTE = (
    "Dovecot 2.3 and 2.4 (a note)",
    "Dovecot treats a client on its own address or in login_trusted_networks as",
    "secure and allows cleartext login for it: test from another host.",
)


def _nft_lan_only(ports: str) -> tuple[str, ...]:
    return (
        "nftables (keep the port for the LAN only)",
        f"nft add rule inet filter input tcp dport {ports} ip saddr != 10.0.0.0/8 drop",
        f"nft add rule inet filter input tcp dport {ports} ip6 saddr != fd00::/8 drop",
    )


def _listener(service: str, listener: str, *settings: str) -> tuple[str, ...]:
    """A Dovecot (2.3 and 2.4) inet_listener block with `settings`."""
    return (
        f"service {service} {{",
        f"  inet_listener {listener} {{",
        *(f"    {setting}" for setting in settings),
        "  }",
        "}",
    )


def _close_dovecot_listener(service: str, listener: str) -> tuple[str, ...]:
    return (
        f"Dovecot 2.3 and 2.4, to close the port instead ({listener})",
        *_listener(service, listener, "port = 0"),
    )


_IMAPS_LISTENER = _listener("imap-login", "imaps", "port = 993", "ssl = yes")

#: TLS required before login, in both Dovecot generations.
_DOVECOT_TLS_REQUIRED = (
    ("Dovecot 2.3", "ssl = required", "disable_plaintext_auth = yes"),
    ("Dovecot 2.4", "ssl = required", "auth_allow_cleartext = no"),
)


def _offer_tls(postfix_note: str) -> tuple[tuple[str, ...], ...]:
    """A certificate, and TLS offered (Dovecot: required) by each server."""
    return (
        ("Dovecot 2.3", "ssl = required", *_DOVECOT23_CERT),
        ("Dovecot 2.4", "ssl = required", *_DOVECOT24_CERT),
        (f"Postfix main.cf ({postfix_note})", *_POSTFIX_CERT, "smtpd_tls_security_level = may"),
        ("Exim", "tls_advertise_hosts = *", *_EXIM_CERT),
    )


def _certificate(postfix_label: str) -> tuple[tuple[str, ...], ...]:
    """Where each server takes its certificate and chain from."""
    return (
        ("Dovecot 2.3", *_DOVECOT23_CERT),
        ("Dovecot 2.4", *_DOVECOT24_CERT),
        (postfix_label, *_POSTFIX_CERT),
        ("Exim", *_EXIM_CERT),
        ("imapguard (imapguard.toml; SIGHUP loads a new certificate)", *_IMAPGUARD_CERT),
    )


def _no_cleartext_login(exchange_cmdlet: str) -> tuple[tuple[str, ...], ...]:
    """Login refused before TLS (the servers then stop advertising it in clear)."""
    return (
        ("Dovecot 2.3", "disable_plaintext_auth = yes"),
        ("Dovecot 2.4", "auth_allow_cleartext = no"),
        ("Cyrus imapd.conf", "allowplaintext: no"),
        ("Exchange (PowerShell)", f"{exchange_cmdlet} -LoginType SecureLogin"),
        _TRUSTED_NOTE,
    )


_CHECKS: tuple[Check, ...] = (
    # -- EXP: exposure and inventory --------------------------------------------
    Check(
        "EXP-01",
        _H,
        "IMAP cleartext port does not make TLS mandatory before login",
        "RFC 8314 §3, RFC 9051 §11.2",
        _fix(
            "Refuse every login on port 143 until STARTTLS has succeeded, or close 143 and"
            " serve IMAP on 993 only.",
            *_DOVECOT_TLS_REQUIRED,
            ("Exchange (PowerShell)", "Set-ImapSettings -LoginType SecureLogin"),
            _close_dovecot_listener("imap-login", "imap"),
            (
                "imapguard (imapguard.toml: only implicit-TLS listeners, none with starttls)",
                "[[listen]]",
                'address = "0.0.0.0:993"',
                'tls = "implicit"',
            ),
            _nft_lan_only("143"),
            _TRUSTED_NOTE,
        ),
    ),
    Check(
        "EXP-02",
        _H,
        "POP3 cleartext port does not make TLS mandatory before login",
        "RFC 8314 §3, RFC 2595 §4",
        _fix(
            "Refuse USER/PASS and every other login on port 110 until STLS has succeeded,"
            " or close 110 and serve POP3 on 995 only.",
            *_DOVECOT_TLS_REQUIRED,
            ("Exchange (PowerShell)", "Set-PopSettings -LoginType SecureLogin"),
            _close_dovecot_listener("pop3-login", "pop3"),
            _nft_lan_only("110"),
            _TRUSTED_NOTE,
        ),
    ),
    Check(
        "EXP-03",
        _M,
        "Submission port does not require TLS before AUTH/MAIL",
        "RFC 8314 §3.3, RFC 6409",
        _fix(
            "Require STARTTLS before AUTH and MAIL on port 587, or offer submission on 465"
            " (implicit TLS) only.",
            (
                "Postfix master.cf (the submission service)",
                "submission inet n - y - - smtpd",
                "  -o smtpd_tls_security_level=encrypt",
                "  -o smtpd_tls_auth_only=yes",
            ),
            (
                "Exim (main section, then in the MAIL ACL)",
                _EXIM_AUTH_TLS,
                "deny    condition = ${if eq{$received_port}{587}}",
                "        !encrypted = *",
                "        message = STARTTLS required",
            ),
            ("Dovecot 2.3 and 2.4 (Dovecot's own submission service)", "ssl = required"),
        ),
    ),
    Check(
        "EXP-04",
        _M,
        "Port 25 open on a host that is not a mail exchanger",
        "RFC 3207 §4",
        _fix(
            "Close port 25 on hosts that do not receive mail for a domain (no MX points to"
            " them); users submit on 587/465.",
            (
                "Postfix master.cf (comment out the port 25 listener)",
                "#smtp      inet  n       -       y       -       -       smtpd",
            ),
            (
                "Postfix main.cf (a host that only sends its own mail)",
                "inet_interfaces = loopback-only",
            ),
            ("Exim", "daemon_smtp_ports = 465 : 587"),
            ("nftables", "nft add rule inet filter input tcp dport 25 drop"),
        ),
    ),
    Check(
        "EXP-05",
        _M,
        "Cleartext service without its implicit-TLS twin",
        "RFC 8314 §3",
        _fix(
            "Add the implicit-TLS twin (993 for 143, 995 for 110, 465 for 587); then consider"
            " closing the cleartext port (RFC 8314 prefers implicit TLS).",
            (
                "Dovecot 2.3 and 2.4 (conf.d/10-master.conf)",
                *_IMAPS_LISTENER,
                *_listener("pop3-login", "pop3s", "port = 995", "ssl = yes"),
            ),
            (
                "Postfix master.cf",
                "submissions inet n - y - - smtpd",
                "  -o syslog_name=postfix/submissions",
                "  -o smtpd_tls_wrappermode=yes",
                "  -o smtpd_sasl_auth_enable=yes",
            ),
            ("Exim", "daemon_smtp_ports = 25 : 465 : 587", "tls_on_connect_ports = 465"),
            (
                "imapguard (imapguard.toml: an implicit-TLS listener next to the STARTTLS one)",
                "[[listen]]",
                'address = "0.0.0.0:993"',
                'tls = "implicit"',
            ),
            (
                "nftables (open the twins)",
                "nft add rule inet filter input tcp dport { 465, 993, 995 } accept",
            ),
        ),
    ),
    Check(
        "EXP-06",
        _I,
        "Other mail-adjacent service found",
        "RFC 5804",
        _fix(
            "Review it: close it if nobody uses it, otherwise require TLS on it as on the"
            " mail ports.",
            (
                "Dovecot 2.3 and 2.4 (ManageSieve on 4190; ssl = required covers it too)",
                *_listener("managesieve-login", "sieve", "port = 0"),
            ),
            _nft_lan_only("{ 2525, 4190 }"),
        ),
    ),
    Check(
        "EXP-07",
        _C,
        "Cleartext mail service with no STARTTLS at all",
        "RFC 9051 §6.1.1, RFC 2595 §4, RFC 3207 §4",
        _fix(
            "Give the service a certificate and require TLS before login, or close the port:"
            " today every password and message crosses the network in cleartext.",
            *_offer_tls("encrypt instead of may on the submission service"),
            _nft_lan_only("{ 110, 143 }"),
        ),
    ),
    # -- ST: STARTTLS behaviour ----------------------------------------------------
    Check(
        "ST-01",
        _H,
        "STARTTLS/STLS not advertised on the cleartext port",
        "RFC 9051 §6.1.1, RFC 2595 §4, RFC 3207 §4",
        _fix(
            "Configure TLS so the server offers STARTTLS/STLS here, and check that nothing"
            " between client and server strips it.",
            *_offer_tls("and no starttls in smtpd_discard_ehlo_keywords"),
            ("Cisco ASA (its ESMTP inspection hides STARTTLS)", "no inspect esmtp"),
        ),
    ),
    Check(
        "ST-02",
        _H,
        "STARTTLS advertised but the command or the handshake fails",
        "RFC 9051 §6.2.1, RFC 2595 §4, RFC 3207 §4",
        _fix(
            "Make the TLS handshake work: certificate and key readable and matching, TLS 1.2"
            " enabled; the server log names the handshake error.",
            ("Dovecot 2.3", *_DOVECOT23_CERT, "ssl_min_protocol = TLSv1.2"),
            ("Dovecot 2.4", *_DOVECOT24_CERT, "ssl_min_protocol = TLSv1.2"),
            ("Postfix main.cf (log the handshake error)", *_POSTFIX_CERT, "smtpd_tls_loglevel = 1"),
            ("Exim", *_EXIM_CERT),
            (
                "imapguard (imapguard.toml; imapguard check-config names the problem)",
                *_IMAPGUARD_CERT,
            ),
            (
                "Check (use -starttls pop3 or smtp for the other protocols)",
                "openssl s_client -starttls imap -connect mail.example.org:143"
                " -servername mail.example.org",
            ),
        ),
    ),
    Check(
        "ST-03",
        _L,
        "STARTTLS accepted although not advertised",
        "RFC 9051 §6.2.1",
        _fix(
            "Advertise STARTTLS where it works (clients only use what is advertised), or find"
            " what hides it.",
            (
                "Dovecot 2.3 and 2.4 (a fixed capability list replaces Dovecot's own)",
                "remove the imap_capability setting",
            ),
            ("Postfix main.cf", "remove starttls from smtpd_discard_ehlo_keywords"),
            ("Cisco ASA (its ESMTP inspection hides STARTTLS)", "no inspect esmtp"),
        ),
    ),
    Check(
        "ST-04",
        _L,
        "STARTTLS still advertised after TLS is established",
        "RFC 9051 §6.2.1",
        _fix(
            "Stop advertising STARTTLS inside TLS; a fixed capability list or a TLS proxy in"
            " front of a cleartext port usually causes it.",
            (
                "Dovecot 2.3 and 2.4 (Dovecot drops STARTTLS after TLS by itself)",
                "remove the imap_capability setting",
            ),
            (
                "TLS proxy (stunnel, haproxy) in front",
                "terminate TLS in the mail server, or send PROXY v2 with the TLS information",
                "(Dovecot: haproxy_trusted_networks and inet_listener { haproxy = yes })",
            ),
        ),
    ),
    Check(
        "ST-05",
        _L,
        "A second STARTTLS inside TLS is accepted",
        "RFC 3207 §4.2",
        _fix(
            "Refuse STARTTLS once TLS is active (IMAP BAD, POP3 -ERR, SMTP 503/554).",
            (
                "Any server",
                "Dovecot, Postfix and Exim refuse it; update an older build, and test the",
                "server directly: a proxy or appliance in front may be the one answering",
            ),
        ),
    ),
    Check(
        "ST-06",
        _L,
        "STARTTLS on an implicit-TLS port is not answered with a tagged BAD",
        "RFC 9051 §6.2.1",
        _fix(
            "Answer STARTTLS on the implicit-TLS port with a tagged BAD; a TLS proxy in front"
            " of a cleartext listener usually causes this.",
            (
                "Dovecot 2.3 and 2.4 (let Dovecot terminate TLS itself)",
                *_IMAPS_LISTENER,
            ),
            (
                "TLS proxy (stunnel, haproxy) in front",
                "send PROXY v2 with the TLS information to a Dovecot listener with",
                "haproxy = yes, from an address in haproxy_trusted_networks",
            ),
        ),
    ),
    Check(
        "ST-07",
        _C,
        "STARTTLS command injection",
        "RFC 9051 §6.2.1, RFC 3207 §4.2, CVE-2011-0411",
        _fix(
            "Update the mail server, or the proxy that terminates STARTTLS: after the STARTTLS"
            " line it must throw away any input it has already buffered.",
            (
                "Any server",
                "Dovecot, Postfix and Exim discard it in every supported release;",
                "an appliance or proxy in front must be updated by its vendor",
            ),
            (
                "nftables (until then: close the STARTTLS ports, keep 993/995/465)",
                "nft add rule inet filter input tcp dport { 110, 143, 587 } drop",
            ),
        ),
    ),
    Check(
        "ST-08",
        _M,
        "SMTP state not reset after STARTTLS",
        "RFC 3207 §4.2",
        _fix(
            "Update the SMTP server: after STARTTLS it must forget EHLO, AUTH and MAIL and"
            " require a new EHLO.",
            (
                "Any server",
                "Postfix and Exim reset it; look for a filter or appliance in front",
                "(test the server directly on the LAN)",
            ),
        ),
    ),
    Check(
        "ST-09",
        _H,
        "PREAUTH greeting on a cleartext connection",
        "RFC 9051 §7.1.4",
        _fix(
            "Never expose a pre-authenticated IMAP session on the network: remove that"
            " listener or bind it to localhost.",
            (
                "Dovecot 2.3 and 2.4",
                "do not start /usr/lib/dovecot/imap from inetd, xinetd or socat on a TCP",
                "port; clients must come through the imap-login listeners",
            ),
            (
                "nftables (adjust the port)",
                "nft add rule inet filter input tcp dport 143 ip saddr != 127.0.0.0/8 drop",
                "nft add rule inet filter input tcp dport 143 ip6 saddr != ::1 drop",
            ),
        ),
    ),
    Check(
        "ST-10",
        _I,
        "Capabilities before and after TLS",
        "RFC 9051 §6.2.1",
        _fix(
            "Nothing to change: the evidence lists what the server offers before and after"
            " TLS; review it for mechanisms offered only before TLS.",
            (
                "Dovecot 2.3 and 2.4 (let Dovecot compute the list)",
                "remove the imap_capability setting",
            ),
        ),
    ),
    Check(
        "ST-11",
        _I,
        "Server throttled the scan: affected checks not tested",
        "—",
        _fix(
            "Re-run more slowly, or exempt the scanner's address from connection limits for"
            " the scan (never from authentication rules).",
            (
                "Scan again, slowly",
                "imapguard scan --rate 2 --concurrency 2 --timeout 15 mail.example.org",
            ),
            (
                "Postfix main.cf (192.0.2.10 is the scanner)",
                "smtpd_client_event_limit_exceptions = $mynetworks, 192.0.2.10",
            ),
            ("fail2ban jail.local", "ignoreip = 127.0.0.1/8 192.0.2.10"),
            (
                "Dovecot 2.3 and 2.4",
                "do not add the scanner to login_trusted_networks: Dovecot then allows",
                "cleartext login for it and the scan no longer sees what outsiders see",
            ),
            (
                "imapguard (imapguard.toml: connections from one address before login)",
                "[limits]",
                "max_preauth_per_source = 20",
            ),
        ),
    ),
    # -- AUTH: authentication exposure ---------------------------------------------
    Check(
        "AUTH-01",
        _H,
        "IMAP cleartext CAPABILITY lacks LOGINDISABLED",
        "RFC 9051 §6.2.3, §7.2.2",
        _fix(
            "Refuse LOGIN before TLS; the server then advertises LOGINDISABLED on port 143.",
            *_no_cleartext_login("Set-ImapSettings"),
        ),
    ),
    Check(
        "AUTH-02",
        _H,
        "Plaintext SASL mechanisms advertised before TLS",
        "RFC 9051 §6.2.2",
        _fix(
            "Offer PLAIN and LOGIN only after TLS; the server then stops advertising them on"
            " the cleartext port.",
            *_no_cleartext_login("Set-ImapSettings"),
        ),
    ),
    Check(
        "AUTH-03",
        _H,
        "POP3 USER or plaintext SASL offered before STLS",
        "RFC 2595 §4",
        _fix(
            "Refuse USER/PASS and plaintext SASL before STLS; the server then stops offering"
            " them on port 110.",
            *_no_cleartext_login("Set-PopSettings"),
        ),
    ),
    Check(
        "AUTH-04",
        _H,
        "SMTP AUTH advertised before STARTTLS",
        "RFC 4954 §4, RFC 8314 §3.3",
        _fix(
            "Advertise and accept AUTH only after STARTTLS.",
            ("Postfix main.cf", "smtpd_tls_auth_only = yes"),
            ("Exim", _EXIM_AUTH_TLS),
            ("Dovecot 2.3 (Dovecot's own submission service)", "disable_plaintext_auth = yes"),
            ("Dovecot 2.4 (Dovecot's own submission service)", "auth_allow_cleartext = no"),
        ),
    ),
    Check(
        "AUTH-05",
        _C,
        "A dummy credential sent before TLS is evaluated instead of refused",
        "RFC 9051 §6.2.3, §7.1; RFC 4954 §6",
        _fix(
            "Refuse every authentication attempt before TLS without checking it; until then"
            " passwords cross the network in cleartext.",
            *_DOVECOT_TLS_REQUIRED,
            ("Postfix main.cf", "smtpd_tls_auth_only = yes"),
            ("Exim", _EXIM_AUTH_TLS),
            ("Cyrus imapd.conf", "allowplaintext: no"),
            _nft_lan_only("{ 110, 143 }"),
            (
                "Afterwards",
                "treat the passwords used on this port as exposed and have them changed",
            ),
        ),
    ),
    Check(
        "AUTH-06",
        _H,
        "Anonymous access or an open relay",
        "RFC 9051 §6.2",
        _fix(
            "Disable anonymous login, and relay only for authenticated users and your own"
            " networks.",
            ("Dovecot 2.3 and 2.4 (no anonymous)", "auth_mechanisms = plain login"),
            (
                "Postfix main.cf",
                "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated,",
                "    reject_unauth_destination",
                "smtpd_sasl_security_options = noanonymous",
            ),
            (
                "Exim (the RCPT ACL)",
                "accept  hosts = +relay_from_hosts",
                "accept  authenticated = *",
                "require message = relay not permitted",
                "        domains = +local_domains : +relay_to_domains",
            ),
        ),
    ),
    Check(
        "AUTH-07",
        _L,
        "NTLM challenge discloses internal names",
        "—",
        _fix(
            "Drop NTLM where it is not needed: its challenge tells anyone the internal"
            " domain, host and OS names.",
            ("Dovecot 2.3 and 2.4 (no ntlm)", "auth_mechanisms = plain login"),
            (
                "Exchange (PowerShell)",
                "Set-ImapSettings -EnableGSSAPIAndNTLMAuth $false",
                "Set-PopSettings -EnableGSSAPIAndNTLMAuth $false",
            ),
        ),
    ),
    Check(
        "AUTH-08",
        _L,
        "SMTP VRFY/EXPN user enumeration",
        "RFC 5321 §3.5",
        _fix(
            "Refuse VRFY and EXPN so nobody can test which addresses exist.",
            ("Postfix main.cf (Postfix has no EXPN)", "disable_vrfy_command = yes"),
            (
                "Exim (it refuses both when no ACL accepts them)",
                "remove acl_smtp_vrfy and acl_smtp_expn",
            ),
        ),
    ),
    Check(
        "AUTH-09",
        _I,
        "Only legacy SASL mechanisms after TLS",
        "RFC 9051 §6.2.2",
        _fix(
            "Offer PLAIN inside TLS (and SCRAM-SHA-256 where the password store allows);"
            " CRAM-MD5 and DIGEST-MD5 force reversible password storage.",
            ("Dovecot 2.3 and 2.4", "auth_mechanisms = plain login"),
            ("Postfix with Cyrus SASL (/etc/postfix/sasl/smtpd.conf)", "mech_list: PLAIN LOGIN"),
        ),
    ),
    # -- BAN: disclosure ---------------------------------------------------------
    Check(
        "BAN-01",
        _L,
        "Greeting discloses product and version",
        "—",
        _fix(
            "Greet without product or version: it tells an attacker which exploits to try.",
            ("Dovecot 2.3 and 2.4", "login_greeting = Mail server ready."),
            ("Postfix main.cf", "smtpd_banner = $myhostname ESMTP"),
            ("Exim", "smtp_banner = $smtp_active_hostname ESMTP"),
            ("Cyrus imapd.conf", "serverinfo: off"),
        ),
    ),
    Check(
        "BAN-02",
        _L,
        "POP3 IMPLEMENTATION or IMAP ID discloses product and version",
        "RFC 2449 §6.9, RFC 2971 §3.3",
        _fix(
            "Send no version in the IMAP ID answer or the POP3 IMPLEMENTATION capability.",
            ("Dovecot 2.3 (the default: name only)", "imap_id_send = name *"),
            (
                "Dovecot 2.4",
                "keep only name in the imap_id_send { } block (no version, os, os-version)",
            ),
            ("Cyrus imapd.conf", "serverinfo: off"),
        ),
    ),
    Check(
        "BAN-03",
        _I,
        "SMTP EHLO/HELP reveals internal host names",
        "—",
        _fix(
            "Announce the public name only.",
            (
                "Postfix main.cf",
                "myhostname = mail.example.org",
                "smtpd_banner = $myhostname ESMTP",
            ),
            ("Exim", "primary_hostname = mail.example.org"),
        ),
    ),
    # -- TLS: protocol and cipher configuration ----------------------------------
    Check(
        "TLS-01",
        _C,
        "SSLv2 or SSLv3 accepted",
        "RFC 8314 §4.1, BOD 18-01",
        _fix("Accept TLS 1.2 and 1.3 only.", *_PROTOCOLS),
    ),
    Check(
        "TLS-02",
        _H,
        "TLS 1.0 or 1.1 accepted",
        "RFC 8996 §2-3, RFC 8997",
        _fix(
            "Accept TLS 1.2 and 1.3 only (RFC 8997: the minimum for mail access and submission).",
            *_PROTOCOLS,
        ),
    ),
    Check(
        "TLS-03",
        _M,
        "TLS 1.2 or TLS 1.3 not offered",
        "RFC 9051 §11.1",
        _fix(
            "Offer TLS 1.2 and 1.3: TLS 1.3 needs OpenSSL 1.1.1 or later under the server;"
            " remove any setting that excludes either version.",
            ("Dovecot 2.3 and 2.4", "ssl_min_protocol = TLSv1.2"),
            ("Postfix main.cf (3.6 and later)", "smtpd_tls_protocols = >=TLSv1.2"),
            ("Exim (OpenSSL build)", "remove +no_tlsv1_2 and +no_tlsv1_3 from openssl_options"),
            ("Exim (GnuTLS build, Debian's exim4)", f"tls_require_ciphers = {_GNUTLS}"),
            ('imapguard (imapguard.toml; "1.3" turns TLS 1.2 off)', "[tls]", 'min_version = "1.2"'),
        ),
    ),
    Check(
        "TLS-04",
        _C,
        "NULL, EXPORT, anonymous, RC4, DES or 3DES cipher suites",
        "RFC 7465, BOD 18-01",
        _fix("Offer only ECDHE suites with AES-GCM or ChaCha20-Poly1305.", *_SUITES),
    ),
    Check(
        "TLS-05",
        _M,
        "Suites without forward secrecy, or CBC (non-AEAD) suites",
        "Mozilla Server Side TLS 6.0",
        _fix(
            "Offer only ECDHE suites with AES-GCM or ChaCha20-Poly1305 (forward secrecy and AEAD).",
            *_SUITES,
        ),
    ),
    Check(
        "TLS-06",
        _I,
        "TLS 1.2 without TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "RFC 9051 §11.1",
        _fix(
            "Offer ECDHE-RSA-AES128-GCM-SHA256 (mandatory for IMAP over TLS 1.2); it needs an"
            " RSA certificate, next to an ECDSA one if you use both.",
            (
                "Dovecot 2.3",
                f"ssl_cipher_list = {_CIPHERS}",
                "ssl_alt_cert = </etc/ssl/mail-rsa.pem",
                "ssl_alt_key = </etc/ssl/private/mail-rsa.key",
            ),
            (
                "Dovecot 2.4",
                f"ssl_cipher_list = {_CIPHERS}",
                "ssl_server_alt_cert_file = /etc/ssl/mail-rsa.pem",
                "ssl_server_alt_key_file = /etc/ssl/private/mail-rsa.key",
            ),
            ("Postfix main.cf", f"tls_medium_cipherlist = {_CIPHERS}"),
            ("Exim (OpenSSL build)", f"tls_require_ciphers = {_CIPHERS}"),
            (
                "imapguard (imapguard.toml; it serves one certificate: make it an RSA one)",
                "[tls]  # certbot certonly --key-type rsa -d mail.example.org",
                *_IMAPGUARD_CERT[1:],
            ),
        ),
    ),
    Check(
        "TLS-07",
        _I,
        "Cipher order (server preference)",
        "—",
        _fix(
            "Nothing to change when every suite offered is strong (Mozilla lets the client"
            " choose); if weak suites must stay for old clients, make the server choose.",
            ("Dovecot 2.3", "ssl_prefer_server_ciphers = yes"),
            ("Dovecot 2.4", "ssl_server_prefer_ciphers = server"),
            ("Postfix main.cf", "tls_preempt_cipherlist = yes"),
            ("Exim (OpenSSL build)", "openssl_options = +cipher_server_preference"),
        ),
    ),
    Check(
        "TLS-08",
        _H,
        "Weak key exchange: DH below 2048 bits, EC below 256 bits",
        "Mozilla Server Side TLS 6.0",
        _fix(
            "Use ECDHE on X25519/P-256 or larger, and DH groups of 2048 bits or more (or no"
            " DHE suites at all).",
            (
                "Dovecot 2.3 (openssl dhparam -out /etc/dovecot/dh.pem 3072)",
                "ssl_dh = </etc/dovecot/dh.pem",
                "ssl_curve_list = X25519:prime256v1:secp384r1",
            ),
            (
                "Dovecot 2.4",
                "ssl_server_dh_file = /etc/dovecot/dh.pem",
                "ssl_curve_list = X25519:prime256v1:secp384r1",
            ),
            (
                "Postfix main.cf (3.8 and later with OpenSSL 3)",
                "tls_ffdhe_auto_groups = ffdhe2048 ffdhe3072",
                "tls_eecdh_auto_curves = X25519 prime256v1 secp384r1",
            ),
            (
                "Exim (openssl dhparam -out /etc/exim4/dh.pem 3072)",
                "tls_dhparam = /etc/exim4/dh.pem",
            ),
            _IMAPGUARD_FIXED,
        ),
    ),
    Check(
        "TLS-09",
        _H,
        "TLS compression, insecure or client-initiated renegotiation",
        "RFC 5746",
        _fix(
            "Disable TLS compression and renegotiation; OpenSSL 1.1.1 or later under the"
            " server does both by default.",
            ("Dovecot 2.3 and 2.4", "remove compression from ssl_options"),
            (
                "Postfix main.cf (3.4 and later)",
                "tls_ssl_options = NO_COMPRESSION, NO_RENEGOTIATION",
            ),
            ("Exim (OpenSSL build)", "openssl_options = +no_compression +no_renegotiation"),
            _IMAPGUARD_FIXED,
        ),
    ),
    Check(
        "TLS-10",
        _C,
        "Heartbleed, CCS injection or ROBOT",
        "CVE-2014-0160, CVE-2014-0224, CVE-2017-13099",
        _fix(
            "Update the TLS library now (Heartbleed: OpenSSL 1.0.1g, CCS: 1.0.1h); for ROBOT"
            " drop RSA key exchange. After Heartbleed, replace the key and revoke the"
            " certificate.",
            ("Dovecot 2.3 and 2.4", f"ssl_cipher_list = {_CIPHERS}"),
            ("Postfix main.cf", f"tls_medium_cipherlist = {_CIPHERS}"),
            ("Exim (OpenSSL build)", f"tls_require_ciphers = {_CIPHERS}"),
            (
                "imapguard (its suites have no RSA key exchange; restart it after the update:",
                "a running gateway keeps the old library)",
                "restart imapguard serve",
            ),
            (
                "Certificate (after Heartbleed: revoke, then a new key and certificate)",
                "certbot revoke --cert-name mail.example.org --reason keycompromise"
                " --no-delete-after-revoke",
                "certbot renew --force-renewal --cert-name mail.example.org",
            ),
        ),
    ),
    Check(
        "TLS-11",
        _L,
        "No TLS_FALLBACK_SCSV or no Extended Master Secret",
        "RFC 7507, RFC 7627",
        _fix(
            "Update the TLS library (fallback SCSV: OpenSSL 1.0.1j, Extended Master Secret:"
            " 1.1.0); with TLS 1.3 on and 1.0/1.1 off the downgrade risk is small.",
            ("Debian", "apt-get install --only-upgrade openssl libssl3"),
            (
                "Dovecot 2.3 and 2.4 (a running server keeps the old library)",
                "systemctl restart dovecot",
            ),
            ("Postfix (a running server keeps the old library)", "systemctl restart postfix"),
            ("Exim (a running server keeps the old library)", "systemctl restart exim4"),
            (
                "imapguard (a running gateway keeps the old library; SIGHUP is not enough)",
                "restart imapguard serve",
            ),
        ),
    ),
    # -- CERT: certificate ---------------------------------------------------------
    Check(
        "CERT-01",
        _H,
        "Certificate chain does not validate to a trusted root",
        "RFC 8314 §5",
        _fix(
            "Use a certificate from a CA the clients trust (ACME, e.g. Let's Encrypt), or"
            " give every client your private CA (and scan with --ca-file).",
            ("Certificate", "certbot certonly --standalone -d mail.example.org"),
            *_certificate("Postfix main.cf"),
        ),
    ),
    Check(
        "CERT-02",
        _H,
        "Certificate name does not match",
        "RFC 7817 §3, RFC 6125 §6.4",
        _fix(
            "Get a certificate whose subjectAltName holds every name clients use (not only"
            " the CN; no partial wildcards like m*.example.org).",
            (
                "Certificate",
                "certbot certonly --standalone -d mail.example.org -d imap.example.org",
            ),
            (
                "Dovecot 2.3 (a second name with its own certificate, by SNI)",
                "local_name imap.example.org {",
                "  ssl_cert = </etc/letsencrypt/live/imap.example.org/fullchain.pem",
                "  ssl_key = </etc/letsencrypt/live/imap.example.org/privkey.pem",
                "}",
            ),
            (
                "Dovecot 2.4 (a second name with its own certificate, by SNI)",
                "local_name imap.example.org {",
                "  ssl_server_cert_file = /etc/letsencrypt/live/imap.example.org/fullchain.pem",
                "  ssl_server_key_file = /etc/letsencrypt/live/imap.example.org/privkey.pem",
                "}",
            ),
            (
                "Postfix main.cf (3.4 and later, by SNI)",
                "tls_server_sni_maps = hash:/etc/postfix/sni",
            ),
            ("imapguard (imapguard.toml; one certificate holds every name)", *_IMAPGUARD_CERT),
        ),
    ),
    Check(
        "CERT-03",
        _C,
        "Certificate expired, not yet valid, or expiring within 30 days",
        "RFC 5280 §4.1.2.5",
        _fix(
            "Renew the certificate, automate renewal, and reload the servers after each"
            " renewal (they keep the old certificate in memory until then).",
            ("Certificate", "systemctl enable --now certbot.timer"),
            (
                "Dovecot 2.3 and 2.4, Postfix (reload after each renewal)",
                "certbot renew --deploy-hook 'systemctl reload dovecot postfix'",
            ),
            (
                "imapguard (SIGHUP loads the renewed [tls] certificate for new connections)",
                "certbot renew --deploy-hook 'pkill -HUP -f \"imapguard serve\"'",
            ),
            (
                "Check",
                "openssl s_client -connect mail.example.org:993 -servername mail.example.org"
                " </dev/null | openssl x509 -noout -dates",
            ),
        ),
    ),
    Check(
        "CERT-04",
        _M,
        "Certificate chain incomplete or out of order",
        "RFC 8446 §4.4.2",
        _fix(
            "Serve the full chain, server certificate first, then its intermediates"
            " (certbot's fullchain.pem, not cert.pem).",
            *_certificate("Postfix main.cf (key first, then the chain)"),
        ),
    ),
    Check(
        "CERT-05",
        _H,
        "MD5 or SHA-1 certificate signature",
        "RFC 9155",
        _fix(
            "Replace the certificate with one signed with SHA-256 or better (every ACME"
            " certificate is).",
            ("Certificate", "certbot certonly --standalone -d mail.example.org"),
            (
                "Private CA",
                "openssl x509 -req -sha256 -days 397 -in mail.csr -CA ca.pem -CAkey ca.key"
                " -out mail.pem",
            ),
        ),
    ),
    Check(
        "CERT-06",
        _H,
        "RSA key below 2048 bits or EC key below 256 bits",
        "—",
        _fix(
            "Replace the key and certificate: ECDSA P-256, or RSA 2048 bits or more.",
            (
                "Certificate",
                "certbot certonly --standalone --key-type ecdsa --elliptic-curve secp256r1"
                " -d mail.example.org",
            ),
            (
                "Certificate (RSA)",
                "certbot certonly --standalone --key-type rsa --rsa-key-size 3072"
                " -d mail.example.org",
            ),
        ),
    ),
    Check(
        "CERT-07",
        _L,
        "Certificate lifetime above 398 days",
        "CA/B Forum BR §6.3.2",
        _fix(
            "Issue certificates for at most 397 days, best short-lived with automatic"
            " renewal (ACME certificates last 90 days).",
            ("Certificate", "certbot certonly --standalone -d mail.example.org"),
            ("Private CA", "openssl x509 -req -sha256 -days 397 ..."),
        ),
    ),
    Check(
        "CERT-08",
        _I,
        "No OCSP or revocation information",
        "RFC 5280 §4.2.1.13, RFC 6960",
        _fix(
            "Public CAs add revocation information; a private CA should publish a CRL and"
            " name it in the certificates it issues.",
            (
                "Private CA (openssl extension section)",
                "crlDistributionPoints = URI:http://pki.example.org/ca.crl",
            ),
        ),
    ),
    Check(
        "CERT-09",
        _L,
        "Different certificate or TLS policy on twin ports",
        "—",
        _fix(
            "Serve the same certificate and TLS settings on both ports of a pair (143/993,"
            " 110/995, 587/465): clients and users cannot tell which one is right.",
            (
                "Dovecot 2.3 and 2.4",
                "keep the ssl_* settings global, not inside protocol { }, local { }",
                "or inet_listener { } blocks",
            ),
            (
                "Postfix master.cf",
                "give submission and submissions the same -o smtpd_tls_* overrides (or none)",
            ),
            (
                "imapguard",
                "every listener uses the one [tls] section: a port that differs is served by",
                "something else (a proxy in front, or another server on the same address)",
            ),
        ),
    ),
)


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


CATALOG: dict[str, Check] = {c.id: _with_help_uri(c) for c in _CHECKS}


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

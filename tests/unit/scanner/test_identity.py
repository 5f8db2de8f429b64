"""RFC 7817 §3 / RFC 6125 §6 name checks of `imapguard.scanner.identity`, as a table."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imapguard.scanner.identity import NameMatch, check_identity, dns_id_matches, normalise_dns

_KEY = ec.generate_private_key(ec.SECP256R1())
_SRV_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")


def make_cert(
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    cn: str | None = None,
    uris: tuple[str, ...] = (),
    srv: tuple[str, ...] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if cn
        else [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    # SRVName is an IA5String inside otherName (RFC 4985); DER: 0x16 len value.
    names += [x509.OtherName(_SRV_OID, b"\x16" + bytes([len(s)]) + s.encode()) for s in srv]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(_KEY, hashes.SHA256())


M, CN, NO, WC = (
    NameMatch.MATCHED,
    NameMatch.MATCHED_BY_CN_ONLY,
    NameMatch.MISMATCH,
    NameMatch.REFUSED_WILDCARD,
)

# (reference, SAN dNSNames, SAN iPAddresses, subject CN, expected)
TABLE: list[tuple[str, tuple[str, ...], tuple[str, ...], str | None, NameMatch]] = [
    # exact DNS-ID, case-insensitive, trailing dot ignored
    ("mail.example.com", ("mail.example.com",), (), None, M),
    ("MAIL.Example.COM", ("mail.example.com",), (), None, M),
    ("mail.example.com", ("Mail.EXAMPLE.com",), (), None, M),
    ("mail.example.com.", ("mail.example.com",), (), None, M),
    ("mail.example.com", ("mail.example.com.",), (), None, M),
    ("mail.example.com", ("imap.example.com", "mail.example.com"), (), None, M),
    ("mail.example.com", ("example.com",), (), None, NO),
    ("mail.example.com", ("mail.example.org",), (), None, NO),
    # wildcard: only the whole left-most label, exactly one label
    ("a.example.com", ("*.example.com",), (), None, M),
    ("A.EXAMPLE.COM", ("*.Example.com",), (), None, M),
    ("a.b.example.com", ("*.example.com",), (), None, NO),
    ("example.com", ("*.example.com",), (), None, NO),
    ("example.com", ("*.com",), (), None, WC),  # a wildcard over a whole TLD is refused
    # partial-label and misplaced wildcards are refused
    ("foo.example.com", ("f*o.example.com",), (), None, WC),
    ("foo.example.com", ("*oo.example.com",), (), None, WC),
    ("foo.example.com", ("foo*.example.com",), (), None, WC),
    ("a.b.example.com", ("a.*.example.com",), (), None, WC),
    ("a.b.example.com", ("*.*.example.com",), (), None, WC),
    ("bar.example.com", ("f*o.example.com",), (), None, NO),  # refused, and no match anyway
    ("foo.example.com", ("f*o.example.com", "foo.example.com"), (), None, M),
    # IDNA: A-labels compared case-insensitively, a U-label reference converted first
    ("bücher.example", ("xn--bcher-kva.example",), (), None, M),
    ("XN--BCHER-KVA.example", ("xn--bcher-kva.example",), (), None, M),
    ("bücher.example.com", ("*.example.com",), (), None, M),
    ("bucher.example", ("xn--bcher-kva.example",), (), None, NO),
    # CN: only when there is no DNS-ID at all
    ("mail.example.com", (), (), "mail.example.com", CN),
    ("MAIL.example.com", (), (), "mail.EXAMPLE.com", CN),
    ("a.example.com", (), (), "*.example.com", CN),
    ("mail.example.com", ("other.example.com",), (), "mail.example.com", NO),
    ("mail.example.com", (), (), "other.example.com", NO),
    ("foo.example.com", (), (), "f*o.example.com", WC),
    ("mail.example.com", (), ("192.0.2.1",), "mail.example.com", CN),  # an IP SAN is no DNS-ID
    # addresses: iPAddress SANs only
    ("192.0.2.1", (), ("192.0.2.1",), None, M),
    ("192.0.2.1", ("mail.example.com",), ("192.0.2.9", "192.0.2.1"), None, M),
    ("192.0.2.1", ("192.0.2.1",), (), None, NO),
    ("192.0.2.1", (), ("192.0.2.2",), None, NO),
    ("192.0.2.1", (), (), "192.0.2.1", NO),
    ("2001:db8::1", (), ("2001:db8:0:0::1",), None, M),
    ("[2001:db8::1]", (), ("2001:db8::1",), None, M),
    ("2001:db8::2", (), ("2001:db8::1",), None, NO),
]


@pytest.mark.parametrize(("reference", "dns", "ips", "cn", "expected"), TABLE)
def test_identity_table(
    reference: str, dns: tuple[str, ...], ips: tuple[str, ...], cn: str | None, expected: NameMatch
) -> None:
    result = check_identity(make_cert(dns, ips, cn), reference)
    assert result.match is expected, result
    assert result.ok is (expected is NameMatch.MATCHED)


def test_uri_id_is_never_used_and_switches_the_cn_off() -> None:
    cert = make_cert(uris=("imap://mail.example.com/",), cn="mail.example.com")
    result = check_identity(cert, "mail.example.com")
    assert result.match is NameMatch.MISMATCH
    assert result.matched_by == ""


def test_srv_id_switches_the_cn_off() -> None:
    cert = make_cert(srv=("_imaps.example.com",), cn="mail.example.com")
    assert check_identity(cert, "mail.example.com").match is NameMatch.MISMATCH
    # Without the SRV-ID the CN is the legacy fallback.
    plain = make_cert(cn="mail.example.com")
    assert check_identity(plain, "mail.example.com").match is NameMatch.MATCHED_BY_CN_ONLY


def test_result_lists_the_names_seen() -> None:
    cert = make_cert(("*.example.com", "f*o.example.com"), ("192.0.2.1",), "example.com")
    result = check_identity(cert, "Www.Example.Com.")
    assert result.match is NameMatch.MATCHED
    assert result.reference == "www.example.com"
    assert result.matched_by == "*.example.com"
    assert result.dns_names == ("*.example.com", "f*o.example.com")
    assert result.ip_addresses == ("192.0.2.1",)
    assert result.common_names == ("example.com",)
    assert result.refused == ("f*o.example.com",)
    text = result.describe()
    assert "'www.example.com'" in text
    assert "DNS:*.example.com" in text
    assert "IP:192.0.2.1" in text
    assert "subject CN example.com" in text


def test_refused_wildcard_names_the_pattern() -> None:
    result = check_identity(make_cert(("m*l.example.com",)), "mail.example.com")
    assert result.match is NameMatch.REFUSED_WILDCARD
    assert result.refused == ("m*l.example.com",)


def test_no_san_and_no_cn() -> None:
    result = check_identity(make_cert(), "mail.example.com")
    assert result.match is NameMatch.MISMATCH
    assert "no DNS or IP subjectAltName" in result.describe()


@pytest.mark.parametrize(
    ("presented", "reference", "expected"),
    [
        ("*.example.com", "mail.example.com", True),
        ("*.example.com", ".example.com", False),  # the wildcard stands for one non-empty label
        ("*", "localhost", False),
        ("", "mail.example.com", False),
        ("mail.example.com", "", False),
    ],
)
def test_dns_id_matches_edges(presented: str, reference: str, expected: bool) -> None:
    assert dns_id_matches(presented, reference) is expected


def test_normalise_dns() -> None:
    assert normalise_dns(" Bücher.Example. ") == "xn--bcher-kva.example"
    assert normalise_dns("_imaps._tcp.Example.COM") == "_imaps._tcp.example.com"

"""Does a server certificate name the server? RFC 7817 §3 / RFC 6125 §6, pure.

The reference identifier is what the user asked for: the host name they gave, or
``--server-name`` when the target is an address; with neither, the address itself.
The rules (RFC 7817 §3 for IMAP, POP3 and submission, which points at RFC 6125):

- A host name matches a DNS-ID (a subjectAltName dNSName). Comparison is on A-labels,
  case-insensitively (RFC 6125 §6.4.1; a U-label reference is converted first), and a
  trailing dot on either side is ignored.
- ``*`` is accepted only as the whole left-most label and stands for exactly one label:
  ``*.example.com`` matches ``a.example.com``, not ``a.b.example.com`` nor
  ``example.com``. A wildcard needs at least two labels after it (``*.com`` names a whole
  TLD and is refused). Partial-label wildcards (``f*o.example.com``, ``*oo.example.com``),
  a ``*`` in any other label and several ``*`` are refused (RFC 7817 §3, RFC 6125 §7.2);
  when such a pattern is the only thing that would have matched, the result says so.
- The subject CN is consulted only when the certificate has no DNS-ID, SRV-ID or URI-ID at
  all (RFC 6125 §6.4.4); a match there is reported as ``matched_by_cn_only``, a warning:
  clients that follow RFC 6125 (and every browser) ignore the CN.
- An address reference matches an iPAddress SAN only (never a dNSName or the CN).
- URI-IDs are never matched (RFC 7817 §3: "URI-ID ... MUST NOT be used"). SRV-IDs would
  need the mail domain and the service, which the scanner does not know; they are only
  counted as presented identifiers (they switch the CN fallback off).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import ipaddress

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["IdentityResult", "NameMatch", "check_identity", "dns_id_matches", "normalise_dns"]

#: otherName type-id of an SRV-ID (RFC 4985).
_SRV_NAME_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")


class NameMatch(enum.StrEnum):
    MATCHED = "matched"  # a DNS-ID (or, for an address, an iPAddress SAN) matches
    MATCHED_BY_CN_ONLY = "matched_by_cn_only"  # no DNS-ID at all, but the CN matches
    MISMATCH = "mismatch"
    REFUSED_WILDCARD = "refused_wildcard"  # only a refused wildcard pattern would match


@dataclasses.dataclass(frozen=True, slots=True)
class IdentityResult:
    match: NameMatch
    reference: str  # as compared: A-label, lower case, no trailing dot (or the address)
    dns_names: tuple[str, ...] = ()  # subjectAltName dNSName, as presented
    ip_addresses: tuple[str, ...] = ()  # subjectAltName iPAddress
    common_names: tuple[str, ...] = ()  # subject CN
    matched_by: str = ""  # the presented identifier that matched
    refused: tuple[str, ...] = ()  # wildcard patterns refused (whatever they would match)

    @property
    def ok(self) -> bool:
        """True only for a proper DNS-ID / iPAddress match."""
        return self.match is NameMatch.MATCHED

    def describe(self) -> str:
        """One evidence line: what was asked for and what the certificate names."""
        seen = [f"DNS:{n}" for n in self.dns_names] + [f"IP:{a}" for a in self.ip_addresses]
        names = ", ".join(seen) if seen else "no DNS or IP subjectAltName"
        cn = f"; subject CN {', '.join(self.common_names)}" if self.common_names else ""
        return f"reference identifier {self.reference!r}; certificate names {names}{cn}"


def normalise_dns(name: str) -> str:
    """A DNS name as compared: lower case, A-labels, no trailing dot.

    A name that is not valid IDNA (an underscore, a ``*``) is only lower-cased: those
    cannot match a proper host name label by label anyway.
    """
    name = name.strip().rstrip(".")
    if not name.isascii():
        with contextlib.suppress(UnicodeError):
            name = name.encode("idna").decode("ascii")
    return name.lower()


def _is_address(reference: str) -> bool:
    try:
        ipaddress.ip_address(reference.strip("[]"))
    except ValueError:
        return False
    return True


def _wildcard_verdict(pattern: str) -> str:
    """'plain', 'ok' (a whole-left-most-label wildcard) or 'refused'."""
    if "*" not in pattern:
        return "plain"
    labels = pattern.split(".")
    if labels[0] == "*" and "*" not in ".".join(labels[1:]) and len(labels) >= 3:
        return "ok"
    return "refused"


def dns_id_matches(presented: str, reference: str) -> bool:
    """Does one presented DNS-ID match a (normalised) reference host name under the
    rules above? A refused wildcard pattern never matches."""
    pattern = normalise_dns(presented)
    reference = normalise_dns(reference)
    if not pattern or not reference:
        return False
    verdict = _wildcard_verdict(pattern)
    if verdict == "plain":
        return pattern == reference
    if verdict == "refused":
        return False
    ref_labels = reference.split(".")
    pat_labels = pattern.split(".")
    return (
        len(ref_labels) == len(pat_labels)
        and bool(ref_labels[0])
        and ref_labels[1:] == pat_labels[1:]
    )


def _glob_matches(pattern: str, reference: str) -> bool:
    """Would a refused pattern have matched if '*' were a within-label glob? (Only to
    tell "refused wildcard" from a plain mismatch.)"""
    pat_labels = normalise_dns(pattern).split(".")
    ref_labels = normalise_dns(reference).split(".")
    if len(pat_labels) != len(ref_labels):
        return False
    for pat, ref in zip(pat_labels, ref_labels, strict=True):
        if "*" not in pat:
            if pat != ref:
                return False
            continue
        head, _, tail = pat.partition("*")
        tail = tail.replace("*", "")  # several '*' in one label: treat the rest literally
        if not (len(ref) >= len(head) + len(tail) and ref.startswith(head) and ref.endswith(tail)):
            return False
    return True


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        # A malformed extension (cryptography refuses to parse it): no usable SAN.
        return None


def _common_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ()
    return tuple(str(a.value) for a in attrs)


def check_identity(cert: x509.Certificate, reference: str) -> IdentityResult:
    """Check `cert` (the leaf) against the reference identifier `reference`."""
    san = _san(cert)
    dns_names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    other_ids = False  # URI-ID or SRV-ID present: they switch the CN fallback off
    if san is not None:
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
        other_ids = bool(san.get_values_for_type(x509.UniformResourceIdentifier)) or any(
            o.type_id == _SRV_NAME_OID for o in san.get_values_for_type(x509.OtherName)
        )
    cns = _common_names(cert)
    refused = tuple(n for n in dns_names if _wildcard_verdict(normalise_dns(n)) == "refused")

    if _is_address(reference):
        address = ipaddress.ip_address(reference.strip("[]"))
        result = IdentityResult(
            NameMatch.MISMATCH, str(address), dns_names, ips, cns, refused=refused
        )
        if str(address) in ips:
            return dataclasses.replace(result, match=NameMatch.MATCHED, matched_by=str(address))
        return result

    ref = normalise_dns(reference)
    result = IdentityResult(NameMatch.MISMATCH, ref, dns_names, ips, cns, refused=refused)
    for presented in dns_names:
        if dns_id_matches(presented, ref):
            return dataclasses.replace(result, match=NameMatch.MATCHED, matched_by=presented)
    if any(_glob_matches(p, ref) for p in refused):
        return dataclasses.replace(result, match=NameMatch.REFUSED_WILDCARD)
    if dns_names or other_ids:
        return result
    # No DNS-ID, SRV-ID or URI-ID at all: the CN is the legacy fallback (RFC 6125 §6.4.4).
    for cn in cns:
        if dns_id_matches(cn, ref):
            return dataclasses.replace(result, match=NameMatch.MATCHED_BY_CN_ONLY, matched_by=cn)
    refused_cns = tuple(cn for cn in cns if _wildcard_verdict(normalise_dns(cn)) == "refused")
    if any(_glob_matches(cn, ref) for cn in refused_cns):
        return dataclasses.replace(result, match=NameMatch.REFUSED_WILDCARD, refused=refused_cns)
    return result

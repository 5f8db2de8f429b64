"""NTLM for the AUTH-07 probe (MS-NLMP): a NEGOTIATE_MESSAGE that names nothing of
ours, and the names a server's CHALLENGE_MESSAGE discloses (its NetBIOS and DNS
names, its OS version). Decoding refuses anything else with `MalformedResponse`."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import struct

from imapguard.scanner.dialog_errors import MalformedResponse, printable

#: Negotiate flags asked for (MS-NLMP §2.2.2.5): UNICODE, OEM, REQUEST_TARGET, NTLM,
#: ALWAYS_SIGN, EXTENDED_SESSIONSECURITY, TARGET_INFO, VERSION, 128, 56.
_NTLM_FLAGS = 0x00000001 | 0x00000002 | 0x00000004 | 0x00000200
_NTLM_FLAGS |= 0x00008000 | 0x00080000 | 0x00800000 | 0x02000000 | 0x20000000 | 0x80000000
_NTLM_SIGNATURE = b"NTLMSSP\0"
_NTLM_VERSION_FLAG = 0x02000000
#: AV_PAIR ids (MS-NLMP §2.2.2.1) whose values are names.
_AV_NAMES = {
    1: "NetBIOS computer",
    2: "NetBIOS domain",
    3: "DNS computer",
    4: "DNS domain",
    5: "DNS forest",
}


def ntlm_negotiate() -> bytes:
    """An NTLM NEGOTIATE_MESSAGE with no domain or workstation (MS-NLMP §2.2.1.1):
    it names nothing about us and asks the server for its target information."""
    empty = struct.pack("<HHI", 0, 0, 40)
    version = bytes(8)  # our version is nobody's business
    return _NTLM_SIGNATURE + struct.pack("<II", 1, _NTLM_FLAGS) + empty + empty + version


@dataclasses.dataclass(frozen=True, slots=True)
class NtlmChallenge:
    """What an NTLM CHALLENGE_MESSAGE (MS-NLMP §2.2.1.2) tells about the server."""

    target: str  # TargetName
    names: tuple[tuple[str, str], ...]  # (label, value) from TargetInfo
    os_version: str  # "10.0 build 17763", or ""

    def disclosed(self) -> tuple[str, ...]:
        out = [f"target {self.target}"] if self.target else []
        out += [f"{label} {value}" for label, value in self.names]
        if self.os_version:
            out.append(f"OS version {self.os_version}")
        return tuple(out)


def parse_ntlm_challenge(data: str | bytes) -> NtlmChallenge:
    """Decode a base64 (str) or binary CHALLENGE_MESSAGE; `MalformedResponse` if
    it is not one."""
    if isinstance(data, str):
        try:
            blob = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedResponse("ntlm", "challenge is not base64", data.encode()) from exc
    else:
        blob = data
    if len(blob) < 48 or not blob.startswith(_NTLM_SIGNATURE):
        raise MalformedResponse("ntlm", "not an NTLM message", blob)
    (kind,) = struct.unpack_from("<I", blob, 8)
    if kind != 2:
        raise MalformedResponse("ntlm", f"NTLM message type {kind}, not a challenge", blob)
    (flags,) = struct.unpack_from("<I", blob, 20)
    unicode = bool(flags & 1)
    target = _ntlm_string(_ntlm_field(blob, 12), unicode)
    names: list[tuple[str, str]] = []
    info = _ntlm_field(blob, 40)
    pos = 0
    while pos + 4 <= len(info):
        av_id, av_len = struct.unpack_from("<HH", info, pos)
        pos += 4
        if av_id == 0:
            break
        if pos + av_len > len(info):
            raise MalformedResponse("ntlm", "truncated target information", blob)
        if av_id in _AV_NAMES:
            value = info[pos : pos + av_len].decode("utf-16-le", "replace")
            if value:
                names.append((_AV_NAMES[av_id], printable(value)))
        pos += av_len
    os_version = ""
    if flags & _NTLM_VERSION_FLAG and len(blob) >= 56:
        major, minor, build = struct.unpack_from("<BBH", blob, 48)
        if major or minor or build:
            os_version = f"{major}.{minor} build {build}"
    return NtlmChallenge(printable(target), tuple(names), os_version)


def _ntlm_field(blob: bytes, offset: int) -> bytes:
    length, _, start = struct.unpack_from("<HHI", blob, offset)
    if length == 0:
        return b""
    if start + length > len(blob):
        raise MalformedResponse("ntlm", "field points past the message", blob)
    return blob[start : start + length]


def _ntlm_string(data: bytes, unicode: bool) -> str:
    return data.decode("utf-16-le" if unicode else "latin-1", "replace")

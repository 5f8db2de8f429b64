"""The SASL half, sans-IO: RFC 7628 OAUTHBEARER and Google's XOAUTH2.

`parse_oauthbearer` and `parse_xoauth2` turn the client's (base64-decoded)
response into `BearerCredentials` or raise `SaslMalformed`, and nothing else;
`error_challenge` is the JSON the server sends back on failure.

The failure exchange (RFC 7628 §3.2.2, §3.2.3): a token that does not verify is
answered with `+ <base64 of error_challenge(...)>`; the client must then send a
single %x01 (`CLIENT_ERROR_ACK`), and only then does the gateway send its tagged
`NO`. Anything else from the client at that point is a protocol error (`BAD`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from imapguard.auth.oauth.errors import SaslMalformed
from imapguard.names import MAX_USER_BYTES
from imapguard.secret import Secret
from imapguard.text import first_unsafe, unsafe_kind

__all__ = [
    "CLIENT_ERROR_ACK",
    "MAX_RESPONSE_BYTES",
    "MAX_TOKEN_BYTES",
    "BearerCredentials",
    "error_challenge",
    "parse_oauthbearer",
    "parse_xoauth2",
]

#: The longest bearer token accepted. Bearer tokens are made to travel in an HTTP
#: `Authorization` header, and common servers cap a header at 8 KiB (nginx
#: `large_client_header_buffers`, Apache `LimitRequestFieldSize` 8190), so a
#: token an IdP issues for real use fits in 8 KiB; large ones are JWTs with many
#: group claims (Entra ID moves groups out of the token past 200 for that
#: reason). 16 KiB is twice that, and bounds the base64, JSON and signature work
#: an unauthenticated client can make us do per attempt.
MAX_TOKEN_BYTES = 16 * 1024
#: The whole SASL response: the token, a GS2 header with an authorization
#: identity (at most 255 bytes, tripled by escaping) and host/port pairs.
MAX_RESPONSE_BYTES = MAX_TOKEN_BYTES + 2048
#: The client's only valid answer to an error challenge (RFC 7628 §3.2.3).
CLIENT_ERROR_ACK = b"\x01"


@dataclass(frozen=True, slots=True)
class BearerCredentials:
    """What a client sent: the SASL authorization identity (b"" when it gave none;
    valid UTF-8 without control characters otherwise) and the bearer token.

    An empty token is an OAUTHBEARER discovery request (`auth=` with no value,
    as PostgreSQL's libpq sends to learn the issuer): answer it with
    `error_challenge`; `TokenVerifier.verify` refuses it too."""

    authzid: bytes
    token: Secret

    @property
    def authorization_identity(self) -> str | None:
        return self.authzid.decode("utf-8") if self.authzid else None

    @property
    def discovery(self) -> bool:
        return not self.token


_KVSEP = b"\x01"
_KEY = re.compile(rb"[A-Za-z]+")
_VALUE = re.compile(rb"[\t\n\r\x20-\x7e]*")  # RFC 7628 §3.1: VCHAR / SP / HTAB / CR / LF
_XOAUTH2_VALUE = re.compile(rb"[\t\n\r\x20-\x7e\x80-\xff]*")  # and UTF-8 user names
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1


def parse_oauthbearer(payload: bytes) -> BearerCredentials:
    """RFC 7628 §3.1 client response:
    `gs2-header %x01 *(key "=" value %x01) %x01`, with `auth=Bearer <b64token>`.

    The GS2 header (RFC 5801 §4) is `n,` or `y,` (no channel binding: OAUTHBEARER
    has no -PLUS variant, so `p=` is refused), an optional `a=<authzid>` with =2C
    and =3D escapes, and `,`. Keys other than `auth` (`host`, `port`, extensions)
    are checked against the grammar and ignored, as §3.1 asks."""
    _check_size(payload)
    header, sep, rest = payload.partition(_KVSEP)
    if not sep:
        raise SaslMalformed("no %x01 after the GS2 header")
    parts = header.split(b",")
    if len(parts) != 3 or parts[2]:
        raise SaslMalformed("GS2 header is not `flag,[a=authzid],`")
    flag, authz, _ = parts
    if flag.startswith(b"p="):
        raise SaslMalformed("channel binding requested; OAUTHBEARER has none")
    if flag not in (b"n", b"y"):
        raise SaslMalformed("GS2 channel-binding flag is not n or y")
    authzid = b""
    if authz:
        if not authz.startswith(b"a="):
            raise SaslMalformed("GS2 header field is not a=authzid")
        authzid = _check_user(_unescape_saslname(authz[2:]), "authzid")
    pairs = _kvpairs(rest, _VALUE)
    if b"auth" not in pairs:
        raise SaslMalformed("no auth key")
    return BearerCredentials(authzid, _bearer_token(pairs[b"auth"], discovery=True))


def parse_xoauth2(payload: bytes) -> BearerCredentials:
    """Google's XOAUTH2: `user=<user> %x01 auth=Bearer <token> %x01 %x01`
    (the same key/value list as OAUTHBEARER, without a GS2 header; `user` is
    required and becomes the authorization identity)."""
    _check_size(payload)
    pairs = _kvpairs(payload, _XOAUTH2_VALUE)
    if b"user" not in pairs:
        raise SaslMalformed("no user key")
    if b"auth" not in pairs:
        raise SaslMalformed("no auth key")
    user = _check_user(pairs[b"user"], "user")
    return BearerCredentials(user, _bearer_token(pairs[b"auth"], discovery=False))


def _check_size(payload: bytes) -> None:
    if len(payload) > MAX_RESPONSE_BYTES:
        raise SaslMalformed(f"response longer than {MAX_RESPONSE_BYTES} bytes")


def _kvpairs(data: bytes, value_pattern: re.Pattern[bytes]) -> dict[bytes, bytes]:
    """`*(key "=" value %x01) %x01` -> {key: value}; every key at most once."""
    if not data.endswith(_KVSEP):
        raise SaslMalformed("no final %x01")
    *items, last = data[:-1].split(_KVSEP)
    if last:
        raise SaslMalformed("key/value pair without %x01")
    pairs: dict[bytes, bytes] = {}
    for item in items:
        if not item:
            raise SaslMalformed("data after the final %x01")
        key, eq, value = item.partition(b"=")
        if not eq or not _KEY.fullmatch(key):
            raise SaslMalformed("key/value pair is not key=value")
        if not value_pattern.fullmatch(value):
            raise SaslMalformed(f"value of {key.decode()} has a forbidden byte")
        if key in pairs:
            raise SaslMalformed(f"key {key.decode()} given twice")
        pairs[key] = value
    return pairs


def _unescape_saslname(raw: bytes) -> bytes:
    """RFC 5801 saslname: `=2C` is ",", `=3D` is "=" (ABNF strings: any case)."""
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == ord("="):
            escape = raw[i + 1 : i + 3].upper()
            if escape == b"2C":
                out += b","
            elif escape == b"3D":
                out += b"="
            else:
                raise SaslMalformed("authzid has an = that is not =2C or =3D")
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def _check_user(raw: bytes, what: str) -> bytes:
    """Non-empty, bounded, UTF-8, no control characters (they have no place in an
    account name, and keep the audit log readable)."""
    if not raw:
        raise SaslMalformed(f"{what} is empty")
    if len(raw) > MAX_USER_BYTES:
        raise SaslMalformed(f"{what} longer than {MAX_USER_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslMalformed(f"{what} is not UTF-8") from None
    unsafe = first_unsafe(text)
    if unsafe is not None:
        raise SaslMalformed(f"{what} has a {unsafe_kind(unsafe)} character")
    return raw


def _bearer_token(auth: bytes, *, discovery: bool) -> Secret:
    """RFC 6750 §2.1 `"Bearer" 1*SP b64token`; the scheme is case-insensitive
    (RFC 7628 §4). Reasons never quote the value: it is the credential."""
    if not auth and discovery:
        return Secret(b"")
    scheme, space, token = auth.partition(b" ")
    if scheme.lower() != b"bearer" or not space:
        raise SaslMalformed("auth value is not `Bearer <token>`")
    token = token.lstrip(b" ")
    if len(token) > MAX_TOKEN_BYTES:
        raise SaslMalformed(f"token longer than {MAX_TOKEN_BYTES} bytes")
    if not _B64TOKEN.fullmatch(token):
        raise SaslMalformed("token is not an RFC 6750 b64token")
    return Secret(token)


def error_challenge(
    issuer_config_url: str,
    scope: str,
    mechanism: Literal["OAUTHBEARER", "XOAUTH2"] = "OAUTHBEARER",
) -> bytes:
    """The JSON the server sends, base64-encoded in a `+ ` continuation, when a
    token fails. OAUTHBEARER (RFC 7628 §3.2.2): `status` "invalid_token", the
    `scope` to ask for and the `openid-configuration` URL (`discovery_url(issuer)`)
    where the client finds the issuer. XOAUTH2: the shape Gmail sends, an HTTP
    status, the schemes and the scope. The same challenge for every failure: the
    real reason goes to the audit log only. The client must answer with
    `CLIENT_ERROR_ACK` (a single %x01); then the gateway sends its tagged NO."""
    body: dict[str, str]
    if mechanism == "XOAUTH2":
        body = {"status": "401", "schemes": "Bearer", "scope": scope}
    else:
        body = {
            "status": "invalid_token",
            "scope": scope,
            "openid-configuration": issuer_config_url,
        }
    return json.dumps(body, separators=(",", ":")).encode()

"""Cross-site request forgery: every state-changing request proves it came from
one of the portal's own pages.

Rules, for every POST, PUT, PATCH and DELETE, whatever its path (a route added
later cannot forget them):

* `Origin` equals the configured `portal.url` origin exactly; a request without
  `Origin`, or with `Origin: null`, passes only with `Sec-Fetch-Site: same-origin`
  (a browser that sends neither is no browser we serve). `null` is what a browser
  sends for the portal's own forms: the Fetch standard ("serializing a request
  origin") sends `null` for every request whose referrer policy is `no-referrer`,
  which headers.py sets. A `null` from an opaque origin (a sandboxed frame, a
  `data:` page) comes with `Sec-Fetch-Site: cross-site` and is refused.
* It carries the synchronizer token, as the form field `csrf` (once) or the
  `X-CSRF-Token` header: HMAC-SHA256(PORTAL_CSRF key, the session cookie's token),
  or, before sign-in, of the `__Host-imapguard-pre` cookie's random value, so the
  sign-in form itself is protected (login CSRF). Compared with
  `hmac.compare_digest`. No cookie to bind to: refused.
* Anything else gets 403 and a short plain page; the body is read (up to the
  app's `max_body_size`) only after the Origin check, and handed on unchanged.
* Refusals are audited once per source (an IPv4 address or an IPv6 /64, as the
  rate limits count) per `AUDIT_INTERVAL`: a script posting from a foreign
  origin as fast as it can is one line a minute, the next line saying how many
  were refused in between, not a line per request filling the disk and the
  admins' live view. At most `MAX_AUDITED_SOURCES` sources are remembered, the
  least recently refused forgotten first (memory stays bounded; a forgotten
  source gets a line again, so many sources still cost one line each a minute).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imapguard.portal.ratelimit import source_key
from imapguard.portal.sessions import PRE_COOKIE, loaded, new_token, set_cookie

__all__ = [
    "AUDIT_INTERVAL",
    "FIELD",
    "HEADER",
    "MAX_AUDITED_SOURCES",
    "UNSAFE_METHODS",
    "CsrfGuard",
    "RefusalAudit",
    "form_token",
    "token_for",
]

FIELD = "csrf"
HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FORM = "application/x-www-form-urlencoded"
# A form of the portal has a handful of fields.
_MAX_FIELDS = 64
REFUSED_TEXT = (
    "Forbidden: this form has expired or did not come from this site. "
    "Go back, reload the page and try again."
)

# One audit line per source and minute; as many sources as the sign-in rate
# limit remembers (`ratelimit.MAX_SOURCES`), a few hundred KiB at most.
AUDIT_INTERVAL = 60.0
MAX_AUDITED_SOURCES = 10_000

#: Called with (request, reason) when a request is refused (the audit line).
OnRefused = Callable[[HTTPConnection, str], None]


class RefusalAudit:
    """Passes a refusal on to `on_refused` at most once per source and
    `interval`; the ones held back are counted into the next line's reason."""

    def __init__(
        self,
        on_refused: OnRefused,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = AUDIT_INTERVAL,
        max_sources: int = MAX_AUDITED_SOURCES,
    ) -> None:
        self.on_refused = on_refused
        self.clock = clock
        self.interval = interval
        self.max_sources = max_sources
        # source -> (when its last line was written, refusals held back since)
        self._sources: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def __call__(self, conn: HTTPConnection, reason: str) -> None:
        host = conn.client.host if conn.client is not None else ""
        key = source_key(host) if host else ""
        now = self.clock()
        last = self._sources.pop(key, None)
        if last is not None and 0.0 <= now - last[0] < self.interval:
            self._sources[key] = (last[0], last[1] + 1)
            return
        self._sources[key] = (now, 0)
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        held = 0 if last is None else last[1]
        self.on_refused(
            conn, reason if not held else f"{reason} ({held} more refused since the last line)"
        )


def token_for(key: bytes, binding: str) -> str:
    """The CSRF token of a cookie value (`binding` says which cookie)."""
    digest = hmac.new(key, binding.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _binding(conn: HTTPConnection, *, session: bool = True) -> str | None:
    state = loaded(conn)
    if session and state.current is not None:
        return "session:" + state.current.token
    if state.pre_token is not None:
        return "pre:" + state.pre_token
    return None


def form_token(
    conn: HTTPConnection, key: bytes, *, signed_out: bool = False
) -> tuple[str, str | None]:
    """The token a page's forms carry, and a Set-Cookie value when a new
    pre-sign-in cookie had to be made for it (None otherwise). `signed_out`: the
    request's session was just ended, bind to the pre-sign-in cookie."""
    binding = _binding(conn, session=not signed_out)
    if binding is not None:
        return token_for(key, binding), None
    pre = new_token()
    return token_for(key, "pre:" + pre), set_cookie(PRE_COOKIE, pre)


class CsrfGuard:
    def __init__(self, app: ASGIApp, *, key: bytes, origin: str, on_refused: OnRefused) -> None:
        self.app = app
        self.key = key
        self.origin = origin
        self.on_refused = RefusalAudit(on_refused)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        headers = conn.headers
        reason = self._origin_problem(headers)
        if reason is not None:
            await self._refuse(conn, reason, receive, send)
            return
        token = headers.get(HEADER)
        replay = receive
        if token is None:
            body = await _read_body(receive)
            if body is None:
                return  # the client went away
            token, reason = _token_in_form(headers, body)
            replay = _replaying(body, receive)
        expected = _binding(conn)
        if reason is None and expected is None:
            reason = "no cookie to bind a token to"
        if reason is None and token is None:
            reason = "no token"
        if reason is None and not hmac.compare_digest(
            (token or "").encode("ascii", "replace"), token_for(self.key, expected or "").encode()
        ):
            reason = "wrong token"
        if reason is not None:
            await self._refuse(conn, reason, replay, send)
            return
        await self.app(scope, replay, send)

    def _origin_problem(self, headers: Headers) -> str | None:
        origin = headers.get("origin")
        if origin is not None and origin != "null":
            return None if origin == self.origin else f"foreign origin {origin[:100]!r}"
        site = headers.get("sec-fetch-site")
        if site == "same-origin":
            return None
        what = "no Origin" if origin is None else "Origin null"
        return what if site is None else f"{what}, Sec-Fetch-Site {site[:20]!r}"

    async def _refuse(
        self, conn: HTTPConnection, reason: str, receive: Receive, send: Send
    ) -> None:
        self.on_refused(conn, reason)
        response = PlainTextResponse(REFUSED_TEXT, status_code=403)
        await response(conn.scope, receive, send)


def _token_in_form(headers: Headers, body: bytes) -> tuple[str | None, str | None]:
    """(the form's one `csrf` value, why there is none we can use)."""
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != _FORM:
        return None, f"not a form ({media_type[:50]!r}) and no {HEADER} header"
    # Latin-1 maps every byte to one character, so a field of any text (a
    # password or a name with "ü" in it) parses; the token itself is ASCII.
    # (parse_qsl of bytes raises UnicodeEncodeError on a percent-escaped
    # non-ASCII byte.)
    try:
        fields = parse_qsl(
            body.decode("latin-1"),
            keep_blank_values=True,
            max_num_fields=_MAX_FIELDS,
            encoding="latin-1",
        )
    except ValueError:
        return None, "a form with too many fields"
    values = [value for name, value in fields if name == FIELD]
    if len(values) != 1:
        return None, "no token" if not values else "several tokens"
    if not values[0].isascii():
        return None, "wrong token"
    return values[0], None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (bounded by the app's max_body_size); None on disconnect."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then goes on."""
    pending: deque[Message] = deque([{"type": "http.request", "body": body, "more_body": False}])

    async def replay() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replay

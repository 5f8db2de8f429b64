"""Logging in to an IMAP server as its client: the gateway's side of the login to
the upstream, sans-IO (bytes in, actions out), like `preauth.py` for the other side.

The dialogue, in order:

1. the greeting: `* OK` goes on; `* PREAUTH`, `* BYE` or anything that is no IMAP
   greeting ends it (a server that logs anyone in, or will not talk, is not the
   upstream we were configured for). Capabilities in a `[CAPABILITY ...]` code
   are noted.
2. with `starttls`: `g0 STARTTLS`; anything but `OK` ends it, and so does any byte
   after the `OK` (the server must wait for our handshake: a byte before it was
   injected by someone on the path, the CVE-2011-0411 class). Then `StartTls`:
   the caller puts TLS on the transport and calls `tls_established()`; whatever
   was said before TLS is forgotten.
3. optionally `g1 ID (...)` with the client's address (`x-originating-ip`, which
   Dovecot honours from its `login_trusted_networks`), pipelined with
4. `g2 AUTHENTICATE PLAIN`, the response inline when the server offers SASL-IR,
   else after its `+` continuation. `NO` or `BAD` is a refusal, unless its code
   says the server cannot answer now (`[UNAVAILABLE]`, `[SERVERBUG]`).
5. the capabilities for the client: from the tagged OK's code, else from an
   untagged `* CAPABILITY` before it, else asked with `g3 CAPABILITY`.

Without credentials (`sasl_plain` None: a connection check) the dialogue ends
after step 2 with `Greeted`, having sent nothing that logs in.

`LoggedIn` carries them and the bytes the server sent after its last response
(they belong to the client, first). Every response is bounded
(`imap.responses.ResponseLimits`), and so are the untagged responses kept while
waiting for a tagged one (`max_untagged`): a server flooding them ends the login.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Generator
from typing import TypeAlias

from imapguard.imap.responses import (
    Response,
    ResponseError,
    ResponseKind,
    ResponseLimitExceeded,
    ResponseLimits,
    ResponseReader,
)
from imapguard.secret import Secret

__all__ = [
    "Failed",
    "Greeted",
    "LoggedIn",
    "LoginDialogue",
    "LoginSettings",
    "NeedResponse",
    "Send",
    "StartTls",
    "plain_response",
]

#: Upstream responses during login are short; a literal there is an ID value.
#: The bound holds for a whole response (its lines and literals).
MAX_RESPONSE = 64 * 1024
#: The untagged responses kept while waiting for a tagged one.
MAX_UNTAGGED = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Send:
    data: bytes


@dataclasses.dataclass(frozen=True)
class NeedResponse:
    """Read more bytes and `receive_data()` them (b"": the server closed)."""


@dataclasses.dataclass(frozen=True)
class StartTls:
    """Put TLS on the transport, then call `tls_established()`."""


@dataclasses.dataclass(frozen=True)
class LoggedIn:
    capabilities: list[str]
    leftover: bytes  # what the server sent after its last response: the client's


@dataclasses.dataclass(frozen=True)
class Greeted:
    """A dialogue without credentials got this far: greeted, TLS as configured."""


@dataclasses.dataclass(frozen=True)
class Failed:
    detail: str
    refused: bool = False  # the server said NO to the credentials (else: cannot log in now)
    # The refusal's response code (RFC 5530), e.g. "AUTHORIZATIONFAILED": the
    # credentials were right but may not act as the requested identity.
    code: str | None = None


Action: TypeAlias = Send | NeedResponse | StartTls | LoggedIn | Greeted | Failed
# None: the next response.
_Step: TypeAlias = Send | StartTls | LoggedIn | Greeted | Failed | None


@dataclasses.dataclass(frozen=True)
class LoginSettings:
    starttls: bool = False
    # The IMAP ID fields to send first, or None to send no ID.
    id_fields: tuple[tuple[str, str], ...] | None = None
    max_response: int = MAX_RESPONSE
    max_untagged: int = MAX_UNTAGGED


def plain_response(authzid: str, authcid: str, password: Secret) -> Secret:
    """The SASL PLAIN response (RFC 4616), base64: `authzid NUL authcid NUL password`."""
    raw = authzid.encode() + b"\0" + authcid.encode() + b"\0" + password.reveal()
    return Secret(base64.b64encode(raw))


def _quote(value: str) -> bytes:
    return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def _limit_detail(exc: ResponseError) -> str:
    if not isinstance(exc, ResponseLimitExceeded):
        return f"malformed response: {exc.reason}"
    if exc.reason.startswith("line"):
        return "response line too long"
    if exc.reason.startswith("literal"):
        return "response literal too large"
    return "response too long"


class LoginDialogue:
    """One login: `next_action()` until `LoggedIn` or `Failed`."""

    def __init__(self, sasl_plain: Secret | None, settings: LoginSettings | None = None) -> None:
        self._settings = settings or LoginSettings()
        limit = self._settings.max_response
        self._reader: ResponseReader[Response] = ResponseReader(
            Response, ResponseLimits(max_line=limit, max_literal=limit, max_response=limit)
        )
        self._dialogue = self._run(sasl_plain)
        self._end: LoggedIn | Greeted | Failed | None = None
        self._wants_response = False
        self._closed = False
        self._error: str | None = None  # why the server's bytes were refused
        self._tls_pending = False

    # -- the caller's side ---------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server (b"": it closed the connection)."""
        if self._end is not None:
            return
        if not data:
            self._closed = True
            return
        if self._error is not None:
            return
        try:
            self._reader.feed(data)
        except ResponseError as exc:
            # The responses completed before the bad bytes still count, in order:
            # the outcome must not depend on how the bytes were split into reads.
            detail = _limit_detail(exc)
            if self._reader.completed == 0 and not isinstance(exc, ResponseLimitExceeded):
                detail = "unexpected greeting (not IMAP)"
            self._error = detail

    def tls_established(self) -> None:
        self._tls_pending = False

    def next_action(self) -> Action:
        while self._end is None:
            if self._tls_pending:
                raise RuntimeError("next_action() before tls_established()")
            response: Response | None = None
            if self._wants_response:
                response = self._reader.next()
                if response is None:
                    if self._error is not None:
                        self._end = Failed(self._error)
                        break
                    if self._closed:
                        self._end = Failed("connection closed during login")
                        break
                    return NeedResponse()
                self._wants_response = False
            step = next(self._dialogue) if response is None else self._dialogue.send(response)
            if step is None:
                self._wants_response = True
                continue
            if isinstance(step, LoggedIn | Greeted | Failed):
                self._end = step
                break
            if isinstance(step, StartTls):
                self._tls_pending = True
            return step
        return self._end

    # -- the dialogue ----------------------------------------------------------------

    def _response(self) -> Generator[_Step, Response | None, Response]:
        response = yield None
        assert response is not None  # noqa: S101 - next_action() sends one
        return response

    def _tagged(
        self, tag: str
    ) -> Generator[_Step, Response | None, tuple[Response, list[Response]] | None]:
        """Responses up to the tagged one for `tag`; None when the untagged ones
        before it pass `max_untagged`."""
        untagged: list[Response] = []
        kept = 0
        while True:
            response = yield from self._response()
            if response.kind is ResponseKind.TAGGED and response.tag == tag:
                return response, untagged
            kept += len(response.line)
            if kept > self._settings.max_untagged:
                return None
            untagged.append(response)

    def _run(self, sasl_plain: Secret | None) -> Generator[_Step, Response | None, None]:
        settings = self._settings
        greeting = yield from self._response()
        if greeting.kind is not ResponseKind.UNTAGGED or greeting.status != "OK":
            kind = "PREAUTH" if greeting.status == "PREAUTH" else "refusal"
            yield Failed(f"unexpected greeting ({kind})")
            return
        caps = list(greeting.capability_atoms() or ())

        if settings.starttls:
            yield Send(b"g0 STARTTLS\r\n")
            answer = yield from self._tagged("g0")
            if answer is None:
                yield Failed("too many untagged responses")
                return
            if answer[0].status != "OK":
                yield Failed("STARTTLS refused")
                return
            if self._reader.take_rest():
                yield Failed("data injected after STARTTLS response")
                return
            yield StartTls()
            caps = []  # capabilities sent before TLS are not to be trusted
        if sasl_plain is None:
            yield Greeted()
            return

        out = bytearray()
        if settings.id_fields is not None:
            items = b" ".join(_quote(k) + b" " + _quote(v) for k, v in settings.id_fields)
            out += b"g1 ID (" + items + b")\r\n"
        sasl_ir = "SASL-IR" in (c.upper() for c in caps)
        if sasl_ir:
            out += b"g2 AUTHENTICATE PLAIN " + sasl_plain.reveal() + b"\r\n"
            yield Send(bytes(out))
            if settings.id_fields is not None and (yield from self._tagged("g1")) is None:
                yield Failed("too many untagged responses")
                return
        else:
            out += b"g2 AUTHENTICATE PLAIN\r\n"
            yield Send(bytes(out))
            if settings.id_fields is not None and (yield from self._tagged("g1")) is None:
                yield Failed("too many untagged responses")
                return
            challenge = yield from self._response()
            if challenge.kind is not ResponseKind.CONTINUATION:
                yield Failed("no SASL continuation")
                return
            yield Send(sasl_plain.reveal() + b"\r\n")
        answer = yield from self._tagged("g2")
        if answer is None:
            yield Failed("too many untagged responses")
            return
        status, untagged = answer
        if status.status != "OK":
            detail = status.line.decode("ascii", "replace")[len("g2 ") :][:200]
            refused = status.code not in ("UNAVAILABLE", "SERVERBUG")
            yield Failed(f"login: {detail}", refused=refused, code=status.code or None)
            return

        atoms = status.capability_atoms()
        if atoms is None:
            atoms = _untagged_capabilities(untagged)
        if atoms is None:
            yield Send(b"g3 CAPABILITY\r\n")
            answer = yield from self._tagged("g3")
            if answer is None:
                yield Failed("too many untagged responses")
                return
            atoms = _untagged_capabilities(answer[1]) or ()
        yield LoggedIn(list(atoms), self._reader.take_rest())


def _untagged_capabilities(responses: list[Response]) -> tuple[str, ...] | None:
    found: tuple[str, ...] | None = None
    for response in responses:
        if response.kind is ResponseKind.UNTAGGED and response.name == "CAPABILITY":
            found = tuple(response.text.split())
    return found

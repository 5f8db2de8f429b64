"""Log in to the upstream IMAP server as the user, then hand over the connection.

The I/O of the login: connect (implicit TLS, STARTTLS or plain on loopback),
then drive the dialogue of `imapguard.imap.login` (greeting, STARTTLS, IMAP ID
`x-originating-ip` so that Dovecot's own per-IP limits and logs see the real
client, SASL PLAIN, capabilities), all within `login_timeout`. With
`forward_client_ip = "proxy-v2"` the client's address goes in a PROXY v2 header
instead, the first bytes on the connection (before TLS, also implicit TLS), with
PP2_TYPE_SSL: every client logs in over TLS to the gateway. `master` mode
sends authzid=user, authcid=master user; a password login sends the user's own
password. `UpstreamLogin` is this server as the auth service's `Upstream`.

`check_upstream` is the same path without a user. `serve` runs it once it
listens and after each reload: connect and TLS as configured (certificate and
name verified), no credentials. `check-config --connect` adds the master user:
a master login that asks to act as `CHECK_ACCOUNT`, a name no mailbox has.
RFC 5530 tells the outcomes apart: `NO [AUTHORIZATIONFAILED]` means the master
credentials were accepted and only the account refused (Dovecot answers so with
its master passdb's `result_success = continue`), any other NO that they were
refused. An upstream that lets the master user in as that name anyway answers
OK; the session is logged out at once. Dovecot counts the check as a failed
authentication from the checking host (its auth penalty: the next login from
that address without a forwarded client address waits about 2 s), which is why
`serve` does not make it: a master password refused at a user's login is logged
once (`UpstreamLogin`) and answered `NO [UNAVAILABLE]` by the auth service.

`UpstreamLogin` tells an optional observer (the metrics, given by the
composition root) each login's result, duration and what failed
(`failure_kind`); `UpstreamCheck.failure` says the same of a check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from imapguard.auth.model import ClientAddress
from imapguard.errors import UpstreamError, UpstreamRefused, UpstreamUnavailable
from imapguard.gateway.link import Link
from imapguard.gateway.proxyproto import v2_header
from imapguard.imap.login import (
    MAX_RESPONSE,
    MAX_UNTAGGED,
    Failed,
    Greeted,
    LoggedIn,
    LoginDialogue,
    LoginSettings,
    NeedResponse,
    Send,
    StartTls,
    plain_response,
)
from imapguard.secret import Secret

__all__ = [
    "CHECK_ACCOUNT",
    "ClientAddress",
    "UpstreamCheck",
    "UpstreamLogin",
    "UpstreamObserver",
    "UpstreamSession",
    "UpstreamSettings",
    "check_upstream",
    "failure_kind",
    "open_session",
]

log = logging.getLogger("imapguard.gateway")

# The bounds of the login dialogue (imapguard.imap.login): a whole response, and
# the untagged responses kept while waiting for a tagged one.
MAX_RESPONSE_LINE = MAX_RESPONSE
MAX_UNTAGGED_BYTES = MAX_UNTAGGED


@dataclass(frozen=True)
class UpstreamSettings:
    host: str
    port: int
    tls: str  # implicit | starttls | none
    ssl_context: ssl.SSLContext | None
    server_name: str
    master_user: str | None
    master_password: Secret | None
    forward_client_ip: str  # id | proxy-v2 | none
    connect_timeout: float
    login_timeout: float

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class UpstreamSession:
    """A logged-in upstream connection, ready to relay (auth.model.Session)."""

    link: Link
    capabilities: list[str]
    # Bytes the upstream sent after its tagged OK: the client gets them first.
    leftover: bytes

    async def discard(self) -> None:
        """Log out: the login failed after the password check, or the policy said no."""
        self.link.write(b"z LOGOUT\r\n")
        self.link.close()


#: Told after each login: its result (ok | refused | unavailable), its seconds
#: (connect, TLS and dialogue), and what failed (`failure_kind`), None when the
#: upstream answered as it should (a user's refused password included).
UpstreamObserver = Callable[[str, float, str | None], None]


def failure_kind(exc: UpstreamError) -> str:
    """What failed, in a few words from a fixed set: connect, tls, timeout,
    closed, protocol (an answer out of the dialogue) or master-refused."""
    if isinstance(exc, UpstreamRefused):
        return "master-refused"
    cause = exc.__context__  # what `open_session` turned into UpstreamUnavailable
    if isinstance(cause, TimeoutError):
        return "timeout"
    if isinstance(cause, ssl.SSLError):
        return "tls"
    if isinstance(cause, EOFError) or exc.detail == _CLOSED:  # the dialogue's word for it
        return "closed"
    if isinstance(cause, OSError):
        return "connect"
    return "protocol"


class UpstreamLogin:
    """The IMAP server behind the gateway, as the auth service's `Upstream`."""

    def __init__(self, settings: UpstreamSettings, observe: UpstreamObserver | None = None) -> None:
        self.settings = settings
        self._master_refused = False
        self._observe = observe

    @property
    def logs_in_for_users(self) -> bool:
        return self.settings.master_user is not None

    async def login(
        self, user: str, password: Secret | None, client: ClientAddress
    ) -> UpstreamSession:
        """A master login the upstream refuses is the configuration's fault: said
        once in the log (each login's audit record says it too), and once again
        when master logins work again."""
        start = time.perf_counter()
        try:
            session = await open_session(self.settings, user, password, client)
        except UpstreamUnavailable as exc:
            if self._observe is not None:
                self._observe("unavailable", time.perf_counter() - start, failure_kind(exc))
            raise
        except UpstreamRefused as exc:
            master = password is None and exc.code != "AUTHORIZATIONFAILED"
            if self._observe is not None:
                failure = failure_kind(exc) if master else None
                self._observe("refused", time.perf_counter() - start, failure)
            if master and not self._master_refused:
                self._master_refused = True
                log.warning(
                    "upstream.master_password_file: upstream %s refused the master user %r "
                    "(%s): users cannot log in until upstream.master_user and its password "
                    "are right",
                    self.settings.address,
                    self.settings.master_user,
                    exc.detail,
                )
            raise
        if self._observe is not None:
            self._observe("ok", time.perf_counter() - start, None)
        if password is None and self._master_refused:
            self._master_refused = False
            log.info("upstream %s accepts the master user again", self.settings.address)
        return session


async def open_session(
    settings: UpstreamSettings, user: str, password: Secret | None, client: ClientAddress
) -> UpstreamSession:
    """Log in as `user`: with `password` (the user's own) or, when None, as the master user.

    Raises UpstreamUnavailable (cannot reach or trust it) or UpstreamRefused (NO)."""
    link: Link | None = None
    try:
        async with asyncio.timeout(settings.login_timeout):
            link = await _connect(settings, client)
            return await _login(settings, link, user, password, client)
    except BaseException as exc:
        if link is not None:
            link.abort()
        if isinstance(exc, UpstreamUnavailable | UpstreamRefused):
            raise
        if isinstance(exc, TimeoutError):
            raise UpstreamUnavailable(settings.address, "timed out") from None
        if isinstance(exc, OSError | ssl.SSLError | EOFError):
            raise UpstreamUnavailable(settings.address, _describe(exc)) from None
        raise


_CLOSED = "connection closed during login"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, EOFError):
        return _CLOSED
    if isinstance(exc, OSError) and exc.errno and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)  # uvloop's strerror repeats the address
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def _connect(settings: UpstreamSettings, client: ClientAddress) -> Link:
    loop = asyncio.get_running_loop()
    implicit = settings.tls == "implicit"
    proxy = settings.forward_client_ip == "proxy-v2"
    tls_now = implicit and not proxy
    async with asyncio.timeout(settings.connect_timeout):
        _, link = await loop.create_connection(
            Link,
            settings.host,
            settings.port,
            ssl=settings.ssl_context if tls_now else None,
            server_hostname=settings.server_name if tls_now else None,
        )
        if proxy:
            link.write(
                v2_header((client.ip, client.port), (client.local_ip, client.local_port), tls=True)
            )
            if implicit:
                await _start_tls(settings, link)
    return link


async def _login(
    settings: UpstreamSettings,
    link: Link,
    user: str,
    password: Secret | None,
    client: ClientAddress,
) -> UpstreamSession:
    """Log in as `user` over `link` (imapguard.imap.login)."""
    if password is None:
        if settings.master_user is None or settings.master_password is None:
            raise UpstreamUnavailable(settings.address, "no master user configured")
        plain = plain_response(user, settings.master_user, settings.master_password)
    else:
        plain = plain_response("", user, password)
    id_fields = None
    if settings.forward_client_ip == "id":
        id_fields = (
            ("x-originating-ip", client.ip),
            ("x-originating-port", str(client.port)),
            ("x-connected-ip", client.local_ip),
            ("x-connected-port", str(client.local_port)),
            ("x-session-ext-id", client.session),
        )
    end = await _dialogue(settings, link, plain, id_fields)
    if isinstance(end, Greeted):
        raise UpstreamUnavailable(settings.address, "the login dialogue had no credentials")
    return UpstreamSession(link, end.capabilities, end.leftover + link.take_buffer())


async def _dialogue(
    settings: UpstreamSettings,
    link: Link,
    plain: Secret | None,
    id_fields: tuple[tuple[str, str], ...] | None,
) -> LoggedIn | Greeted:
    """Drive the login dialogue over `link` to its end; a failure is raised."""
    machine = LoginDialogue(
        plain,
        LoginSettings(
            starttls=settings.tls == "starttls",
            id_fields=id_fields,
            max_response=MAX_RESPONSE_LINE,
            max_untagged=MAX_UNTAGGED_BYTES,
        ),
    )
    while True:
        action = machine.next_action()
        if isinstance(action, NeedResponse):
            machine.receive_data(await link.read())
        elif isinstance(action, Send):
            link.write(action.data)
        elif isinstance(action, StartTls):
            await _start_tls(settings, link)
            machine.tls_established()
        elif isinstance(action, LoggedIn | Greeted):
            return action
        else:
            raise _failure(settings, action)


def _failure(settings: UpstreamSettings, failed: Failed) -> UpstreamRefused | UpstreamUnavailable:
    if failed.refused:
        return UpstreamRefused(settings.address, failed.detail, failed.code)
    return UpstreamUnavailable(settings.address, failed.detail)


async def _start_tls(settings: UpstreamSettings, link: Link) -> None:
    """TLS on the upstream connection, after its STARTTLS OK. A byte already
    received is one the server could not have sent yet: an injection."""
    if link.take_buffer():
        raise UpstreamUnavailable(settings.address, "data injected after STARTTLS response")
    if link.transport is None or settings.ssl_context is None:
        raise UpstreamUnavailable(settings.address, "no TLS context for STARTTLS")
    transport = await asyncio.get_running_loop().start_tls(
        link.transport, link, settings.ssl_context, server_hostname=settings.server_name
    )
    if transport is None:
        raise EOFError
    link.tls_protocol = link.transport.get_protocol()  # the SSL protocol now
    link.transport = transport


#: The account a connection check asks the master user to act as: no mailbox has
#: a name under .invalid (RFC 2606), so the check opens no session.
CHECK_ACCOUNT = "imapguard-check.invalid"

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = (62, 64)


@dataclass(frozen=True)
class UpstreamCheck:
    """What `check_upstream` found; when not `ok`, `key` is the setting to look at
    and `failure` what failed (as `failure_kind` says it)."""

    ok: bool
    key: str
    message: str
    failure: str | None = None


# The start-up check's connection is the gateway's own: with proxy-v2 its header
# names no client (AF_UNSPEC), which Dovecot takes as the proxy's own connection.
_NO_CLIENT = ClientAddress("", 0, "", 0, "start-up check")


async def check_upstream(settings: UpstreamSettings, *, master: bool = True) -> UpstreamCheck:
    """Connect as the gateway does and, with `master` and a master user, try its
    credentials on `CHECK_ACCOUNT` (see the module's docstring). Never raises for
    what the upstream does; every message names the address, never a secret."""
    where = f"upstream {settings.address}"
    tls = {"implicit": "TLS", "starttls": "STARTTLS", "none": "no TLS"}[settings.tls]
    if settings.tls != "none":
        tls += f", certificate verified for {settings.server_name!r}"
    master_user = settings.master_user if master else None
    link: Link | None = None
    try:
        async with asyncio.timeout(settings.login_timeout):
            link = await _connect(settings, _NO_CLIENT)
            plain = None
            if master_user is not None and settings.master_password is not None:
                plain = plain_response(CHECK_ACCOUNT, master_user, settings.master_password)
            end = await _dialogue(settings, link, plain, None)
        if isinstance(end, LoggedIn):
            link.write(b"z LOGOUT\r\n")
    except UpstreamRefused as exc:
        if exc.code == "AUTHORIZATIONFAILED":
            return UpstreamCheck(
                True,
                "upstream",
                f"{where}: reachable ({tls}), master user {master_user!r} accepted",
            )
        return UpstreamCheck(
            False,
            "upstream.master_password_file",
            f"{where} refused the master user {master_user!r} ({exc.detail}): check "
            "upstream.master_user and the password in upstream.master_password_file",
            "master-refused",
        )
    except UpstreamUnavailable as exc:
        detail = f"{where}: {exc.detail}"
        return UpstreamCheck(False, "upstream.address", detail, failure_kind(exc))
    except TimeoutError:
        return UpstreamCheck(False, "upstream.address", f"{where}: timed out", "timeout")
    except ssl.SSLCertVerificationError as exc:
        key = "upstream.server_name" if exc.verify_code in _NAME_MISMATCH else "upstream.ca"
        return UpstreamCheck(False, key, f"{where}: {_describe(exc)}", "tls")
    except ssl.SSLError as exc:  # e.g. plain IMAP where `tls` says implicit
        return UpstreamCheck(False, "upstream.tls", f"{where}: {_describe(exc)}", "tls")
    except EOFError as exc:
        return UpstreamCheck(False, "upstream.address", f"{where}: {_describe(exc)}", "closed")
    except OSError as exc:
        return UpstreamCheck(False, "upstream.address", f"{where}: {_describe(exc)}", "connect")
    finally:
        if link is not None:
            link.close()
    login = f", master user {master_user!r} accepted" if master_user is not None else ""
    return UpstreamCheck(True, "upstream", f"{where}: reachable ({tls}){login}")

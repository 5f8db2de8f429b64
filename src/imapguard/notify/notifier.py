"""The shell: the `Notifier` that sends notices by webhook and SMTP, in the
background, bounded, and never raising (see imapguard.notify)."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

import httpx

from imapguard.config.notify import MIN_WEBHOOK_SECRET, NotifyConfig
from imapguard.errors import ConfigError
from imapguard.notify.limits import HourlyCap, ShouldSend
from imapguard.notify.messages import build_messages, webhook_request
from imapguard.notify.notice import Channel, Delivery, Notice, NotifyResult, NotifyStatus
from imapguard.secret import Secret
from imapguard.text import clean

__all__ = ["DEFAULT_CLOSE_GRACE", "DEFAULT_MAX_CONCURRENT", "DEFAULT_MAX_PENDING", "Notifier"]

log = logging.getLogger("imapguard.notify")


#: Notices waiting to be sent. One notice is a few hundred bytes plus a task; a
#: thousand covers a burst of lockouts during an attack with room to spare.
DEFAULT_MAX_PENDING = 1000
#: Notices sent at a time: each holds an SMTP thread and a webhook connection.
#: A small number keeps the thread pool and the resolver free for logins.
DEFAULT_MAX_CONCURRENT = 4
#: How long `aclose()` lets pending notices finish before cancelling them.
DEFAULT_CLOSE_GRACE = 3.0


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: what may be logged of it."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _describe(exc: BaseException) -> str:
    """A failure reason without secrets: for exceptions we do not know, only the
    type (a UnicodeEncodeError from AUTH would quote a password character)."""
    match exc:
        case TimeoutError():
            return "timed out"
        case smtplib.SMTPAuthenticationError():
            return f"SMTP authentication refused ({exc.smtp_code})"
        case smtplib.SMTPRecipientsRefused():
            codes = sorted({code for code, _ in exc.recipients.values()})
            return f"recipients refused ({', '.join(map(str, codes))})"
        case smtplib.SMTPResponseException():
            text = (
                exc.smtp_error.decode("utf-8", "replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            return f"SMTP {exc.smtp_code} {clean(text, 120)}"
        case smtplib.SMTPException() | ssl.SSLError() | OSError() | httpx.TransportError():
            return clean(f"{type(exc).__name__}: {exc}", 200)
        case _:
            return type(exc).__name__


class Notifier:
    """Sends notices by webhook and mail, as the `[notify]` section says.

        async with Notifier(section, should_send=store.notify_once) as notifier:
            ...                         # serve; on the login path:
            notifier.submit(notice)     # returns at once, never raises

    `notify()` can also be awaited directly (tests, CLI); call `aclose()` after.
    `clock()` gives the `now` passed to `should_send`; `transport` replaces the
    webhook's HTTP transport (tests: `httpx.MockTransport`). The secrets and CA
    bundles are read from their files here (ConfigError names the key).
    """

    def __init__(
        self,
        settings: NotifyConfig,
        *,
        should_send: ShouldSend,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        close_grace: float = DEFAULT_CLOSE_GRACE,
    ) -> None:
        self.settings = settings
        self._should_send = should_send
        self._clock = clock
        self.max_pending = max_pending
        self.close_grace = close_grace
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tg: asyncio.TaskGroup | None = None
        self._state: Literal["new", "running", "closed"] = "new"
        self._pending: set[asyncio.Task[NotifyResult | None]] = set()
        self._dropped = 0
        self._dropping = 0  # dropped since the queue was last not full
        self._cap = HourlyCap(settings.max_per_hour)
        self._webhook_secret = _read_secret(settings.webhook_secret_file, "webhook_secret_file")
        if self._webhook_secret is not None and len(self._webhook_secret) < MIN_WEBHOOK_SECRET:
            raise ConfigError(
                [
                    (
                        "notify.webhook_secret_file",
                        f"{settings.webhook_secret_file} must hold at least "
                        f"{MIN_WEBHOOK_SECRET} bytes",
                    )
                ]
            )
        self._smtp_password = _read_secret(settings.smtp_password_file, "smtp_password_file")
        self._http: httpx.AsyncClient | None = None
        self._smtp_context: ssl.SSLContext | None = None
        # SMTP runs in its own threads: blocking sends must never take the
        # default executor's workers, which resolve names for logins.
        self._executor: ThreadPoolExecutor | None = None
        if settings.webhook_url is not None:
            if transport is None:
                context = _tls_context(settings.webhook_ca_file, "notify.webhook_ca_file")
                transport = httpx.AsyncHTTPTransport(verify=context, retries=0)
            self._http = httpx.AsyncClient(
                transport=transport,
                timeout=httpx.Timeout(settings.timeout),
                follow_redirects=False,
                trust_env=False,
            )
        if settings.smtp_host is not None:
            if settings.smtp_tls != "none":
                self._smtp_context = _tls_context(settings.smtp_ca_file, "notify.smtp_ca_file")
            self._executor = ThreadPoolExecutor(
                max_workers=max_concurrent, thread_name_prefix="imapguard-notify-smtp"
            )

    # -- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> Notifier:
        if self._state != "new":
            raise RuntimeError("a Notifier runs once")
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        self._state = "running"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop taking notices, let pending ones finish for `close_grace`
        seconds, cancel the rest, release connections and threads."""
        self._state = "closed"
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                try:
                    if self._pending:
                        await asyncio.wait(set(self._pending), timeout=self.close_grace)
                finally:
                    if self._pending:
                        log.warning(
                            "shutting down: %d pending notification(s) cancelled",
                            len(self._pending),
                        )
                        for task in list(self._pending):
                            task.cancel()
                    await tg.__aexit__(None, None, None)
        finally:
            if self._http is not None:
                await self._http.aclose()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)

    async def join(self) -> None:
        """Wait until every submitted notice has been sent or has failed."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def dropped(self) -> int:
        """Notices dropped because `max_pending` were already waiting."""
        return self._dropped

    def submit(self, notice: Notice) -> bool:
        """Schedule `notify(notice)` in the background and return at once (call
        it on the event loop's thread). False when dropped: the queue is full or
        the notifier is closing."""
        if self._state == "new":
            raise RuntimeError("Notifier.submit() outside `async with notifier:`")
        if self._tg is None or self._state != "running":
            log.warning(
                "notifier closed: %s notice for %s dropped",
                notice.kind.value,
                clean(notice.user, 64),
            )
            return False
        if len(self._pending) >= self.max_pending:
            self._dropped += 1
            self._dropping += 1
            if self._dropping == 1:
                log.warning(
                    "notification queue full (%d pending): dropping notices", self.max_pending
                )
            return False
        if self._dropping:
            log.warning("notification queue accepts again; %d notice(s) dropped", self._dropping)
            self._dropping = 0
        task = self._tg.create_task(self._background(notice))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    # -- sending ----------------------------------------------------------

    async def _background(self, notice: Notice) -> NotifyResult | None:
        # An exception escaping a TaskGroup child would cancel the task that
        # owns the group (the gateway): a bug here must only cost this notice.
        try:
            return await self.notify(notice)
        except Exception:
            log.exception("notification for %s failed", clean(notice.user, 64))
            return None

    async def notify(self, notice: Notice) -> NotifyResult:
        """Tell the owner and the admins, unless already told within
        `min_interval`. Never raises (except cancellation); logs the outcome."""
        try:
            async with asyncio.timeout(self.settings.timeout):
                allowed = await self._should_send(
                    notice.user.lower(), notice.kind.value, self._clock()
                )
        except Exception as exc:
            detail = f"rate-limit check failed: {_describe(exc)}"
            log.error(
                "%s notice for %s not sent: %s", notice.kind.value, clean(notice.user, 64), detail
            )
            return NotifyResult(notice, NotifyStatus.FAILED, (), detail)
        if not allowed:
            log.debug(
                "%s notice for %s suppressed: already sent within %gs",
                notice.kind.value,
                clean(notice.user, 64),
                self.settings.min_interval,
            )
            return NotifyResult(notice, NotifyStatus.RATE_LIMITED)
        if not self._cap.take(self._clock()):
            return NotifyResult(notice, NotifyStatus.RATE_LIMITED, (), "max_per_hour reached")
        async with self._slots, asyncio.TaskGroup() as tg:
            jobs = []
            if self._http is not None and self.settings.webhook_url is not None:
                jobs.append(
                    tg.create_task(self._webhook(self._http, self.settings.webhook_url, notice))
                )
            if self._executor is not None:
                jobs.append(tg.create_task(self._mail(self._executor, notice)))
        result = NotifyResult.of(notice, tuple(d for job in jobs for d in job.result()))
        self._log(result)
        return result

    async def _webhook(self, http: httpx.AsyncClient, url: str, notice: Notice) -> list[Delivery]:
        body, headers = webhook_request(notice, self._webhook_secret)
        try:
            async with (
                asyncio.timeout(self.settings.timeout),
                # Streamed and closed unread: the receiver decides nothing but
                # the status, and must not make us buffer a large answer.
                http.stream("POST", url, content=body, headers=headers) as response,
            ):
                status = response.status_code
        except Exception as exc:
            detail = _describe(exc).replace(url, _origin(url))
            return [Delivery(Channel.WEBHOOK, False, f"{_origin(url)}: {detail}")]
        ok = 200 <= status < 300
        detail = f"HTTP {status}"
        if 300 <= status < 400:
            detail += " (redirects are not followed)"
        return [Delivery(Channel.WEBHOOK, ok, detail if ok else f"{_origin(url)}: {detail}")]

    async def _mail(self, executor: ThreadPoolExecutor, notice: Notice) -> list[Delivery]:
        out: list[Delivery] = []
        mails: list[tuple[Channel, tuple[str, ...], EmailMessage]] = []
        for mail in build_messages(notice, self.settings):
            if mail.message is None:
                out.append(Delivery(mail.channel, False, mail.problem or "not sendable"))
            else:
                mails.append((mail.channel, mail.recipients, mail.message))
        if not mails:
            return out
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.timeout):
                out += await loop.run_in_executor(executor, self._smtp_send, mails)
        except Exception as exc:
            # The thread may still be talking: its socket timeout ends it.
            out += [Delivery(channel, False, _describe(exc)) for channel, _, _ in mails]
        return out

    def send_owner_mails(self, mails: list[tuple[str, EmailMessage]]) -> list[Delivery]:
        """Blocking: each message to its one address, over one SMTP session; one
        Delivery each, in order. Not a notice (no rate limit, no admin copy): for
        `imapguard user invite --mail`, whose caller builds each address from the
        account name (`owner_address`) and nothing else."""
        if self.settings.smtp_host is None:
            return [Delivery(Channel.OWNER_MAIL, False, "notify.smtp_host is not set")] * len(mails)
        return self._smtp_send([(Channel.OWNER_MAIL, (to,), msg) for to, msg in mails])

    def _smtp_send(
        self, mails: list[tuple[Channel, tuple[str, ...], EmailMessage]]
    ) -> list[Delivery]:
        """Blocking: one SMTP session for all messages. Runs on `_executor`."""
        s = self.settings
        host, port, sender = s.smtp_host or "", s.effective_smtp_port, s.mail_from or ""
        client: smtplib.SMTP
        try:
            if s.smtp_tls == "implicit":
                client = smtplib.SMTP_SSL(host, port, timeout=s.timeout, context=self._smtp_context)
            else:
                client = smtplib.SMTP(host, port, timeout=s.timeout)
            with client:
                if s.smtp_tls == "starttls":
                    client.ehlo()
                    # Raises SMTPNotSupportedError when STARTTLS is not offered:
                    # no silent downgrade to plaintext.
                    client.starttls(context=self._smtp_context)
                    client.ehlo()
                if s.smtp_username is not None and self._smtp_password is not None:
                    client.login(s.smtp_username, self._smtp_password.reveal().decode("utf-8"))
                out: list[Delivery] = []
                for channel, recipients, message in mails:
                    try:
                        refused = client.send_message(
                            message, from_addr=sender, to_addrs=list(recipients)
                        )
                    except smtplib.SMTPServerDisconnected:
                        raise
                    except smtplib.SMTPException as exc:
                        # This message was refused; the session goes on (smtplib
                        # has sent RSET) and the next message is tried.
                        out.append(Delivery(channel, False, _describe(exc)))
                        continue
                    detail = "accepted" if not refused else f"refused for {sorted(refused)}"
                    out.append(Delivery(channel, True, detail))
                return out
        except Exception as exc:
            detail = f"{host}:{port}: {_describe(exc)}"
            return [Delivery(channel, False, detail) for channel, _, _ in mails]

    def _log(self, result: NotifyResult) -> None:
        notice = result.notice
        user = clean(notice.user, 64)
        summary = ", ".join(f"{d.channel.value} {d.detail}" for d in result.deliveries)
        if result.status is NotifyStatus.SENT:
            log.info("%s notice for %s sent: %s", notice.kind.value, user, summary)
        else:
            log.warning(
                "%s notice for %s %s: %s", notice.kind.value, user, result.status.value, summary
            )


def _tls_context(ca_file: str | None, key: str) -> ssl.SSLContext:
    """A verifying client context: the CA file as the only anchor when given,
    the system store otherwise; TLS 1.2 at least."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([(key, f"cannot load CA file {ca_file}: {exc}")]) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _read_secret(path: str | None, key: str) -> Secret | None:
    if path is None:
        return None
    try:
        return Secret.from_file(path)
    except OSError as exc:
        raise ConfigError([(f"notify.{key}", f"cannot read {path}: {exc.strerror}")]) from None

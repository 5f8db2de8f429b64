"""The client side of one IMAP, POP3 or SMTP session on a `Conn`.

Each session reads the greeting (a refusal raises `Refused`), runs a command and
collects its answer (IMAP: the untagged responses up to the tagged one, at most
`limits.MAX_RESPONSES`), starts over after a TLS handshake (`restart`: nothing
received in cleartext is kept) and says goodbye. `client_said` and
`server_said` are the evidence lines of a command and a response.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

from imapguard.scanner import dialogs as d
from imapguard.scanner.mail import limits
from imapguard.scanner.mail.connection import (
    NETWORK_ERRORS,
    Closed,
    Conn,
    Refused,
    Unexpected,
)

#: The probe's user name: it says what it is in the server's log.
PROBE_USER = "imapguard-scan-probe"

#: The RCPT of the open-relay test: under .invalid (RFC 2606), never deliverable.
RELAY_PROBE_RCPT = "imapguard-relay-probe@example.invalid"


class ImapSession:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.parser = d.ImapParser()
        self.tags = d.TagSequence("s")

    async def greeting(self) -> d.ImapResponse:
        greeting = await self.conn.receive(self.parser)
        if greeting.kind is not d.ImapKind.UNTAGGED or greeting.status not in (
            "OK",
            "PREAUTH",
            "BYE",
        ):
            raise Unexpected(f"not an IMAP greeting: {greeting.shown()}")
        if greeting.status == "BYE":
            raise Refused(greeting.shown())
        return greeting

    def command(self, text: str) -> tuple[str, d.Command]:
        tag = self.tags.next()
        return tag, d.imap_command(tag, text)

    async def run(self, text: str) -> tuple[d.Command, list[d.ImapResponse], d.ImapResponse]:
        tag, command = self.command(text)
        await self.conn.send(command)
        others, tagged = await self.until_tagged(tag)
        return command, others, tagged

    async def until_tagged(
        self, tag: str, wait: float | None = None
    ) -> tuple[list[d.ImapResponse], d.ImapResponse]:
        others: list[d.ImapResponse] = []
        deadline = self.conn.deadline(wait)
        for _ in range(limits.MAX_RESPONSES):
            response = await self.conn.receive_by(self.parser, deadline)
            if response.kind is d.ImapKind.TAGGED and response.tag == tag:
                return others, response
            if response.kind is d.ImapKind.UNTAGGED and response.status == "BYE":
                raise Closed(f"the server said {response.shown()}")
            others.append(response)
        raise Unexpected(f"more than {limits.MAX_RESPONSES} responses without the tagged one")

    def restart(self) -> None:
        """After the handshake: forget everything received in cleartext."""
        self.parser = d.ImapParser()

    async def bye(self) -> None:
        with contextlib.suppress(*NETWORK_ERRORS):
            await self.conn.send(self.command("LOGOUT")[1])


class Pop3Session:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.parser = d.Pop3Parser()

    async def greeting(self) -> d.Pop3Response:
        greeting = await self.conn.receive(self.parser)
        if greeting.kind is not d.Pop3Kind.OK:
            raise Refused(greeting.shown())
        return greeting

    async def run(self, command: d.Command, *, multiline: bool = False) -> d.Pop3Response:
        self.parser.expect(multiline)
        await self.conn.send(command)
        return await self.conn.receive(self.parser)

    def restart(self) -> None:
        self.parser = d.Pop3Parser()

    async def bye(self) -> None:
        with contextlib.suppress(*NETWORK_ERRORS):
            await self.conn.send(d.pop3_command("QUIT"))


class SmtpSession:
    def __init__(self, conn: Conn, ehlo_name: str, on_421: Callable[[str], None]) -> None:
        self.conn = conn
        self.parser = d.SmtpParser()
        self.ehlo_name = ehlo_name
        self._on_421 = on_421

    async def greeting(self) -> d.SmtpReply:
        greeting = await self.conn.receive(self.parser)
        if greeting.code != 220:
            if greeting.code == 421:
                self._on_421(greeting.shown())
            raise Refused(greeting.shown(), throttling=greeting.code == 421)
        return greeting

    async def reply(self, wait: float | None = None) -> d.SmtpReply:
        """The next reply; `wait`: longer than the timeout for this one."""
        seconds = None if wait is None else max(self.conn.timeout, wait)
        reply = await self.conn.receive(self.parser, seconds)
        if reply.code == 421:
            self._on_421(reply.shown())
            raise Refused(reply.shown())
        return reply

    async def run(self, command: d.Command, wait: float | None = None) -> d.SmtpReply:
        await self.conn.send(command)
        return await self.reply(wait)

    async def ehlo(self) -> tuple[d.Command, d.SmtpReply, d.EhloInfo]:
        command = d.smtp_command(f"EHLO {self.ehlo_name}")
        reply = await self.run(command)
        if reply.code != 250:
            raise Unexpected(f"EHLO refused: {reply.shown()}")
        return command, reply, d.parse_ehlo(reply)

    async def mail_from(self) -> tuple[d.Command, d.SmtpReply]:
        """MAIL FROM the probe's address under our EHLO name."""
        command = d.smtp_command(f"MAIL FROM:<{PROBE_USER}@{self.ehlo_name}>")
        return command, await self.run(command)

    async def rset(self) -> None:
        await self.run(d.smtp_command("RSET"))

    def restart(self) -> None:
        self.parser = d.SmtpParser()

    async def bye(self) -> None:
        with contextlib.suppress(*NETWORK_ERRORS):
            await self.conn.send(d.smtp_command("QUIT"))


def client_said(command: d.Command) -> str:
    return f"C: {command.shown}"


#: A response of any of the three protocols.
MailResponse = d.ImapResponse | d.Pop3Response | d.SmtpReply


def server_said(response: MailResponse) -> str:
    return f"S: {response.shown()}"


ResponseT = TypeVar("ResponseT", bound=MailResponse)

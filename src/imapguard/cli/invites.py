"""`user invite` (first access to the portal) and `user revoke` (all of an
account's access), subcommands of `user` (accounts.py adds them).

Rules for invitations:

* The link is `{portal.url}/invite/{token}`; the token is printed (or mailed)
  once and is in no log: the `admin` audit line says who invited whom and until
  when. The store keeps only its keyed digest (`auth.invites`).
* `--from-file` takes one account per line (blank lines and `#` comments
  skipped), up to MAX_ACCOUNTS. Every line is checked before anything is
  written; a bad one is named by file and line number and nothing is issued.
  All invitations of a run are written in one store transaction: a store
  failure leaves none behind, and no link is printed before it is committed.
* An invitation sets up an account without a second factor and never replaces
  one. `--reset` (one named account only: a file of resets is a mistake
  waiting to happen) is the explicit way to re-enrol an account that lost its
  factor: in the transaction that issues the link it removes the account's
  TOTP, passkeys and recovery codes and ends its portal sessions
  (`auth.invites.reset_factors`); the `admin` line says what was removed, and
  the owner is told when the link is used.
* `--mail` sends each link to the account's own address, built from the
  account name by `[notify] owner_address` and nothing else: no address is
  taken from the command line or the file, so nobody can have an account's link
  mailed elsewhere. An account that makes no plain address is a bad line.
  With `--mail` no link is printed.

`user revoke U` removes every app password, device and portal session of the
account and publishes the revocation in one transaction (`store.revoke`), so a
gateway in any process ends the account's live IMAP sessions within seconds.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

from imapguard.audit import AuditLog, events
from imapguard.cli.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Subparsers,
    UsageError,
    config_opt,
    json_opt,
    keys,
    load,
    open_store,
    user_name,
)
from imapguard.cli.output import print_json, shown
from imapguard.config import Config, account_names

if TYPE_CHECKING:
    from imapguard.auth.invites import Reset
    from imapguard.config.notify import NotifyConfig

__all__ = ["MAX_ACCOUNTS", "add_user_parsers", "invite", "parse_ttl", "revoke"]

# Accounts in one --from-file run: its invitations are one store transaction,
# which holds the store's write lock while it runs (a few seconds at most).
MAX_ACCOUNTS = 50_000
# A line longer than this is no account name (the file is refused).
_MAX_LINE = 1024
# An invitation lives at least this long and at most this long.
MIN_TTL = 600.0
MAX_TTL = 30 * 86400.0
_TTL = re.compile(r"([0-9]{1,7})([smhd]?)")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_ttl(text: str) -> float:
    """`90m`, `24h`, `7d` or seconds, between MIN_TTL and MAX_TTL."""
    found = _TTL.fullmatch(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is no duration (e.g. 24h, 7d, 90m)")
    seconds = int(found.group(1)) * _UNIT[found.group(2)]
    if not MIN_TTL <= seconds <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"{text!r}: an invitation lives 10m to 30d")
    return seconds


def add_user_parsers(user_sub: Subparsers) -> None:
    from imapguard.auth.invites import DEFAULT_LIFETIME

    p = user_sub.add_parser(
        "invite",
        help="invitation links to the portal (first access: password, then a second factor)",
    )
    p.add_argument("user", nargs="?", help="the account (or --from-file)")
    p.add_argument(
        "--from-file",
        metavar="FILE",
        help="one account per line ('-': standard input); all or none are invited",
    )
    p.add_argument(
        "--ttl",
        type=parse_ttl,
        default=DEFAULT_LIFETIME,
        metavar="DURATION",
        help=f"how long a link works (e.g. 24h, 7d; default {DEFAULT_LIFETIME / 86400:g}d)",
    )
    p.add_argument(
        "--reset",
        action="store_true",
        help="re-enrolment of one account that lost its factor: remove its TOTP, passkeys "
        "and recovery codes and end its portal sessions now",
    )
    p.add_argument(
        "--mail",
        action="store_true",
        help="mail each link to the account's own address ([notify] owner_address) "
        "instead of printing it",
    )
    config_opt(p)
    json_opt(p)
    p = user_sub.add_parser(
        "revoke",
        help="end all of an account's access: app passwords, devices, portal sessions "
        "(live IMAP sessions end within seconds)",
    )
    p.add_argument("user")
    config_opt(p)
    json_opt(p)


@dataclass(frozen=True)
class _Invited:
    user: str
    address: str | None  # where --mail sends it
    link: str = ""


# -- invite --------------------------------------------------------------------


def invite(args: argparse.Namespace) -> int:
    from imapguard.auth import invites

    config = load(args, check_files=False)
    if config.portal is None:
        raise UsageError("invitations need the portal: set [portal] url")
    if (args.user is None) == (args.from_file is None):
        raise UsageError("name one account or --from-file FILE")
    if args.reset and args.user is None:
        raise UsageError("--reset takes one named account, not --from-file")
    notify = _mail_settings(config) if args.mail else None
    users = [user_name(args.user, config)] if args.user else _read_accounts(args.from_file, config)
    targets = [_Invited(u, _address(u, notify)) for u in users]
    if notify is not None:
        bad = [t.user for t in targets if t.address is None]
        if bad:
            raise UsageError(
                f"{len(bad)} account(s) make no plain mail address with notify.owner_address "
                f"(e.g. {bad[0]!r}); nothing was invited"
            )
    key = keys(config).portal_invite
    store = open_store(config)
    now = time.time()
    base = config.portal.url.rstrip("/")
    expires = now + args.ttl
    until = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
    # The audit log is opened first: no invitation without its line.
    with _audit(config) as audit:
        issued: list[_Invited] = []
        reset: invites.Reset | None = None
        # One transaction: a failure leaves no invitation behind (module docstring).
        with store.batch():
            if args.reset:
                reset = invites.reset_factors(store, targets[0].user, now)
            for t in targets:
                token = invites.issue(store, key, t.user, now, args.ttl)
                issued.append(_Invited(t.user, t.address, f"{base}/invite/{token}"))
        if reset is not None:
            audit(issued[0].user, "reset_factors", "ok", _removed(reset))
        if notify is None:
            for t in issued:
                audit(t.user, "invite", "ok", f"expires {until}")
            return _print_links(issued, expires, until, json=args.json)
        return _mail_links(config, notify, issued, until, audit, json=args.json)


def _removed(reset: Reset) -> str:
    totp = "TOTP, " if reset.totp else ""
    return (
        f"removed {totp}{reset.passkeys} passkey(s) and the recovery codes; "
        f"ended {reset.sessions} portal session(s)"
    )


def _print_links(issued: list[_Invited], expires: float, until: str, *, json: bool) -> int:
    if json:
        print_json([{"user": t.user, "link": t.link, "expires_at": expires} for t in issued])
        return EXIT_OK
    for t in issued:
        print(f"{shown(t.user)}\t{t.link}")
    print(
        f"{len(issued)} invitation(s), each working once until {until}. "
        "Give each link to its account's owner only.",
        file=sys.stderr,
    )
    return EXIT_OK


def _mail_links(
    config: Config,
    notify: NotifyConfig,
    issued: list[_Invited],
    until: str,
    audit: _Audit,
    *,
    json: bool,
) -> int:
    import asyncio

    from imapguard.notify import Notifier

    assert config.portal is not None  # noqa: S101 - checked by invite()
    organisation = config.portal.organisation
    mails = [(t.address or "", _message(notify, organisation, t, until)) for t in issued]

    async def nothing_sent_yet(user: str, kind: str, now: float) -> bool:
        return True

    notifier = Notifier(notify, should_send=nothing_sent_yet)
    try:
        deliveries = notifier.send_owner_mails(mails)
    finally:
        asyncio.run(notifier.aclose())
    failed = 0
    rows = []
    for t, d in zip(issued, deliveries, strict=True):
        audit(t.user, "invite", "mailed" if d.ok else "mail_failed", f"expires {until}; {d.detail}")
        failed += not d.ok
        rows.append({"user": t.user, "mailed": d.ok, "detail": d.detail})
        if not json:
            state = "mailed" if d.ok else f"NOT mailed: {d.detail}"
            print(f"{shown(t.user)}\t{shown(t.address or '')}\t{shown(state)}")
    if json:
        print_json(rows)
    if failed:
        print(
            f"imapguard: {failed} mail(s) not sent; invite those accounts again",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    return EXIT_OK


def _message(notify: NotifyConfig, organisation: str, t: _Invited, until: str) -> EmailMessage:
    sender = notify.mail_from or ""
    msg = EmailMessage()
    msg["From"] = Address(display_name=organisation, addr_spec=sender)
    msg["To"] = t.address or ""
    msg["Subject"] = f"{organisation}: set up your sign-in"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid("imapguard", domain=sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies
    msg.set_content(
        f"Hello,\n\nyour mail administrator invites you to set up the sign-in of the mail "
        f"account {t.user}.\nOpen this link, sign in with your mail password and add an "
        f"authenticator app:\n\n    {t.link}\n\nThe link works once, until {until}. "
        "Do not forward it.\nIf you did not expect this mail, tell your mail administrator.\n"
    )
    return msg


def _mail_settings(config: Config) -> NotifyConfig:
    notify = config.notify
    if notify is None or notify.smtp_host is None or notify.mail_from is None:
        raise UsageError("--mail needs [notify] smtp_host and mail_from")
    if notify.owner_address is None:
        raise UsageError("--mail needs [notify] owner_address (how an account makes its address)")
    return notify


def _address(user: str, notify: NotifyConfig | None) -> str | None:
    from imapguard.notify import owner_address

    return None if notify is None else owner_address(user, notify.owner_address)


def _read_accounts(path: str, config: Config) -> list[str]:
    """The file's accounts, in order, each once; UsageError naming every bad line
    (the first 20) when any is bad."""
    names = account_names(config)
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--from-file {path}: {exc}") from None
    users: dict[str, None] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user = names.canonical(line.encode("utf-8", "replace")) if len(line) <= _MAX_LINE else None
        if user is None:
            problems.append(f"{path}:{number}: invalid user name {shown(line[:80])!r}")
        else:
            users.setdefault(user, None)
    if problems:
        more = f"\n(and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise UsageError("\n".join(problems[:20]) + more + "\nnothing was invited")
    if not users:
        raise UsageError(f"--from-file {path}: no accounts")
    if len(users) > MAX_ACCOUNTS:
        raise UsageError(f"--from-file {path}: more than {MAX_ACCOUNTS} accounts; split it")
    return list(users)


# -- revoke --------------------------------------------------------------------


def revoke(args: argparse.Namespace) -> int:
    config = load(args, check_files=False)
    user = user_name(args.user, config)
    store = open_store(config)
    # Removed and published in one transaction: every gateway following the
    # feed ends the account's live sessions within seconds.
    revoked = store.revoke(user, None, time.time())
    with _audit(config) as audit:
        audit(
            user,
            "revoke",
            "ok" if revoked else "none",
            "every app password, device and portal session",
        )
    if args.json:
        print_json({"user": user, "revoked": revoked})
    elif revoked:
        print(
            f"revoked all access of {shown(user)}: app passwords, devices and portal "
            "sessions; its live IMAP sessions end within seconds"
        )
    else:
        print(f"imapguard: {shown(user)} has no access to revoke", file=sys.stderr)
    return EXIT_OK if revoked else EXIT_PROBLEM


# -- the audit line --------------------------------------------------------------


class _Audit:
    """`admin` audit lines of this command, by the local user running it."""

    def __init__(self, path: str) -> None:
        # "-" is the serving process's standard output: a command has none to share.
        self._log = AuditLog(path) if path != "-" else None
        self._actor = _actor()

    def __call__(self, user: str, action: str, result: str, reason: str | None = None) -> None:
        if self._log is not None:
            self._log.emit(
                events.Admin(
                    actor=self._actor, user=user, action=action, result=result, reason=reason
                )
            )

    def __enter__(self) -> _Audit:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._log is not None:
            self._log.close()


def _audit(config: Config) -> _Audit:
    return _Audit(config.audit.path)


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

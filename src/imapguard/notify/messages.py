"""The pure core: the webhook request and the mails a notice becomes.

Every client-chosen text (account name, client ID) is made printable and bounded
before it goes anywhere; the owner's address is built from the account name only
when the result is a plain addr-spec (otherwise only the admins are mailed);
commands for the admins are shell-quoted, as they will be pasted into a shell.
"""

from __future__ import annotations

import hashlib
import hmac
import shlex
import textwrap
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import quote

from imapguard import __version__
from imapguard.config.notify import NotifyConfig, is_plain_address
from imapguard.notify.notice import OWNER_ONLY, Channel, Notice, NoticeKind
from imapguard.secret import Secret
from imapguard.text import clean

__all__ = ["Mail", "build_messages", "owner_address", "sign", "webhook_request"]

_SUBJECT_USER_LIMIT = 64


def sign(secret: Secret, body: bytes) -> str:
    """The X-Imapguard-Signature value: "sha256=" + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.reveal(), body, hashlib.sha256).hexdigest()


def webhook_request(notice: Notice, secret: Secret | None) -> tuple[bytes, dict[str, str]]:
    """The exact body bytes and the headers to POST (signed when there is a secret)."""
    body = notice.to_json().encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"imapguard/{__version__}",
        "X-Imapguard-Event": notice.kind.value,
    }
    if secret is not None:
        headers["X-Imapguard-Signature"] = sign(secret, body)
    return body, headers


def owner_address(user: str, template: str | None) -> str | None:
    """The owner's mail address, or None when the account name does not make a
    plain address (CR/LF, spaces, commas, a second "@" ...): then only the
    admins are told. The account name is attacker-chosen text."""
    if template is None:
        return None
    candidate = template.replace("{user}", user)
    return candidate if is_plain_address(candidate) else None


_OWNER_SUBJECT: dict[NoticeKind, str] = {
    NoticeKind.COMPROMISE_SIGNAL: "Sign-in without second factor to {user}",
    NoticeKind.NEW_DEVICE: "New device for {user} awaits your approval",
    NoticeKind.LOCKOUT: "Sign-ins to {user} locked after failed attempts",
    NoticeKind.DISOWNED: "A sign-in to {user} was reported as not the owner's",
    NoticeKind.PORTAL_PASSWORD: "Your password for {user} was used at the portal",
    NoticeKind.INVITATION_USED: "A new second factor was set up for {user}",
    NoticeKind.TOTP_ADDED: "An authenticator app was set up for {user}",
    NoticeKind.TOTP_REPLACED: "The authenticator app of {user} was replaced",
    NoticeKind.TOTP_REMOVED: "The authenticator app of {user} was removed",
    NoticeKind.PASSKEY_ADDED: "A passkey was added to {user}",
    NoticeKind.PASSKEY_REMOVED: "A passkey was removed from {user}",
    NoticeKind.RECOVERY_CODES: "New recovery codes were made for {user}",
    NoticeKind.APP_PASSWORD_CREATED: "A new app password was created for {user}",
}

# What every change of `ACCOUNT_CHANGES` did besides itself (`portal.changes`).
_SESSIONS_ENDED = " Every other portal session of the account was signed out."

_WHAT_HAPPENED: dict[NoticeKind, str] = {
    NoticeKind.COMPROMISE_SIGNAL: (
        'Someone signed in to the mail account "{user}" with the correct password '
        "but without the second factor. The sign-in was refused."
    ),
    NoticeKind.NEW_DEVICE: (
        'A device that has not been seen before signed in to the mail account "{user}" '
        "with the correct password. It cannot read mail until it is approved."
    ),
    NoticeKind.LOCKOUT: (
        'After repeated failed sign-ins, the mail account "{user}" is locked for a while '
        "for sign-ins from unfamiliar places. Devices that signed in before keep working."
    ),
    NoticeKind.DISOWNED: (
        'The owner of the mail account "{user}" reported one of its sign-ins as not theirs '
        "in the portal."
    ),
    NoticeKind.PORTAL_PASSWORD: (
        'Someone typed the correct password of the mail account "{user}" into the portal '
        "from an address it has not signed in from before. Without the second factor "
        "nothing was opened to them."
    ),
    NoticeKind.INVITATION_USED: (
        'An invitation link and the password of the mail account "{user}" were used to '
        "set up a new second factor (an authenticator app) in the portal."
    ),
    NoticeKind.TOTP_ADDED: (
        'An authenticator app was set up as a second factor of the mail account "{user}" '
        "in the portal." + _SESSIONS_ENDED
    ),
    NoticeKind.TOTP_REPLACED: (
        'The authenticator app of the mail account "{user}" was replaced by a new one in '
        "the portal: codes from the earlier app no longer work." + _SESSIONS_ENDED
    ),
    NoticeKind.TOTP_REMOVED: (
        'The authenticator app of the mail account "{user}" was removed in the portal: '
        "its codes no longer work." + _SESSIONS_ENDED
    ),
    NoticeKind.PASSKEY_ADDED: (
        'A passkey was added to the mail account "{user}" in the portal: it signs in to '
        "the portal from now on." + _SESSIONS_ENDED
    ),
    NoticeKind.PASSKEY_REMOVED: (
        'A passkey was removed from the mail account "{user}" in the portal: it no longer '
        "signs in." + _SESSIONS_ENDED
    ),
    NoticeKind.RECOVERY_CODES: (
        'A new set of recovery codes was made for the mail account "{user}" in the portal: '
        "the earlier codes no longer work." + _SESSIONS_ENDED
    ),
    NoticeKind.APP_PASSWORD_CREATED: (
        'A new app password was created for the mail account "{user}" in the portal: it '
        "reads mail from a device without the second factor." + _SESSIONS_ENDED
    ),
}


def _portal(settings: NotifyConfig) -> str:
    return f"the portal at {settings.portal_url}" if settings.portal_url else "the portal"


def _device_link(notice: Notice, settings: NotifyConfig) -> str | None:
    """The portal's devices page at this device's row (its "was this you?")."""
    if not settings.portal_url or not notice.device_id:
        return None
    anchor = quote(clean(notice.device_id, 64), safe="")
    return f"{settings.portal_url.rstrip('/')}/devices#device-{anchor}"


# Advice: (text, command). A command is printed on a line of its own, unwrapped
# and shell-quoted: the account name is attacker-chosen, and an admin will paste
# the line into a shell. In the owner's mail the "command" is a link (unwrapped,
# so mail clients keep it whole).
_Advice = list[tuple[str, str | None]]


def _owner_advice(notice: Notice, settings: NotifyConfig) -> _Advice:
    portal = _portal(settings)
    match notice.kind:
        case (
            NoticeKind.TOTP_ADDED
            | NoticeKind.TOTP_REPLACED
            | NoticeKind.TOTP_REMOVED
            | NoticeKind.PASSKEY_ADDED
            | NoticeKind.PASSKEY_REMOVED
            | NoticeKind.RECOVERY_CODES
            | NoticeKind.APP_PASSWORD_CREATED
        ):
            return [
                (
                    "If this was you: there is nothing to do. Where else you were signed "
                    "in to the portal, sign in again.",
                    None,
                ),
                (
                    "If this was not you: someone has your password and your second "
                    "factor, or a signed-in portal session of yours. Tell your "
                    "administrator now: they can end that session and reset your sign-in. "
                    "Change your password, and check your devices, app passwords and "
                    f"sign-in methods in {portal}.",
                    None,
                ),
            ]
        case NoticeKind.PORTAL_PASSWORD:
            return [
                ("If this was you, signing in: there is nothing to do.", None),
                (
                    "If this was not you: someone knows your password. Change your password "
                    "now and tell your administrator.",
                    None,
                ),
            ]
        case NoticeKind.INVITATION_USED:
            return [
                ("If this was you, setting up your sign-in: there is nothing to do.", None),
                (
                    "If this was not you: someone knows your password and had your "
                    "invitation. Tell your administrator now; they can reset your sign-in.",
                    None,
                ),
            ]
        case NoticeKind.COMPROMISE_SIGNAL:
            return [
                (
                    "If this was you: use an app password for this device (create one in "
                    f"{portal}), or type your one-time code right after your password.",
                    None,
                ),
                (
                    "If this was not you: someone knows your password. Change your password "
                    "now and tell your administrator.",
                    None,
                ),
            ]
        case NoticeKind.NEW_DEVICE:
            return [
                (
                    f"If this was you: approve the device in {portal}, or ask your "
                    "administrator to approve it.",
                    _device_link(notice, settings),
                ),
                (
                    "If this was not you: do not approve it. Change your password now and "
                    "tell your administrator.",
                    None,
                ),
            ]
        case NoticeKind.LOCKOUT:
            return [
                (
                    "If this was you (for example a device with an old password): fix the "
                    "password on that device and wait for the lock to expire, or ask your "
                    "administrator to clear it.",
                    None,
                ),
                (
                    "If this was not you: someone is guessing your password. Tell your "
                    "administrator, and change your password if it is weak or used elsewhere.",
                    None,
                ),
            ]
        case NoticeKind.DISOWNED:
            return [
                (
                    "You reported a sign-in as not yours. The password or device it used "
                    "no longer works, its sessions were ended and its address is blocked.",
                    None,
                ),
                (
                    "Change your password now if that sign-in used it, and check the other "
                    f"devices and app passwords in {portal}.",
                    None,
                ),
            ]


def _admin_advice(notice: Notice) -> _Advice:
    user = shlex.quote(clean(notice.user, 128))
    device = shlex.quote(clean(notice.device_id, 64)) if notice.device_id else "ID"
    show = ("The account, its devices and lockouts:", f"imapguard user show {user}")
    match notice.kind:
        case NoticeKind.PORTAL_PASSWORD | NoticeKind.INVITATION_USED:
            # Not mailed to the admins (OWNER_ONLY); a webhook may still show them.
            return [show]
        case (
            NoticeKind.TOTP_ADDED
            | NoticeKind.TOTP_REPLACED
            | NoticeKind.TOTP_REMOVED
            | NoticeKind.PASSKEY_ADDED
            | NoticeKind.PASSKEY_REMOVED
            | NoticeKind.RECOVERY_CODES
            | NoticeKind.APP_PASSWORD_CREATED
        ):
            return [show]
        case NoticeKind.COMPROMISE_SIGNAL:
            return [
                (
                    "Whoever signed in knows the password of this account. Unless the "
                    "owner confirms it was them, have the password changed.",
                    None,
                ),
                show,
            ]
        case NoticeKind.NEW_DEVICE:
            return [
                (
                    "When the owner confirms the device:",
                    f"imapguard device approve {user} {device}",
                ),
                show,
            ]
        case NoticeKind.LOCKOUT:
            return [
                ("To clear the lock once the cause is known:", f"imapguard user unlock {user}"),
                ("Current blocks:", "imapguard blocks list"),
                show,
            ]
        case NoticeKind.DISOWNED:
            return [
                (
                    "The owner reported a sign-in as not theirs: its credential was revoked, "
                    "its sessions ended and its source blocked. Check the account:",
                    None,
                ),
                show,
                ("Current blocks:", "imapguard blocks list"),
            ]


_FOOTER = (
    "This message was sent automatically by imapguard, the gateway in front of the "
    "mail server. It never contains a password or a code and never asks for one."
)


def _body(notice: Notice, settings: NotifyConfig, *, for_admins: bool) -> str:
    user = clean(notice.user, 128)
    wrap = textwrap.TextWrapper(width=72, break_long_words=False, break_on_hyphens=False)
    bullet = textwrap.TextWrapper(
        width=72, initial_indent="- ", subsequent_indent="  ", break_long_words=False
    )
    facts = [
        ("What", clean(notice.summary, 160)),
        ("Account", user),
        ("From", clean(notice.source, 64)),
    ]
    if notice.client_id:
        facts.append(("Client", f'"{clean(notice.client_id, 128)}" (as it names itself)'))
    if notice.device_id:
        facts.append(("Device", clean(notice.device_id, 64)))
    facts.append(("When", notice.utc.strftime("%Y-%m-%d %H:%M:%S UTC")))
    lines = ["Hello," if not for_admins else "Hello administrators,", ""]
    lines += wrap.wrap(_WHAT_HAPPENED[notice.kind].format(user=user))
    lines.append("")
    lines += [f"  {label + ':':<9} {value}" for label, value in facts]
    lines += ["", "What to do:"]
    advice = _admin_advice(notice) if for_admins else _owner_advice(notice, settings)
    for text, command in advice:
        lines += bullet.wrap(text)
        if command is not None:
            lines.append(f"    {command}")
    lines += ["", "-- ", *wrap.wrap(_FOOTER)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Mail:
    """One message to send, or (message None) why it cannot be sent."""

    channel: Channel
    recipients: tuple[str, ...]
    message: EmailMessage | None
    problem: str | None = None


def build_messages(notice: Notice, settings: NotifyConfig) -> list[Mail]:
    """One message for the owner and one for the admins (those configured)."""
    if settings.mail_from is None:
        return []
    sender = Address(display_name="imapguard", addr_spec=settings.mail_from)
    domain = settings.mail_from.rpartition("@")[2]
    user = clean(notice.user, _SUBJECT_USER_LIMIT)

    def message(subject: str, to: tuple[str, ...], for_admins: bool) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(to)
        msg["Subject"] = subject
        msg["Date"] = format_datetime(notice.utc)
        msg["Message-ID"] = make_msgid("imapguard", domain=domain)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies
        msg["X-Imapguard-Event"] = notice.kind.value
        msg.set_content(_body(notice, settings, for_admins=for_admins))
        return msg

    out: list[Mail] = []
    if settings.owner_address is not None:
        owner = owner_address(notice.user, settings.owner_address)
        if owner is None:
            problem = "the account name does not make a plain mail address"
            out.append(Mail(Channel.OWNER_MAIL, (), None, problem))
        else:
            subject = "[imapguard] " + _OWNER_SUBJECT[notice.kind].format(user=user)
            msg = message(subject, (owner,), for_admins=False)
            out.append(Mail(Channel.OWNER_MAIL, (owner,), msg))
    if settings.admin_addresses and notice.kind not in OWNER_ONLY:
        subject = f"[imapguard] {notice.kind.value.replace('_', ' ')}: {user}"
        msg = message(subject, settings.admin_addresses, for_admins=True)
        out.append(Mail(Channel.ADMIN_MAIL, settings.admin_addresses, msg))
    return out

"""`[notify]`: how account owners and admins are told (a webhook and/or mail).

The secrets (`webhook_secret_file`, `smtp_password_file`) and CA bundles are
files, read by the notifier when it starts; `check-config` checks that they
exist, are private and, for the webhook secret, hold at least
`MIN_WEBHOOK_SECRET` bytes."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from imapguard.config.base import Section, raise_problems
from imapguard.net import is_loopback
from imapguard.text import clean

__all__ = ["MIN_WEBHOOK_SECRET", "SMTP_DEFAULT_PORT", "NotifyConfig", "is_plain_address"]

#: An HMAC key shorter than this is guessable offline from one signed body.
MIN_WEBHOOK_SECRET = 16
SMTP_DEFAULT_PORT: dict[str, int] = {"starttls": 587, "implicit": 465, "none": 25}

_MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3 path limit minus the angle brackets
_MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def is_plain_address(text: str) -> bool:
    """A plain ASCII addr-spec (dot-atom@domain): nothing a header or an SMTP
    command could read as a second address, a comment or a new line."""
    if len(text) > _MAX_ADDRESS or text.count("@") != 1:
        return False
    local, domain = text.split("@")
    return (
        len(local) <= _MAX_LOCAL_PART
        and _LOCAL.fullmatch(local) is not None
        and _DOMAIN.fullmatch(domain) is not None
    )


class NotifyConfig(Section):
    section_key = "notify"

    # HTTPS URL that receives each notice as a signed JSON POST.
    webhook_url: str | None = None
    # File with the HMAC-SHA-256 key that signs webhook bodies (16 bytes or more).
    webhook_secret_file: str | None = None
    # A private CA for the webhook's HTTPS (default: the system's trust store).
    webhook_ca_file: str | None = None
    # The relay that sends notice mails (none: no mail).
    smtp_host: str | None = None
    # Default: 587 (starttls), 465 (implicit), 25 (none).
    smtp_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # How the SMTP connection is protected: STARTTLS, implicit TLS, or none (loopback only).
    smtp_tls: Literal["starttls", "implicit", "none"] = "starttls"
    # SMTP AUTH user, with `smtp_password_file` (none: no AUTH).
    smtp_username: str | None = None
    # File with the SMTP AUTH password.
    smtp_password_file: str | None = None
    # A private CA for the relay's TLS (default: the system's trust store).
    smtp_ca_file: str | None = None
    # The notices' From address (required with smtp_host).
    mail_from: str | None = None
    # How an account name becomes its owner's address: "{user}" when account
    # names are addresses, or "{user}@example.org" (None, which only code can
    # set: mail the admins only).
    owner_address: str | None = "{user}"
    # Who is told of every notice besides the account owner.
    admin_addresses: tuple[str, ...] = ()
    # Named in the mails ("approve the device in the portal at ..."); the
    # new-device mail links to {portal_url}/devices#device-ID.
    portal_url: str | None = None
    # At most one notice per account and kind in this many seconds.
    min_interval: Annotated[float, Field(ge=0, le=86400 * 7)] = 3600.0
    # And at most this many notices an hour in all, per node (a flood of lockouts
    # must not turn the organisation's relay into a mailer for the attacker).
    max_per_hour: Annotated[int, Field(ge=1, le=100_000)] = 200
    # Seconds for each webhook call or SMTP session.
    timeout: Annotated[float, Field(gt=0, le=120)] = 10.0

    @property
    def effective_smtp_port(self) -> int:
        return self.smtp_port or SMTP_DEFAULT_PORT[self.smtp_tls]

    @model_validator(mode="after")
    def _consistent(self) -> NotifyConfig:
        problems: list[tuple[str, str]] = []

        def add(key: str, message: str) -> None:
            problems.append((key, message))

        if self.webhook_url is None and self.smtp_host is None:
            add("webhook_url", "set webhook_url and/or smtp_host (nothing to notify with)")
        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                add("webhook_url", "must be an https:// URL")
            elif parts.scheme == "http" and not is_loopback(parts.hostname):
                add("webhook_url", "http:// only to a loopback address; use https://")
            elif parts.username is not None or parts.password is not None:
                add("webhook_url", "no credentials in the URL: use webhook_secret_file")
        elif self.webhook_secret_file is not None or self.webhook_ca_file is not None:
            add(
                "webhook_url",
                "webhook_secret_file/webhook_ca_file are set but webhook_url is not",
            )

        if self.smtp_host is not None:
            if self.smtp_tls == "none":
                if not is_loopback(self.smtp_host):
                    add("smtp_tls", "none only to a loopback relay; use starttls or implicit")
                if self.smtp_username is not None or self.smtp_password_file is not None:
                    add("smtp_tls", "credentials are never sent without TLS")
            if (self.smtp_username is None) != (self.smtp_password_file is None):
                add(
                    "smtp_username",
                    "set both smtp_username and smtp_password_file, or neither",
                )
            if self.mail_from is None or not is_plain_address(self.mail_from):
                add("mail_from", "must be a plain address like imapguard@example.org")
            if self.owner_address is None and not self.admin_addresses:
                add("admin_addresses", "no recipients: set owner_address or admin_addresses")
            for i, address in enumerate(self.admin_addresses):
                if not is_plain_address(address):
                    add(f"admin_addresses[{i}]", f"not a plain address: {clean(address, 80)!r}")
        if self.owner_address is not None:
            template = self.owner_address
            rest = template.replace("{user}", "")
            if template.count("{user}") != 1 or "{" in rest or "}" in rest:
                add("owner_address", 'must contain "{user}" once, e.g. "{user}@example.org"')
            elif template != "{user}" and not is_plain_address(template.replace("{user}", "user")):
                add("owner_address", 'must be "{user}" or an address like "{user}@example.org"')
        if self.portal_url is not None and urlsplit(self.portal_url).scheme != "https":
            add("portal_url", "must be an https:// URL")
        raise_problems(problems)
        return self

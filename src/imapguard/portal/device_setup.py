"""Device setup for a new app password: the ready configurations a mail client
takes as they are, so nobody types a server name or picks STARTTLS.

* An Apple configuration profile (`.mobileconfig`, a property list: one
  `com.apple.mail.managed` payload, IMAP on `imap_host:imap_port` and SMTP
  submission on `smtp_host:submission_port`, both with implicit TLS, the
  account's user name and the app password filled in, fresh PayloadUUIDs).
* A Thunderbird autoconfig document (`clientConfig` version 1.1, socket type
  `SSL` for both servers). It names the user but not the password: Thunderbird
  asks for it once, and the page shows it.
* Outlook and Android get the same settings as text on the page (`ServerSettings`).

The password is shown once, on the page that created it. The downloads are how
the password could leak later, so a document is made only from what that page
carries: a sealed copy of the password (AES-GCM under a key derived from the
app-password key, the account and the portal session bound in as associated
data), at most `SETUP_LIFETIME` seconds old, each kind of document once
(`Downloads`), and only while the app password still exists. Another session,
a later visit, or a second download of the same document gets nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import plistlib
import secrets
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal
from xml.etree import ElementTree

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imapguard.config.portal import PortalConfig
from imapguard.keys import derive_key
from imapguard.secret import Secret

__all__ = [
    "KINDS",
    "SETUP_LIFETIME",
    "Downloads",
    "Kind",
    "Sealed",
    "ServerSettings",
    "SetupSeal",
    "autoconfig",
    "mobileconfig",
]

# How long the page that showed a new password can still hand out its
# documents: time to read it and tap a download, not to come back tomorrow.
SETUP_LIFETIME = 600.0
# The seal's key: derived from the app-password key for this purpose only.
_SEAL_PURPOSE = "portal-device-setup/v1"
_NONCE_BYTES = 12
# A sealed copy is a few hundred bytes; anything much longer is not one.
MAX_SEALED = 2048
# Downloads remembered (each until its seal expires): one entry per document
# actually downloaded, so only the portal's own users can add them.
_MAX_REMEMBERED = 50_000

Kind = Literal["apple", "thunderbird"]
KINDS: tuple[Kind, ...] = ("apple", "thunderbird")


@dataclass(frozen=True)
class ServerSettings:
    """What every mail client is told (from `[portal]`)."""

    imap_host: str
    imap_port: int
    smtp_host: str
    smtp_port: int
    organisation: str

    @classmethod
    def of(cls, settings: PortalConfig) -> ServerSettings:
        return cls(
            settings.imap_host,
            settings.imap_port,
            settings.smtp_host,
            settings.submission_port,
            settings.organisation,
        )


@dataclass(frozen=True)
class Sealed:
    """What a sealed copy holds once opened."""

    nonce: str  # identifies this copy (one download of each kind)
    record_id: str
    label: str
    password: Secret
    expires_at: float


class SetupSeal:
    def __init__(self, app_password_key: bytes) -> None:
        self._aead = AESGCM(derive_key(Secret(app_password_key), _SEAL_PURPOSE))

    @staticmethod
    def _bound(user: str, session_id: str) -> bytes:
        return b"device-setup\0" + user.encode() + b"\0" + session_id.encode()

    def seal(
        self, user: str, session_id: str, record_id: str, label: str, password: Secret, now: float
    ) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        payload = json.dumps(
            {
                "id": record_id,
                "label": label,
                "password": password.reveal().decode(),
                "expires_at": now + SETUP_LIFETIME,
            }
        ).encode()
        box = self._aead.encrypt(nonce, payload, self._bound(user, session_id))
        return base64.urlsafe_b64encode(nonce + box).rstrip(b"=").decode()

    def open(self, text: str, user: str, session_id: str, now: float) -> Sealed | None:
        """The sealed copy, if it was made for this account and session and has
        not expired; None otherwise (whatever was changed in it)."""
        if not text or len(text) > MAX_SEALED:
            return None
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            nonce, box = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
            payload = json.loads(self._aead.decrypt(nonce, box, self._bound(user, session_id)))
            sealed = Sealed(
                nonce=nonce.hex(),
                record_id=str(payload["id"]),
                label=str(payload["label"]),
                password=Secret(str(payload["password"])),
                expires_at=float(payload["expires_at"]),
            )
        except (binascii.Error, ValueError, InvalidTag, KeyError, TypeError):
            return None
        return sealed if now <= sealed.expires_at else None


class Downloads:
    """Which documents of which sealed copies were downloaded (in this process):
    each once. Entries are forgotten when their copy has expired anyway."""

    def __init__(self, limit: int = _MAX_REMEMBERED) -> None:
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._limit = limit

    def claim(self, sealed: Sealed, kind: Kind, now: float) -> bool:
        """True the first time this document of this copy is asked for."""
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)
        key = (sealed.nonce, kind)
        if key in self._seen:
            return False
        self._seen[key] = sealed.expires_at
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return True


def _reverse_dns(host: str) -> str:
    return ".".join(reversed(host.split(".")))


def mobileconfig(
    server: ServerSettings, user: str, record_id: str, label: str, password: Secret
) -> bytes:
    """The Apple configuration profile of one app password (an XML property list)."""
    base = f"{_reverse_dns(server.imap_host)}.imapguard.app-password.{record_id}"
    secret = password.reveal().decode()
    account: dict[str, object] = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{base}.mail",
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": f"Mail ({label})",
        "EmailAccountDescription": f"{server.organisation} mail",
        "EmailAccountType": "EmailTypeIMAP",
        "IncomingMailServerHostName": server.imap_host,
        "IncomingMailServerPortNumber": server.imap_port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": user,
        "IncomingPassword": secret,
        "OutgoingMailServerHostName": server.smtp_host,
        "OutgoingMailServerPortNumber": server.smtp_port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": user,
        "OutgoingPassword": secret,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    if "@" in user:
        account["EmailAddress"] = user
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": base,
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": f"{server.organisation}: mail for {label}",
        "PayloadDescription": (
            f"Sets up the mail account {user} on this device with its own app password."
        ),
        "PayloadOrganization": server.organisation,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def autoconfig(server: ServerSettings, user: str) -> bytes:
    """The Thunderbird autoconfig document (clientConfig 1.1) for the account."""
    root = ElementTree.Element("clientConfig", version="1.1")
    provider = ElementTree.SubElement(root, "emailProvider", id=server.imap_host)
    ElementTree.SubElement(provider, "domain").text = server.imap_host
    ElementTree.SubElement(provider, "displayName").text = f"{server.organisation} mail"
    ElementTree.SubElement(provider, "displayShortName").text = server.organisation
    for tag, kind, host, port in (
        ("incomingServer", "imap", server.imap_host, server.imap_port),
        ("outgoingServer", "smtp", server.smtp_host, server.smtp_port),
    ):
        node = ElementTree.SubElement(provider, tag, type=kind)
        ElementTree.SubElement(node, "hostname").text = host
        ElementTree.SubElement(node, "port").text = str(port)
        ElementTree.SubElement(node, "socketType").text = "SSL"
        ElementTree.SubElement(node, "username").text = user
        ElementTree.SubElement(node, "authentication").text = "password-cleartext"
    ElementTree.indent(root)
    document: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"

"""Where imapguard keeps what it must remember: `[state]` and `[audit]`."""

from __future__ import annotations

from pydantic import field_validator

from imapguard.config.base import Section

__all__ = ["AuditConfig", "StateConfig"]


class StateConfig(Section):
    section_key = "state"

    url: str = "sqlite:///var/lib/imapguard/state.db"
    # 32+ random bytes; app-password hashes are keyed with it. Create it with
    # `head -c 32 /dev/urandom > server.key && chmod 600 server.key`.
    key_file: str = "/etc/imapguard/server.key"

    @field_validator("url")
    @classmethod
    def _supported(cls, url: str) -> str:
        if not url.startswith("sqlite:///"):
            scheme = url.partition(":")[0]
            raise ValueError(
                f"state store {scheme!r} is not supported by this build (use sqlite:///PATH)"
            )
        return url


class AuditConfig(Section):
    section_key = "audit"

    # "-" writes to standard output.
    path: str = "/var/log/imapguard/audit.jsonl"

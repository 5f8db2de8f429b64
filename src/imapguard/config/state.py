"""Where imapguard keeps what it must remember: `[state]` and `[audit]`."""

from __future__ import annotations

from imapguard.config.base import Section

__all__ = ["AuditConfig", "StateConfig"]


class StateConfig(Section):
    key = "state"

    url: str = "sqlite:///var/lib/imapguard/state.db"
    # 32+ random bytes; app-password hashes are keyed with it. Create it with
    # `head -c 32 /dev/urandom > server.key && chmod 600 server.key`.
    key_file: str = "/etc/imapguard/server.key"


class AuditConfig(Section):
    key = "audit"

    # "-" writes to standard output.
    path: str = "/var/log/imapguard/audit.jsonl"

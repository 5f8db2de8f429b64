"""The audit log: one JSON line per connection phase and per decision.

Events are typed records (`events`), one type per kind, never f-strings; the
file writer and readers are in `log`; `redact.RedactingFilter` masks credentials
in ordinary log records. The schema is in docs/audit-events.md.
"""

from imapguard.audit import events
from imapguard.audit.log import AuditLog, follow, read_events
from imapguard.audit.redact import RedactingFilter

__all__ = ["AuditLog", "RedactingFilter", "events", "follow", "read_events"]

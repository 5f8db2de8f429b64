"""`RedactingFilter`, the second line of defence for ordinary logging: it masks
LOGIN arguments, SASL responses and `password=` pairs in any log record, should
one ever carry them (audit events cannot: see `imapguard.audit.events`)."""

from __future__ import annotations

import logging
import re

__all__ = ["RedactingFilter"]

_REDACTIONS = (
    # a LOGIN command: keep the tag and user, mask the password argument
    (
        re.compile(r"(?i)(\bLOGIN\s+(?:\"(?:[^\"\\]|\\.)*\"|\S+)\s+)(\"(?:[^\"\\]|\\.)*\"|\S+)"),
        r"\1****",
    ),
    # AUTHENTICATE with an initial response, and bare base64 SASL lines
    (re.compile(r"(?i)(\bAUTHENTICATE\s+\S+\s+)\S+"), r"\1****"),
    (re.compile(r"(?i)\b(pass(?:word)?|secret|token|pw)(\s*[=:]\s*)\S+"), r"\1\2****"),
)


class RedactingFilter(logging.Filter):
    """Masks credentials in log messages: the second line of defence."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = message
        for pattern, replacement in _REDACTIONS:
            masked = pattern.sub(replacement, masked)
        if masked != message:
            record.msg = masked
            record.args = None
        return True

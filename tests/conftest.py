"""Fixtures shared by every test directory."""

from tests.dovecot import dovecot

__all__ = ["dovecot"]

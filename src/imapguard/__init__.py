"""imapguard: a TLS-terminating IMAP gateway that demands a second factor."""

__version__ = "0.1.0"

__all__ = ["__version__"]

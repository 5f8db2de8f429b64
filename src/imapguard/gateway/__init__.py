"""The only IMAP code that touches sockets: listeners, upstream login, relay."""

"""The IMAP pre-auth protocol, sans-IO: framing, command grammar, state machine."""

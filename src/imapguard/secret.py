"""Secrets as a type.

A `Secret` holds a credential (a password, an app password, a token) so that it
cannot be printed, logged, formatted, compared by timing or pickled by accident.
The one way to get the bytes back is `Secret.reveal()`: grep for it to audit
every place that handles a credential in clear.
"""

from __future__ import annotations

import hmac
from typing import NoReturn

__all__ = ["Secret"]


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: bytes | str) -> None:
        self._value = value.encode() if isinstance(value, str) else bytes(value)

    def reveal(self) -> bytes:
        """The secret in clear. Every caller is a place that handles a credential."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        raise TypeError("Secret is not hashable: never use a credential as a key")

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret cannot be pickled")

    @classmethod
    def from_file(cls, path: str) -> Secret:
        """Read a secret from a file, dropping one trailing newline (as `echo` writes)."""
        with open(path, "rb") as f:
            data = f.read()
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        return cls(data)

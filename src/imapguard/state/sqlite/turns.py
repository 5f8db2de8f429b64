"""The gate's turns (`auth.gate`) between the processes of one machine that share a
SQLite state: a byte-range lock per (source, account) pair on a file beside the
state file, instead of a compare-and-set in the counter store.

A compare-and-set costs a write transaction and a hop to the store's thread per
login, and a turn left by a process that died stays taken until it expires. A
record lock (`fcntl(F_SETLK)`, through `fcntl.lockf`) is two system calls made on
the event loop without waiting (it is taken, or another process holds it), and
the kernel gives back every lock of a process that ends, however it ends. It
works between the processes of one machine only, which is what a SQLite state
is; networked counters (Redis) keep the compare-and-set.

The byte of a pair is a keyed hash of it (`keys.GATE_TURNS`, 40 bits): an
attacker who knows an account and its owner's address cannot pick a name of his
own whose turn shares that byte and so hold up the owner's logins. POSIX record
locks belong to the process, not to a descriptor (a second lock of a byte the
process holds succeeds, and closing any descriptor of the file drops them all):
so there is one `FileTurns` per file and process (`for_file`), which keeps the
file open for the life of the process and counts its own holders of each byte,
and a pair this process holds is refused to its other logins here, not by the
kernel.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading
from typing import ClassVar

from imapguard.errors import StateUnavailable

__all__ = ["FileTurns", "turns_path"]

# Bytes of the keyed hash that name a pair's byte in the file (40 bits: two of
# 10,000 pairs in turn at once share a byte about once in 20,000 logins; sharing
# only makes the two wait for each other).
_OFFSET_BYTES = 5


def turns_path(state_path: str) -> str:
    """The lock file beside the state file `state_path`."""
    return state_path + "-turns"


class FileTurns:
    """The turns of one lock file, for this process (`for_file`). Its calls never
    wait on another process; a lock orders those of this process's threads."""

    _open: ClassVar[dict[str, FileTurns]] = {}
    _open_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str, key: bytes) -> None:
        self.path = path
        self._key = key
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self._fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise StateUnavailable("open gate turns", f"{path}: {exc.strerror}") from None
        # A file another user owns, or may open, could be locked by that user
        # whole (a read lock is enough), and no login would get its turn.
        st = os.fstat(self._fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            os.close(self._fd)
            raise StateUnavailable(
                "open gate turns",
                f"{path}: must be owned by this user and mode 0600 (it is {st.st_mode & 0o777:o})",
            )
        self._lock = threading.Lock()
        self._pairs: set[str] = set()  # held by this process
        self._bytes: dict[int, int] = {}  # byte -> pairs of this process holding it

    @classmethod
    def for_file(cls, path: str, key: bytes) -> FileTurns:
        """This process's turns of `path` (opened once, kept open; the key of the
        first call stays: it is derived from the server key, which a reload does
        not change)."""
        real = os.path.realpath(path)
        with cls._open_lock:
            turns = cls._open.get(real)
            if turns is None:
                turns = cls._open[real] = cls(real, key)
            return turns

    def _byte(self, pair: str) -> int:
        digest = hashlib.blake2b(pair.encode(), key=self._key, digest_size=_OFFSET_BYTES).digest()
        return int.from_bytes(digest, "big")

    def take(self, pair: str) -> bool:
        """Take the pair's turn if no process (this one included) holds it."""
        with self._lock:
            return self._take(pair)

    def _take(self, pair: str) -> bool:
        if pair in self._pairs:
            return False
        byte = self._byte(pair)
        if byte not in self._bytes:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False  # another process holds it
                raise StateUnavailable("take gate turn", f"{self.path}: {exc.strerror}") from None
            self._bytes[byte] = 0
        self._bytes[byte] += 1
        self._pairs.add(pair)
        return True

    def give_back(self, pair: str) -> None:
        """Give the pair's turn back (nothing if this process does not hold it)."""
        with self._lock:
            self._give_back(pair)

    def _give_back(self, pair: str) -> None:
        if pair not in self._pairs:
            return
        self._pairs.discard(pair)
        byte = self._byte(pair)
        self._bytes[byte] -= 1
        if self._bytes[byte] == 0:
            del self._bytes[byte]
            # Unlocking a byte of an open file cannot fail but for a bad descriptor;
            # if it did, the lock would go with the process, never be taken twice.
            with contextlib.suppress(OSError):
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, byte)

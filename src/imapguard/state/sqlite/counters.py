"""The defense's counter store on SQLite (`imapguard.defense.counters.CounterStore`).

Tables `defense_counters`, `defense_members`, `defense_blocks` and
`defense_values` (`schema.py`), keyed by (key, bucket) and the like; every row
carries its absolute expiry, reads take `now` and skip expired rows, and
`defense_purge` deletes them in bounded runs by the expiry indexes. A precheck is
one `defense_lookup` on the reader: two primary-key `IN` queries. The rules are
the protocol's (`imapguard.defense.counters`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from imapguard.defense.counters import Block, Target, TargetKind
from imapguard.state.sqlite.connection import Connection

__all__ = ["SqliteCounters"]

# A member seen again keeps the later of its two expiries.
_ADD_MEMBER = (
    "INSERT INTO defense_members(key, bucket, member, expires) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key, bucket, member) DO UPDATE SET"
    " expires = max(defense_members.expires, excluded.expires)"
)
_PUT_VALUE = "INSERT OR REPLACE INTO defense_values(name, value, expires) VALUES (?, ?, ?)"


class SqliteCounters(Connection):
    def bucket_incr(self, key: str, bucket: int, amount: int, expires: float, now: float) -> int:
        with self._tx("count") as db:
            (count,) = db.execute(
                "INSERT INTO defense_counters(key, bucket, count, expires) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key, bucket) DO UPDATE SET"
                " count = CASE WHEN defense_counters.expires > ?"
                " THEN defense_counters.count + excluded.count ELSE excluded.count END,"
                " expires = excluded.expires RETURNING count",
                (key, bucket, amount, expires, now),
            ).fetchone()
            return int(count)

    def bucket_counts(self, key: str, buckets: range, now: float) -> list[int]:
        rows = self._read(
            "read counters",
            lambda db: db.execute(
                "SELECT bucket, count FROM defense_counters"
                " WHERE key = ? AND bucket BETWEEN ? AND ? AND expires > ?",
                (key, *_bounds(buckets), now),
            ).fetchall(),
        )
        found = dict(rows)
        return [int(found.get(b, 0)) for b in buckets]

    def member_add(self, key: str, bucket: int, member: str, expires: float) -> None:
        with self._tx("add member") as db:
            db.execute(
                _ADD_MEMBER,
                (key, bucket, member, expires),
            )

    def members_add(self, entries: Sequence[tuple[str, str]], bucket: int, expires: float) -> None:
        with self._tx("add members") as db:
            db.executemany(
                _ADD_MEMBER,
                [(key, bucket, member, expires) for key, member in entries],
            )

    def member_seen(self, key: str, buckets: range, member: str, now: float) -> bool:
        row = self._read(
            "read member",
            lambda db: db.execute(
                "SELECT 1 FROM defense_members WHERE key = ? AND bucket BETWEEN ? AND ?"
                " AND member = ? AND expires > ? LIMIT 1",
                (key, *_bounds(buckets), member, now),
            ).fetchone(),
        )
        return row is not None

    def distinct_count(
        self, keys: Sequence[str], buckets: range, now: float, limit: int | None = None
    ) -> int:
        marks = ", ".join("?" * len(keys))
        query = (
            f"SELECT DISTINCT member FROM defense_members WHERE key IN ({marks})"  # noqa: S608
            " AND bucket BETWEEN ? AND ? AND expires > ?"
        )
        args: tuple[Any, ...] = (*keys, *_bounds(buckets), now)
        if limit is not None:
            query += " LIMIT ?"
            args += (limit,)
        (count,) = self._read(
            "count members",
            lambda db: db.execute(f"SELECT COUNT(*) FROM ({query})", args).fetchone(),  # noqa: S608
        )
        return int(count)

    def distinct_counts(self, keys: Sequence[str], buckets: range, now: float) -> dict[str, int]:
        marks = ", ".join("?" * len(keys))
        rows = self._read(
            "count members",
            lambda db: db.execute(
                "SELECT key, COUNT(DISTINCT member) FROM defense_members"  # noqa: S608
                f" WHERE key IN ({marks}) AND bucket BETWEEN ? AND ? AND expires > ?"
                " GROUP BY key",
                (*keys, *_bounds(buckets), now),
            ).fetchall(),
        )
        found = dict(rows)
        return {key: int(found.get(key, 0)) for key in keys}

    def distinct_members(
        self, keys: Sequence[str], buckets: range, now: float, limit: int
    ) -> list[str]:
        marks = ", ".join("?" * len(keys))
        rows = self._read(
            "list members",
            lambda db: db.execute(
                f"SELECT DISTINCT member FROM defense_members WHERE key IN ({marks})"  # noqa: S608
                " AND bucket BETWEEN ? AND ? AND expires > ? ORDER BY member LIMIT ?",
                (*keys, *_bounds(buckets), now, limit),
            ).fetchall(),
        )
        return [str(member) for (member,) in rows]

    def buckets_forget(self, keys: Sequence[str], buckets: range) -> None:
        marks = ", ".join("?" * len(keys))
        with self._tx("forget counters") as db:
            for table in ("defense_counters", "defense_members"):
                db.execute(
                    f"DELETE FROM {table} WHERE key IN ({marks})"  # noqa: S608
                    " AND bucket BETWEEN ? AND ?",
                    (*keys, *_bounds(buckets)),
                )

    def block_put(self, block: Block) -> None:
        target = block.target
        with self._tx("put block") as db:
            db.execute(
                "INSERT OR REPLACE INTO defense_blocks"
                "(key, kind, target, reason, level, created, expires)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    target.key,
                    target.kind.value,
                    target.value,
                    block.reason,
                    block.level,
                    block.created,
                    block.expires,
                ),
            )

    _BLOCK_COLUMNS = "kind, target, reason, level, created, expires"

    @staticmethod
    def _blocks(rows: list[Any]) -> list[Block]:
        return [
            Block(Target(TargetKind(kind), target), reason, level, created, expires)
            for kind, target, reason, level, created, expires in rows
        ]

    @classmethod
    def _select_blocks(cls, db: sqlite3.Connection, keys: list[str], now: float) -> list[Any]:
        marks = ", ".join("?" * len(keys))
        return db.execute(
            f"SELECT {cls._BLOCK_COLUMNS} FROM defense_blocks"  # noqa: S608
            f" WHERE key IN ({marks}) AND expires > ?",
            (*keys, now),
        ).fetchall()

    @staticmethod
    def _select_values(db: sqlite3.Connection, names: Sequence[str], now: float) -> list[Any]:
        marks = ", ".join("?" * len(names))
        return db.execute(
            f"SELECT name, value FROM defense_values WHERE name IN ({marks})"  # noqa: S608
            " AND (expires IS NULL OR expires > ?)",
            (*names, now),
        ).fetchall()

    def blocks_get(self, targets: Sequence[Target], now: float) -> list[Block]:
        keys = [t.key for t in targets]
        return self._blocks(self._read("get blocks", lambda db: self._select_blocks(db, keys, now)))

    def block_delete(self, target: Target) -> bool:
        with self._tx("delete block") as db:
            cursor = db.execute("DELETE FROM defense_blocks WHERE key = ?", (target.key,))
            return cursor.rowcount > 0

    def blocks_list(self, now: float) -> list[Block]:
        rows = self._read(
            "list blocks",
            lambda db: db.execute(
                f"SELECT {self._BLOCK_COLUMNS} FROM defense_blocks"  # noqa: S608
                " WHERE expires > ? ORDER BY expires, key",
                (now,),
            ).fetchall(),
        )
        return self._blocks(rows)

    def values_get(self, names: Sequence[str], now: float) -> dict[str, str]:
        rows = self._read("get values", lambda db: self._select_values(db, names, now))
        return dict(rows)

    def value_put(self, name: str, value: str, expires: float | None) -> None:
        with self._tx("put value") as db:
            db.execute(
                _PUT_VALUE,
                (name, value, expires),
            )

    def value_swap(
        self, name: str, expected: str | None, value: str, expires: float | None, now: float
    ) -> bool:
        with self._tx("swap value") as db:
            row = db.execute(
                "SELECT value FROM defense_values WHERE name = ?"
                " AND (expires IS NULL OR expires > ?)",
                (name, now),
            ).fetchone()
            if (row[0] if row else None) != expected:
                return False
            db.execute(
                _PUT_VALUE,
                (name, value, expires),
            )
            return True

    def values_delete(self, names: Sequence[str]) -> None:
        marks = ", ".join("?" * len(names))
        with self._tx("delete values") as db:
            db.execute(f"DELETE FROM defense_values WHERE name IN ({marks})", tuple(names))  # noqa: S608

    def defense_lookup(
        self, targets: Sequence[Target], names: Sequence[str], now: float
    ) -> tuple[list[Block], dict[str, str]]:
        keys = [t.key for t in targets]

        def lookup(db: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            return self._select_blocks(db, keys, now), self._select_values(db, names, now)

        blocks, values = self._read("defense lookup", lookup)
        return self._blocks(blocks), dict(values)

    def defense_purge(self, now: float, limit: int) -> int:
        removed = 0
        with self._tx("purge defense") as db:
            for table, key in (
                ("defense_counters", "key, bucket"),
                ("defense_members", "key, bucket, member"),
                ("defense_blocks", "key"),
                ("defense_values", "name"),
            ):
                cursor = db.execute(
                    f"DELETE FROM {table} WHERE ({key}) IN"  # noqa: S608
                    f" (SELECT {key} FROM {table} WHERE expires <= ? LIMIT ?)",
                    (now, limit),
                )
                removed += cursor.rowcount
        return removed


def _bounds(buckets: range) -> tuple[int, int]:
    """A window's first and last bucket (windows are contiguous, step 1)."""
    if buckets.step != 1 or not buckets:
        raise ValueError("a window is a non-empty range of consecutive buckets")
    return buckets[0], buckets[-1]

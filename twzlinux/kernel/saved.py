"""twzd's own state about persistent objects, kept across restarts in SQLite (WAL).

The object images hold everything a program wrote; what only the kernel knows lives here: an
object is deleted but still tied, hidden, where its contents came from, its cache mode, and
the ties one
persistent object holds on another. Volatile objects and kernel objects die with twzd and are
never recorded. Every change is its own SQLite transaction, so a kill -9 of twzd leaves each
change either done or not; the WAL with synchronous=NORMAL makes that hold across power loss
too, at the price of the last few changes (see docs/persistence.md).
"""

import sqlite3
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY,          -- hi:lo, as the object's file is named
    deleted INTEGER NOT NULL,
    hidden INTEGER NOT NULL,
    source TEXT,                  -- the object its contents were copied from
    cache_mode INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ties (
    parent TEXT NOT NULL,
    child TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (parent, child)
);
"""


@dataclass
class Saved:
    deleted: bool
    hidden: bool
    source: int | None
    cache_mode: int


def _key(oid: int) -> str:
    return f"{oid >> 64:016x}:{oid & (2**64 - 1):016x}"


def _oid(key: str) -> int:
    hi, lo = key.split(":")
    return int(hi, 16) << 64 | int(lo, 16)


class SavedState:
    def __init__(self, path: Path):
        # isolation_level=None: autocommit, so each statement below is one transaction.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(objects)")}
            if "cache_mode" not in columns:  # a home from before cache modes were kept
                self.db.execute("ALTER TABLE objects ADD COLUMN cache_mode INTEGER NOT NULL "
                                "DEFAULT 0")
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise RuntimeError(f"{path} is not a usable twzd state database ({e}). Move it "
                               "aside to start without it: objects are kept, but those deleted "
                               "while still in use come back, and ties between persistent "
                               "objects are forgotten") from e

    def objects(self) -> dict[int, Saved]:
        rows = self.db.execute("SELECT id, deleted, hidden, source, cache_mode FROM objects")
        return {_oid(k): Saved(bool(d), bool(h), _oid(s) if s else None, cm)
                for k, d, h, s, cm in rows}

    def ties(self) -> list[tuple[int, int, int]]:
        return [(_oid(p), _oid(c), n) for p, c, n in
                self.db.execute("SELECT parent, child, n FROM ties")]

    def save(self, oid: int, deleted: bool, hidden: bool, source: int | None,
             cache_mode: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
                        (_key(oid), int(deleted), int(hidden),
                         _key(source) if source is not None else None, cache_mode))

    def set_tie(self, parent: int, child: int, n: int) -> None:
        if n:
            self.db.execute("INSERT OR REPLACE INTO ties VALUES (?, ?, ?)",
                            (_key(parent), _key(child), n))
        else:
            self.db.execute("DELETE FROM ties WHERE parent = ? AND child = ?",
                            (_key(parent), _key(child)))

    def forget(self, oid: int) -> None:
        """The object is gone: drop its row and every tie it held (one transaction)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM objects WHERE id = ?", (_key(oid),))
            self.db.execute("DELETE FROM ties WHERE parent = ?", (_key(oid),))

    def close(self) -> None:
        self.db.close()

"""The items of a build and the rerun cache, on disk: a private temporary sqlite database (stdlib; deleted
when closed, its page cache `CACHE_MIB`), so that a build holds one window of items at a time and never
a list, set or dict of all of them. Items come out sorted by id, each with where its embedding is cached
(a source -- the previous index or a shard -- and a row) or why it was skipped."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.sources import Item

CACHE_MIB = 16  # sqlite's page cache: what the table holds in memory, whatever the number of items

_SCHEMA = """
CREATE TABLE items(id TEXT, path TEXT, key TEXT, caption TEXT, row INTEGER, problem TEXT, files BLOB);
CREATE TABLE done(key TEXT PRIMARY KEY, source INTEGER, row INTEGER, fresh INTEGER) WITHOUT ROWID;
CREATE TABLE bad(key TEXT PRIMARY KEY, reason TEXT, fresh INTEGER) WITHOUT ROWID;
CREATE TABLE previous(key TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE sources(n INTEGER PRIMARY KEY, path TEXT UNIQUE);
"""


def _files(files: tuple[str, ...]) -> bytes | None:
    return "\0".join(files).encode("utf-8", "surrogateescape") if files else None  # paths never hold NUL


class ItemTable:
    """Items (`add`, then `finish`), cached embeddings' places and skip reasons by key (`add_done`,
    `add_bad`; ``fresh`` for the shards written by this build), the previous index's keys."""

    def __init__(self):
        self.db = sqlite3.connect("")  # "": a temporary database on disk, removed on close
        self.db.execute(f"PRAGMA cache_size=-{CACHE_MIB << 10}")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def add(self, items: Iterable[Item]) -> None:
        self.db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                            ((i.id, i.path, i.key, i.caption, i.row, i.problem, _files(i.files)) for i in items))

    def finish(self, source) -> None:
        """Index the items by id and key; `CL2CMError` naming `source` when an id appears twice."""
        self.db.executescript("CREATE INDEX items_id ON items(id); CREATE INDEX items_key ON items(key);")
        twice = self.db.execute("SELECT id FROM items WHERE substr(key, 1, 8) != 'badname:' GROUP BY id "
                                "HAVING count(*) > 1 LIMIT 1").fetchone()
        if twice:
            raise CL2CMError(f"{source}: id {twice[0]!r} appears twice; ids must be unique")

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM items").fetchone()[0]

    def add_source(self, path: str) -> int | None:
        """The number of a new cache source (a previous index or a shard file); None when it is known."""
        try:
            return self.db.execute("INSERT INTO sources(path) VALUES (?)", (path,)).lastrowid
        except sqlite3.IntegrityError:
            return None

    def source(self, n: int) -> str:
        return self.db.execute("SELECT path FROM sources WHERE n = ?", (n,)).fetchone()[0]

    def add_done(self, places: Iterable[tuple[str, int, int]], fresh: bool = False) -> None:
        """(key, source, row) of cached embeddings; a later place of a key replaces an earlier one."""
        self.db.executemany(f"INSERT OR REPLACE INTO done VALUES (?, ?, ?, {int(fresh)})", places)

    def add_bad(self, reasons: Iterable[tuple[str, str]], fresh: bool = False) -> None:
        self.db.executemany(f"INSERT OR REPLACE INTO bad VALUES (?, ?, {int(fresh)})", reasons)

    def forget_cached(self) -> None:
        """Drop every cached place and skip reason read so far (an unreadable previous index)."""
        self.db.executescript("DELETE FROM done; DELETE FROM bad;")

    def mark_previous(self) -> None:
        """The keys cached or skipped so far are the previous index's (what `counts` calls removed when gone)."""
        self.db.execute("INSERT OR IGNORE INTO previous SELECT key FROM done UNION SELECT key FROM bad")

    def windows(self, size: int) -> Iterator[list[tuple[Item, tuple[int, int] | None, str | None]]]:
        """Items sorted by id, `size` at a time: (item, (source, row) of its cached embedding or None,
        the reason it was skipped or None)."""
        cursor = self.db.execute(
            "SELECT i.id, i.path, i.key, i.caption, i.row, i.problem, i.files, d.source, d.row, b.reason FROM items i "
            "LEFT JOIN done d ON d.key = i.key LEFT JOIN bad b ON b.key = i.key ORDER BY i.id, i.rowid")
        while rows := cursor.fetchmany(size):
            yield [(Item(id_, path, key, caption, row, problem,
                         tuple(files.decode("utf-8", "surrogateescape").split("\0")) if files else ()),
                    None if source is None else (source, place), reason)
                   for id_, path, key, caption, row, problem, files, source, place, reason in rows]

    def counts(self) -> dict[str, int]:
        """kept (an embedding is cached), encoded (kept from a shard of this build), missing (neither
        cached nor skipped), removed (keys of the previous index no item has now)."""
        kept, encoded, missing = self.db.execute(
            "SELECT count(d.key), count(CASE WHEN d.fresh THEN 1 END), count(CASE WHEN d.key IS NULL AND b.key IS NULL "
            "THEN 1 END) FROM items i LEFT JOIN done d ON d.key = i.key LEFT JOIN bad b ON b.key = i.key").fetchone()
        removed = self.db.execute("SELECT count(*) FROM previous p WHERE NOT EXISTS "
                                  "(SELECT 1 FROM items i WHERE i.key = p.key)").fetchone()[0]
        return {"kept": kept, "encoded": encoded, "missing": missing, "removed": removed}

    def first_missing(self) -> str | None:
        row = self.db.execute("SELECT i.id FROM items i WHERE NOT EXISTS (SELECT 1 FROM done d WHERE d.key = i.key) "
                              "AND NOT EXISTS (SELECT 1 FROM bad b WHERE b.key = i.key) ORDER BY i.id LIMIT 1").fetchone()
        return row and row[0]

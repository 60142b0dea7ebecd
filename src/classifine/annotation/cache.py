"""The answer cache: SQLite in the annotation folder, keyed by a hash of the request.

Every answer is committed as soon as it arrives (WAL journal), so a crash or SIGKILL loses at
most the requests in flight, and a re-run, a resumed run or a run with ``--overwrite`` asks
nothing twice. Content-addressed keys (annotator identity + request) mean a changed prompt or
model simply misses the cache; nothing stale is ever served for a different request.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path


class AnswerCache:
    def __init__(self, path: str | Path | None):
        """``path`` None keeps answers in memory (``--plan`` on a folder that does not exist yet)."""
        self.path = path
        self.db = sqlite3.connect(":memory:" if path is None else str(path), isolation_level=None,
                                  check_same_thread=False)
        if path is not None:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL, at REAL)")
        self.hits = 0
        self.misses = 0

    @classmethod
    def read_only(cls, path: Path) -> "AnswerCache":
        return cls(path if path.is_file() else None)

    def get(self, key: str):
        row = self.db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def has(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                        (key, json.dumps(value, ensure_ascii=False), time.time()))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self.db.close()

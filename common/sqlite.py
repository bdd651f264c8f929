"""SQLite connections as every fedtrust store opens them.

WAL journal, `synchronous=FULL` (a commit is fsynced before it returns, so a
debit is durable before anything is released), foreign keys on, and a busy
timeout so concurrent daemons threads wait for the write lock instead of
failing. Each store keeps its SQL in its own module behind a small interface.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class Database:
    """One SQLite file; one connection per thread; `write()` is an IMMEDIATE transaction."""

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connect().executescript(schema)

    def _connect(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            con.row_factory = sqlite3.Row
            self._local.con = con
        return con

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT: check-then-insert is atomic across threads and processes."""
        con = self._connect()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        else:
            con.execute("COMMIT")

    def read(self) -> sqlite3.Connection:
        return self._connect()

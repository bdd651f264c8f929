"""SQLite connections as every fedtrust store opens them.

WAL journal, `synchronous=FULL` (a commit is fsynced before it returns, so a
debit is durable before anything is released), foreign keys on, and a busy
timeout so concurrent daemons threads wait for the write lock instead of
failing. Each store keeps its SQL in its own module behind a small interface.
State is private: the folder is created 0700 and the file 0600 (SQLite
gives its -wal and -shm files the database file's mode).

Writes that guard nothing (an audit line, a job-log row, a progress
heartbeat) pass `durable=False`: that one commit runs with
`synchronous=NORMAL`, so it is in the WAL (safe if the process dies) but not
fsynced (it may be lost with the machine's power). The next durable commit
fsyncs the WAL, and with it every earlier commit, so ordering is kept: a
debit and everything logged before it are on disk before anything of that
release leaves the node.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def make_state_dir(path: Path) -> None:
    """Create a state folder 0700 (its parents as usual); an existing one keeps the mode its operator chose."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask


class Database:
    """One SQLite file; one connection per thread; `write()` is an IMMEDIATE transaction."""

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        make_state_dir(self.path.parent)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
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
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT: check-then-insert is atomic across threads and processes.

        With `durable=False` the commit is not fsynced (see the module docstring); never for a write
        that must be on disk before something leaves the daemon.
        """
        con = self._connect()
        if not durable:
            con.execute("PRAGMA synchronous=NORMAL")
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            else:
                con.execute("COMMIT")
        finally:
            if not durable:
                con.execute("PRAGMA synchronous=FULL")

    def read(self) -> sqlite3.Connection:
        return self._connect()

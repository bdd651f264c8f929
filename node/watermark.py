"""The ledger's high-water mark: restoring an old backup can never refund a budget.

A node's ledger (SQLite) is the record of what it spent. Restore an old copy
of it and the node would believe ε it already released is still there — and
its next receipt would collide with the chain the exchange already holds (a
double spend, with no way to recover). So after every ledger row commits, and
before anything of that job leaves the node, the node writes the newest
chain position per contract (sequence number and entry digest) to a second
file, fsynced and replaced atomically. It lives outside the state folder by
default (`<state>.watermark`, or `[node] watermark`), so restoring the state
folder or a `fedtrust node backup` file does not roll it back.

At start the node refuses a ledger that does not reach the mark (or that
holds another entry at the marked position) with a message that says how to
recover. A ledger ahead of the mark (a crash between commit and mark) is
fine: the mark catches up at start.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from fedtrust.errors import ConfigError

__all__ = ["Watermark"]


class Watermark:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._marks: dict[str, tuple[int, str]] = self._read()

    def _read(self) -> dict[str, tuple[int, str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ConfigError(f"ledger watermark {self.path} cannot be read ({e}); restore it from the node's "
                              "host backup, it is what keeps an old ledger from refunding a budget") from None
        try:
            return {c: (int(v["seq"]), str(v["entry"])) for c, v in data["contracts"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(f"ledger watermark {self.path} is malformed; restore it from the node's host "
                              "backup") from None

    @property
    def marks(self) -> dict[str, tuple[int, str]]:
        with self._lock:
            return dict(self._marks)

    def advance(self, contract_digest: str, seq: int, entry: str) -> None:
        """Record that the ledger reached `seq` (entry digest `entry`) for a contract; durable on return."""
        with self._lock:
            if self._marks.get(contract_digest, (0, ""))[0] >= seq:
                return
            self._marks[contract_digest] = (seq, entry)
            self._write()

    def _write(self) -> None:
        data = {"contracts": {c: {"seq": s, "entry": e} for c, (s, e) in sorted(self._marks.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=1, sort_keys=True))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

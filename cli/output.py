"""Shared Rich output for the CLI: consoles, result tables, progress bars."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def save_result(res: Any, out: Optional[Path], receipt: Optional[Path]) -> None:
    """A job's result.json and its receipt bundle, where the user asked for them (`--out`, `--receipt`)."""
    if out:
        out.write_text(json.dumps(res.result, indent=2))
    if receipt:
        receipt.write_bytes(res.receipt.to_json())


def print_rows(result: dict, fmt: str) -> bool:
    """A result for machines when `fmt` asks for it: JSON, or CSV (a header, then the rows). False: print it
    for people (the caller's table)."""
    if fmt == "json":
        print_json(result)
        return True
    if fmt == "csv":
        import csv
        import sys

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(result["columns"])
        w.writerows(result["rows"])
        return True
    return False


def print_saved(out: Optional[Path], receipt: Optional[Path]) -> None:
    """Where `save_result` wrote the result and the receipt, and how the exchange checks the receipt."""
    if out:
        console.print(f"result written to {out}")
    if receipt:
        console.print(f"receipt written to {receipt}; the exchange checks it with `fedtrust exchange verify`")


def format_value(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:,.6g}" if abs(v) < 1e15 else f"{v:.6e}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def result_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
                 ci95: Sequence[Sequence[Any]] | None = None) -> Table:
    """A result as a table; with `ci95`, each noisy value shows its 95% interval under it."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(escape(c), justify="right")
    for i, r in enumerate(rows):
        cells = []
        for j, v in enumerate(r):
            cell = escape(format_value(v))
            if ci95 is not None and ci95[i][j] is not None:
                lo, hi = ci95[i][j]
                cell += f"\n[dim]95% [{escape(format_value(lo))}, {escape(format_value(hi))}][/]"
            cells.append(cell)
        t.add_row(*cells)
    return t


class LineProgress:
    """Progress as plain lines on stderr, one per change, flushed at once — what `job_progress` gives when
    stderr is not a terminal (systemd, nohup, CI), where a progress bar would only be drawn at the end."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._last: tuple | None = None

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        self._fields = {"total": total, "completed": completed, **fields}
        return 0

    def update(self, task: int, **changes: Any) -> None:
        f = self._fields
        f.update(changes)
        text = f.get("stage") or f.get("status") or ""
        count = f"{f['completed']:g}/{f['total']:g}" if f.get("total") and f.get("completed") is not None else ""
        key = (text, count)
        if key == self._last or not text:
            return
        self._last = key
        import sys

        print(f"{self.what}: {text}" + (f" [{count}]" if count else ""), file=sys.stderr, flush=True)


def job_progress():
    """A progress bar on a terminal; plain lines otherwise (`LineProgress`)."""
    if not err_console.is_terminal:
        return LineProgress("query")
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stage]}"), TimeElapsedColumn(), console=err_console, transient=False)


def with_progress(name: str, done: str, submit):
    """`submit(progress)` under a job progress bar named `name` (each progress event moves it); `done` is the last
    stage shown. Returns what `submit` returns."""
    with job_progress() as bar:
        task = bar.add_task(name, total=None, stage="submitting")

        def progress(ev) -> None:
            bar.update(task, total=ev.total, completed=ev.done, stage=ev.stage)

        res = submit(progress)
        bar.update(task, stage=done)
    return res


def serve_until_stopped(daemon, banner: str) -> None:
    """Start a daemon, print its banner (with the bound port), serve until SIGTERM or Ctrl-C, then drain.

    The signal handlers only flip entries of a plain dict; the main thread polls them and does the stopping,
    so a second SIGTERM while the first drain runs cannot re-enter `stop` (a daemon once hung that way).
    They must not touch a `threading.Event`: a handler runs in the main thread between bytecodes, and if
    that thread is inside `Event.wait` holding the event's (non-reentrant) lock, `Event.set` deadlocks
    (CI once hung 60 s on exactly that). SIGHUP is ignored with a log line: the daemon does not reload its
    config while serving (restart it; SIGTERM drains).
    """
    import logging
    import signal
    import time

    log = logging.getLogger("fedtrust.daemon")
    flags = {"stop": False, "hup": False}
    signal.signal(signal.SIGTERM, lambda *_: flags.__setitem__("stop", True))
    signal.signal(signal.SIGHUP, lambda *_: flags.__setitem__("hup", True))
    port = daemon.start()
    console.print(banner.format(port=port))
    try:
        while not flags["stop"]:
            time.sleep(0.2)  # a signal interrupts the sleep; its handler runs, the loop re-reads the flags
            if flags["hup"]:
                flags["hup"] = False
                log.warning("SIGHUP ignored: %s %s does not reload its config while serving; restart it to apply "
                            "changes (SIGTERM drains jobs in flight first)", daemon.role, daemon.name)
    except KeyboardInterrupt:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the drain below runs once, whatever arrives now
    err_console.print(f"{daemon.role} {daemon.name} stopping: no new jobs; jobs in flight have "
                      f"{daemon.settings.drain_s:g} s to finish", highlight=False)
    daemon.stop(daemon.settings.drain_s)
    err_console.print(f"{daemon.role} {daemon.name} stopped", highlight=False)

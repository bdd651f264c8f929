"""Shared Rich output for the CLI: consoles, result tables, progress bars."""
from __future__ import annotations

import json
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def format_value(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:,.6g}" if abs(v) < 1e15 else f"{v:.6e}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def result_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(escape(c), justify="right")
    for r in rows:
        t.add_row(*(escape(format_value(v)) for v in r))
    return t


def job_progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stage]}"), TimeElapsedColumn(), console=err_console, transient=False)

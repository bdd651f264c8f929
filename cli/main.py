"""The `fedtrust` command: nouns then verbs, Rich for people, `--json` for machines.

Every fedtrust error is printed as one line naming the problem and the fix
(under `--json`, as `{"error": {"kind", "message"}}` on stdout), and the exit
status names its kind (`EXIT_CODES`, listed in the README); set
FEDTRUST_DEBUG=1 for a traceback. `-h` is `--help`; `--version` prints the
installed version.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Sequence

import click
import typer
from rich.markup import escape

from fedtrust.cli import (
    audit,
    contract,
    coordinator,
    dealer,
    demo,
    exchange,
    job,
    keygen,
    node,
    predict,
    query,
    train,
    vertical,
)
from fedtrust.cli.output import err_console
from fedtrust.errors import Error

#: exit status per error kind (`fedtrust.errors.Error.kind`); any other failure exits 1
EXIT_CODES = {
    "usage": 2, "config": 3, "invalid-input": 4, "verification": 5, "policy": 6, "budget": 7, "replay": 8,
    "not-found": 9, "unreachable": 10, "job-failed": 11, "overloaded": 12,
}

app = typer.Typer(
    name="fedtrust",
    help="Federated privacy-preserving computation: data usable but not visible (数据可用不可见).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every subcommand
)


def _version() -> str:
    try:
        return package_version("fedtrust")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"fedtrust {_version()}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                       help="print the installed version and exit")) -> None:
    """Federated privacy-preserving computation: data usable but not visible (数据可用不可见)."""


app.add_typer(exchange.app, name="exchange")
app.add_typer(contract.app, name="contract")
app.add_typer(node.app, name="node")
app.add_typer(coordinator.app, name="coordinator")
app.add_typer(dealer.app, name="dealer")
app.add_typer(job.app, name="job")
app.command("keygen")(keygen.keygen)
app.add_typer(audit.app, name="audit")
app.command("query")(query.query)
app.command("train")(train.train)
app.command("psi")(vertical.psi)
app.command("predict")(predict.predict)
app.command("demo")(demo.demo)


def _report(kind: str, message: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": {"kind": kind, "message": message}}))
    else:
        err_console.print(f"[bold red]error[/] ({kind}): {escape(message)}", highlight=False, soft_wrap=True)  # one line, never wrapped
    return EXIT_CODES.get(kind, 1)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    try:
        # under --json, usage errors come back here too, to be printed as JSON
        code = app(args=args, prog_name="fedtrust", standalone_mode=not as_json)
    except SystemExit as e:  # standalone mode: help, usage errors (2) and typer.Exit end here
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except click.UsageError as e:
        return _report("usage", e.format_message(), as_json)
    except click.exceptions.Abort:
        return _report("aborted", "aborted", as_json)
    except Error as e:
        if os.environ.get("FEDTRUST_DEBUG"):
            raise
        return _report(e.kind, e.diagnostics(), as_json)
    return code if isinstance(code, int) else 0


def main() -> None:
    logging.basicConfig(level=os.environ.get("FEDTRUST_LOG", "WARNING").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()

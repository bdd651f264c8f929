"""The `fedtrust` command: nouns then verbs, Rich for people, `--json` for machines.

Every fedtrust error is printed as one line naming the problem and the fix,
with exit status 1; set FEDTRUST_DEBUG=1 for a traceback.
"""
from __future__ import annotations

import logging
import os
import sys

import typer
from rich.markup import escape

from fedtrust.cli import audit, contract, coordinator, demo, exchange, job, keygen, node, predict, query, train
from fedtrust.cli.output import err_console
from fedtrust.errors import Error

app = typer.Typer(
    name="fedtrust",
    help="Federated privacy-preserving computation: data usable but not visible (数据可用不可见).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(exchange.app, name="exchange")
app.add_typer(contract.app, name="contract")
app.add_typer(node.app, name="node")
app.add_typer(coordinator.app, name="coordinator")
app.add_typer(job.app, name="job")
app.command("keygen")(keygen.keygen)
app.add_typer(audit.app, name="audit")
app.command("query")(query.query)
app.command("train")(train.train)
app.command("predict")(predict.predict)
app.command("demo")(demo.demo)


def main() -> None:
    logging.basicConfig(level=os.environ.get("FEDTRUST_LOG", "WARNING").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        app()
    except Error as e:
        if os.environ.get("FEDTRUST_DEBUG"):
            raise
        err_console.print(f"[bold red]error[/] ({e.kind}): {escape(e.diagnostics())}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()

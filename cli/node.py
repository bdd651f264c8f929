"""`fedtrust node …`: run a node daemon; print a data file's commitment."""
from __future__ import annotations

import signal
from pathlib import Path

import typer

from fedtrust.cli.output import console
from fedtrust.config import load_node_config

app = typer.Typer(help="Data owner's node daemon.", no_args_is_help=True)


@app.command("serve")
def serve(config: Path = typer.Option(..., "--config", help="NODE.toml")) -> None:
    """Serve the products listed in NODE.toml to the coordinators of their contracts (mTLS)."""
    from fedtrust.node.daemon import NodeDaemon

    daemon = NodeDaemon(load_node_config(config))
    port = daemon.start()
    console.print(f"node [bold]{daemon.runtime.name}[/] serving {len(daemon.runtime.datasets)} product(s) on port {port}")
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop(5))
    try:
        daemon.wait()
    except KeyboardInterrupt:
        daemon.stop(5)


@app.command("digest")
def digest(datafile: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV or Parquet file")) -> None:
    """Print the data commitment (sha256 of the file) to list it as a product."""
    from fedtrust.node.executor import file_digest

    print(file_digest(datafile))

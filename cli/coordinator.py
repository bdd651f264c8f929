"""`fedtrust coordinator serve`."""
from __future__ import annotations

from pathlib import Path

import typer

from fedtrust.cli.output import serve_until_stopped
from fedtrust.config import load_coordinator_config

app = typer.Typer(help="Coordinator daemon: runs federated jobs over mTLS.", no_args_is_help=True)


@app.command("serve")
def serve(config: Path = typer.Option(..., "--config", help="COORD.toml")) -> None:
    """Accept jobs from contract buyers and run them on the contract's nodes."""
    from fedtrust.coordinator.daemon import CoordinatorDaemon

    daemon = CoordinatorDaemon(load_coordinator_config(config))
    serve_until_stopped(daemon, f"coordinator [bold]{daemon.name}[/] listening on port {{port}}")

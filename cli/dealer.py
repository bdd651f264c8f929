"""`fedtrust dealer serve`: the MPC dealer daemon a contract names."""
from __future__ import annotations

from pathlib import Path

import typer

from fedtrust.cli.output import serve_until_stopped
from fedtrust.config import load_dealer_config

app = typer.Typer(help="MPC dealer daemon: deals correlated randomness to the owners of MPC jobs, sees no data.",
                  no_args_is_help=True)


@app.command("serve")
def serve(config: Path = typer.Option(..., "--config", help="DEALER.toml ([dealer] name, listen, credentials)")) -> None:
    """Deal Beaver triples and the other correlated randomness for the MPC jobs of contracts that name this dealer."""
    from fedtrust.node.dealer import DealerDaemon

    daemon = DealerDaemon(load_dealer_config(config))
    serve_until_stopped(daemon, f"dealer [bold]{daemon.name}[/] listening on port {{port}}")

"""`fedtrust coordinator serve`."""
from __future__ import annotations

import signal
from pathlib import Path

import typer

from fedtrust.cli.output import console
from fedtrust.config import load_coordinator_config

app = typer.Typer(help="Coordinator daemon: runs federated jobs over mTLS.", no_args_is_help=True)


@app.command("serve")
def serve(config: Path = typer.Option(..., "--config", help="COORD.toml")) -> None:
    """Accept jobs from contract buyers and run them on the contract's nodes."""
    from fedtrust.coordinator.daemon import CoordinatorDaemon

    daemon = CoordinatorDaemon(load_coordinator_config(config))
    port = daemon.start()
    console.print(f"coordinator [bold]{daemon.runtime.name}[/] listening on port {port}")
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop(5))
    try:
        daemon.wait()
    except KeyboardInterrupt:
        daemon.stop(5)

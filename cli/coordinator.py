"""`fedtrust coordinator serve|status`."""
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


@app.command("status")
def status(
    config: Path = typer.Option(..., "--config", help="COORD.toml"),
    address: str = typer.Option(None, "--address", help="HOST:PORT (default: from listen in the config)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Health (standard gRPC health check) and, with metrics_listen, job counts and rounds in flight."""
    from fedtrust.cli.status import daemon_status, print_status

    cfg = load_coordinator_config(config)
    st = daemon_status("coordinator", cfg.name, cfg.listen, cfg.credentials, cfg.server.metrics_listen, address)
    print_status(st, as_json)
    if st["health"] != "SERVING":
        raise typer.Exit(1)

"""`fedtrust job status|result`: follow a job and fetch its result again."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from fedtrust.buyer.jobdir import open_job
from fedtrust.cli.output import console, print_json
from fedtrust.cli.query import show_result
from fedtrust.trust.credentials import load_identity

app = typer.Typer(help="Follow jobs and fetch their results again.", no_args_is_help=True)


@app.command("status")
def status(
    job_id: str = typer.Argument(...),
    credentials: Path = typer.Option(..., "--credentials", help="the buyer's credentials directory"),
    coordinator: Optional[str] = typer.Option(None, "--coordinator", help="HOST:PORT (default: where it was submitted)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a job's state at the coordinator (running, succeeded, failed with the reason)."""
    from fedtrust.buyer.client import CoordinatorClient
    from fedtrust.buyer.query import tls_of

    identity = load_identity(credentials)
    meta = open_job(credentials, job_id).read_meta()
    st = CoordinatorClient(coordinator or meta["coordinator"], tls_of(identity)).job_status(job_id)
    if as_json:
        print_json(asdict(st))
        return
    colour = {"succeeded": "green", "failed": "red"}.get(st.state, "yellow")
    console.print(f"job {st.job_id}: [{colour}]{st.state}[/]  (updated {st.updated_at})")
    console.print(f"participants: {', '.join(st.participants)}")
    if st.error:
        console.print(f"reason: {escape(st.error)}", highlight=False)


@app.command("result")
def result(
    job_id: str = typer.Argument(...),
    credentials: Path = typer.Option(..., "--credentials", help="the buyer's credentials directory"),
    coordinator: Optional[str] = typer.Option(None, "--coordinator", help="HOST:PORT (default: where it was submitted)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the result here (JSON)"),
    receipt: Optional[Path] = typer.Option(None, "--receipt", help="write the receipt bundle here"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fetch a finished job's aggregate again, verify its receipt and decrypt it with the job's stored key."""
    from fedtrust.buyer.query import fetch_again

    identity = load_identity(credentials)
    show_result(fetch_again(identity, credentials, job_id, coordinator), out, receipt, as_json)

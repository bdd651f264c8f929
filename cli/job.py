"""`fedtrust job list|status|cancel|result`: follow jobs, stop one, and fetch a result again."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from fedtrust.buyer.jobdir import open_job
from fedtrust.cli.output import console, print_json
from fedtrust.cli.query import check_format, show_result
from fedtrust.trust.credentials import load_identity

app = typer.Typer(help="Follow jobs and fetch their results again.", no_args_is_help=True)


#: the options of the commands that name one job: the buyer's credentials (its job folders) and, when the
#: coordinator moved, its new address
Credentials = Annotated[Path, typer.Option("--credentials", envvar="FEDTRUST_CREDENTIALS",
                                           help="the buyer's credentials directory")]
SubmittedTo = Annotated[Optional[str], typer.Option("--coordinator", envvar="FEDTRUST_COORDINATOR",
                                                    help="HOST:PORT (default: where it was submitted)")]


def _client_for_job(credentials: Path, job_id: str, coordinator: Optional[str]):
    from fedtrust.buyer.query import reopen

    return reopen(load_identity(credentials), credentials, job_id, coordinator).client


def _progress(st) -> str:
    """Where a job is: its last stage, round (training) and owners answered, and its last heartbeat."""
    parts = []
    if st.kind == "train" and st.rounds:
        parts.append(f"round {st.round}/{st.rounds}")
    if st.stage:
        parts.append(f"{st.stage} ({st.answered}/{len(st.participants)} owners answered)")
    if st.heartbeat_at:
        parts.append(f"last heartbeat {st.heartbeat_at}")
    return ", ".join(parts)


@app.command("status")
def status(
    job_id: Annotated[str, typer.Argument()],
    credentials: Credentials,
    coordinator: SubmittedTo = None,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a job's state at the coordinator (running with its round and last heartbeat, succeeded, failed
    with the reason)."""
    st = _client_for_job(credentials, job_id, coordinator).job_status(job_id)
    if as_json:
        print_json(asdict(st))
        return
    colour = {"succeeded": "green", "failed": "red"}.get(st.state, "yellow")
    console.print(f"{st.kind} job {st.job_id}: [{colour}]{st.state}[/]  (updated {st.updated_at})")
    console.print(f"participants: {', '.join(st.participants)}")
    if st.state == "running" and _progress(st):
        console.print(f"progress: {_progress(st)}", highlight=False)
    if st.error:
        console.print(f"reason: {escape(st.error)}", highlight=False)


@app.command("list")
def list_jobs(
    credentials: Path = typer.Option(..., "--credentials", envvar="FEDTRUST_CREDENTIALS",
                                     help="the buyer's credentials directory"),
    contract: Path = typer.Option(..., "--contract", envvar="FEDTRUST_CONTRACT",
                                  help="a contract naming the coordinator to ask"),
    coordinator: str = typer.Option(..., "--coordinator", envvar="FEDTRUST_COORDINATOR", help="HOST:PORT"),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Your jobs at the coordinator, newest first: kind, state, progress and last heartbeat."""
    from rich.table import Table

    from fedtrust.buyer.client import CoordinatorClient
    from fedtrust.buyer.query import load_contract, tls_of

    identity = load_identity(credentials)
    c, _ = load_contract(identity, contract)
    jobs = CoordinatorClient(coordinator, tls_of(identity), c.coordinator.name).list_jobs(limit)
    if as_json:
        print_json([asdict(j) for j in jobs])
        return
    if not jobs:
        console.print("no jobs at this coordinator yet")
        return
    t = Table(title=f"jobs of {identity.credential.name} at {coordinator}", title_justify="left")
    for col in ("job", "kind", "state", "created", "progress / reason"):
        t.add_column(col)
    for j in jobs:
        t.add_row(j.job_id, j.kind, j.state, j.created_at,
                  escape(j.error if j.state == "failed" else _progress(j) if j.state == "running" else ""))
    console.print(t)


@app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument()],
    credentials: Credentials,
    coordinator: SubmittedTo = None,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Stop a running job: it fails with "cancelled by the buyer" at its next step (before the run phase,
    nobody is charged; owners that already released their part keep the spend)."""
    st = _client_for_job(credentials, job_id, coordinator).cancel_job(job_id)
    if as_json:
        print_json(asdict(st))
        return
    console.print(f"job {st.job_id}: cancel requested; `fedtrust job status {st.job_id}` shows when it stopped",
                  highlight=False)


@app.command("result")
def result(
    job_id: Annotated[str, typer.Argument()],
    credentials: Credentials,
    coordinator: SubmittedTo = None,
    out: Optional[Path] = typer.Option(None, "--out", help="write the result here (JSON)"),
    receipt: Optional[Path] = typer.Option(None, "--receipt", help="write the receipt bundle here"),
    as_json: bool = typer.Option(False, "--json"),
    fmt: str = typer.Option("table", "--format", help="a query's result as table, json or csv"),
) -> None:
    """Fetch a finished job's result again and verify its receipt: a query's aggregate (decrypted with the job's
    stored key), a training job's model (--out model.safetensors) or a vertical-lr job's weights and model (the
    shares opened with the job's stored key; --out model.safetensors)."""
    from fedtrust.buyer.query import fetch_again

    identity = load_identity(credentials)
    kind = open_job(credentials, job_id).read_meta().get("kind")
    if kind == "train":
        from fedtrust.buyer.train import fetch_model_again
        from fedtrust.cli.train import metrics_table

        res = fetch_model_again(identity, credentials, job_id, coordinator)
        if out:
            out.write_bytes(res.model)
        if receipt:
            receipt.write_bytes(res.receipt.to_json())
        if as_json:
            print_json({"job_id": res.job_id, "model_digest": res.model_digest,
                        "rounds": [m.to_dict() for m in res.metrics]})
        else:
            console.print(metrics_table(res.metrics, f"job {res.job_id}: aggregate metrics over all owners"))
            console.print(f"model sha256 {res.model_digest}" + (f", written to {out}" if out else ""))
        return
    if kind == "vertical-lr":
        from fedtrust.buyer.vertical_lr import fetch_vertical_lr_again
        from fedtrust.cli.train import show_vertical_lr

        show_vertical_lr(fetch_vertical_lr_again(identity, credentials, job_id, coordinator), out, receipt, as_json)
        return
    if kind in ("mpc-stats", "joint"):
        from fedtrust.buyer.mpc import fetch_mpc_again
        from fedtrust.cli.query import show_mpc_result

        show_mpc_result(fetch_mpc_again(identity, credentials, job_id, coordinator), out, receipt,
                        check_format(fmt, as_json))
        return
    if kind == "psi":
        from fedtrust.buyer.vertical import fetch_psi_again
        from fedtrust.cli.vertical import show_psi

        show_psi(fetch_psi_again(identity, credentials, job_id, coordinator), out, receipt, as_json)
        return
    fmt = check_format(fmt, as_json)
    show_result(fetch_again(identity, credentials, job_id, coordinator), out, receipt, as_json, fmt)

"""`fedtrust train`: federated training over all owners of a contract, with a progress bar per round."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedtrust.cli.output import console, err_console, print_json
from fedtrust.trust.credentials import load_identity


def _bar():
    """A progress bar per round on a terminal; plain lines (one per node answer or round) otherwise."""
    from fedtrust.cli.output import LineProgress

    if not err_console.is_terminal:
        return LineProgress("training")
    return Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("rounds"),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err_console, transient=False)


def metrics_table(metrics, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for c in ("round", "train loss", "train accuracy", "eval loss", "eval accuracy"):
        t.add_column(c, justify="right")
    for m in metrics:
        t.add_row(str(m.round), m.train_loss, m.train_accuracy, m.eval_loss or "-", m.eval_accuracy or "-")
    return t


def train(
    job: Path = typer.Argument(..., help="job.toml with a [job] table (model, features, label, strategy, rounds, ...)"),
    credentials: Path = typer.Option(..., "--credentials", envvar="FEDTRUST_CREDENTIALS",
                                     help="the buyer's credentials directory"),
    contract: Path = typer.Option(..., "--contract", envvar="FEDTRUST_CONTRACT", help="the contract file"),
    coordinator: str = typer.Option(..., "--coordinator", envvar="FEDTRUST_COORDINATOR",
                                    help="HOST:PORT of the contract's coordinator"),
    out: Path = typer.Option(Path("model.safetensors"), "--out", help="write the trained model here (safetensors)"),
    receipt: Optional[Path] = typer.Option(None, "--receipt", help="write the receipt bundle here"),
    as_json: bool = typer.Option(False, "--json", help="print a summary as JSON on stdout"),
    timeout: float = typer.Option(86400.0, "--timeout", help="seconds to wait for the whole job"),
) -> None:
    """Train a model over every owner's data: masked updates, only sums leave the nodes; verified receipt."""
    from fedtrust.buyer.train import submit_training
    from fedtrust.training.spec import load_training_toml
    from fedtrust.trust.vertical_lr import is_vertical_lr_toml

    if is_vertical_lr_toml(job):
        train_vertical(job, credentials, contract, coordinator, out, receipt, as_json, timeout)
        return
    spec = load_training_toml(job)
    identity = load_identity(credentials)
    with _bar() as bar:
        task = bar.add_task("train", total=spec.rounds, completed=0, status="submitting")

        def on_round(ev) -> None:
            if ev.stage == "node-answered":
                status = f"round {ev.round} {ev.phase}: {ev.done}/{ev.total} nodes answered"
            elif ev.stage == "aggregated" and ev.loss is not None:
                status = (f"round {ev.round} {ev.phase}: {ev.total}/{ev.total} nodes, aggregate loss {ev.loss:.4f}, "
                          f"accuracy {ev.accuracy:.3f}")
            elif ev.stage == "finishing":
                status = "collecting the owners' attestations"
            else:
                status = ev.stage
            last_phase = ev.phase == "evaluate" or not spec.evaluate
            if ev.stage == "aggregated" and last_phase:
                bar.update(task, completed=ev.round)
            bar.update(task, status=status)

        res = submit_training(identity, credentials, contract, coordinator, spec, on_round, timeout)
        bar.update(task, completed=spec.rounds, status="verified")
    out.write_bytes(res.model)
    if receipt:
        receipt.write_bytes(res.receipt.to_json())
    if as_json:
        print_json({"job_id": res.job_id, "model": str(out), "model_digest": res.model_digest,
                    "rounds": [m.to_dict() for m in res.metrics], "receipt": str(receipt) if receipt else None,
                    "epsilon": res.verified.epsilon_spent})
        return
    err_console.print(f"job {res.job_id} done")
    if any(a.dp for a in res.verified.attestations):
        console.print("differentially private training (DP-SGD at each owner, CSPRNG noise); this job cost "
                      + ", ".join(f"{n} ε={e}" for n, e in res.verified.epsilon_spent.items())
                      + ". Owners release no training metrics under DP.")
    else:
        console.print(metrics_table(res.metrics, f"job {res.job_id}: aggregate metrics over all owners"))
    console.print(f"model written to {out} (sha256 {res.model_digest})")
    if receipt:
        console.print(f"receipt written to {receipt}; the exchange checks it with "
                      f"`fedtrust exchange verify EXCHANGE_DIR {receipt} --result {out}`")


def train_vertical(job: Path, credentials: Path, contract: Path, coordinator: str, out: Path, receipt: Optional[Path],
                   as_json: bool, timeout: float) -> None:
    """A vertical-lr job.toml: logistic regression on secret shares of the owners' aligned rows (MPC)."""
    from fedtrust.buyer.vertical_lr import submit_vertical_lr
    from fedtrust.cli.output import with_progress
    from fedtrust.trust.vertical_lr import load_vertical_lr_toml

    spec = load_vertical_lr_toml(job)
    identity = load_identity(credentials)
    res = with_progress("vertical-lr", "verified", lambda progress: submit_vertical_lr(
        identity, credentials, contract, coordinator, spec, progress, timeout))
    err_console.print(f"job {res.job_id} done")
    show_vertical_lr(res, out, receipt, as_json, str(job))


def show_vertical_lr(res, out: Optional[Path], receipt: Optional[Path], as_json: bool, job: str = "JOB.toml") -> None:
    """A vertical-lr job's weights and model file (`fedtrust train`, `fedtrust job result`)."""
    from fedtrust.buyer.vertical_lr import MODEL_FILE
    from fedtrust.cli.output import result_table

    model = out or res.result_path.with_name(MODEL_FILE)  # the copy in the job folder by default
    if out:
        out.write_bytes(res.model)
    if receipt:
        receipt.write_bytes(res.mpc.receipt.to_json())
    if as_json:
        print_json({"job_id": res.job_id, "model": str(model), "model_digest": res.mpc.result["model_digest"],
                    "result": res.mpc.result, "receipt": str(receipt) if receipt else None})
        return
    console.print(result_table(res.mpc.result["columns"], [[n, f"{w:.6f}"] for n, w in res.mpc.result["rows"]],
                               title=f"job {res.job_id}: the model's weights (only you received them)"))
    console.print(f"model written to {model} (sha256 {res.mpc.result['model_digest']}); predict with "
                  f"`fedtrust predict --model {model} --job {job} ROWS.csv`")
    if receipt:
        console.print(f"receipt written to {receipt}; the exchange checks it with `fedtrust exchange verify "
                      f"EXCHANGE_DIR {receipt} --result {res.result_path}`")

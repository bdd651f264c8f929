"""`fedtrust predict`: apply a delivered model to new rows, preprocessed exactly as the nodes did."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fedtrust.cli.output import console, print_json, result_table


def predict(
    data: Path = typer.Argument(..., help="CSV or Parquet file with the model's feature columns"),
    model: Path = typer.Option(..., "--model", help="model.safetensors written by `fedtrust train` (federated or "
                                                    "vertical-lr)"),
    job: Optional[Path] = typer.Option(None, "--job", help="the job.toml the model was trained with (checked)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write one prediction per input row here (CSV)"),
    as_json: bool = typer.Option(False, "--json", help="print the predictions as JSON on stdout"),
    encoding: str = typer.Option("utf-8", "--encoding", help="the CSV's text encoding, e.g. gb18030"),
    null_values: Optional[List[str]] = typer.Option(None, "--null-value",
                                                    help="a cell that means missing, e.g. NA (repeat; default: empty)"),
) -> None:
    """Predict the label for every row: probability (binary label) or class scores, and the predicted class."""
    from fedtrust.errors import ConfigError
    from fedtrust.training.predict import predict_rows, write_predictions
    from fedtrust.training.spec import load_training_toml
    from fedtrust.trust.vertical_lr import is_vertical_lr_toml, load_vertical_lr_toml

    try:
        raw = model.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"model file {model} does not exist") from None
    spec = None if job is None else load_vertical_lr_toml(job) if is_vertical_lr_toml(job) else load_training_toml(job)
    pred = predict_rows(raw, data, spec, encoding=encoding,
                        null_values=tuple(null_values) if null_values else ("",))
    if out:
        write_predictions(pred, out)
    if as_json:
        print_json({"columns": list(pred.columns), "rows": pred.rows})
        return
    console.print(result_table(pred.columns, pred.rows[:10], title=f"first {min(10, len(pred.rows))} of "
                                                                     f"{len(pred.rows)} predictions"))
    if out:
        console.print(f"{len(pred.rows)} predictions written to {out}")

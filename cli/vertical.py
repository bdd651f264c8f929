"""`fedtrust psi`: the private set intersection of a vertical contract's two owners."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedtrust.cli.output import console, err_console, print_json, print_saved, save_result, with_progress
from fedtrust.trust.credentials import load_identity


def psi(
    credentials: Path = typer.Option(..., "--credentials", help="the buyer's credentials directory"),
    contract: Path = typer.Option(..., "--contract", help="a vertical contract (its rules have a vertical table)"),
    coordinator: str = typer.Option(..., "--coordinator", help="HOST:PORT of the contract's coordinator"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the result here (JSON)"),
    receipt: Optional[Path] = typer.Option(None, "--receipt", help="write the receipt bundle here"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
    timeout: float = typer.Option(3600.0, "--timeout", help="seconds to wait for the job"),
) -> None:
    """Intersect the owners' customers on the contract's join key: you learn the size; each owner its own rows."""
    from fedtrust.buyer.vertical import submit_psi

    identity = load_identity(credentials)
    res = with_progress("psi", "attested",
                        lambda progress: submit_psi(identity, credentials, contract, coordinator, progress, timeout))
    err_console.print(f"job {res.job_id} done")
    show_psi(res, out, receipt, as_json)


def show_psi(res, out: Optional[Path], receipt: Optional[Path], as_json: bool) -> None:
    save_result(res, out, receipt)
    if as_json:
        print_json(res.result)
        return
    console.print(f"intersection size: {res.intersection_size} (attested by both owners; each owner keeps which of "
                  "its own rows matched, for later joint jobs)")
    print_saved(out, receipt)

"""`fedtrust query`: a secure aggregate query over all owners of a contract."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedtrust.cli.output import console, err_console, print_rows, print_saved, result_table, save_result, with_progress
from fedtrust.trust.credentials import load_identity

FORMATS = ("table", "json", "csv")


def check_format(fmt: str, as_json: bool) -> str:
    if fmt not in FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(FORMATS)}", param_hint="--format")
    return "json" if as_json else fmt


def show_result(res, out: Optional[Path], receipt: Optional[Path], as_json: bool, fmt: str = "table") -> None:
    """Write result.json / receipt.json where asked and print the table (or JSON, or CSV: header and rows)."""
    save_result(res, out, receipt)
    if print_rows(res.result, "json" if as_json else fmt):
        return
    ci = res.noisy.ci95 if res.noisy is not None else None
    console.print(result_table(res.table.columns, res.table.rows, title=f"job {res.job_id}", ci95=ci))
    if res.table.withheld:
        console.print(f"{res.table.withheld} owner contribution(s) to groups below the contract's minimum group size "
                      "were withheld by their owners.")
    for key, column, n in res.table.withheld_columns:
        where = f" in group {', '.join(key)}" if key else ""
        console.print(f"`{column}`{where}: {n} owner(s) withheld its quantities (fewer values than the contract's "
                      "minimum group size); the figures shown pool the other owners only.", highlight=False)
    if not res.table.withheld and not res.table.withheld_columns:
        console.print("No owner contribution was withheld.")
    spent = res.verified.epsilon_spent
    if res.noisy is not None:
        console.print("differentially private answer (discrete Laplace at each owner); this job cost "
                      + ", ".join(f"{n} ε={e}" for n, e in spent.items())
                      + ". Intervals are 95% from the known noise; derived values are clamped to their valid range.")
    else:
        console.print("exact answer: this contract asks for no differential privacy (aggregation rules only).")
    print_saved(out, receipt)


def query(
    sql: str = typer.Argument(..., help="SELECT … FROM <dataset> [WHERE …] [GROUP BY …]"),
    credentials: Path = typer.Option(..., "--credentials", envvar="FEDTRUST_CREDENTIALS",
                                     help="the buyer's credentials directory"),
    contract: Path = typer.Option(..., "--contract", envvar="FEDTRUST_CONTRACT", help="the contract file"),
    coordinator: str = typer.Option(..., "--coordinator", envvar="FEDTRUST_COORDINATOR",
                                    help="HOST:PORT of the contract's coordinator"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the result here (JSON)"),
    receipt: Optional[Path] = typer.Option(None, "--receipt", help="write the receipt bundle here"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
    fmt: str = typer.Option("table", "--format", help="how to print the result: table, json or csv (header, rows)"),
    timeout: float = typer.Option(600.0, "--timeout", help="seconds to wait for the job"),
    alignment: Optional[str] = typer.Option(None, "--alignment", help="joint statistics (a JOIN under a vertical "
                                            "contract): the PSI job whose aligned rows to join (default: your newest)"),
) -> None:
    """Run a secure aggregate query: nodes release masked, encrypted aggregates; only you decrypt their sum.
    MIN, MAX, MEDIAN and QUANTILE_CONT run in MPC between the owners; only you add the shares of the answer.
    A JOIN of a vertical contract's two products (joint statistics) runs in MPC over a PSI job's aligned rows."""
    from fedtrust.buyer.joint import is_joint_sql
    from fedtrust.buyer.mpc import is_mpc_sql
    from fedtrust.buyer.query import submit_query

    fmt = check_format(fmt, as_json)
    identity = load_identity(credentials)
    if is_joint_sql(sql):
        return _mpc_query(identity, credentials, contract, coordinator, sql, out, receipt, fmt, timeout,
                          joint=True, alignment=alignment)
    if alignment is not None:
        from fedtrust.errors import InvalidInput

        raise InvalidInput("--alignment names the PSI job of a joint statistics query (a JOIN of two products); "
                           "this query joins nothing, so drop it")
    if is_mpc_sql(sql):
        return _mpc_query(identity, credentials, contract, coordinator, sql, out, receipt, fmt, timeout)
    res = with_progress("query", "decrypted",
                        lambda progress: submit_query(identity, credentials, contract, coordinator, sql, progress,
                                                      timeout))
    err_console.print(f"job {res.job_id} done")
    show_result(res, out, receipt, as_json, fmt)


def _mpc_query(identity, credentials: Path, contract: Path, coordinator: str, sql: str, out: Optional[Path],
               receipt: Optional[Path], fmt: str, timeout: float, *, joint: bool = False,
               alignment: Optional[str] = None) -> None:
    from fedtrust.buyer.joint import submit_joint
    from fedtrust.buyer.mpc import submit_mpc_stats

    if joint:
        res = with_progress("mpc", "added", lambda progress: submit_joint(identity, credentials, contract, coordinator,
                                                                           sql, alignment, progress, timeout))
    else:
        res = with_progress("mpc", "added", lambda progress: submit_mpc_stats(identity, credentials, contract,
                                                                               coordinator, sql, progress, timeout))
    err_console.print(f"job {res.job_id} done")
    show_mpc_result(res, out, receipt, fmt)


def show_mpc_result(res, out: Optional[Path], receipt: Optional[Path], fmt: str) -> None:
    """An MPC job's result (`buyer.mpc.MpcOutcome`): result.json / receipt where asked, then table, JSON or CSV."""
    save_result(res, out, receipt)
    if print_rows(res.result, fmt):
        return
    console.print(result_table(res.result["columns"], res.result["rows"], title=f"job {res.job_id}"))
    if res.result.get("alignment"):
        console.print(f"joint statistics over the rows PSI job {res.result['alignment']} aligned; "
                      f"{res.result.get('withheld_groups', 0)} joined group(s) and "
                      f"{res.result.get('withheld_columns', 0)} column value(s) withheld (below the contract's "
                      "min_group_size; their sizes are not revealed)", highlight=False)
    for column, width in res.result.get("resolution", {}).items():
        console.print(f"`{column}`: quantiles are reported at the midpoint of a histogram bin {width:g} wide (the "
                      "public bounds in 1024 bins)", highlight=False)
    spent = res.verified.epsilon_spent
    if any(float(e) for e in spent.values()):
        console.print("differentially private: each owner noised its histogram (discrete Laplace); this job cost "
                      + ", ".join(f"{n} ε={e}" for n, e in spent.items()))
    else:
        console.print("computed in MPC between the owners; only you added the shares of the answer.")
    print_saved(out, receipt)

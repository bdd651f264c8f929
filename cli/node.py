"""`fedtrust node …`: run a node daemon, check it, back up and restore its state, ask its status; print a data file's
commitment."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedtrust.cli.output import console, serve_until_stopped
from fedtrust.config import load_node_config

app = typer.Typer(help="Data owner's node daemon.", no_args_is_help=True)


@app.command("serve")
def serve(config: Path = typer.Option(..., "--config", help="NODE.toml")) -> None:
    """Serve the products listed in NODE.toml to the coordinators of their contracts (mTLS)."""
    from fedtrust.node.daemon import NodeDaemon

    daemon = NodeDaemon(load_node_config(config))
    serve_until_stopped(daemon, f"node [bold]{daemon.name}[/] serving {len(daemon.runtime.datasets)} product(s) "
                                "on port {port}")


@app.command("digest")
def digest(
    path: Path = typer.Argument(..., exists=True, help="a CSV or Parquet file, or a ClientApp's package directory"),
    as_json: bool = typer.Option(False, "--json", help="print {path, kind, digest, note} as JSON"),
) -> None:
    """Print a data file's commitment (sha256 of the file) to list it as a product, or the digest of a ClientApp
    package directory (every file in it) to approve it under [[clientapps]]."""
    if path.is_dir():
        from fedtrust.node.apps import app_digest

        _print_digest(path, "clientapp", app_digest(path), None, as_json)
        return
    from fedtrust.query.dataset import encoding_problem, file_digest

    problem = None
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        problem = encoding_problem(path)  # the commitment is of the bytes as they are; the node must decode them
    _print_digest(path, "data", file_digest(path), problem, as_json)


def _print_digest(path: Path, kind: str, digest: str, note: str | None, as_json: bool) -> None:
    if as_json:
        from fedtrust.cli.output import print_json

        print_json({"path": str(path), "kind": kind, "digest": digest, "note": note})
        return
    print(digest)
    if note:
        from fedtrust.cli.output import err_console

        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)  # commands stay copyable


@app.command("budget")
def budget(
    config: Path = typer.Option(..., "--config", help="NODE.toml"),
    as_json: bool = typer.Option(False, "--json"),
    last: int = typer.Option(3, "--last", help="how many recent jobs to list per contract"),
) -> None:
    """Per contract: ε and δ spent and remaining (both totals over the contract's jobs), number of jobs, and the
    last receipts (from the node's ledger)."""
    from rich.table import Table

    from fedtrust.cli.output import print_json
    from fedtrust.node.store import NodeStore

    cfg = load_node_config(config)
    budgets = NodeStore(cfg.state, cfg.watermark).budgets(last)
    if as_json:
        print_json([{
            "contract_digest": b.contract_digest, "jobs": b.jobs, "queries": b.queries,
            "spent_epsilon": b.spent_epsilon, "epsilon_total": b.epsilon_total,
            "remaining_epsilon": b.remaining_epsilon,
            "spent_delta": b.spent_delta, "delta_total": b.delta_total, "remaining_delta": b.remaining_delta,
            "last": [{"job_id": d.job_id, "kind": d.kind, "epsilon": d.epsilon, "delta": d.delta, "seq": d.chain.seq,
                      "entry_digest": d.entry_digest, "attestation_digest": att, "at": d.created_at}
                     for d, att in b.last],
        } for b in budgets])
        return
    if not budgets:
        console.print(f"node {cfg.name} has run no jobs yet")
        return
    t = Table(title=f"privacy budget at node {cfg.name}", title_justify="left")
    for c in ("contract", "jobs", "ε spent", "ε total", "ε left", "δ spent", "δ total", "δ left",
              "last jobs (seq: job, ε, δ)"):
        t.add_column(c)
    for b in budgets:
        recent = "\n".join(f"{d.chain.seq}: {d.job_id[:12]} ε={d.epsilon} δ={d.delta}" for d, _ in b.last)
        t.add_row(b.contract_digest[:16] + "…", str(b.jobs), b.spent_epsilon, b.epsilon_total or "no DP",
                  b.remaining_epsilon or "—", b.spent_delta, b.delta_total or "no DP", b.remaining_delta or "—", recent)
    console.print(t)


@app.command("log")
def job_log(
    config: Path = typer.Option(..., "--config", help="NODE.toml"),
    contract: Optional[str] = typer.Option(None, "--contract", help="only jobs under this contract (digest or file)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every job this node was asked to run: contract, buyer, coordinator, SQL or training spec, ε, groups
    withheld, outcome (with the rule a refusal named) and duration (from the node's ledger)."""
    from rich.markup import escape
    from rich.table import Table

    from fedtrust.cli.output import print_json
    from fedtrust.node.store import NodeStore

    cfg = load_node_config(config)
    records = NodeStore(cfg.state, cfg.watermark).jobs.jobs(_contract_digest(contract) if contract else None)
    if as_json:
        print_json([r.to_dict() for r in records])
        return
    if not records:
        console.print(f"node {cfg.name} has no jobs" + (" under that contract" if contract else " yet"))
        return
    t = Table(title=f"jobs at node {cfg.name}", title_justify="left")
    for c in ("at", "contract", "job", "buyer / coordinator", "request", "ε", "withheld", "outcome", "s"):
        t.add_column(c)
    for r in records:
        outcome = r.outcome + (f"\n[dim]{escape(r.detail)}[/]" if r.detail else "")
        t.add_row(r.at, (r.contract_digest or "?")[:16] + "…", (r.job_id or "?")[:12], f"{r.buyer} / {r.coordinator}",
                  escape(r.request or ""), r.epsilon or "", "" if r.withheld is None else str(r.withheld), outcome,
                  f"{r.duration_s:.2f}")
    console.print(t)


@app.command("withdraw")
def withdraw(
    contract_digest: str = typer.Argument(..., help="the contract's digest (`fedtrust contract show`) or its file"),
    config: Path = typer.Option(..., "--config", help="NODE.toml"),
    reason: str = typer.Option("", "--reason", help="why, for the owner's records"),
) -> None:
    """Stop serving a contract: recorded durably in the node's ledger; a running daemon refuses its next job."""
    from fedtrust.node.store import NodeStore

    cfg = load_node_config(config)
    contract_digest = _contract_digest(contract_digest)
    at = NodeStore(cfg.state, cfg.watermark).jobs.withdraw(contract_digest, reason)
    console.print(f"node {cfg.name} withdrew from contract {contract_digest.strip().lower()[:16]}… at {at}; "
                  "it refuses every further job under it", highlight=False)


@app.command("status")
def status(
    config: Path = typer.Option(..., "--config", help="NODE.toml"),
    address: str = typer.Option(None, "--address", help="HOST:PORT (default: from listen in the config)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Health (standard gRPC health check) and, with metrics_listen, jobs, refusals and ε per contract."""
    from fedtrust.cli.status import daemon_status, print_status

    cfg = load_node_config(config)
    st = daemon_status("node", cfg.name, cfg.listen, cfg.credentials, cfg.server.metrics_listen, address)
    print_status(st, as_json)
    if st["health"] != "SERVING":
        raise typer.Exit(1)


@app.command("check")
def check(
    config: Path = typer.Option(..., "--config", help="NODE.toml"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Validate the config, credentials, key file modes, products, data and ledger without serving.

    Per column: rows that are NULL, outside the public bounds (clipped) or outside the public domain —
    counts only — and each file's data commitment."""
    from rich.table import Table

    from fedtrust.cli.output import print_json
    from fedtrust.node.check import check_node

    report = check_node(load_node_config(config))
    if as_json:
        print_json(report)
        return
    console.print(f"node {report['node']}: config, credentials and key files OK; ledger "
                  f"{report['ledger']}", highlight=False)
    for d in report["datasets"]:
        t = Table(title=f"{d['dataset']} ({d['path']}): commitment {d['commitment']} matches the product",
                  title_justify="left")
        for c in ("column", "type", "rows", "NULL", "clipped to bounds", "outside domain"):
            t.add_column(c)
        for c in d["columns"]:
            t.add_row(c["column"], c["type"], str(c["rows"]), str(c["nulls"]), str(c["clipped"]),
                      str(c["outside_domain"]))
        console.print(t)


@app.command("backup")
def backup(
    config: Path = typer.Option(..., "--config", help="NODE.toml"),
    out: Path = typer.Option(..., "--out", help="a new folder for the backup"),
) -> None:
    """Back up everything the node needs to restore its ledgers, while it serves: the ledger and audit log, the
    training store, the PSI alignments (SQLite online backup each, the ledger first) and the revocation list,
    with a manifest of their digests. Restoring it cannot refund budget: a node refuses a ledger older than the
    newest release it attested (its watermark file, kept outside the state folder and the backup)."""
    from fedtrust.node.backup import backup_state

    cfg = load_node_config(config)
    manifest = backup_state(cfg, out)
    console.print(f"node {cfg.name} backed up to {out}: {', '.join(sorted(manifest.files))}", highlight=False)


@app.command("restore")
def restore(
    config: Path = typer.Option(..., "--config", help="NODE.toml"),
    source: Path = typer.Option(..., "--from", help="a folder `fedtrust node backup` made"),
) -> None:
    """Restore a backup into the node's state folder (the node stopped, the folder absent or empty): checks that
    it is this node's, that every file matches its digest, and that its ledger reaches the node's watermark
    (an older backup would refund spent budget and is refused; nothing is restored then)."""
    from fedtrust.node.backup import restore_state

    cfg = load_node_config(config)
    manifest = restore_state(cfg, source)
    console.print(f"node {cfg.name}: restored {', '.join(sorted(manifest.files))} (backed up at "
                  f"{manifest.created_at}) into {cfg.state}; start it with `fedtrust node serve`", highlight=False)


def _contract_digest(value: str) -> str:
    """A contract named by its digest or by its file (whose payload digest names it)."""
    from fedtrust.errors import ConfigError, InvalidInput
    from fedtrust.trust.dsse import Envelope

    p = Path(value)
    if p.is_file():
        try:
            return Envelope.from_json(p.read_bytes()).digest
        except InvalidInput:
            raise ConfigError(f"{p} is not a contract file; pass the contract's digest or its file") from None
    return value.strip().lower()

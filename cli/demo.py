"""`fedtrust demo`: a whole federation on localhost, on embedded defaults, in a temporary workspace."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.panel import Panel

from fedtrust.cli.output import console, result_table
from fedtrust.errors import Error

DEMO_QUERIES = [
    "SELECT region, COUNT(*) AS n, AVG(income) AS mean_income FROM loans GROUP BY region",
    "SELECT COUNT(*) AS n, AVG(age) AS mean_age, STDDEV_SAMP(income) AS sd_income, SUM(defaulted) AS defaults "
    "FROM loans WHERE age BETWEEN 30 AND 50 AND region IN ('north', 'east')",
]
DEMO_REFUSAL = "SELECT AVG(income) AS mean_income FROM loans WHERE income > 250000"


def demo(
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="keep the demo's files here (default: a temp dir)"),
) -> None:
    """Exchange, three data owners, a coordinator and a buyer on localhost: queries, a refusal, a verified receipt."""
    if workspace is not None:
        workspace.mkdir(parents=True, exist_ok=True)
        run_demo(workspace)
    else:
        with tempfile.TemporaryDirectory(prefix="fedtrust-demo-") as tmp:
            run_demo(Path(tmp))


def run_demo(root: Path) -> None:
    from fedtrust.buyer.query import plan_for, query_rules, submit_query
    from fedtrust.demo.federation import DEFAULT_OWNERS, build_federation
    from fedtrust.demo.reference import pooled_answer
    from fedtrust.exchange.verify import verify_receipt_file
    from fedtrust.trust.credentials import load_identity

    t0 = time.perf_counter()
    console.rule("[bold]fedtrust demo: data usable but not visible")
    fed = build_federation(root)
    console.print(f"exchange issued credentials, products and a contract in {root}")
    console.print("owners: " + ", ".join(f"{n} ({rows:,} rows)" for n, rows in DEFAULT_OWNERS.items())
                  + "; each keeps its rows and runs its own node daemon")
    buyer = load_identity(fed.buyer_dir)
    with fed:
        console.print(f"coordinator listening on {fed.coordinator_address}; all channels mutual TLS\n")
        receipt_path = root / "receipt.json"
        result_path = root / "result.json"
        for sql in DEMO_QUERIES:
            console.print(Panel(sql, title="buyer's query", expand=False))
            res = submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, sql)
            console.print(result_table(res.table.columns, res.table.rows, title="fedtrust (decrypted sum of masked, encrypted releases)"))
            contract = res.verified.contract
            plan = plan_for(contract, sql)
            cols, rows = pooled_answer(plan, sql, list(fed.data.values()), query_rules(contract).min_group_size,
                                       contract.schema)
            console.print(result_table(cols, rows, title="plaintext over the pooled rows the rules admit (for comparison only)"))
            console.print(f"withheld owner contributions (groups below {query_rules(contract).min_group_size} rows): "
                          f"{res.table.withheld}\n")
            receipt_path.write_bytes(res.receipt.to_json())
            result_path.write_text(json.dumps(res.result))

        console.print(Panel(DEMO_REFUSAL, title="a query the contract forbids", expand=False))
        try:
            submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, DEMO_REFUSAL)
            console.print("[red]unexpected: the query was accepted[/]")
        except Error as e:
            console.print(f"[yellow]refused[/] ({e.kind}): {escape(str(e))}\n", highlight=False)

        run_privacy_part(root, fed, buyer)
        run_training_part(root, fed, buyer)

    verdict = verify_receipt_file(fed.exchange_dir, receipt_path, result_path)
    console.print(Panel(verdict.summary, title="exchange verifies the last receipt offline", expand=False))
    run_vertical_part(root)
    console.print(f"demo finished in {time.perf_counter() - t0:.1f} s")


def run_privacy_part(root: Path, fed, buyer) -> None:
    """A contract with [privacy]: noisy answers with intervals, the budget spent, then a refusal."""
    from fedtrust.buyer.query import plan_for, query_rules, submit_query
    from fedtrust.demo.privacy_demo import DP_PRIVACY, issue_dp_contract
    from fedtrust.demo.reference import pooled_answer
    from fedtrust.node.store import NodeStore

    console.rule("[bold]the same owners under a contract with differential privacy")
    contract_path = issue_dp_contract(root, fed.exchange_dir, "analyst", "coord", list(fed.data))
    console.print(f"\\[privacy] epsilon_total = {DP_PRIVACY['epsilon_total']}, epsilon_per_query = "
                  f"{DP_PRIVACY['epsilon_per_query']} (each owner grants this budget for its own rows)")
    sql = DEMO_QUERIES[0]
    for attempt in range(3):
        try:
            res = submit_query(buyer, fed.buyer_dir, contract_path, fed.coordinator_address, sql)
        except Error as e:
            console.print(f"[yellow]query {attempt + 1} refused[/] ({e.kind}): {escape(str(e))}\n", highlight=False)
            break
        noisy = res.noisy
        if noisy is None:
            raise Error("the DP contract's answer came back without its noise; the demo cannot go on")
        console.print(result_table(res.table.columns, res.table.rows, ci95=noisy.ci95,
                                   title=f"query {attempt + 1}: noisy answer with 95% intervals"))
        if attempt == 0:
            contract = res.verified.contract
            cols, rows = pooled_answer(plan_for(contract, sql), sql, list(fed.data.values()),
                                       query_rules(contract).min_group_size, contract.schema)
            console.print(result_table(cols, rows, title="plaintext over the pooled rows (for comparison only)"))
        spent = {n: str(NodeStore(d.runtime.config.state).spent_epsilon(res.verified.contract_digest))
                 for n, d in fed.nodes.items()}
        console.print("ε spent so far per owner: " + ", ".join(f"{n} {e}" for n, e in spent.items()) + "\n")


DEMO_JOB_TOML = """\
[job]
dataset = "loans"
model = "logreg"
features = ["income", "age", "region"]
label = "defaulted"
strategy = "fedavg"
rounds = 5
local_epochs = 1
batch_size = 64
learning_rate = 0.5
"""


def run_training_part(root: Path, fed, buyer) -> None:
    """Federated logistic regression over the three owners, next to the same model trained on pooled rows."""
    from rich.table import Table

    from fedtrust.buyer.train import submit_training
    from fedtrust.cli.train import metrics_table
    from fedtrust.demo.central import auc, pooled_rows, score, train_central
    from fedtrust.demo.data import write_loans
    from fedtrust.exchange.verify import verify_receipt_file
    from fedtrust.training.predict import load_model, predict_rows
    from fedtrust.training.spec import load_training_toml

    console.rule("[bold]federated training: one model over every owner's rows, no update seen in the clear")
    job = root / "job.toml"
    job.write_text(DEMO_JOB_TOML)
    spec = load_training_toml(job)
    console.print(Panel(DEMO_JOB_TOML.strip(), title=f"buyer's {job.name}", expand=False))

    def on_round(ev) -> None:
        if ev.stage == "aggregated" and ev.loss is not None:
            console.print(f"  round {ev.round}/{ev.rounds} {ev.phase:<8} {ev.total} nodes answered, "
                          f"aggregate loss {ev.loss:.4f}, accuracy {ev.accuracy:.3f}", highlight=False)

    res = submit_training(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, spec, on_round)
    console.print(metrics_table(res.metrics, "aggregate metrics the receipt records (means over all owners)"))
    model_path, receipt_path = root / "model.safetensors", root / "receipt-train.json"
    model_path.write_bytes(res.model)
    receipt_path.write_bytes(res.receipt.to_json())

    contract = res.verified.contract
    test = pooled_rows([write_loans(root / "data" / "holdout.csv", 3000, seed=99)], contract.schema, spec)
    federated, _, _ = load_model(res.model)
    central, _ = train_central(list(fed.data.values()), contract.schema, spec)
    t = Table(title="on 3,000 held-out rows (the comparison needs the pooled rows: for the demo only)",
              title_justify="left")
    for c in ("model", "accuracy", "log-loss", "AUC"):
        t.add_column(c, justify="right")
    for name, model in (("federated (fedtrust)", federated), ("central, on the pooled rows", central)):
        acc, loss = score(model, test)
        t.add_row(name, f"{acc:.3f}", f"{loss:.4f}", f"{auc(model, test):.3f}")
    base = float(test.y.mean())
    t.add_row("always 'no default'", f"{1 - base:.3f}", "-", "0.500")
    console.print(t)
    pred = predict_rows(res.model, root / "data" / "holdout.csv", spec)
    console.print(result_table(pred.columns, pred.rows[:3], title="`fedtrust predict` on the first held-out rows"))
    verdict = verify_receipt_file(fed.exchange_dir, receipt_path, model_path)
    console.print(Panel(verdict.summary, title="exchange verifies the training receipt and the model file",
                        expand=False))


def run_vertical_part(root: Path) -> None:
    """A bank (labels, its own node) and a telecom operator (features) with overlapping customers: the PSI size,
    a joint statistic, and a vertical model next to central training on the joined rows."""
    from rich.table import Table

    from fedtrust.demo.vertical import run_vertical

    console.rule("[bold]vertical: a bank and a telecom operator learn from their shared customers")
    console.print("bank-node holds segment, income and defaulted of 300 customers; telco-node arpu and tenure_months of "
                  "400; both keyed by a salted hash of the phone number (type \"key\": never released)")
    v = run_vertical(root / "vertical")
    console.print(f"PSI: {v.intersection_size} shared customers, attested by both owners (plaintext join of the two "
                  f"files, for comparison only: {v.joined_rows}); each owner keeps which of its own rows matched\n")
    j = Table(title="joint statistic over the aligned rows: MPC between the owners (only the buyer adds the output "
                    "shares) | the plaintext join of the two files (for comparison only)", title_justify="left")
    for c in ("segment", "customers", "avg_arpu", "default_rate", "| plaintext customers", "avg_arpu", "default_rate"):
        j.add_column(c, justify="right")
    plain = {r[0]: r for r in v.joint_plain}

    def fmt(x) -> str:
        return "withheld" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))

    for row in v.joint:
        p = plain.get(row[0], (row[0], 0, None, None))
        j.add_row(*[fmt(x) for x in row], *[fmt(x) for x in p[1:]])
    console.print(Panel(v.joint_sql, title="buyer's joint query (fedtrust query)", expand=False))
    console.print(j)
    console.print(Panel(v.job_toml.strip(), title="buyer's vertical-job.toml", expand=False))
    t = Table(title=f"logistic regression on the {v.joined_rows} joined customers (AUC on the joined rows)",
              title_justify="left")
    for c in ("model", "AUC"):
        t.add_column(c, justify="right")
    t.add_row("vertical, SGD on secret shares (the model file the buyer received)", f"{v.auc_vertical:.3f}")
    t.add_row("central, plaintext SGD on the joined rows (for comparison only)", f"{v.auc_central:.3f}")
    t.add_row("the bank's columns alone (plaintext)", f"{v.auc_bank_only:.3f}")
    console.print(t)
    console.print(f"job {v.job_id}: the two owners and the dealer ran SGD on secret shares, the coordinator relaying "
                  "sealed frames; each owner sealed its share of the weights to the buyer, who alone added them "
                  f"(model file {v.model_path.name if v.model_path else '-'}, for `fedtrust predict`)\n")

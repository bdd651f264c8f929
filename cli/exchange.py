"""`fedtrust exchange …`: the exchange's offline tools (CA, registry, listing, contracts, verification)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fedtrust.cli.output import console, err_console, print_json

app = typer.Typer(help="Data exchange: identities, products, contracts, receipt verification.", no_args_is_help=True)


@app.command("init")
def init(directory: Path = typer.Argument(..., help="the exchange's directory (created)")) -> None:
    """Create the exchange CA (ECDSA P-256), its signing key (Ed25519) and its SQLite registry."""
    from fedtrust.exchange.issuer import init_exchange

    init_exchange(directory)
    console.print(f"exchange initialised in {directory}")


@app.command("register")
def register(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    request: Path = typer.Option(..., "--request", help="request.json written by `fedtrust keygen`"),
    out: Path = typer.Option(..., "--out", help="directory for the issued public files (credential, certificate)"),
) -> None:
    """Certify a subject from its signed request: credential.json, tls.crt, ca.crt, exchange.pub (no private key)."""
    from fedtrust.exchange.issuer import register as do_register

    cred = do_register(directory, request, out)
    console.print(f"registered {cred.uri}; credential in {out}", highlight=False)


@app.command("renew")
def renew(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    request: Path = typer.Option(..., "--request", help="a new request.json from `fedtrust keygen` for the same name"),
    out: Path = typer.Option(..., "--out", help="directory for the reissued public files"),
) -> None:
    """Reissue a registered subject's credential (new keys and/or addresses); the old one stays valid until it
    expires or is revoked."""
    from fedtrust.exchange.issuer import renew as do_renew

    cred = do_renew(directory, request, out)
    console.print(f"renewed {cred.uri}; credential in {out}", highlight=False)


@app.command("list")
def list_product(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    owner: str = typer.Option(..., "--owner", help="the owning node's name"),
    dataset: str = typer.Option(..., "--dataset", help="dataset name used in FROM"),
    schema: Path = typer.Option(..., "--schema", help="SCHEMA.toml with public bounds and domains"),
    commitment: str = typer.Option(..., "--commitment", help="output of `fedtrust node digest DATAFILE`"),
    out: Path = typer.Option(..., "--out", help="product credential to write"),
    min_rows: Optional[int] = typer.Option(None, "--min-rows", help="public lower bound on the row count (DP training plans from it)"),
) -> None:
    """List a dataset as a product (signed schema and data commitment)."""
    from fedtrust.exchange.issuer import list_product as do_list

    product = do_list(directory, owner, dataset, schema, commitment, out, min_rows)
    console.print(f"listed {product.dataset!r} of {product.owner} ({len(product.schema.columns)} columns) → {out}")


@app.command("contract")
def contract(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    buyer: str = typer.Option(..., "--buyer"),
    coordinator: str = typer.Option(..., "--coordinator"),
    product: List[Path] = typer.Option(..., "--product", help="product credential (repeat for each owner)"),
    rules: Path = typer.Option(..., "--rules", help="RULES.toml"),
    out: Path = typer.Option(..., "--out", help="contract to write"),
    price: str = typer.Option("0", "--price", help="price as a decimal string"),
) -> None:
    """Issue a contract: buyer, coordinator, products and the rules every node enforces."""
    from fedtrust.exchange.issuer import issue_contract

    c = issue_contract(directory, buyer, coordinator, product, rules, out, price=price)
    if c.rules.privacy is None:
        err_console.print(
            "[yellow]warning:[/] these rules have no \\[privacy] table: nodes release exact aggregates under the "
            "aggregation rules alone (minimum group size, allowed columns and filters), as a clean room does; "
            "repeated or differencing queries can still reveal individuals. Add \\[privacy] with epsilon_total, "
            "delta and epsilon_per_query for differential privacy."
        )
    console.print(f"contract {c.contract_id} for {c.buyer.name} over {len(c.owners)} owners, valid until "
                  f"{c.valid_until} → {out}")


@app.command("verify")
def verify(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    receipt: Path = typer.Argument(..., help="receipt bundle written by `fedtrust query --receipt`"),
    result: Optional[Path] = typer.Option(None, "--result", help="the delivered result to check against the receipt"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify a receipt offline against the registry and record it (exit 0 when valid)."""
    from fedtrust.exchange.verify import verify_receipt_file

    verdict = verify_receipt_file(directory, receipt, result)
    if as_json:
        v = verdict.verified
        print_json({"valid": True, "job_id": v.job.job_id, "contract_digest": v.contract_digest,
                    "participants": list(v.job.participants), "epsilon": v.epsilon_spent,
                    "result_checked": verdict.result_checked, "already_recorded": verdict.already_recorded})
    else:
        console.print(verdict.summary, highlight=False)


@app.command("log")
def log(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    job: Optional[str] = typer.Option(None, "--job", help="add the inclusion proof of this job's receipt"),
    from_size: Optional[int] = typer.Option(None, "--from-size", help="add a consistency proof from this log size"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the JSON here instead of stdout"),
) -> None:
    """A signed checkpoint of the receipt log (size, root), with inclusion or consistency proofs."""
    import json

    from fedtrust.exchange.issuer import load_exchange

    ex = load_exchange(directory)
    doc = {"checkpoint": json.loads(ex.store.log.checkpoint(ex.signer).to_json())}
    if job:
        doc["inclusion"] = ex.store.log.inclusion_for_job(job).to_dict()
    if from_size is not None:
        doc["consistency"] = ex.store.log.consistency(from_size).to_dict()
    text = json.dumps(doc, indent=2)
    if out:
        out.write_text(text)
        console.print(f"checkpoint at size {ex.store.log.size()} written to {out}")
    else:
        print(text)


@app.command("settle")
def settle(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    contract: str = typer.Option(..., "--contract", help="the contract's digest"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the signed statement here instead of stdout"),
) -> None:
    """A signed settlement statement: the contract's verified jobs, in log order, under the log root."""
    from fedtrust.exchange.issuer import load_exchange
    from fedtrust.exchange.receipt_log import sign_settlement

    ex = load_exchange(directory)
    ex.store.get_contract(contract)  # NotFound for a contract this exchange did not issue
    env = sign_settlement(ex.store.log, contract, ex.signer)
    if out:
        out.write_bytes(env.to_json())
        console.print(f"settlement of contract {contract[:12]}… written to {out}")
    else:
        print(env.to_json().decode())

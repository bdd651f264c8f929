"""`fedtrust exchange …`: the exchange's offline tools (CA, registry, listing, contracts, verification)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fedtrust.cli.output import console, err_console, print_json

app = typer.Typer(help="Data exchange: identities, products, contracts, receipt verification.", no_args_is_help=True)


@app.command("init")
def init(
    directory: Path = typer.Argument(..., help="the exchange's directory (created)"),
    origin: Optional[str] = typer.Option(
        None, "--origin", help="name of its receipt log in checkpoints, e.g. exchange.example.org/log "
        "(default: derived from its key; unique per exchange)"),
    as_json: bool = typer.Option(False, "--json", help="print what was done as JSON"),
) -> None:
    """Create the exchange CA (ECDSA P-256), its signing key (Ed25519), its log origin and its SQLite registry."""
    from fedtrust.exchange.issuer import init_exchange

    ex = init_exchange(directory, origin)
    if as_json:
        print_json({"directory": str(directory), "origin": ex.origin, "verifier_key": ex.verifier_key})
        return
    console.print(f"exchange initialised in {directory}; receipt log origin {ex.origin}", highlight=False)
    console.print(f"checkpoint verifier key: {ex.verifier_key}", highlight=False, soft_wrap=True)


@app.command("register")
def register(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    request: Path = typer.Option(..., "--request", help="request.json written by `fedtrust keygen`"),
    out: Path = typer.Option(..., "--out", help="directory for the issued public files (credential, certificate)"),
    as_json: bool = typer.Option(False, "--json", help="print what was done as JSON"),
) -> None:
    """Certify a subject from its signed request: credential.json, tls.crt, ca.crt, exchange.pub (no private key)."""
    from fedtrust.exchange.issuer import register as do_register

    cred = do_register(directory, request, out)
    if as_json:
        print_json({"uri": cred.uri, "role": cred.role, "name": cred.name, "credentials": str(out)})
        return
    console.print(f"registered {cred.uri}; credential in {out}", highlight=False)


@app.command("renew")
def renew(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    request: Path = typer.Option(..., "--request", help="a new request.json from `fedtrust keygen` for the same name"),
    out: Path = typer.Option(..., "--out", help="directory for the reissued public files"),
    as_json: bool = typer.Option(False, "--json", help="print what was done as JSON"),
) -> None:
    """Reissue a registered subject's credential (new keys and/or addresses); the old one stays valid until it
    expires or is revoked."""
    from fedtrust.exchange.issuer import renew as do_renew

    cred = do_renew(directory, request, out)
    if as_json:
        print_json({"uri": cred.uri, "role": cred.role, "name": cred.name, "credentials": str(out)})
        return
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
    as_json: bool = typer.Option(False, "--json", help="print what was done as JSON"),
) -> None:
    """List a dataset as a product (signed schema and data commitment)."""
    from fedtrust.exchange.issuer import list_product as do_list

    product = do_list(directory, owner, dataset, schema, commitment, out, min_rows)
    if as_json:
        from fedtrust.trust.dsse import Envelope

        print_json({"digest": Envelope.from_json(out.read_bytes()).digest, "owner": product.owner,
                    "dataset": product.dataset, "file": str(out)})
        return
    console.print(f"listed {product.dataset!r} of {product.owner} ({len(product.schema.columns)} columns) → {out}")


def no_privacy_warning(c) -> str | None:
    """What a contract without `[privacy]` still lets a buyer learn, in numbers from its rules (None with DP)."""
    if c.rules.privacy is not None:
        return None
    parts = ["these rules have no [privacy] table, so nodes release exact answers."]
    q = c.rules.query
    if q is not None:
        numeric = [f for f in q.filters if c.schema.has(f) and c.schema.column(f).numeric]
        f = numeric[0] if numeric else None
        example = (f"(e.g. `{f} >= a` and `{f} >= a AND {f} < b`)" if f else "(e.g. a filter and its complement)")
        parts.append(
            f"Without [privacy], two queries that differ in one filter {example} can reveal one person's value "
            f"exactly, and an answer without GROUP BY minus a grouped one reveals what small groups withheld: "
            f"min_group_size {q.min_group_size} only limits single answers, and the buyer may ask "
            f"{q.max_queries} queries per owner.")
    if c.rules.training is not None:
        parts.append("Trained models and their aggregate updates are not differentially private either.")
    parts.append("Add [privacy] with epsilon_total, delta and epsilon_per_query for differential privacy.")
    return " ".join(parts)


@app.command("contract")
def contract(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    buyer: str = typer.Option(..., "--buyer"),
    coordinator: str = typer.Option(..., "--coordinator"),
    product: List[Path] = typer.Option(..., "--product", help="product credential (repeat for each owner)"),
    rules: Path = typer.Option(..., "--rules", help="RULES.toml"),
    out: Path = typer.Option(..., "--out", help="contract to write"),
    purpose: str = typer.Option(..., "--purpose", help="what the buyer may use the results for"),
    price: str = typer.Option("0", "--price", help="price as a decimal string"),
    valid_from: Optional[str] = typer.Option(None, "--valid-from", help="start (2026-03-01 or RFC 3339); default now"),
    valid_until: Optional[str] = typer.Option(None, "--valid-until",
                                              help="end (2026-12-31 or RFC 3339); default valid_days of the rules"),
    revocation_max_age_h: Optional[int] = typer.Option(
        None, "--revocation-max-age-h", min=1,
        help="nodes refuse this contract's jobs while their newest revocation list is older than N hours"),
    dealer: Optional[str] = typer.Option(None, "--dealer", help="the registered dealer that deals the correlated "
                                         "randomness of MPC jobs (MIN, MAX, MEDIAN, quantiles); none: no MPC jobs"),
    as_json: bool = typer.Option(False, "--json", help="print what was done as JSON"),
) -> None:
    """Issue a contract (signed by the exchange): buyer, coordinator, products, purpose, term and the rules every
    node enforces. The buyer and every owner then sign it with `fedtrust contract sign`."""
    from fedtrust.exchange.issuer import issue_contract

    c = issue_contract(directory, buyer, coordinator, product, rules, out, price=price, purpose=purpose,
                       valid_from=valid_from, valid_until=valid_until, revocation_max_age_h=revocation_max_age_h,
                       dealer=dealer)
    warning = no_privacy_warning(c)
    if warning:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    from fedtrust.exchange.lookup import contract_summary
    from fedtrust.trust.dsse import Envelope

    digest = Envelope.from_json(out.read_bytes()).digest  # the contract's one identifier, everywhere
    if as_json:
        print_json({**contract_summary(c, digest), "file": str(out)})
        return
    console.print(f"contract {digest} for {c.buyer.name} over {len(c.owners)} owners, price {c.price}, valid "
                  f"{c.valid_from} to {c.valid_until} → {out}; next: the buyer and every owner run "
                  f"`fedtrust contract sign {out} --credentials DIR`", highlight=False, soft_wrap=True)


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
                    "delta": v.delta_spent,
                    "result_checked": verdict.result_checked, "already_recorded": verdict.already_recorded})
    else:
        console.print(verdict.summary, highlight=False)


@app.command("log")
def log(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    job: Optional[str] = typer.Option(None, "--job", help="add the inclusion proof of this job's receipt"),
    contract: Optional[str] = typer.Option(None, "--contract",
                                           help="the job's contract digest (job ids are unique per contract)"),
    from_size: Optional[int] = typer.Option(None, "--from-size", help="add a consistency proof from this log size"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the checkpoint and proofs as JSON here"),
    note: Optional[Path] = typer.Option(None, "--note", help="write the bare checkpoint (C2SP signed note) here"),
    as_json: bool = typer.Option(False, "--json", help="print the checkpoint and proofs as JSON"),
    last: int = typer.Option(10, "--last", help="entries shown in the summary"),
) -> None:
    """The receipt log: a signed checkpoint (C2SP note), with inclusion or consistency proofs; a summary by default."""
    from fedtrust.exchange.issuer import load_exchange

    ex = load_exchange(directory)
    lg = ex.store.log
    entries = lg.entries()  # one snapshot: checkpoint and proofs below are for this size
    size = len(entries)
    doc: dict = {"checkpoint": lg.checkpoint(ex.signer, ex.origin, size), "verifier_key": ex.verifier_key}
    if job:
        doc["inclusion"] = lg.inclusion_for_job(job, size, contract).to_dict()
    if from_size is not None:
        doc["consistency"] = lg.consistency(from_size, size).to_dict()
    if note:
        note.write_text(doc["checkpoint"], encoding="utf-8")
    if out:
        out.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    if as_json:
        print_json(doc)
        return
    console.print(f"receipt log {ex.origin}: {size} entries, root {lg.root(size).hex()}", highlight=False,
                  soft_wrap=True)
    console.print(f"verifier key: {ex.verifier_key}", highlight=False, soft_wrap=True)
    if entries:
        t = Table(title=f"last {min(last, size)} entries", title_justify="left")
        for c in ("index", "job", "contract", "appended"):
            t.add_column(c)
        for e in entries[-last:]:
            t.add_row(str(e.index), escape(e.job_id), e.contract_digest[:16] + "…", e.appended_at)
        console.print(t)
    if "inclusion" in doc:
        console.print(f"job {escape(job or '')} is entry {doc['inclusion']['index']} "
                      f"({len(doc['inclusion']['path'])} proof hashes)")
    if "consistency" in doc:
        console.print(f"consistency proof {from_size} → {size} ({len(doc['consistency']['path'])} hashes)")
    for path, what in ((note, "checkpoint note"), (out, "checkpoint and proofs")):
        if path:
            console.print(f"{what} written to {path}", highlight=False)


@app.command("settle")
def settle(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    contract: str = typer.Option(..., "--contract", envvar="FEDTRUST_CONTRACT",
                                 help="the contract: its digest, a unique prefix of it, or its file"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the signed statement here"),
    as_json: bool = typer.Option(False, "--json", help="print the signed statement (DSSE envelope)"),
) -> None:
    """A signed settlement: the contract's verified jobs in log order under the log root, its price and each
    owner's amount; a summary by default."""
    from fedtrust.exchange.issuer import load_exchange
    from fedtrust.exchange.lookup import resolve_contract
    from fedtrust.exchange.receipt_log import sign_settlement

    ex = load_exchange(directory)
    digest = resolve_contract(ex.store, contract)
    c, _ = ex.store.get_contract(digest)
    env = sign_settlement(ex.store.log, digest, ex.signer, ex.origin, price=c.price,
                          owners=[h.credential.name for h in c.owners])
    if out:
        out.write_bytes(env.to_json())
    if as_json:
        print(env.to_json().decode())
        return
    p = json.loads(env.payload)["predicate"]
    console.print(f"settlement of contract {digest}", highlight=False, soft_wrap=True)  # digests stay whole
    console.print(f"buyer {escape(c.buyer.name)} pays {p['price']} for {p['count']} verified job(s) "
                  f"(log {escape(ex.origin)} at size {p['log_size']})", highlight=False)
    t = Table(title_justify="left")
    t.add_column("owner")
    t.add_column("amount", justify="right")
    for a in p["amounts"]:
        t.add_row(escape(a["owner"]), a["amount"])
    console.print(t)
    if p["jobs"]:
        console.print("jobs: " + ", ".join(escape(j["job_id"]) for j in p["jobs"]), highlight=False)
    if out:
        console.print(f"signed statement written to {out}", highlight=False)


@app.command("serve")
def serve(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    listen: str = typer.Option(..., "--listen", help="HOST:PORT to listen on (port 0 picks a free one)"),
) -> None:
    """Run the exchange online (HTTPS, certificate from its CA): the signed revocation list, log checkpoints and
    proofs for anyone; receipts from the parties of a job (client certificate)."""
    from fedtrust.cli.output import serve_until_stopped
    from fedtrust.exchange.service import ExchangeService

    service = ExchangeService(directory, listen)
    serve_until_stopped(service, f"exchange serving {directory} on port {{port}} (HTTPS)")


@app.command("revoke")
def revoke(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    contract: Optional[str] = typer.Option(None, "--contract",
                                           help="the contract to revoke: its digest, a unique prefix, or its file"),
    subject: Optional[str] = typer.Option(None, "--subject", help="subject to revoke, e.g. fedtrust://node/bank-a"),
    reason: str = typer.Option(..., "--reason", help="why (kept in the exchange's records)"),
    as_json: bool = typer.Option(False, "--json", help="print what was revoked as JSON"),
) -> None:
    """Revoke a contract or a subject: added to the signed, sequence-numbered revocation list nodes fetch."""
    from fedtrust.exchange.issuer import load_exchange
    from fedtrust.exchange.issuer import revoke as do_revoke
    from fedtrust.exchange.lookup import resolve_contract

    if contract is not None:
        contract = resolve_contract(load_exchange(directory).store, contract)
    r = do_revoke(directory, contract=contract, subject=subject, reason=reason)
    seq = len(load_exchange(directory).store.revocations())
    if as_json:
        print_json({"kind": r.kind, "target": r.target, "revocation_list": seq})
        return
    console.print(f"revoked {r.kind} {r.target} (revocation list #{seq}); nodes refuse it from their next refresh",
                  highlight=False)


def _listing(rows: list[dict], columns: list[tuple[str, str]], as_json: bool, title: str) -> None:
    if as_json:
        print_json(rows)
        return
    t = Table(title=f"{title} ({len(rows)})", title_justify="left")
    for _, header in columns:
        t.add_column(header)
    for r in rows:
        t.add_row(*(escape(", ".join(v) if isinstance(v, list) else "" if v is None else str(v))
                    for v in (r[k] for k, _ in columns)))
    console.print(t)


@app.command("subjects")
def subjects(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The registered subjects: role, name, address, when their credential was issued."""
    from fedtrust.exchange.issuer import load_exchange
    from fedtrust.exchange.lookup import subjects as list_subjects

    _listing(list_subjects(load_exchange(directory).store),
             [("role", "role"), ("name", "name"), ("address", "address"), ("issued_at", "issued")], as_json,
             "subjects")


@app.command("products")
def products(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The listed products: digest, owner, dataset, columns, data commitment."""
    from fedtrust.exchange.issuer import load_exchange
    from fedtrust.exchange.lookup import products as list_products

    rows = list_products(load_exchange(directory).store)
    _listing(rows if as_json else [{**r, "digest": r["digest"][:16] + "…"} for r in rows],
             [("digest", "digest"), ("owner", "owner"), ("dataset", "dataset"), ("columns", "columns")], as_json,
             "products")


@app.command("contracts")
def contracts(
    directory: Path = typer.Argument(..., help="the exchange's directory"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The issued contracts by digest (the identifier every command takes; a unique prefix will do)."""
    from fedtrust.exchange.issuer import load_exchange
    from fedtrust.exchange.lookup import contracts as list_contracts

    _listing(list_contracts(load_exchange(directory).store),
             [("digest", "digest"), ("buyer", "buyer"), ("coordinator", "coordinator"), ("owners", "owners"),
              ("price", "price"), ("valid_until", "valid until")], as_json, "contracts")


@app.command("submit")
def submit(
    receipt: Path = typer.Argument(..., help="receipt bundle (buyer's receipt.json, or one a coordinator or owner holds)"),
    url: str = typer.Option(..., "--url", help="https://HOST:PORT where `fedtrust exchange serve` runs"),
    credentials: Path = typer.Option(..., "--credentials", help="your credentials directory (a party of the job)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Send a receipt to the online exchange, which verifies and logs it as `exchange verify` does."""
    from fedtrust.errors import ConfigError
    from fedtrust.transport.exchange_client import ExchangeClient
    from fedtrust.transport.tls import TlsMaterial
    from fedtrust.trust.credentials import load_identity

    identity = load_identity(credentials)
    try:
        data = receipt.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"receipt file {receipt} does not exist") from None
    tls = TlsMaterial(identity.tls_cert_pem, identity.tls_key_pem, identity.ca_pem)
    verdict = ExchangeClient(url, identity.ca_pem, tls).submit_receipt(data)
    if as_json:
        print_json(verdict)
    else:
        console.print(f"VALID: job {verdict.get('job_id')} "
                      f"{'was already recorded' if verdict.get('already_recorded') else 'recorded'} in the exchange's "
                      f"log (size {verdict.get('log_size')})", highlight=False)

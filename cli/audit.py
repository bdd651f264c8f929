"""`fedtrust audit checkpoint|inclusion|consistency|settlement`: check the exchange's log offline from files."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fedtrust.cli.output import console, print_json

app = typer.Typer(
    help="Audit the exchange's receipt log offline: files and the exchange's public key, nothing else.",
    no_args_is_help=True,
)

KEY_HELP = "the exchange's exchange.pub, a file holding its verifier key, or the verifier key itself (ORIGIN+HASH+KEY)"


def _key(key: str):
    from fedtrust.exchange.audit import load_key

    return load_key(key)


def _show(doc: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        print_json(doc)
    else:
        console.print(f"[green]valid[/]: {line}", highlight=False)


def _cp(cp: dict[str, Any]) -> str:
    return f"log {cp['origin']} at size {cp['size']}, root {cp['root'][:16]}…"


@app.command("checkpoint")
def checkpoint(
    checkpoint_file: Path = typer.Argument(..., metavar="CHECKPOINT", help="a checkpoint note, or `exchange log --out` JSON"),
    key: str = typer.Option(..., "--key", envvar="FEDTRUST_EXCHANGE_KEY", help=KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the verified checkpoint as JSON"),
) -> None:
    """Verify a log checkpoint (a C2SP signed note) against the exchange's key."""
    from fedtrust.exchange.audit import audit_checkpoint

    doc = audit_checkpoint(checkpoint_file, _key(key))
    _show(doc, as_json, f"checkpoint signed by the exchange: {_cp(doc['checkpoint'])}")


@app.command("inclusion")
def inclusion(
    checkpoint_file: Path = typer.Argument(..., metavar="CHECKPOINT", help="checkpoint note or `exchange log --job … --out` JSON"),
    key: str = typer.Option(..., "--key", envvar="FEDTRUST_EXCHANGE_KEY", help=KEY_HELP),
    proof: Optional[Path] = typer.Option(None, "--proof", help="inclusion proof JSON (default: the one in CHECKPOINT)"),
    receipt: Optional[Path] = typer.Option(None, "--receipt", help="the receipt bundle the entry must be"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify that an entry (with --receipt: this receipt) is in the log a signed checkpoint pins."""
    from fedtrust.exchange.audit import audit_inclusion

    doc = audit_inclusion(checkpoint_file, _key(key), proof_file=proof, receipt_file=receipt)
    what = f"receipt of job {doc['job_id']}" if doc["receipt_checked"] else "the proof's entry (no --receipt given)"
    _show(doc, as_json, f"{what} is entry {doc['index']} of {_cp(doc['checkpoint'])}")


@app.command("consistency")
def consistency(
    old: Path = typer.Argument(..., help="the older checkpoint you kept"),
    new: Path = typer.Argument(..., help="the newer checkpoint (or `exchange log --from-size N --out` JSON)"),
    key: str = typer.Option(..., "--key", envvar="FEDTRUST_EXCHANGE_KEY", help=KEY_HELP),
    proof: Optional[Path] = typer.Option(None, "--proof", help="consistency proof JSON (default: the one in NEW)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify that the newer log extends the older one: nothing logged earlier was changed or removed."""
    from fedtrust.exchange.audit import audit_consistency

    doc = audit_consistency(old, new, _key(key), proof_file=proof)
    _show(doc, as_json, f"the log at size {doc['old']['size']} is a prefix of {_cp(doc['new'])}")


@app.command("settlement")
def settlement(
    settlement_file: Path = typer.Argument(..., metavar="SETTLEMENT", help="`exchange settle --out` file"),
    key: str = typer.Option(..., "--key", envvar="FEDTRUST_EXCHANGE_KEY", help=KEY_HELP),
    checkpoint_file: Optional[Path] = typer.Option(None, "--checkpoint", help="also check its log root against this checkpoint"),
    proof: Optional[Path] = typer.Option(None, "--proof", help="consistency proof from the settlement's log size"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify a settlement statement (and, with --checkpoint, that it settles the log the checkpoint pins)."""
    from fedtrust.exchange.audit import audit_settlement

    doc = audit_settlement(settlement_file, _key(key), checkpoint_file=checkpoint_file, proof_file=proof)
    p = doc["settlement"]
    line = (f"settlement of contract {p['contract_digest'][:16]}…: {p['count']} job(s) under the log of size "
            f"{p['log_size']}" + (" (matches the checkpoint)" if doc["log_checked"] else ""))
    if "price" in p:
        line += f"; price {p['price']}: " + ", ".join(f"{a['owner']} {a['amount']}" for a in p["amounts"])
    _show(doc, as_json, line)

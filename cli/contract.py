"""`fedtrust contract …`: a party signs the contract it agrees to, or looks at who has signed."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from fedtrust.cli.output import console, print_json

app = typer.Typer(help="Contracts: sign the ones you agree to; show terms and signatures.", no_args_is_help=True)


@app.command("sign")
def sign(
    contract: Path = typer.Argument(..., help="contract file issued by `fedtrust exchange contract`"),
    credentials: Path = typer.Option(..., "--credentials", help="your credentials directory (buyer or owner)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the signed contract here instead of in place"),
) -> None:
    """Add your signature to the contract (the same DSSE envelope; its digest does not change)."""
    from fedtrust.trust.contract_files import sign_contract_file
    from fedtrust.trust.credentials import load_identity

    identity = load_identity(credentials)
    c, env = sign_contract_file(contract, identity, out)
    console.print(f"signed contract {env.digest[:16]}… ({c.contract_id}) as {identity.credential.uri} → "
                  f"{out or contract}", highlight=False)


@app.command("show")
def show(
    contract: Path = typer.Argument(..., help="contract file"),
    credentials: Optional[Path] = typer.Option(None, "--credentials",
                                               help="any credentials directory of this exchange (for exchange.pub)"),
    exchange_key: Optional[Path] = typer.Option(None, "--exchange-key", help="the exchange's exchange.pub"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Parties, purpose, rules, price, term, and which signatures are present or missing."""
    from fedtrust.errors import ConfigError
    from fedtrust.trust.contract_files import read_contract, summarise
    from fedtrust.trust.credentials import EXCHANGE_PUB, load_exchange_key

    key_file = exchange_key or (credentials / EXCHANGE_PUB if credentials else None)
    if key_file is None:
        raise ConfigError("pass --credentials DIR or --exchange-key exchange.pub: the contract is checked against "
                          "the exchange's key")
    try:
        key = load_exchange_key(key_file.read_bytes(), str(key_file))
    except FileNotFoundError:
        raise ConfigError(f"{key_file} does not exist; pass the exchange's exchange.pub") from None
    c, env = read_contract(contract, key)
    summary = summarise(env, c, key)
    if as_json:
        print_json(summary.to_dict())
        return
    console.print(f"contract [bold]{c.contract_id}[/]  digest {env.digest}", highlight=False)
    console.print(f"purpose: {escape(c.purpose)}", highlight=False)
    console.print(f"buyer {c.buyer.name}, coordinator {c.coordinator.name}, owners "
                  f"{', '.join(h.credential.name for h in c.owners)} (dataset {c.dataset})", highlight=False)
    console.print(f"price {c.price}; valid {c.valid_from} to {c.valid_until}"
                  + (f"; revocation list at most {c.revocation_max_age_h} h old" if c.revocation_max_age_h else ""),
                  highlight=False)
    r = c.rules
    if r.query:
        console.print(f"query: {', '.join(r.query.aggregates)} of {', '.join(r.query.columns) or '—'}; group by "
                      f"{', '.join(r.query.group_by) or '—'}; filters {', '.join(r.query.filters) or '—'}; "
                      f"min group {r.query.min_group_size}; at most {r.query.max_queries} queries", highlight=False)
    if r.training:
        console.print(f"training: models {', '.join(r.training.models)}", highlight=False)
    if r.privacy:
        console.print(f"privacy: ε {r.privacy.epsilon_per_query} per query, ε {r.privacy.epsilon_total} total, "
                      f"δ {r.privacy.delta}", highlight=False)
    for party, ok in summary.signatures.items():
        mark = "[green]signed[/]" if ok else ("[dim]not signed (optional)[/]" if party.startswith("coordinator ")
                                              else "[red]MISSING[/]")
        console.print(f"  {party}: {mark}", highlight=False)
    if summary.missing:
        console.print(f"nodes refuse jobs until {', '.join(summary.missing)} sign(s)", highlight=False)

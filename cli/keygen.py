"""`fedtrust keygen`: a subject makes its own keys and the signed request the exchange certifies."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fedtrust.cli.output import console


def keygen(
    role: str = typer.Option(..., "--role", help="node, buyer, coordinator or dealer"),
    name: str = typer.Option(..., "--name", help="subject name, e.g. insurer-a"),
    address: List[str] = typer.Option([], "--address",
                                      help="HOST:PORT where the daemon listens (nodes: required; repeatable)"),
    out: Path = typer.Option(..., "--out", help="new directory for the keys (0700, keys 0600) and request.json"),
    as_json: bool = typer.Option(False, "--json", help="print {uri, directory, request} as JSON"),
    reuse_keys: Optional[Path] = typer.Option(None, "--reuse-keys",
                                              help="keep the keys of this earlier directory (renew addresses only)"),
) -> None:
    """Create this subject's private keys and `request.json` (public keys, signed: proof of possession)."""
    from fedtrust.trust.keygen import REQUEST
    from fedtrust.trust.keygen import keygen as do_keygen

    req = do_keygen(role, name, address, out, reuse_keys)
    if as_json:
        from fedtrust.cli.output import print_json

        print_json({"uri": req.uri, "directory": str(out), "request": str(out / REQUEST)})
        return
    console.print(f"keys for {req.uri} in {out}; send {out / REQUEST} to the exchange "
                  f"(`fedtrust exchange register EXCHANGE --request {out / REQUEST} --out DIR`)", highlight=False)

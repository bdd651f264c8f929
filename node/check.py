"""`fedtrust node check`: everything `node serve` would refuse, checked without serving.

Config (strict keys, types, ranges), key file modes, credentials, every
product credential and its data file (commitment, schema), and the ledger
against its watermark. The per-column report is counts only (rows, NULL,
clipped to the public bounds, outside the public domain), for the owner's own
eyes; nothing here is sent anywhere.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fedtrust.config import NodeConfig, check_private_files
from fedtrust.trust.credentials import KX_KEY, SIGNING_KEY, TLS_KEY, load_identity_as

__all__ = ["check_node"]


def check_node(config: NodeConfig) -> dict[str, Any]:
    from fedtrust.node.runtime import open_held_dataset
    from fedtrust.node.store import NodeStore

    check_private_files(config.credentials / f for f in (TLS_KEY, SIGNING_KEY, KX_KEY))
    identity = load_identity_as(config.credentials, "node", config.name)
    datasets = []
    for d in config.datasets:
        held = open_held_dataset(identity, config.name, d.product, d.path, d.encoding, d.null_values)
        try:
            datasets.append({"dataset": held.product.dataset, "path": str(held.path),
                             "commitment": held.product.commitment,
                             "columns": [asdict(c) for c in held.dataset.profile()]})
        finally:
            held.dataset.close()
    if (config.state / "node.sqlite3").exists():
        store = NodeStore(config.state, config.watermark)  # ConfigError when older than its watermark
        ledger = f"{store.db.path} OK ({len(store.debits())} entries, at or past its watermark)"
    else:
        ledger = f"{config.state} holds no ledger yet (created at first start)"
    return {"node": config.name, "ledger": ledger, "datasets": datasets}

"""The differential-privacy part of `fedtrust demo`: a second contract with a small ε budget."""
from __future__ import annotations

from pathlib import Path

from fedtrust.demo.data import RULES_TOML
from fedtrust.demo.federation import issue_signed_contract

DP_PRIVACY = {"epsilon_total": "2", "delta": "1e-6", "epsilon_per_query": "1"}


def issue_dp_contract(root: Path, exchange_dir: Path, buyer: str, coordinator: str, owners: list[str],
                      min_group_size: int = 10, privacy: dict[str, str] | None = None) -> Path:
    """Issue a contract over the same products whose rules add a `[privacy]` table."""
    rules = root / "rules-dp.toml"
    text = RULES_TOML.format(min_group_size=min_group_size, max_queries=100)
    text += "\n[privacy]\n" + "".join(f'{k} = "{v}"\n' for k, v in (privacy or DP_PRIVACY).items())
    rules.write_text(text)
    out = root / "contract-dp.json"
    issue_signed_contract(exchange_dir.parent, buyer, coordinator, [root / "products" / f"{n}.json" for n in owners],
                          rules, out)
    return out

"""`[vertical.joint]`: what joint statistics over the rows a PSI job aligned may compute.

A vertical contract whose `[vertical] kinds` include "joint" sells aggregate
queries over the *joined* rows of its two products (`SELECT bank.segment,
COUNT(*), AVG(telco.arpu) FROM bank JOIN telco USING (phone_key) GROUP BY
bank.segment`). Columns are named with their product (`bank.segment`); the
aggregated columns are those `[vertical.columns]` lists for that product.
Every owner's node enforces these rules by itself, as for horizontal queries:

    [vertical.joint]
    aggregates = ["COUNT", "SUM", "AVG"]       # of COUNT, SUM, AVG
    group_by = ["bank.segment"]                # category columns (public domains) to group by
    filters = ["bank.segment", "telco.tenure_months"]   # columns WHERE may compare (default: group_by)
    min_group_size = 10                        # a joined group (and a column's non-null count in it) below
                                               # this is withheld without revealing its size

VAR_SAMP and STDDEV_SAMP are not offered for joint statistics: the sums of
squares of the public fixed-point scale overflow the 64-bit ring the MPC
computes in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from fedtrust.errors import ConfigError

__all__ = ["JOINT_AGGREGATES", "JointRules", "check_joint_products", "split_qualified"]

JOINT_AGGREGATES = ("COUNT", "SUM", "AVG")


def split_qualified(name: str) -> tuple[str, str] | None:
    """`"bank.segment"` -> `("bank", "segment")`; None unless exactly one dot between two non-empty names."""
    parts = name.split(".")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


@dataclass(frozen=True)
class JointRules:
    aggregates: tuple[str, ...]
    group_by: tuple[str, ...]  # qualified "product.column"
    filters: tuple[str, ...]  # qualified "product.column"
    min_group_size: int

    def to_dict(self) -> dict[str, Any]:
        return {"aggregates": list(self.aggregates), "group_by": list(self.group_by), "filters": list(self.filters),
                "min_group_size": self.min_group_size}

    @classmethod
    def from_dict(cls, d: Any) -> "JointRules":
        if not isinstance(d, dict):
            raise ConfigError("rules: [vertical.joint] must be a table")
        unknown = sorted(set(d) - {"aggregates", "group_by", "filters", "min_group_size"})
        if unknown:
            raise ConfigError(f"rules: [vertical.joint] has unknown setting `{unknown[0]}`; "
                              "use aggregates, group_by, filters, min_group_size")

        def names(key: str, default: Any) -> tuple[str, ...]:
            v = d.get(key, default)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"rules: [vertical.joint] `{key}` must be a list of names")
            return tuple(v)

        aggs = tuple(a.upper() for a in names("aggregates", None))
        if not aggs:
            raise ConfigError("rules: [vertical.joint] `aggregates` must name at least one of COUNT, SUM, AVG")
        bad = [a for a in aggs if a not in JOINT_AGGREGATES]
        if bad:
            raise ConfigError(f"rules: [vertical.joint] aggregate {bad[0]} is not offered for joint statistics; "
                              f"use a subset of {', '.join(JOINT_AGGREGATES)}")
        group_by = names("group_by", [])
        filters = names("filters", list(group_by))
        for key, listed in (("group_by", group_by), ("filters", filters)):
            for n in listed:
                if split_qualified(n) is None:
                    raise ConfigError(f"rules: [vertical.joint] `{key}` entry {n!r} must name its product, "
                                      "e.g. \"bank.segment\"")
        m = d.get("min_group_size")
        if isinstance(m, bool) or not isinstance(m, int):
            raise ConfigError("rules: [vertical.joint] needs `min_group_size` as a whole number (the smallest "
                              "joined group released)")
        if m < 1:
            raise ConfigError("rules: [vertical.joint] `min_group_size` must be at least 1")
        return cls(aggs, group_by, filters, m)


def check_joint_products(joint: JointRules, usable: dict[str, tuple[str, ...]], products: Sequence[Any]) -> None:
    """Group and filter columns name a product of the contract and a column `[vertical.columns]` lists for it;
    group columns are categories (public domains). ConfigError naming the setting otherwise."""
    by_dataset = {p.dataset: p for p in products}
    for key, listed in (("group_by", joint.group_by), ("filters", joint.filters)):
        for n in listed:
            product, column = split_qualified(n) or ("", "")
            if product not in by_dataset:
                raise ConfigError(f"rules: [vertical.joint] `{key}` entry {n!r} names no product of this contract")
            if column not in usable.get(product, ()):
                raise ConfigError(f"rules: [vertical.joint] `{key}` entry {n!r} is not in [vertical.columns] "
                                  f"for {product!r}; list it there first")
            if key == "group_by" and by_dataset[product].schema.column(column).type != "category":
                raise ConfigError(f"rules: [vertical.joint] group column {n!r} is not a category; only columns "
                                  "with a public domain can be grouped by")

"""Synthetic loan books for the demo, the tests and the benchmarks (no real person in them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

REGIONS = ("north", "south", "east", "west", "central")

SCHEMA_TOML = """\
# Public schema of the `loans` product: bounds and domains are public.
[columns.region]
type = "category"
values = ["north", "south", "east", "west", "central"]

[columns.income]
type = "float"
min = 0
max = 500000

[columns.age]
type = "int"
min = 18
max = 100

[columns.defaulted]
type = "int"
min = 0
max = 1
"""

RULES_TOML = """\
# What the buyer may ask of the `loans` products, enforced by every node.
[query]
aggregates = ["COUNT", "SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP"]
columns = ["income", "age", "defaulted"]
filters = ["region", "age"]
group_by = ["region"]
min_group_size = {min_group_size}
max_queries = {max_queries}
valid_days = 30
"""

#: the demo contract also sells training (`fedtrust train`); every node enforces this table
TRAINING_RULES = {
    "models": ["logreg", "mlp"],
    "columns": ["income", "age", "region", "defaulted"],
    "max_rounds": 20,
    "min_nodes": 2,
    "allow_plaintext_aggregation": False,
    "max_jobs": 100,  # training jobs each node runs under the contract (default 10)
}


def training_toml(rules: dict | None = None) -> str:
    """The `[training]` table of the demo rules, with `rules` overriding the demo's values."""
    import json

    merged = {**TRAINING_RULES, **(rules or {})}
    lines = [f"{k} = {json.dumps(v)}" for k, v in merged.items()]  # JSON lists/ints/bools are TOML too
    return "\n[training]\n" + "\n".join(lines) + "\n"


def branch_names(branches: int) -> list[str]:
    """The public domain of the optional `branch` column (benchmarks with many groups)."""
    return [f"b{i:05d}" for i in range(branches)]


def with_branches(schema_toml: str, rules_toml: str, branches: int) -> tuple[str, str]:
    """Schema and rules with a `branch` category of `branches` values that queries may group by."""
    if not branches:
        return schema_toml, rules_toml
    values = ", ".join(f'"{b}"' for b in branch_names(branches))
    schema_toml += f"\n[columns.branch]\ntype = \"category\"\nvalues = [{values}]\n"
    rules_toml = rules_toml.replace('group_by = ["region"]', 'group_by = ["region", "branch"]')
    return schema_toml, rules_toml


def loans(rows: int, seed: int, region_weights: tuple[float, ...] | None = None,
          branches: int = 0) -> dict[str, np.ndarray]:
    """Columns of a loan book; each owner gets its own regional mix so groups differ in size.

    With `branches` > 0 a `branch` column (uniform over `branch_names(branches)`) is added.
    """
    rng = np.random.default_rng(seed)
    p = np.array(region_weights or (0.3, 0.25, 0.2, 0.15, 0.1), dtype=float)
    region = rng.choice(np.array(REGIONS), size=rows, p=p / p.sum())
    age = rng.integers(18, 101, size=rows)
    income = np.clip(rng.lognormal(mean=10.8, sigma=0.6, size=rows) + (age - 18) * 300.0, 0, 500000).round(2)
    # a learnable signal for the training demo: lower income, youth and the south raise the risk
    logit = 1.0 - income / 25000.0 + (age < 30) * 1.2 + (region == "south") * 1.0 - (region == "central") * 0.8
    defaulted = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    cols = {"region": region, "income": income, "age": age, "defaulted": defaulted}
    if branches:
        cols["branch"] = np.array(branch_names(branches))[rng.integers(0, branches, size=rows)]
    return cols


def write_loans(path: Path, rows: int, seed: int, region_weights: tuple[float, ...] | None = None,
                branches: int = 0) -> Path:
    """Write a CSV (or Parquet for a .parquet path) with DuckDB, quickly even at millions of rows."""
    import duckdb

    cols = loans(rows, seed, region_weights, branches)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.register("t", cols)  # DuckDB scans a dict of NumPy arrays directly
    fmt = "FORMAT PARQUET" if path.suffix == ".parquet" else "FORMAT CSV, HEADER"
    con.execute(f"COPY t TO '{path}' ({fmt})")
    con.close()
    return path

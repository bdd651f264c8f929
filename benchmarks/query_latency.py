"""Secure aggregate query latency: fedtrust (n nodes, mTLS, BFV, masks) vs DuckDB on the pooled plaintext.

Each case of issue 13's table gets its own federation (exchange, coordinator,
one node daemon per owner); same data, same GROUP BY query, same run. Two
baselines, both DuckDB over the union of the owners' files:

* warm: the pooled rows already loaded into an in-memory table (like a node,
  which loads its file once at start-up) — the query alone, DuckDB's threads
  on every core; its repetitions alternate with fedtrust's (paired), and the
  ratio is the median of the paired ratios;
* cold: reading the owners' CSV files and querying them, as a one-off analysis
  of the pooled files would.

fedtrust's time is the buyer's wall clock for the whole job: key generation,
signing, the coordinator fanning out over mTLS, every node checking the
contract, querying DuckDB, masking and encrypting, the buyer verifying every
node's attestation, adding the ciphertexts, decrypting and verifying receipts.

The fixed cost per job is fedtrust's time at 3 owners × 1,000 rows (where the
data-dependent work is negligible) minus DuckDB's warm time there.

Cases (owners × rows per owner [× groups]); `--scale` multiplies the rows, so
the default (`--quick`: 0.01, 3 repeats) runs in about a minute and
`--scale 1` is the issue's table (the 3 × 10M case alone takes minutes):

    3 × 1M, 3 × 3M, 3 × 10M, 3 × 300k, 10 × 300k, 3 × 1M with 10,000 groups

    python benchmarks/query_latency.py [--scale 1] [--repeat 5] [--cases 3x1000000,10x300000,3x1000000g10000]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from fedtrust.buyer.query import submit_query
from fedtrust.demo.federation import build_federation
from fedtrust.trust.credentials import load_identity

SQL = "SELECT region, COUNT(*) AS n, AVG(income) AS mean_income FROM loans GROUP BY region"
SQL_BRANCH = "SELECT branch, COUNT(*) AS n, AVG(income) AS mean_income FROM loans GROUP BY branch"
NAMES = ("bank-a", "bank-b", "insurer-c")
#: a group of COUNT + AVG takes 9 slots (43-bit limbs: 2 per count, 3 per sum), so 10,000 groups take 11 ciphertexts
ISSUE_CASES = "3x1000000,3x3000000,3x10000000,3x300000,10x300000,3x1000000g10000"


@dataclass(frozen=True)
class Case:
    owners: int
    rows: int
    groups: int  # 0: the 5 regions

    @classmethod
    def parse(cls, text: str, scale: float) -> "Case":
        head, _, groups = text.partition("g")
        owners, _, rows = head.partition("x")
        return cls(int(owners), max(100, int(int(rows) * scale)), int(groups or 0))

    @property
    def label(self) -> str:
        g = f", {self.groups:,} groups" if self.groups else ""
        return f"{self.owners} × {self.rows:,} rows{g}"


@dataclass(frozen=True)
class Row:
    case: Case
    warm: float
    cold: float
    fedtrust: float
    ratio: float  # median of the paired ratios fedtrust / warm


def once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed(fn, repeat: int) -> float:
    return statistics.median(once(fn) for _ in range(repeat))


def owner_names(n: int) -> list[str]:
    return list(NAMES[:n]) + [f"owner-{i:02d}" for i in range(len(NAMES), n)]


def run_case(case: Case, repeat: int, threads: int | None = None) -> Row:
    sql = SQL_BRANCH if case.groups else SQL
    with tempfile.TemporaryDirectory(prefix="fedtrust-bench-") as tmp:
        owners = {name: case.rows for name in owner_names(case.owners)}
        extra = f"query_threads = {threads}\n" if threads else ""
        fed = build_federation(Path(tmp), owners, max_queries=10_000, node_extra=extra,
                               **({"branches": case.groups} if case.groups else {}))
        reader = f"read_csv({[str(p) for p in fed.data.values()]!r})"

        def cold():
            con = duckdb.connect()
            con.execute(sql.replace("FROM loans", f"FROM {reader}")).fetchall()
            con.close()

        cold_t = timed(cold, repeat)
        warm_con = duckdb.connect()
        warm_con.execute(f"CREATE TABLE loans AS SELECT * FROM {reader}")
        warm_con.execute(sql).fetchall()
        with fed:
            buyer = load_identity(fed.buyer_dir)

            def job():
                return submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, sql)

            job()  # warm-up: fork servers, first channel, caches
            # paired: the baseline and the secure job alternate, so load from other processes on a shared
            # machine falls on both alike
            pairs = [(once(lambda: warm_con.execute(sql).fetchall()), once(job)) for _ in range(repeat)]
        warm_con.close()
    warm = statistics.median(w for w, _ in pairs)
    fed_t = statistics.median(f for _, f in pairs)
    return Row(case, warm, cold_t, fed_t, statistics.median(f / w for w, f in pairs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=ISSUE_CASES, help="comma-separated OWNERSxROWS[gGROUPS]")
    ap.add_argument("--scale", type=float, default=None,
                    help="multiply every case's rows (1 = the issue's table; default 0.01, the quick run)")
    ap.add_argument("--repeat", type=int, default=None, help="jobs per case, median reported (default 3; 5 with --scale)")
    ap.add_argument("--no-fixed", action="store_true", help="skip the fixed-cost case (3 × 1,000 rows)")
    ap.add_argument("--threads", type=int, default=None,
                    help="DuckDB threads per node dataset (`query_threads`; default: one per core)")
    args = ap.parse_args()
    quick = args.scale is None
    args.scale = 0.01 if quick else args.scale
    args.repeat = args.repeat or (3 if quick else 5)
    if quick:
        print("quick run (rows × 0.01, 3 jobs per case); the issue's table: --scale 1", flush=True)
    cases = [Case.parse(c.strip(), args.scale) for c in args.cases.split(",") if c.strip()]
    fixed = None if args.no_fixed else run_case(Case(3, 1000, 0), args.repeat, args.threads)
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        rows.append(run_case(case, args.repeat, args.threads))
        print(f"  measured {case.label} in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\nmedians of {args.repeat} (DuckDB warm and fedtrust alternate; × warm is the median of the paired "
          "ratios); fedtrust = the buyer's wall clock for the whole secure job")
    print(f"{'case':<34}{'DuckDB warm':>12}{'DuckDB cold':>12}{'fedtrust':>10}{'× warm':>8}{'× cold':>8}")
    for r in rows:
        print(f"{r.case.label:<34}{r.warm * 1e3:>9.1f} ms{r.cold * 1e3:>9.1f} ms{r.fedtrust * 1e3:>7.0f} ms"
              f"{r.ratio:>8.1f}{r.fedtrust / r.cold:>8.2f}")
    if fixed is not None:
        print(f"\nfixed cost per job at 3 owners (3 × 1,000 rows): {(fixed.fedtrust - fixed.warm) * 1e3:.0f} ms "
              f"(goal < 60 ms)")
    print("goals: ≤ 3× DuckDB warm at 3 × 1M rows, ≤ 2× at 3 × 10M (run with --scale 1)")


if __name__ == "__main__":
    main()

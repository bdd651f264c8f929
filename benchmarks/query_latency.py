"""Secure aggregate query latency: fedtrust (3 nodes, mTLS, BFV, masks) vs DuckDB on the pooled plaintext.

Same data, same GROUP BY query, same run. Two baselines, both DuckDB over the
union of the three owners' files:

* warm: the pooled rows already loaded into an in-memory table (like a node,
  which loads its file once at start-up) — the query alone;
* cold: reading the three CSV files and querying them, as a one-off analysis
  of the pooled files would.

fedtrust's time is the buyer's wall clock for the whole job: key generation,
signing, the coordinator fanning out over mTLS, three nodes each checking the
contract, querying DuckDB, masking and encrypting, aggregation, receipt
verification and decryption.

    python benchmarks/query_latency.py --rows 1000000 --repeat 5
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from fedtrust.buyer.query import submit_query
from fedtrust.demo.federation import build_federation
from fedtrust.trust.credentials import load_identity

SQL = "SELECT region, COUNT(*) AS n, AVG(income) AS mean_income FROM loans GROUP BY region"


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per owner (3 owners)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedtrust-bench-") as tmp:
        t0 = time.perf_counter()
        owners = {"bank-a": args.rows, "bank-b": args.rows, "insurer-c": args.rows}
        fed = build_federation(Path(tmp), owners, max_queries=10_000)
        print(f"built 3 × {args.rows:,} rows in {time.perf_counter() - t0:.1f} s")
        files = [str(p) for p in fed.data.values()]
        reader = f"read_csv({files!r})"

        def cold():
            con = duckdb.connect()
            rows = con.execute(SQL.replace("FROM loans", f"FROM {reader}")).fetchall()
            con.close()
            return rows

        warm_con = duckdb.connect()
        warm_con.execute(f"CREATE TABLE loans AS SELECT * FROM {reader}")
        warm, _ = timed(lambda: warm_con.execute(SQL).fetchall(), args.repeat)
        cold_t, _ = timed(cold, args.repeat)

        t0 = time.perf_counter()
        with fed:
            print(f"daemons started in {time.perf_counter() - t0:.1f} s (each node loaded its file)")
            buyer = load_identity(fed.buyer_dir)
            submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)  # warm-up
            fed_t, res = timed(lambda: submit_query(buyer, fed.buyer_dir, fed.contract_path,
                                                    fed.coordinator_address, SQL), args.repeat)
        print(f"rows per owner     : {args.rows:,} (3 owners)")
        print(f"DuckDB warm        : {warm * 1000:8.1f} ms  (pooled rows in memory)")
        print(f"DuckDB cold        : {cold_t * 1000:8.1f} ms  (reading the three CSV files)")
        print(f"fedtrust           : {fed_t * 1000:8.1f} ms  (whole secure job, median of {args.repeat})")
        print(f"ratio vs warm      : {fed_t / warm:8.1f}")
        print(f"ratio vs cold      : {fed_t / cold_t:8.2f}   (goal ≤ 2)")


if __name__ == "__main__":
    main()

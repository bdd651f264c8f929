"""How a query and a training round grow with the number of owners (node daemons on one machine).

For each owner count (default 3 and 10; `--owners 3,10,30` for the issue's
full table) one federation is built and started in this process, then:

* query: the buyer's wall clock for a GROUP BY job (median of `--repeat`,
  after a warm-up), and the bytes of the buyer's public context sent to the
  nodes by the contract's first job (once per node; later jobs name it by
  digest and send none);
* training: the median round time of an MLP job (`--hidden`, default
  two hidden layers of 256: 68k parameters), and the bytes per node per round: its own
  masked vector, and the n − 1 signed masked vectors of the other
  participants forwarded to it (nodes derive the global themselves, so the
  round's message names the global by digest, and a node's own vector is
  not sent back to it);
* the masking work of one node for that model (pairwise masks with n − 1
  peers, added in place) — measured alone.

Expected growth (documented in README): per node, pairwise masks are O(n)
streams of the model's length and node-side verification adds n vectors,
O(n · model); bytes per node per round grow as n · model; a query's
per-node work is constant, the buyer verifies n attestations and adds n
ciphertext vectors (O(n)), and contract verification is remembered per
contract. With every node on one 2-core machine, the whole round's wall
clock grows at least linearly in n (all nodes share the cores).

    python benchmarks/scale_owners.py [--owners 3,10,30] [--rows 1000] [--rounds 3] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fedtrust.buyer.query import submit_query
from fedtrust.demo.federation import build_federation
from fedtrust.trust.credentials import load_identity

SQL = "SELECT region, COUNT(*) AS n, AVG(income) AS mean_income FROM loans GROUP BY region"
TRAINING = {"models": ["logreg", "mlp"], "max_rounds": 1000, "min_nodes": 2}


def owner_names(n: int) -> list[str]:
    return [f"owner-{i:02d}" for i in range(n)]


def mask_seconds(length: int, n: int) -> float:
    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from fedtrust.privacy.masking import add_pairwise_mask, training_purpose
    from fedtrust.training import quantize

    keys = [X25519PrivateKey.generate() for _ in range(n)]
    peers = {f"n{i}": keys[i].public_key() for i in range(1, n)}
    vector = np.zeros(length, dtype=np.uint64)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        add_pairwise_mask(vector, keys[0], "n0", peers, "bench", quantize.MODULUS, training_purpose(1))
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(n: int, args) -> dict:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from training_overhead import fedtrust_rounds, spec_for

    with tempfile.TemporaryDirectory(prefix="fedtrust-scale-") as tmp:
        fed = build_federation(Path(tmp), dict.fromkeys(owner_names(n), args.rows), training=TRAINING,
                               max_queries=10_000)
        with fed:
            buyer = load_identity(fed.buyer_dir)

            def job():
                return submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)

            first = job()
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                job()
                times.append(time.perf_counter() - t0)
            public = (fed.buyer_dir / "jobs" / first.job_id / "he-public.bin").stat().st_size
            spec = spec_for("mlp", args.rounds, hidden=[args.hidden, args.hidden])
            round_s = fedtrust_rounds(fed, spec)
    h = args.hidden
    params = 7 * h + h + h * h + h + h + 1
    vector = 8 * (params + 3)
    return {
        "n": n,
        "query_s": statistics.median(times),
        "context_bytes": public * n,
        "round_s": round_s,
        "params": params,
        "bytes_per_node_round": vector + (n - 1) * vector,  # its vector out, the others' in (the global: a digest)
        "mask_s": mask_seconds(params + 3, n),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--owners", default="3,10", help="comma-separated owner counts (the issue: 3,10,30)")
    ap.add_argument("--rows", type=int, default=1000, help="rows per owner")
    ap.add_argument("--rounds", type=int, default=3, help="training rounds per job (median of rounds 2..)")
    ap.add_argument("--hidden", type=int, default=256, help="width of the MLP's two hidden layers")
    ap.add_argument("--repeat", type=int, default=3, help="query jobs per owner count")
    args = ap.parse_args()
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    rows = []
    for n in (int(x) for x in args.owners.split(",") if x.strip()):
        t0 = time.perf_counter()
        rows.append(measure(n, args))
        print(f"  measured {n} owners in {time.perf_counter() - t0:.0f} s", flush=True)
    base = rows[0]
    print(f"\nquery: GROUP BY over {args.rows:,} rows per owner; training: MLP 7-{args.hidden}-{args.hidden}-1 "
          f"({base['params']:,} parameters), median round of rounds 2..{args.rounds}")
    print(f"{'owners':>6} {'query':>9} {'× first':>8} {'context→nodes*':>14} {'round':>9} {'× first':>8} "
          f"{'bytes/node/round':>17} {'× first':>8} {'masks, one node':>16} {'× first':>8}")
    for r in rows:
        print(f"{r['n']:>6} {r['query_s'] * 1e3:>6.0f} ms {r['query_s'] / base['query_s']:>8.2f} "
              f"{r['context_bytes'] / 1e6:>11.1f} MB {r['round_s'] * 1e3:>6.0f} ms {r['round_s'] / base['round_s']:>8.2f} "
              f"{r['bytes_per_node_round'] / 1e6:>14.2f} MB {r['bytes_per_node_round'] / base['bytes_per_node_round']:>8.2f} "
              f"{r['mask_s'] * 1e3:>13.1f} ms {r['mask_s'] / base['mask_s']:>8.2f}")
    print("* the contract's first job only; later jobs name the context by digest")
    print("expected: masks and bytes per node O(n) (× n/first); node-side verification O(n · model); "
          "all nodes share this machine's cores, so wall clock grows at least with n")


if __name__ == "__main__":
    main()

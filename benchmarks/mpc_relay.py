"""MPC through the daemons (the coordinator's gRPC relay, sealed frames, the dealer) against raw CrypTen over
torch.distributed (gloo, plaintext TCP on localhost), the same computation on the same sizes, in the same run.

The computation is an mpc-stats job's, batched as it batches it: two owners share a 1024-bin histogram each,
add them, take cumulative counts and compare them with q·(N−1) and N with 0 (MEDIAN: one batched secret
comparison, CrypTen's binary adder circuit), and (MIN/MAX) compare their two local extrema and the "any value"
flag in one batched comparison, then one batched product. Through the daemons we time the MPC session as the coordinator
relays it (`mpc_job._Session.run`: from the dealer's stream opening to the last owner's sealed output, including
each owner's local histogram, its budget debit and its attestation) and the whole job as the buyer sees it
(admission, TLS, receipt, verification). Raw CrypTen runs the same operations in two processes with its own
trusted-first-party dealer (no dealer round trips, no sealing). Goal: session ≤ 1.5× raw.

    python benchmarks/mpc_relay.py [--repeat 3] [--rows 20000]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedtrust.privacy import crypten_shim

BINS = 1024


def _raw_ops(crypten, rank: int, repeat: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(rank)
    hist = torch.randint(0, 50, (1, BINS), generator=g).double()
    ext = torch.rand(1, 3, generator=g).double() * 1000
    times: dict[str, list[float]] = {"median": [], "min-max": []}
    for _ in range(repeat):  # the same operations as query.mpc_stats's compute, batched the same way
        t0 = time.perf_counter()
        parts = [crypten.cryptensor(hist if r == rank else torch.zeros(1, BINS), src=r) for r in range(2)]
        cum = (parts[0] + parts[1]).cumsum(1)
        diff = cum[0] * 10000 - cum[0][BINS - 1] * 5000 + 5000
        bits = crypten.cat([diff, (cum[0][BINS - 1] - 0.5).view(1)]) > 0
        (BINS - bits[:BINS].sum()).get_plain_text()
        bits[BINS:].get_plain_text()
        times["median"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        parts = [crypten.cryptensor(ext if r == rank else torch.zeros(1, 3), src=r) for r in range(2)]
        lo, hi = parts[0][:, 0], parts[0][:, 1]
        flags = parts[0][:, 2] + parts[1][:, 2]
        bits = crypten.cat([flags - 0.5, lo - parts[1][:, 0], parts[1][:, 1] - hi]) > 0
        moved = bits[1:] * crypten.cat([parts[1][:, 0] - lo, parts[1][:, 1] - hi])
        (lo + moved[:1]).get_plain_text()
        (hi + moved[1:]).get_plain_text()
        bits[:1].get_plain_text()
        times["min-max"].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _raw_party(rank, rendezvous, repeat, out):
    torch.set_num_threads(1)
    crypten_shim._stub_onnx_registration()
    import crypten

    crypten.encoder.FixedPointEncoder.decode = crypten_shim._patched_decode
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), RENDEZVOUS=f"file://{rendezvous}", DISTRIBUTED_BACKEND="gloo")
    crypten.init()
    out.put((rank, _raw_ops(crypten, rank, repeat)))
    crypten.uninit()


def raw(repeat: int) -> dict[str, float]:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_raw_party, args=(r, os.path.join(tmp, "rdv"), repeat, out)) for r in range(2)]
        for p in procs:
            p.start()
        results = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
    return {k: max(r[1][k] for r in results) for k in results[0][1]}


def relay(repeat: int, rows: int) -> tuple[dict[str, float], dict[str, float]]:
    from fedtrust.buyer.mpc import submit_mpc_stats
    from fedtrust.coordinator import mpc_job
    from fedtrust.demo.federation import build_federation
    from fedtrust.trust.credentials import load_identity

    sessions: list[float] = []
    orig = mpc_job._Session.run

    def timed(self):
        t0 = time.perf_counter()
        try:
            return orig(self)
        finally:
            sessions.append(time.perf_counter() - t0)
    mpc_job._Session.run = timed
    queries = {"median": "SELECT MEDIAN(income) FROM loans", "min-max": "SELECT MIN(income), MAX(income) FROM loans"}
    session: dict[str, list[float]] = {k: [] for k in queries}
    job: dict[str, list[float]] = {k: [] for k in queries}
    with tempfile.TemporaryDirectory() as tmp:
        fed = build_federation(Path(tmp), {"bank-a": rows, "bank-b": rows}, min_group_size=1, max_queries=1000,
                               mpc=True).start()
        try:
            identity = load_identity(fed.buyer_dir)
            for _ in range(repeat):
                for k, sql in queries.items():
                    t0 = time.perf_counter()
                    submit_mpc_stats(identity, fed.buyer_dir, fed.contract_path, fed.coordinator_address, sql)
                    job[k].append(time.perf_counter() - t0)
                    session[k].append(sessions[-1])
        finally:
            fed.stop()
            mpc_job._Session.run = orig
    return ({k: statistics.median(v) for k, v in session.items()}, {k: statistics.median(v) for k, v in job.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rows", type=int, default=20_000, help="rows per owner (the local histogram's input)")
    args = ap.parse_args()
    r = raw(args.repeat)
    s, j = relay(args.repeat, args.rows)
    print(f"2 owners, {BINS} bins, median of {args.repeat}")
    for k in r:
        print(f"  {k:8s} raw CrypTen/gloo {r[k] * 1e3:8.1f} ms   relayed session {s[k] * 1e3:8.1f} ms "
              f"(ratio {s[k] / r[k]:.2f}×, goal ≤ 1.5×)   whole job {j[k] * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()

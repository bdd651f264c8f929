"""Joint GROUP BY in MPC: fedtrust's joint-statistics program (sealed frames over point-to-point links) against
the same computation in raw CrypTen over torch.distributed (gloo, plaintext TCP on localhost), same data, same run.

The demo's bank and telco customers (`demo.vertical.write_customers`, N aligned rows), the query

    SELECT bank.segment, COUNT(*), AVG(telco.arpu), SUM(telco.tenure_months)
    FROM bank JOIN telco USING (phone_key) GROUP BY bank.segment

Each owner's inputs are built once (`query.joint_program.local_tensors`: one-hot groups, quantized values).
Both runs execute `query.joint_program.compute_shares` (share the inputs, one Beaver product for the joined
group indicator, one matmul, comparisons against min_group_size, the masked output as shares), two parties
each in its own forked process: fedtrust's over `privacy.mpc.LinkCommunicator` + `SealedLink` (AES-256-GCM per
frame) over an OS pipe per pair (the transport the daemons' gRPC relay replaces); raw over CrypTen's own
`crypten.init()` (gloo). Times are the slower party's, medians of --repeat runs; the answer is checked against
a plaintext DuckDB join. Goal: ≤ 1.5×.

    python benchmarks/joint.py                 # N = 20,000 aligned rows
    python benchmarks/joint.py --n 200000
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpc import raw_crypten, run_parties, sealed_link  # noqa: E402  (the MPC benchmarks' shared parties)

from fedtrust.privacy import crypten_shim  # noqa: E402
from fedtrust.query import joint_program as jp  # noqa: E402
from fedtrust.query.dataset import Dataset  # noqa: E402
from fedtrust.query.joint_sql import plan_joint  # noqa: E402
from fedtrust.trust.schema import load_schema_toml  # noqa: E402
from fedtrust.trust.vertical import VerticalRules  # noqa: E402

SQL = ("SELECT bank.segment, COUNT(*) AS n, AVG(telco.arpu) AS arpu, SUM(telco.tenure_months) AS tenure "
       "FROM bank JOIN telco USING (phone_key) GROUP BY bank.segment")
MIN_GROUP = 10
RULES = VerticalRules.from_dict(dict(
    key="phone_key", kinds=["psi", "joint"], min_intersection=1, max_keys=10**7, max_jobs=1,
    columns={"bank": ["segment"], "telco": ["arpu", "tenure_months"]},
    joint=dict(aggregates=["COUNT", "SUM", "AVG"], group_by=["bank.segment"], min_group_size=MIN_GROUP)))


def _write_data(root: Path, n: int) -> None:
    """The demo's customers and schemas (in a fresh interpreter: importing `fedtrust.demo` loads the daemons,
    whose MPC runtime installs fedtrust's CrypTen communicator, which the raw baseline must not have)."""
    from fedtrust.demo.vertical import BANK_SCHEMA, TELCO_SCHEMA, write_customers

    write_customers(root, n + n // 5, n + n // 4, n, seed=5)
    (root / "bank.toml").write_text(BANK_SCHEMA)
    (root / "telco.toml").write_text(TELCO_SCHEMA)


def _prepare(root: Path, n: int):
    writer = mp.get_context("spawn").Process(target=_write_data, args=(root, n))
    writer.start()
    writer.join()
    if writer.exitcode != 0:
        raise SystemExit("writing the demo data failed; see the traceback above")
    bank, telco = root / "data" / "bank.csv", root / "data" / "telco.csv"
    schemas = [("bank", load_schema_toml(root / "bank.toml")), ("telco", load_schema_toml(root / "telco.toml"))]
    plan = plan_joint(SQL, RULES, schemas)
    ds = {"bank": Dataset.open(bank, schemas[0][1]), "telco": Dataset.open(telco, schemas[1][1])}
    ids = {}
    for p, d in ds.items():
        rid, keys = d.join_keys("phone_key")
        ids[p] = dict(zip(keys, rid))
    common = sorted(set(ids["bank"]) & set(ids["telco"]))  # the PSI's outcome, in plaintext (not timed)
    inputs = [jp.local_tensors(plan, p, ds[p], [ids[p][k] for k in common], RULES.max_keys) for p in plan.products]
    ref = duckdb.connect()
    for name, path in (("bank", bank), ("telco", telco)):
        ref.execute(f"CREATE TABLE {name} AS SELECT * FROM read_csv('{path}')")
    expected = {r[0]: r[1:] for r in ref.execute(plan.canonical_sql).fetchall()}
    return schemas, plan, inputs, len(common), expected


def _timed(crypten, schemas, plan, rank, n, inputs, repeat):
    times, share = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        share = jp.compute_shares(plan, schemas, rank, n, MIN_GROUP, inputs, crypten=crypten)["joint"]
        times.append(time.perf_counter() - t0)
    return statistics.median(times), share


def _fedtrust_party(rank, conns, keys, schemas, plan, n, inputs, repeat, out):
    torch.set_num_threads(1)
    crypten = crypten_shim.load()
    with crypten_shim.party(rank, 2, sealed_link(rank, conns, keys, ["bank-node", "telco-node"])) as comm:
        t, share = _timed(crypten, schemas, plan, rank, n, inputs[rank], repeat)
        out.put((rank, t, share.tolist(), comm.comm_bytes))  # lists: a tensor would outlive its process


def _raw_party(rank, rendezvous, schemas, plan, n, inputs, repeat, out):
    torch.set_num_threads(1)
    with raw_crypten(rank, rendezvous) as crypten:
        t, share = _timed(crypten, schemas, plan, rank, n, inputs[rank], repeat)
    out.put((rank, t, share.tolist(), 0))


def _run(target, args_for):
    results = run_parties(target, args_for)
    total = torch.tensor(results[0][2], dtype=torch.int64) + torch.tensor(results[1][2], dtype=torch.int64)
    return max(r[1] for r in results), total, sum(r[3] for r in results)


def _check(plan, schemas, total, expected, what):
    got = {r[0]: r[1:] for r in jp.finish(plan, schemas, total, RULES.max_keys).rows}
    for seg, row in expected.items():
        if got[seg][0] != row[0] or abs(got[seg][1] - row[1]) > 1e-4 or got[seg][2] != row[2]:
            raise SystemExit(f"{what} gave a wrong answer for group {seg}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="aligned rows (the intersection)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        schemas, plan, inputs, n, expected = _prepare(Path(tmp), args.n)
        ctx = mp.get_context("fork")
        a, b = ctx.Pipe(duplex=True)
        keys = [os.urandom(32), os.urandom(32)]
        conns = [{1: a}, {0: b}]
        common = (schemas, plan, n, inputs, args.repeat)
        fed, fed_total, sent = _run(_fedtrust_party, lambda r: (conns[r], keys, *common))
        raw, raw_total, _ = _run(_raw_party, lambda r: (os.path.join(tmp, "rdv"), *common))
    _check(plan, schemas, fed_total, expected, "fedtrust")
    _check(plan, schemas, raw_total, expected, "raw CrypTen")
    print(f"joint GROUP BY, 2 owners, N = {n:,} aligned rows, {len(expected)} groups, median of {args.repeat} "
          "(slower party; answers checked against DuckDB)")
    print(f"  fedtrust {fed * 1e3:9.1f} ms   raw CrypTen over torch.distributed {raw * 1e3:9.1f} ms   "
          f"ratio {fed / raw:.2f}× (goal ≤ 1.5×)")
    print(f"  fedtrust bytes sent (sealed frames, both parties, all repeats): {sent / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

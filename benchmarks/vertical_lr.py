"""Vertical logistic regression: time per epoch of fedtrust's MPC program against CrypTen alone, same data, same run.

Two parties, each in its own process (forked): a bank (4 feature inputs and the label) and a telecom operator
(2 feature inputs), N joined rows of the demo's customers (synthetic), SGD with the demo job's batch size and
learning rate.

* fedtrust: `training.vertical_lr.compute` (share the inputs, check the alignment sizes, train) inside
  `crypten_shim.party` over `SealedLink` (AES-256-GCM per frame) over a duplex OS pipe — the transport the
  daemons replace by their gRPC relay;
* CrypTen alone: the same SGD loop (`training.vertical_lr.sgd`) on tensors shared by CrypTen's own
  `crypten.init()` (torch.distributed gloo, plaintext TCP on localhost).

Times are the slower party's, medians of --repeat runs, divided by the epochs. The AUC of both models is printed
next to central training on the joined rows (plaintext), which both must match within 0.02.

    python benchmarks/vertical_lr.py              # N = 2,000 rows, 2 epochs
    python benchmarks/vertical_lr.py --rows 20000 --epochs 1
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mpc import raw_crypten, run_parties, sealed_link  # noqa: E402 (the MPC benchmarks' shared parties)

from fedtrust.privacy import crypten_shim  # noqa: E402
from fedtrust.trust.vertical_lr import VerticalLRSpec  # noqa: E402

NAMES = ["bank-node", "telco-node"]


def _data(rows: int):
    """Joined rows like the demo's: bank inputs (income + one-hot segment), telco inputs (arpu, tenure), label."""
    rng = np.random.default_rng(7)
    income = np.clip(rng.lognormal(10.5, 0.5, rows) / 300000, 0, 1)
    segment = np.eye(3)[rng.choice([0, 0, 1, 2], rows)]
    arpu, tenure = rng.uniform(5, 300, rows) / 500, rng.integers(0, 241, rows) / 240
    z = 1.2 - 2.5 * np.minimum(income * 300000 / 80000, 2) + 0.8 * segment[:, 1] - 0.6 * segment[:, 2] \
        - 3.0 * arpu * 500 / 300 - 2.0 * tenure
    y = (rng.random(rows) < 1 / (1 + np.exp(-z))).astype(np.float32)
    bank = np.column_stack([income, segment]).astype(np.float32)
    telco = np.column_stack([arpu, tenure]).astype(np.float32)
    return torch.from_numpy(bank), torch.from_numpy(telco), torch.from_numpy(y)


def _train(crypten, rank, bank, telco, y, spec, seed):
    from fedtrust.training.vertical_lr import sgd

    n = y.shape[0]
    xb = crypten.cryptensor(bank if rank == 0 else torch.zeros_like(bank), src=0)
    xt = crypten.cryptensor(telco if rank == 1 else torch.zeros_like(telco), src=1)
    yy = crypten.cryptensor(y if rank == 0 else torch.zeros(n), src=0)
    us = crypten.cryptensor(torch.ones(n) if rank == 0 else torch.zeros(n), src=0)
    x = crypten.cat([xb, xt], dim=1)
    w, b = sgd(x, yy, us, crypten.cryptensor(torch.zeros(x.size(1))), crypten.cryptensor(torch.zeros(1)), spec, seed)
    return w.get_plain_text().numpy(), float(b.get_plain_text()[0])


def _fedtrust_party(rank, conns, keys, rows, spec, repeat, out):
    torch.set_num_threads(1)
    from fedtrust.training.vertical_lr import Block, Plan

    bank, telco, y = _data(rows)
    link = sealed_link(rank, conns, keys, NAMES)
    plan = Plan(tuple(NAMES), (Block(NAMES[0], "bank", (), 4), Block(NAMES[1], "telco", (), 2)), NAMES[0], None, spec)
    inputs = {"x": bank, "y": y, "usable": torch.ones(rows)} if rank == 0 else {"x": telco}
    times, model = [], None
    with crypten_shim.party(rank, 2, link) as comm:
        from fedtrust.training.vertical_lr import compute

        for _ in range(repeat):
            t0 = time.perf_counter()
            w, b = compute(plan, rank, inputs, 1)
            times.append(time.perf_counter() - t0)
        # the benchmark opens the model to score it (the daemons seal each party's shares to the buyer instead)
        model = (w.get_plain_text().numpy(), float(b.get_plain_text()[0]))
        out.put((rank, statistics.median(times), comm.comm_bytes, model))


def _raw_party(rank, rendezvous, rows, spec, repeat, out):
    torch.set_num_threads(1)
    bank, telco, y = _data(rows)
    times, model = [], None
    with raw_crypten(rank, rendezvous) as crypten:
        for _ in range(repeat):
            t0 = time.perf_counter()
            model = _train(crypten, rank, bank, telco, y, spec, 1)
            times.append(time.perf_counter() - t0)
    out.put((rank, statistics.median(times), 0, model))


def _run(target, args_for):
    results = run_parties(target, args_for)
    return max(r[1] for r in results), sum(r[2] for r in results), results[0][3]


def main() -> None:
    from fedtrust.demo.central import auc_of
    from fedtrust.training.vertical_lr import fit_plain, predict_proba

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000, help="joined rows")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    spec = VerticalLRSpec("bench", ("bank.x", "telco.x"), "bank.y", args.epochs, 1.0, args.batch_size)
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe(duplex=True)
    keys = [os.urandom(32), os.urandom(32)]
    conns = [{1: a}, {0: b}]
    fed, sent, fed_model = _run(_fedtrust_party, lambda r: (conns[r], keys, args.rows, spec, args.repeat))
    with tempfile.TemporaryDirectory() as tmp:
        raw, _, raw_model = _run(_raw_party, lambda r: (os.path.join(tmp, "rdv"), args.rows, spec, args.repeat))
    bank, telco, y = _data(args.rows)
    x = torch.cat([bank, telco], dim=1).numpy()
    central = fit_plain(x, y.numpy(), np.ones(args.rows, dtype=np.float32), spec, 1)
    aucs = {name: auc_of(y.numpy(), predict_proba(w, bb, x))
            for name, (w, bb) in (("fedtrust", fed_model), ("CrypTen alone", raw_model),
                                  ("central", (central.weight, central.bias)))}
    steps = -(-args.rows // args.batch_size)
    print(f"vertical LR, 2 parties, {args.rows:,} joined rows × 6 inputs, batch {args.batch_size} ({steps} steps "
          f"per epoch), {args.epochs} epochs, median of {args.repeat} (slower party)")
    print(f"  per epoch: fedtrust {fed / args.epochs * 1e3:9.1f} ms   CrypTen alone (gloo) "
          f"{raw / args.epochs * 1e3:9.1f} ms   ratio {fed / raw:.2f}×")
    print(f"  fedtrust bytes sent (sealed frames, both parties, all repeats): {sent / 1e6:.1f} MB")
    print("  AUC on the joined rows: " + ", ".join(f"{k} {v:.4f}" for k, v in aucs.items()))


if __name__ == "__main__":
    main()

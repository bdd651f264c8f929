"""Node training throughput vs a plain torch loop on the same device (GPU when present, else CPU).

Baseline: the node's preprocessed rows already on the device, the same MLP, a
hand-written loop (seeded permutation, index slices, SGD) — the fastest plain
torch code for this job. fedtrust: one node daemon (`device = "auto"` in its
NODE.toml) answering TrainRound calls over mTLS, as the coordinator sends them:
parse and check the signed job and the global model, run the built-in
ClientApp for the same epochs, strip, quantize, mask, store, reply. Throughput
is examples × epochs per second; the first call of each (CUDA and cache
warm-up) is not counted.

    python benchmarks/gpu_training.py [--rows 50000] [--epochs 3] [--batch 256] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedtrust.buyer.query import load_contract
from fedtrust.demo.federation import build_federation
from fedtrust.query.dataset import Dataset
from fedtrust.training.data import load_rows
from fedtrust.training.loop import resolve_device
from fedtrust.training.models import build_model, initial_arrays
from fedtrust.training.preprocess import Preprocessor
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.credentials import load_identity


def plain_loop(x: np.ndarray, y: np.ndarray, spec: TrainingSpec, device: str, pre: Preprocessor) -> float:
    torch.manual_seed(0)
    model = build_model(spec, pre.width, pre.outputs).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=spec.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device).float()
    n = len(y)
    for _ in range(spec.local_epochs):
        perm = torch.randperm(n, device=device)
        for s in range(0, n, spec.batch_size):
            idx = perm[s:s + spec.batch_size]
            loss = loss_fn(model(xt[idx])[:, 0], yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=None, help="rows of the measured node (default: 200k GPU, 20k CPU)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512, help="width of the MLP's two hidden layers")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    device = resolve_device("auto")
    rows = args.rows or (200_000 if device == "cuda" else 20_000)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device} — {name}")
    spec = TrainingSpec.from_dict({
        "dataset": "loans", "model": "mlp", "features": ["income", "age", "region"], "label": "defaulted",
        "rounds": args.repeat + 1, "local_epochs": args.epochs, "batch_size": args.batch, "learning_rate": 0.05,
        "evaluate": False, "model_options": {"hidden": [args.hidden, args.hidden]}}, defaults=True)
    with tempfile.TemporaryDirectory(prefix="fedtrust-gpu-") as tmp:
        fed = build_federation(Path(tmp), {"bank-a": rows, "bank-b": 100},
                               training={"models": ["mlp"], "max_rounds": 1000})
        with fed:
            import sys

            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from training_helper import node_client, round_message, signed_job, vector_bytes

            contract, _ = load_contract(load_identity(fed.buyer_dir), fed.contract_path)
            pre = Preprocessor.build(contract.schema, spec.features, spec.label)
            with Dataset.open(fed.data["bank-a"], contract.schema) as ds:
                data = load_rows(ds, pre)
            params = sum(int(np.prod(s)) for s in (a.shape for a in initial_arrays(spec, pre.width, 1, 0).values()))
            print(f"{data.examples:,} rows × {args.epochs} epochs, batch {args.batch}, MLP {pre.width}-{args.hidden}-"
                  f"{args.hidden}-1 ({params:,} parameters)")
            job, raw, _ = signed_job(fed, spec)
            ask = node_client(fed, "bank-a")
            plain, ours = [], []
            try:
                for r in range(1, args.repeat + 2):  # interleaved, so both see the same machine
                    g = initial_arrays(spec, pre.width, pre.outputs, seed=r)
                    t0 = time.perf_counter()
                    ask.train_round(job, raw, round_message(g, r), vector_bytes(g))
                    ours.append(time.perf_counter() - t0)
                    plain.append(plain_loop(data.x, data.y, spec, device, pre))
            finally:
                ask.close()
            plain, ours = plain[1:], ours[1:]
    work = data.examples * args.epochs
    base, fed_t = statistics.median(plain), statistics.median(ours)
    print(f"plain torch loop   : {work / base:12,.0f} examples/s  ({base:.3f} s per {args.epochs} epochs)")
    print(f"fedtrust node      : {work / fed_t:12,.0f} examples/s  ({fed_t:.3f} s per round, all node work "
          "included)")
    print(f"ratio              : {base / fed_t:12.3f}   (goal ≥ 0.90)")


if __name__ == "__main__":
    main()

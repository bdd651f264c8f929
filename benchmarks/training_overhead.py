"""Federated training overhead: what masking, fedtrust's mTLS grid and its checks cost per round.

Three comparisons, each printing its baseline, fedtrust's figure and the ratio
from the same run (per-round wall time at the coordinator: the median of the
rounds after the first, which also pays for start-up):

(a) FedAvg with secure aggregation ("masking") vs the same job with
    secure_aggregation = "none" (under a contract that allows it), for a
    ~1M-parameter MLP — the cost of quantizing, masking and summing mod 2^63
    (goal: at most 5 % extra round time);
(b) fedtrust's round vs the same built-in ClientApp and Flower strategy run by
    Flower's own simulation runtime (`flwr.simulation.run_simulation`, Ray), and
    vs calling the ClientApps directly in-process through a trivial Grid (no
    transport, no checks, no masks);
(c) the fixed per-round overhead with a tiny model (logistic regression on a
    few hundred rows): fedtrust's round minus the direct in-process round
    (goal: at most 1 s);
(d) what nodes deriving every global themselves costs: the coordinator's
    strategy loop runs in this process (the real Grid, mTLS to the real node
    daemons) and times, per round, the whole round and the forwarding step
    (every participant's signed masked vector to every node, which checks the
    signatures, adds the n vectors, unmasks and runs the strategy step). The
    old scheme (coordinator-only aggregation) is the same round without that
    step; plain aggregation is secure_aggregation = "none" (nodes still
    derive the global from the forwarded vectors). Bytes: what each node
    receives per round (the global model) and sends (its vector), and what
    forwarding adds (n vectors with their signatures).

Ray is not a fedtrust dependency; (b) uses it when it can be imported, e.g.
after `pip install --target /tmp/raypkgs ray==2.55.1` and `--ray-path /tmp/raypkgs`,
and says so when it cannot.

    python benchmarks/training_overhead.py [--rows 2000] [--rounds 5] [--ray-path DIR] [--parts abcd]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedtrust.buyer.train import submit_training
from fedtrust.demo.federation import build_federation
from fedtrust.training.context import node_config
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.credentials import load_identity

OWNERS = ("bank-a", "bank-b", "insurer-c")


def spec_for(model: str, rounds: int, aggregation: str = "masking", **options) -> TrainingSpec:
    d = {"dataset": "loans", "model": model, "features": ["income", "age", "region"], "label": "defaulted",
         "strategy": "fedavg", "rounds": rounds, "local_epochs": 1, "batch_size": 64, "learning_rate": 0.05,
         "secure_aggregation": aggregation, "evaluate": False}
    if options:
        d["model_options"] = options
    return TrainingSpec.from_dict(d, defaults=True)


def per_round(stamps: list[float]) -> float:
    """Median duration of rounds 2.. (round 1 also pays for the worker's and the apps' start-up)."""
    gaps = np.diff(stamps)
    return float(statistics.median(gaps[1:] if len(gaps) > 1 else gaps))


def fedtrust_rounds(fed, spec: TrainingSpec) -> float:
    stamps: list[float] = []

    def on_round(ev) -> None:
        if ev.stage == "started" or (ev.stage == "aggregated" and ev.phase == "train"):
            stamps.append(time.perf_counter())

    buyer = load_identity(fed.buyer_dir)
    submit_training(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, spec, on_round)
    return per_round(stamps)


# -- baselines: the same ClientApp without fedtrust ----------------------------------
def _configs(fed, spec: TrainingSpec) -> list[dict]:
    from fedtrust.demo.data import SCHEMA_TOML
    from fedtrust.trust.schema import load_schema_toml

    schema = load_schema_toml(fed.root / "schema.toml").to_dict() if (fed.root / "schema.toml").exists() else SCHEMA_TOML
    return [node_config(spec, dataset_path=str(fed.data[n]), schema=schema, device="cpu", seed=i + 1, job_id="bench")
            for i, n in enumerate(OWNERS)]


def _initial(fed, spec: TrainingSpec):
    from fedtrust.training.arrays import to_array_record
    from fedtrust.training.models import initial_arrays
    from fedtrust.training.preprocess import Preprocessor
    from fedtrust.trust.schema import load_schema_toml

    pre = Preprocessor.build(load_schema_toml(fed.root / "schema.toml"), spec.features, spec.label)
    return to_array_record(initial_arrays(spec, pre.width, pre.outputs, seed=1))


def direct_rounds(fed, spec: TrainingSpec) -> float:
    """The built-in ClientApp called in-process (one thread per node) through a trivial Grid."""
    from flwr.app import Context, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    from fedtrust.training.clientapp import app

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    contexts = {i: Context(run_id=1, node_id=i, node_config=c, state=RecordDict(), run_config={})
                for i, c in enumerate(_configs(fed, spec), start=100)}
    pool = ThreadPoolExecutor(max_workers=len(contexts))

    class DirectGrid(Grid):
        run = Run.create_empty(1)

        def set_run(self, run): ...

        def create_message(self, *a, **k): raise NotImplementedError

        def get_node_ids(self): return list(contexts)

        def push_messages(self, messages): raise NotImplementedError

        def pull_messages(self, ids): raise NotImplementedError

        def send_and_receive(self, messages, *, timeout=None):
            msgs = list(messages)
            for i, m in enumerate(msgs):
                m.metadata.__dict__["_message_id"] = str(i)
            return list(pool.map(lambda m: app(m, contexts[m.metadata.dst_node_id]), msgs))

    stamps = [time.perf_counter()]
    FedAvg(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3).start(
        grid=DirectGrid(), initial_arrays=_initial(fed, spec), num_rounds=spec.rounds,
        evaluate_fn=lambda r, a: stamps.append(time.perf_counter()) and None)
    pool.shutdown()
    return per_round(stamps[1:]) if len(stamps) > 2 else float("nan")


def simulation_rounds(fed, spec: TrainingSpec) -> float | None:
    try:
        import ray  # noqa: F401
        from flwr.simulation import run_simulation
    except ImportError:
        return None
    from flwr.app import Context
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from fedtrust.training import clientapp as builtin

    configs, init = _configs(fed, spec), _initial(fed, spec)
    sim_app = ClientApp()

    @sim_app.train()
    def _train(msg, context: Context):
        context.node_config.update(configs[int(context.node_config["partition-id"])])
        return builtin.train(msg, context)

    stamps: list[float] = []
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        FedAvg(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3).start(
            grid=grid, initial_arrays=init, num_rounds=spec.rounds,
            evaluate_fn=lambda r, a: stamps.append(time.perf_counter()) and None)

    run_simulation(server_app=server, client_app=sim_app, num_supernodes=len(OWNERS),
                   backend_config={"client_resources": {"num_cpus": 0.5}})
    return per_round(stamps[1:])


def mask_cost(length: int, owners: int) -> float:
    """Median time of one node's pairwise mask and its addition, for a vector of `length` values."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from fedtrust.privacy.masking import pairwise_mask
    from fedtrust.training import quantize

    keys = [X25519PrivateKey.generate() for _ in range(owners)]
    peers = {f"n{i}": k.public_key() for i, k in enumerate(keys[1:], start=1)}
    vector = np.zeros(length, dtype=np.uint64)
    times = []
    for r in range(5):
        t0 = time.perf_counter()
        quantize.add_masks(vector, pairwise_mask(keys[0], "n0", peers, "bench", length, quantize.MODULUS,
                                                 b"train/round/%d" % r))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def verified_rounds(fed, spec: TrainingSpec) -> dict[str, float]:
    """(d): median per-round time, forwarding time and bytes, with the coordinator's loop in this process."""
    from fedtrust.buyer.query import load_contract
    from fedtrust.coordinator.grid import FedtrustGrid
    from fedtrust.coordinator.node_client import admit_on_node
    from fedtrust.coordinator.server_loop import JobArgs, _run
    from fedtrust.transport.tls import TlsMaterial
    from fedtrust.trust.dsse import Envelope
    from fedtrust.trust.jobs import JobSpec, sign_job

    buyer, coord = load_identity(fed.buyer_dir), load_identity(fed.root / "credentials" / "coord")
    contract, raw = load_contract(buyer, fed.contract_path)
    job = sign_job(JobSpec.create(contract, Envelope.from_json(raw).digest, spec), buyer.signer)
    tls = TlsMaterial(coord.tls_cert_pem, coord.tls_key_pem, coord.ca_pem)
    addresses = {n: f"127.0.0.1:{fed.nodes[n].port}" for n in contract.owner_names}
    admissions = tuple(admit_on_node(n, a, tls, job.to_json(), raw, 60) for n, a in addresses.items())
    rounds: list[float] = []
    forwards: list[float] = []
    sizes = {"message": 0, "vector": 0, "forwarded": 0}

    class TimedGrid(FedtrustGrid):
        def _round(self, msgs):
            t0 = time.perf_counter()
            sent = self._send_round

            def counting(node, data, expected):
                sizes["message"] = len(data)
                return sent(node, data, expected)

            self._send_round = counting
            try:
                return super()._round(msgs)
            finally:
                self._send_round = sent
                rounds.append(time.perf_counter() - t0)

        def _forward_all(self, phase, rnd, items):
            t0 = time.perf_counter()
            super()._forward_all(phase, rnd, items)
            forwards.append(time.perf_counter() - t0)
            sizes["vector"] = len(items[0].vector)
            sizes["forwarded"] = sum(len(i.vector) + len(i.signature) + 200 for i in items)  # ~200 B of claim fields

    class Conn:
        def send(self, item) -> None: ...

    args = JobArgs(job_id=f"bench-{job.digest[:8]}", job_digest=job.digest, job_bytes=job.to_json(),
                   contract_bytes=raw, spec=spec.to_dict(), schema=contract.schema.to_dict(),
                   participants=tuple(contract.owner_names), addresses=addresses,
                   tls=(coord.tls_cert_pem, coord.tls_key_pem, coord.ca_pem), node_timeout=600, admissions=admissions)
    _run(Conn(), args, TimedGrid)
    later = slice(1, None) if len(rounds) > 1 else slice(None)
    return {"round": statistics.median(rounds[later]), "forward": statistics.median(forwards[later]), **sizes}


def show(label: str, base_name: str, base: float, ours: float, goal: str = "") -> None:
    print(f"{label}")
    print(f"  {base_name:<34}: {base * 1000:9.1f} ms per round")
    print(f"  {'fedtrust':<34}: {ours * 1000:9.1f} ms per round")
    print(f"  ratio                             : {ours / base:9.3f}   extra {1000 * (ours - base):+.1f} ms  {goal}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000, help="rows per owner (3 owners) for (a) and (b)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2, help="jobs per configuration in (a)")
    ap.add_argument("--ray-path", default=None, help="a folder holding ray (appended to sys.path)")
    ap.add_argument("--parts", default="abcd", help="which comparisons to run: any of a, b, c, d")
    args = ap.parse_args()
    if args.ray_path:
        sys.path.append(args.ray_path)
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    training = {"models": ["logreg", "mlp"], "allow_plaintext_aggregation": True, "max_rounds": 1000}
    big = {"hidden": [1024, 1024]}
    with tempfile.TemporaryDirectory(prefix="fedtrust-bench-") as tmp:
        if "a" in args.parts or "b" in args.parts:
            fed = build_federation(Path(tmp) / "a", dict.fromkeys(OWNERS, args.rows), training=training)
            with fed:
                params = 7 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 + 1
                print(f"3 owners × {args.rows:,} rows; MLP 7-1024-1024-1 ({params:,} parameters); {args.rounds} "
                      "rounds of 1 local epoch; median round time of rounds 2..\n")
                plain, masked = [], []
                for _ in range(args.repeat if "a" in args.parts else 1):
                    if "a" in args.parts:
                        plain.append(fedtrust_rounds(fed, spec_for("mlp", args.rounds, "none", **big)))
                    masked.append(fedtrust_rounds(fed, spec_for("mlp", args.rounds, "masking", **big)))
                if "a" in args.parts:
                    show("(a) secure aggregation cost", 'secure_aggregation = "none"', statistics.median(plain),
                         statistics.median(masked), "(goal ≤ 1.05)")
                    print(f"  the masking work alone, one node  : {1000 * mask_cost(params + 3, len(OWNERS)):9.1f} ms "
                          f"per round ({params + 3:,} values, {len(OWNERS) - 1} peers: pairwise_mask + addition)")
                if "b" in args.parts:
                    direct = direct_rounds(fed, spec_for("mlp", args.rounds, **big))
                    sim = simulation_rounds(fed, spec_for("mlp", args.rounds, **big))
                    print()
                    if sim is None:
                        print("(b) Flower simulation runtime: ray is not importable here (pass --ray-path); only "
                              "the direct in-process baseline is measured")
                    else:
                        show("(b) vs Flower's simulation runtime (Ray, same ClientApp and FedAvg)",
                             "flwr run_simulation", sim, statistics.median(masked))
                    show("(b') vs the ClientApps called directly in-process", "direct in-process Grid", direct,
                         statistics.median(masked))
                    print("(b'') Flower's deployment runtime (SuperLink + SuperNodes, with and without SecAgg+): not "
                          "run by this benchmark — it needs a SuperLink, one SuperNode process per owner and a "
                          "`flwr run` federation config, which this script does not set up; measured by hand on "
                          "2026-12-01: 9.6 s per round, 29.4 s with SecAgg+ (notes/performance-2026-12-01.md). "
                          f"fedtrust's round here: {statistics.median(masked):.2f} s "
                          f"({9.6 / statistics.median(masked):.0f}× / {29.4 / statistics.median(masked):.0f}× faster; "
                          "goal ≥ 10× vs SecAgg+)")
        if "d" in args.parts:
            fed = build_federation(Path(tmp) / "d", dict.fromkeys(OWNERS, args.rows), training=training)
            with fed:
                params = 7 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 + 1
                n = len(OWNERS)
                print(f"\n(d) nodes derive every global themselves: {n} owners × {args.rows:,} rows, MLP 7-1024-1024-1 "
                      f"({params:,} parameters), {args.rounds} rounds, no evaluation; median of rounds 2..")
                masked, plain = [], []
                for _ in range(args.repeat):
                    masked.append(verified_rounds(fed, spec_for("mlp", args.rounds, "masking", **big)))
                    plain.append(verified_rounds(fed, spec_for("mlp", args.rounds, "none", **big)))
                new = statistics.median(m["round"] for m in masked)
                fwd = statistics.median(m["forward"] for m in masked)
                old = new - fwd
                base = statistics.median(p["round"] for p in plain)
                m = masked[0]
                show("  vs the old scheme (coordinator-only aggregation: the round without the forwarding step)",
                     "coordinator-only aggregation", old, new)
                show('  vs plain aggregation (secure_aggregation = "none")', 'secure_aggregation = "none"', base, new)
                before = m["message"] + m["vector"]
                print(f"  bytes per node per round          : {before / 1e6:9.2f} MB before (global model "
                      f"{m['message'] / 1e6:.2f} MB in, masked vector {m['vector'] / 1e6:.2f} MB out); forwarding "
                      f"adds {m['forwarded'] / 1e6:.2f} MB in ({n} signed vectors): ×{(before + m['forwarded']) / before:.2f}")
        if "c" in args.parts:
            tiny = build_federation(Path(tmp) / "c", dict.fromkeys(OWNERS, 200), training=training)
            with tiny:
                fedtrust_rounds(tiny, spec_for("logreg", 3))  # warm-up
                ours = fedtrust_rounds(tiny, spec_for("logreg", args.rounds + 3))
                base = direct_rounds(tiny, spec_for("logreg", args.rounds + 3))
                print()
                show("(c) fixed per-round overhead, tiny model (logreg, 3 × 200 rows)", "direct in-process Grid",
                     base, ours, "(goal: extra ≤ 1000 ms)")


if __name__ == "__main__":
    main()

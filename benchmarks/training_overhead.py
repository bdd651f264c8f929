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
    receives per round (the round's message, which names the global by
    digest) and sends (its vector), and the n − 1 other participants' signed
    vectors forwarded to it (its own goes back empty: it holds it), against
    what coordinator-only aggregation moves (the global in, the vector out).

Pairing: the machine may be shared, so (b) runs its three measurements
back to back `--repeat` times (fedtrust, the in-process ClientApps, Ray) and
reports the medians and the median of the per-repetition ratios.

Fairness of (b): every node daemon runs in this process, as do the three
in-process ClientApps of the baseline: both train three ClientApps on the
same cores, one thread each. fedtrust's per-node work (masking, the
fsynced release, hashing and adding the forwarded vectors, the strategy
step) runs three times on one machine, where a real deployment spreads it
over three; the coordinator runs in a worker process of its own. Ray runs
each ClientApp in a worker process of its own.

Ray is not a fedtrust dependency; (b) uses it when it can be imported, e.g.
after `pip install --target /tmp/raypkgs ray==2.55.1` and `--ray-path /tmp/raypkgs`,
and says so when it cannot. It runs in a subprocess of its own (no gRPC
server of this process is forked into Ray's), and a Ray that does not
start is reported, not waited for.

    python benchmarks/training_overhead.py [--rows 2000] [--rounds 5] [--repeat 3] [--ray-path DIR] [--parts abcd]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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


def simulation_rounds(configs: list[dict], init, spec: TrainingSpec) -> float:
    """Flower's simulation runtime (Ray) running the same ClientApp and FedAvg; per-round time."""
    from flwr.app import Context
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedtrust.training import clientapp as builtin

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

    run_simulation(server_app=server, client_app=sim_app, num_supernodes=len(configs),
                   backend_config={"client_resources": {"num_cpus": 0.5}})
    if len(stamps) < 2:
        raise RuntimeError("the simulation ran no rounds")
    return per_round(stamps[1:])


def simulation_in_subprocess(fed, spec: TrainingSpec, ray_path: str | None, timeout: float = 300.0) -> tuple[float | None, str]:
    """(per-round seconds, "") from a subprocess running `simulation_rounds`, or (None, why not)."""
    job = {"configs": _configs(fed, spec), "schema": str(fed.root / "schema.toml"), "spec": spec.to_dict()}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ray_path, os.environ.get("PYTHONPATH")) if p)}
    why = ""
    try:
        for _ in range(2):  # a Ray that fails to start (seen under load) gets one more try
            try:
                done = subprocess.run([sys.executable, __file__, "--simulate", f.name], capture_output=True, text=True,
                                      timeout=timeout, env=env)
            except subprocess.TimeoutExpired:
                return None, f"the simulation did not finish within {timeout:.0f} s"
            last = (done.stdout.strip().splitlines() or [""])[-1]
            if done.returncode == 0 and last.startswith("{"):
                return float(json.loads(last)["round_s"]), ""
            why = last or (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, why
    finally:
        os.unlink(f.name)


def _simulate(path: str) -> None:
    """`--simulate JOB.json`: the subprocess side of `simulation_in_subprocess` (prints one JSON line)."""
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    job = json.loads(Path(path).read_text())
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray is not importable here (pass --ray-path)")
        sys.exit(3)
    from fedtrust.training.arrays import to_array_record
    from fedtrust.training.models import initial_arrays
    from fedtrust.training.preprocess import Preprocessor
    from fedtrust.trust.schema import load_schema_toml

    spec = TrainingSpec.from_dict(job["spec"])
    pre = Preprocessor.build(load_schema_toml(Path(job["schema"])), spec.features, spec.label)
    init = to_array_record(initial_arrays(spec, pre.width, pre.outputs, seed=1))
    try:
        round_s = simulation_rounds(job["configs"], init, spec)
    except Exception as e:  # noqa: BLE001 - reported by the parent, one line
        print(f"Flower's simulation runtime failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        sys.exit(4)
    print(json.dumps({"round_s": round_s}))


def mask_cost(length: int, owners: int) -> float:
    """Median time of one node's pairwise masks added to a vector of `length` values (in place, as nodes do)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from fedtrust.privacy.masking import add_pairwise_mask
    from fedtrust.training import quantize

    keys = [X25519PrivateKey.generate() for _ in range(owners)]
    peers = {f"n{i}": k.public_key() for i, k in enumerate(keys[1:], start=1)}
    vector = np.zeros(length, dtype=np.uint64)
    times = []
    for r in range(5):
        t0 = time.perf_counter()
        add_pairwise_mask(vector, keys[0], "n0", peers, "bench", quantize.MODULUS, b"train/round/%d" % r)
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
            # what the first participant receives: the others' vectors (its own goes back empty where the Grid
            # omits it), each with its signature and ~200 B of claim fields
            own = getattr(self, "_without_own", lambda n, it: it)(self.participants[0], items)
            sizes["forwarded"] = sum(len(i.vector) + len(i.signature) + 200 for i in own if len(i.vector))

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
    ap.add_argument("--repeat", type=int, default=3, help="paired repetitions in (a), (b) and (d)")
    ap.add_argument("--ray-path", default=None, help="a folder holding ray (appended to sys.path)")
    ap.add_argument("--parts", default="abcd", help="which comparisons to run: any of a, b, c, d")
    ap.add_argument("--simulate", default=None, help=argparse.SUPPRESS)  # the Ray subprocess of (b)
    args = ap.parse_args()
    if args.simulate:
        _simulate(args.simulate)
        return
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
                if "a" in args.parts:
                    for _ in range(args.repeat):
                        plain.append(fedtrust_rounds(fed, spec_for("mlp", args.rounds, "none", **big)))
                        masked.append(fedtrust_rounds(fed, spec_for("mlp", args.rounds, "masking", **big)))
                    show("(a) secure aggregation cost", 'secure_aggregation = "none"', statistics.median(plain),
                         statistics.median(masked), "(goal ≤ 1.05)")
                    print(f"  the masking work alone, one node  : {1000 * mask_cost(params + 3, len(OWNERS)):9.1f} ms "
                          f"per round ({params + 3:,} values, {len(OWNERS) - 1} peers: add_pairwise_mask, in place)")
                if "b" in args.parts:
                    print("\n(b) the same round, paired: fedtrust, the ClientApps in-process and Flower's simulation "
                          f"runtime back to back, {args.repeat} times")
                    ours, direct, sim, why = [], [], [], ""
                    for rep in range(args.repeat):
                        spec = spec_for("mlp", args.rounds, **big)
                        ours.append(fedtrust_rounds(fed, spec))
                        direct.append(direct_rounds(fed, spec))
                        ray_s, why = simulation_in_subprocess(fed, spec, args.ray_path)
                        if ray_s is not None:
                            sim.append(ray_s)
                        print(f"  repetition {rep + 1}: fedtrust {ours[-1] * 1e3:6.0f} ms, in-process "
                              f"{direct[-1] * 1e3:6.0f} ms ({ours[-1] / direct[-1]:.2f}×), Ray "
                              + (f"{ray_s * 1e3:6.0f} ms ({ours[-1] / ray_s:.2f}×)" if ray_s else f"— ({why})"),
                              flush=True)
                    mine = statistics.median(ours)
                    if sim:
                        show("(b) vs Flower's simulation runtime (Ray, same ClientApp and FedAvg)",
                             "flwr run_simulation", statistics.median(sim), mine, "(goal ≤ 1.0)")
                        paired = [o / r for o, r in zip(ours, sim)] if len(sim) == len(ours) else []
                        if paired:
                            print(f"  median of the paired ratios       : {statistics.median(paired):9.3f}")
                    else:
                        print(f"(b) Flower's simulation runtime: not measured ({why}); only the in-process baseline")
                    show("(b') vs the ClientApps called directly in-process", "direct in-process Grid",
                         statistics.median(direct), mine, "(goal ≤ 1.3)")
                    print(f"  median of the paired ratios       : "
                          f"{statistics.median(o / d for o, d in zip(ours, direct)):9.3f}")
                    print("(b'') Flower's deployment runtime (SuperLink + SuperNodes, with and without SecAgg+): not "
                          "run by this benchmark — it needs a SuperLink, one SuperNode process per owner and a "
                          "`flwr run` federation config, which this script does not set up; measured by hand on "
                          "2026-12-01: 9.6 s per round, 29.4 s with SecAgg+ (notes/performance-2026-12-01.md). "
                          f"fedtrust's round here: {mine:.2f} s "
                          f"({9.6 / mine:.0f}× / {29.4 / mine:.0f}× faster; goal ≥ 10× vs SecAgg+)")
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
                model = 4 * params  # the float32 global a coordinator-only scheme sends every node each round
                now = m["message"] + m["vector"] + m["forwarded"]
                print(f"  bytes per node per round          : {now / 1e6:9.2f} MB (round message {m['message'] / 1e6:.2f} "
                      f"MB in: the global named by digest; masked vector {m['vector'] / 1e6:.2f} MB out; the "
                      f"{n - 1} other signed vectors {m['forwarded'] / 1e6:.2f} MB in) against "
                      f"{(model + m['vector']) / 1e6:.2f} MB for coordinator-only aggregation (global in, vector "
                      f"out): ×{now / (model + m['vector']):.2f}; expected n · vector / (model + vector)")
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

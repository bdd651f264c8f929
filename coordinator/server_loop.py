"""One training job's strategy loop, run in its own worker process by the coordinator.

Flower keeps the task identity (run, node and task ids that every new
`Message` reads) in process-global state, so each job runs here, in a
process of its own (`fedtrust.isolate.start_worker`): it sets the identity,
builds the initial model (registry architecture, seeded from the job
digest), the job's `Derivation` (the deterministic strategy step every node
computes too), a Flower strategy that passes the derived global through, and
a `FedtrustGrid` whose rounds reach the nodes over mTLS gRPC and which
forwards every round's signed vectors to every node; it runs
`strategy.start()`, writes the final model as safetensors, and asks every
node for its attestation (which names the final model and metrics that node
computed).

It talks to the coordinator daemon over a private pipe with plain data only:
("progress", dict) while it runs, ("waiting", {node: step}) whenever the set
of nodes that owe it an answer changes (the coordinator's watchdog names them
if the worker stalls; never forwarded to the buyer), then ("done", dict) or
("error", kind, message). Nothing it reports is about one node, except the
digests of the masked vectors each node sent (which that node attests anyway)
and which node a call is waiting for. The outcome is sent before the worker
closes its channels, so a close that hangs cannot hide it.
"""
from __future__ import annotations

import logging
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from fedtrust.errors import Error, InvalidInput, JobFailed
from fedtrust.progress import Progress
from fedtrust.training.arrays import array_numpy
from fedtrust.training.server_step import DEFAULTS, initial_seed
from fedtrust.training.spec import TrainingSpec

__all__ = ["JobArgs", "run_job", "make_strategy"]

log = logging.getLogger("fedtrust.coordinator")


@dataclass(frozen=True)
class JobArgs:
    job_id: str
    job_digest: str
    job_bytes: bytes
    contract_bytes: bytes
    spec: dict[str, Any]  # TrainingSpec.to_dict()
    schema: dict[str, Any]  # the product's public schema
    participants: tuple[str, ...]
    addresses: dict[str, str]
    tls: tuple[bytes, bytes, bytes]  # cert, key, CA (PEM)
    node_timeout: float
    admissions: tuple[bytes, ...] = ()  # every participant's signed admission (phase one)


def make_strategy(spec: TrainingSpec, nodes: int):
    """A Flower strategy over every participant in every round, whose aggregate is the nodes' derived global.

    The Grid folds each round's exact sum with the spec's strategy step
    (`fedtrust.training.server_step`, which every node computes bit for bit
    too) and replies with the resulting global; this strategy adopts it
    unchanged instead of averaging again, so the coordinator's global is the
    one the nodes accept.
    """
    from flwr.app import ArrayRecord, MetricRecord
    from flwr.serverapp.strategy import FedAvg

    if spec.strategy not in DEFAULTS:
        raise InvalidInput(f"strategy {spec.strategy} is not supported")

    class NodeDerived(FedAvg):
        def aggregate_train(self, server_round, replies):
            reply = _single(replies)
            return (next(r for r in reply.content.values() if isinstance(r, ArrayRecord)),
                    next(r for r in reply.content.values() if isinstance(r, MetricRecord)))

        def aggregate_evaluate(self, server_round, replies):
            replies = list(replies)
            if not replies and not spec.evaluate:
                return None
            return next(r for r in _single(replies).content.values() if isinstance(r, MetricRecord))

    return NodeDerived(fraction_train=1.0, fraction_evaluate=1.0 if spec.evaluate else 0.0, min_train_nodes=nodes,
                       min_evaluate_nodes=nodes if spec.evaluate else 0, min_available_nodes=nodes)


def _single(replies):
    replies = list(replies)
    if len(replies) != 1 or not replies[0].has_content():
        raise JobFailed("the round produced no aggregate; the job failed")
    return replies[0]


class _Pipe:
    """The worker's end of the pipe, safe to send on from the Grid's call threads too."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, obj) -> None:
        with self._lock:
            self._conn.send(obj)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def run_job(conn, args: JobArgs) -> None:
    """Worker body: never raises; the outcome goes through `conn`."""
    conn = _Pipe(conn)
    try:
        conn.send(("done", _run(conn, args)))
    except Error as e:
        conn.send(("error", e.kind, str(e)))
    except BaseException as e:  # noqa: BLE001 - a message, never a traceback, crosses to the daemon
        traceback.print_exc()
        conn.send(("error", "internal", f"the training loop failed ({type(e).__name__}); see the coordinator's log"))
    finally:
        conn.close()


def _run(conn, args: JobArgs, grid_class=None) -> dict[str, Any]:
    import numpy as np
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedtrust.coordinator.grid import FedtrustGrid
    from fedtrust.coordinator.training_client import ForwardFrames, NodeTrainingClient
    from fedtrust.training.arrays import to_array_record, write_model
    from fedtrust.training.models import initial_arrays
    from fedtrust.training.preprocess import Preprocessor
    from fedtrust.training.server_step import Derivation
    from fedtrust.transport.tls import TlsMaterial
    from fedtrust.trust.schema import Schema

    logging.getLogger("flwr").setLevel(logging.ERROR)
    spec = TrainingSpec.from_dict(args.spec)
    run_id = initial_seed(args.job_digest)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 0

    pre = Preprocessor.build(Schema.from_dict(args.schema), spec.features, spec.label)
    init = initial_arrays(spec, pre.width, pre.outputs, seed=initial_seed(args.job_digest))
    derivation = Derivation.start(spec, init)
    tls = TlsMaterial(*args.tls)
    clients = {n: NodeTrainingClient(n, args.addresses[n], tls, args.node_timeout) for n in args.participants}
    rounds: dict[int, dict[str, float]] = {}

    def on_event(ev: Progress) -> None:
        if ev.stage == "aggregated" and ev.loss is not None and ev.accuracy is not None:
            prefix = "train" if ev.phase == "train" else "eval"
            rounds.setdefault(ev.round, {}).update({f"{prefix}_loss": ev.loss, f"{prefix}_accuracy": ev.accuracy})
        conn.send(("progress", replace(ev, rounds=spec.rounds).to_dict()))

    def send_round(node: str, message: bytes, expected: int) -> tuple[bytes, bytes]:
        return clients[node].train_round(args.job_bytes, args.contract_bytes, message, expected, args.admissions)

    frames, phase_of_frames, frames_lock = ForwardFrames(), [("", 0)], threading.Lock()

    def forward(node: str, phase: str, rnd: int, vectors) -> str:
        with frames_lock:  # a phase's vectors are serialized once for every node, and dropped at the next phase
            if phase_of_frames[0] != (phase, rnd):
                frames.clear()
                phase_of_frames[0] = (phase, rnd)
        return clients[node].forward(args.job_bytes, args.contract_bytes, phase, rnd, vectors, frames)

    def on_waiting(owing: dict[str, str]) -> None:
        conn.send(("waiting", owing))

    grid = (grid_class or FedtrustGrid)(run_id, args.participants, send_round, on_event, derivation=derivation,
                                        job_digest=args.job_digest, forward=forward, on_waiting=on_waiting)
    try:
        conn.send(("progress", Progress("started", 0, len(args.participants), rounds=spec.rounds).to_dict()))
        strategy = make_strategy(spec, len(args.participants))
        result = strategy.start(grid=grid, initial_arrays=to_array_record(init), num_rounds=spec.rounds,
                                timeout=args.node_timeout)
        final = {k: np.asarray(array_numpy(a), dtype=np.float32) for k, a in result.arrays.items()}
        if set(final) != set(init) or not derivation.complete:
            raise JobFailed("the strategy produced no model; every round failed to aggregate")
        model = write_model(final, spec.to_dict(), pre.to_dict(), args.job_id)
        conn.send(("progress", Progress("finishing", 0, len(args.participants), round=spec.rounds,
                                        rounds=spec.rounds).to_dict()))
        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            futures = {n: pool.submit(grid.owed, n, "its attestation", c.finish, args.job_bytes, args.contract_bytes)
                       for n, c in clients.items()}
            attestations = {}
            for n, f in futures.items():
                try:
                    attestations[n] = f.result().to_json()
                except Error as e:
                    raise JobFailed(f"node {n} did not attest the job, so it failed: {e}") from None
        return {"model": model, "rounds": rounds, "digests": grid.digests, "attestations": attestations,
                "model_digest": derivation.model_digest, "metrics": [m.to_dict() for m in derivation.metrics()]}
    finally:
        # off this thread: the outcome goes to the coordinator next, whatever a channel's close waits on
        threading.Thread(target=_close_all, args=(grid, list(clients.values())), name="close-channels",
                         daemon=True).start()


def _close_all(grid, clients) -> None:
    grid.close()
    for c in clients:
        c.close()

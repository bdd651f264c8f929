"""A Flower `Grid` over fedtrust's mTLS grid: one round = every participant, masked, summed, one reply.

A Flower strategy's `start()` loop calls `send_and_receive` with one message
per sampled node. This Grid

* accepts only a round addressed to *exactly* the job's participants with one
  shared content (pairwise masks cancel only over all of them), and fails
  the job with a clear error otherwise — it never lets the strategy wait for
  nodes, where Flower's `sample_nodes` would poll forever;
* assigns the message ids;
* sends the round's Flower message (protobuf serde, never pickle) to every
  participant at once through `send_round` (mTLS gRPC in the coordinator),
  with the global model named by its digest instead of carried
  (`fedtrust.training.arrays.global_by_digest`: every node holds the global
  it derived and trains only from that one), and fails the round — and so
  the job — if any participant fails or drops;
* adds the masked vectors mod 2^63 (masks cancel) and folds the exact sum into
  the job's `Derivation` (`fedtrust.training.server_step`): the same
  deterministic strategy step (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi,
  with server optimiser state) that every node computes;
* forwards every participant's vector with its signature to every node
  (`forward`), which checks them, adds them and computes the next global
  itself, and fails the job if any node's global differs from its own;
* hands the strategy **one** reply whose arrays are exactly that next global
  (the strategy of `fedtrust.coordinator.server_loop.make_strategy` passes them
  through) and whose metrics are the example-weighted means.

No single node's vector outlives the round: only its digest is kept (the
node attests the same digests), and only sums are reported. Nodes see every
vector, but each one alone is uniformly random under the pairwise masks.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import replace
from typing import Callable, Iterable

import numpy as np

from fedtrust.errors import Error, JobFailed
from fedtrust.progress import Progress
from fedtrust.training import quantize
from fedtrust.training.arrays import array_numpy, arrays_digest, global_by_digest
from fedtrust.training.server_step import Derivation
from fedtrust.trust.vectors import SignedVector

log = logging.getLogger("fedtrust.coordinator")

__all__ = ["FedtrustGrid", "NODE_ID_BASE"]

#: Flower node ids of the participants (sorted by name): NODE_ID_BASE + index
NODE_ID_BASE = 1000
#: get_node_ids calls without a round in between before the Grid assumes the strategy is waiting for nodes
MAX_IDLE_NODE_QUERIES = 50

#: (node, Flower message bytes, expected vector bytes) -> (masked vector, the node's signature over it)
SendRound = Callable[[str, bytes, int], tuple[bytes, bytes]]
#: (node, phase, round, every participant's signed vector) -> the global digest that node computed
Forward = Callable[[str, str, int, list[SignedVector]], str]
OnEvent = Callable[[Progress], None]
#: every node that owes the Grid an answer now -> what it owes ("train round 2"); called whenever that changes
OnWaiting = Callable[[dict[str, str]], None]


def _grid_base():
    from flwr.serverapp import Grid

    return Grid


class FedtrustGrid(_grid_base()):  # type: ignore[misc]
    def __init__(self, run_id: int, participants: tuple[str, ...], send_round: SendRound,
                 on_event: OnEvent | None = None, *, derivation: Derivation, job_digest: str,
                 forward: Forward | None = None, on_waiting: OnWaiting | None = None) -> None:
        from flwr.supercore.run import Run

        self._run = Run.create_empty(run_id)
        self.participants = tuple(participants)
        self._ids = {NODE_ID_BASE + i: name for i, name in enumerate(self.participants)}
        self._send_round = send_round
        self._forward = forward
        self.derivation = derivation
        self.job_digest = job_digest
        self._on_event = on_event or (lambda ev: None)
        self._on_waiting = on_waiting or (lambda owing: None)
        self._owing: dict[str, str] = {}
        self._owing_lock = threading.Lock()
        self._replies: dict[str, object] = {}
        self._idle_queries = 0
        self._seq = 0
        #: node -> sha256 of every vector it sent, in order (what its attestation must list)
        self.digests: dict[str, list[str]] = {n: [] for n in self.participants}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.participants)), thread_name_prefix="round")
        #: folds a phase's sum into the derivation while the vectors are forwarded
        self._folder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fold")
        self._folding: Future = Future()
        self._folding.set_result(None)

    # -- Grid API -----------------------------------------------------------
    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None):
        from flwr.app import Message

        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        self._idle_queries += 1
        if self._idle_queries > MAX_IDLE_NODE_QUERIES:
            raise JobFailed("the strategy keeps waiting for more nodes than the job's participants; fedtrust "
                            "fails the job instead of waiting forever")
        return list(self._ids)

    def push_messages(self, messages: Iterable) -> Iterable[str]:
        msgs = list(messages)
        self._idle_queries = 0
        if not msgs:
            return []
        ids = []
        for m in msgs:
            self._seq += 1
            mid = f"{self._run.run_id:x}-{self._seq}"
            m.metadata.__dict__["_message_id"] = mid  # the Grid assigns message ids (Flower's InMemoryGrid does the same)
            ids.append(mid)
        reply = self._round(msgs)
        for mid in ids:
            self._replies[mid] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable:
        out, seen = [], set()
        for mid in message_ids:
            reply = self._replies.pop(mid, None)
            if reply is not None and id(reply) not in seen:
                seen.add(id(reply))
                out.append(reply)
        return out

    def send_and_receive(self, messages: Iterable, *, timeout: float | None = None) -> Iterable:
        return self.pull_messages(self.push_messages(messages))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._folder.shutdown(wait=False, cancel_futures=True)

    # -- one round ----------------------------------------------------------
    def _round(self, msgs: list):
        from flwr.app import ArrayRecord, ConfigRecord
        from flwr.common.serde import message_to_proto, metadata_to_proto, recorddict_to_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage

        phase = msgs[0].metadata.message_type
        dests = sorted(m.metadata.dst_node_id for m in msgs)
        if dests != sorted(self._ids):
            raise JobFailed("the strategy addressed a round to other nodes than exactly the job's participants; "
                            "masked updates only cancel over all of them")
        if any(m.metadata.message_type != phase for m in msgs) or phase not in ("train", "evaluate"):
            raise JobFailed("a round mixes message types or uses one other than train and evaluate")
        content = msgs[0].content
        if any(m.content is not content for m in msgs[1:]):
            blobs = {message_to_proto(m).content.SerializeToString(deterministic=True) for m in msgs}
            if len(blobs) != 1:
                raise JobFailed("the strategy sent different contents to different participants in one round")
        records = [r for r in content.values() if isinstance(r, ArrayRecord)]
        configs = [r for r in content.values() if isinstance(r, ConfigRecord)]
        if len(records) != 1:
            raise JobFailed("a round must carry exactly one ArrayRecord (the global model)")
        rnd = next((c["server-round"] for c in configs if "server-round" in c), 0)
        if isinstance(rnd, bool) or not isinstance(rnd, int):
            raise JobFailed("the strategy's `server-round` config is not a whole number; the job failed")
        arrays = {k: array_numpy(a) for k, a in sorted(records[0].items())}
        self._check_global(phase, rnd, arrays)
        deriv = self.derivation
        length = deriv.vector_length(phase)
        released: dict[str, tuple[SignedVector, np.ndarray]] = {}
        # every node derives the global itself, so the round names it by digest instead of carrying it again
        named = recorddict_to_proto(global_by_digest(content, arrays_digest(arrays)))
        del arrays

        def ask(m) -> tuple[str, tuple[bytes, bytes]]:
            node = self._ids[m.metadata.dst_node_id]
            data = ProtoMessage(metadata=metadata_to_proto(m.metadata), content=named).SerializeToString()
            return node, self.owed(node, f"{phase} round {rnd}", self._send_round, node, data, 8 * length)

        futures = [self._pool.submit(ask, m) for m in msgs]
        try:
            for fut in as_completed(futures):
                try:
                    node, (data, signature) = fut.result()
                except Error as e:
                    node = self._failed_node(futures, fut, msgs)
                    raise JobFailed(f"node {node} failed in {phase} round {rnd}, so the round and the job failed "
                                    f"(no partial aggregates): {e}") from None
                item = SignedVector(node, self.job_digest, phase, rnd, signature, data)
                released[node] = (item, quantize.from_bytes(data, length, f"node {node}'s vector"))
                self.digests[node].append(item.digest)  # hashed once: the forwarding below reuses it
                self._on_event(Progress("node-answered", len(released), len(msgs), round=rnd, phase=phase))
        finally:
            for f in futures:
                f.cancel()
        total = quantize.sum_vectors([released[n][1] for n in self.participants])
        items = [released[n][0] for n in self.participants]
        del released
        # the coordinator folds the sum while the nodes receive the vectors (`_forward_all` waits for it before it
        # compares their globals with this one)
        self._folding = self._folder.submit(deriv.fold, phase, rnd, total,
                                            tuple(self.digests[n][-1] for n in self.participants))
        try:
            self._forward_all(phase, rnd, items)
            decoded = self._folding.result()
        finally:
            self._folding.cancel()
        del total
        self._on_event(Progress("aggregated", len(msgs), len(msgs), round=rnd, phase=phase, loss=decoded.loss,
                                accuracy=decoded.accuracy))
        return self._reply(msgs[0], deriv.state.arrays if phase == "train" else None, decoded)

    def _check_global(self, phase: str, rnd: int, arrays: dict[str, np.ndarray]) -> None:
        """The strategy must send exactly the global the nodes derive (its own arrays pass through)."""
        idx = self.derivation.index(phase, rnd)
        if idx != self.derivation.position or arrays_digest(arrays) != self.derivation.digests[idx]:
            raise JobFailed(f"the strategy's global model for {phase} round {rnd} is not the one the nodes derive; "
                            "nodes train only from the global they computed themselves")

    def _forward_all(self, phase: str, rnd: int, items: list[SignedVector]) -> None:
        """Every node adds the phase's vectors itself; each must reach the coordinator's global model."""
        if self._forward is None:
            return
        forward = self._forward
        futures = {n: self._pool.submit(self.owed, n, f"{phase} round {rnd} (forwarding)", forward, n, phase, rnd,
                                        self._without_own(n, items)) for n in self.participants}
        try:
            self._folding.result()  # the coordinator's own global of this phase, computed meanwhile
            for node, fut in futures.items():
                try:
                    digest = fut.result()
                except Error as e:
                    raise JobFailed(f"node {node} failed in {phase} round {rnd} while checking every participant's vectors, so "
                                    f"the job failed: {e}") from None
                if digest != self.derivation.model_digest:
                    raise JobFailed(f"node {node} computed another global model than the coordinator after {phase} "
                                    f"round {rnd}; the job failed")
        finally:
            for f in futures.values():
                f.cancel()

    def _without_own(self, node: str, items: list[SignedVector]) -> list[SignedVector]:
        """The vectors as `node` gets them: its own sent empty (it holds it) when it is exactly the one it released.

        The node fills in the vector it released and checks it with the others (its signature, the digest it
        stored), so this drops 1/n of the bytes every node receives and hashes, and no check. Anything else is
        sent as it is.
        """
        mine = self.digests[node][-1] if self.digests[node] else None
        return [replace(it, vector=b"") if it.node == node and it.digest == mine else it for it in items]

    def owed(self, node: str, step: str, call: Callable, *args):
        """`call(*args)`, with `node` listed as owing `step` while it runs (`on_waiting` hears each change)."""
        with self._owing_lock:
            self._owing[node] = step
            self._on_waiting(dict(self._owing))
        try:
            return call(*args)
        finally:
            with self._owing_lock:
                self._owing.pop(node, None)
                self._on_waiting(dict(self._owing))

    def _failed_node(self, futures, fut, msgs) -> str:
        return self._ids[msgs[futures.index(fut)].metadata.dst_node_id]

    @staticmethod
    def _reply(first, arrays: dict[str, np.ndarray] | None, decoded: quantize.Decoded):
        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

        metrics = MetricRecord({"num-examples": decoded.examples, "loss": decoded.loss,
                                "accuracy": decoded.accuracy})
        content = RecordDict({"metrics": metrics})
        if arrays is not None:
            content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                                  "metrics": metrics})
        reply = Message(content, reply_to=first)
        reply.metadata.__dict__["_message_id"] = first.metadata.message_id + "-sum"
        return reply

"""The node's side of federated training: check, train, strip, quantize, mask, release, attest.

No protobuf of fedtrust's own here (see `node_servicer.py`); the round's
Flower message arrives as bytes and is parsed with Flower's protobuf serde
(never pickle). The order of `train_round` is the security argument:

1. `NodeRuntime.check_job`: contract under the exchange key, caller is the
   contract's coordinator, this node's product, buyer's signature, exactly the
   contract's owners as participants, validity;
2. the signed training spec against the contract's `[training]` rules
   (`fedtrust.training.policy`), and the job is not already attested here;
3. the global model must be exactly the job's registry architecture (names,
   shapes, float32, finite), the round within the spec's rounds, and — the
   rule that stops a coordinator from planting weights — bit for bit the
   global this node derived itself (`fedtrust.training.server_step`): round
   1's is the registry model seeded from the job digest; every later one
   is what the node computed from the previous phase's vectors of *all*
   participants, which the coordinator forwards with each node's signature
   (`forward`: signatures, exactly the job's participants, this job, phase
   and round; then the sum, the unmasking and the same strategy step);
4. one update per (job, round), never twice from the same global model
   (`TrainingStore.claim`); a retry gets the stored bytes;
5. the job is debited (ledger, kind "train") before its first release;
6. the ClientApp (built-in or approved, never the buyer's or coordinator's
   code) runs in-process, on the node's one ClientApp thread (rounds of
   concurrent jobs queue), with node_config built from the signed spec; the
   node keeps only the model arrays, `num-examples`, `loss`, `accuracy`,
   refusing NaN/inf and mis-shaped arrays;
7. the count-weighted update is quantized (`fedtrust.training.quantize`) and
   pairwise-masked mod 2^63 with a seed bound to the job digest, the
   participants, the round, the phase and the global model's digest — nodes
   that were sent different globals produce masks that do not cancel;
8. the masked vector is stored durably, and only then returned.

Each released vector is signed (job, phase, round, vector digest) so the
other nodes can check it when the coordinator forwards it. At the end
(`finish`) the node signs an attestation whose outputs are the digests of
every vector it released for the job, with the digest of the final model and
of the per-round aggregate metrics it computed itself.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from typing import ClassVar

import numpy as np

from fedtrust.config import NodeConfig
from fedtrust.errors import (
    Error,
    InvalidInput,
    JobFailed,
    NotFound,
    PolicyViolation,
    ReplayError,
    VerificationError,
)
from fedtrust.node.admit import training_rules
from fedtrust.node.apps import AppRegistry
from fedtrust.node.runtime import CheckedJob, NodeRuntime
from fedtrust.node.store import ACCOUNTANT
from fedtrust.node.training_store import TrainingStore
from fedtrust.privacy.masking import add_pairwise_mask, training_purpose
from fedtrust.training import quantize
from fedtrust.training.arrays import GLOBAL_RECORD, arrays_digest, from_array_record, named_global, to_array_record
from fedtrust.training.context import node_config, round_config, run_config
from fedtrust.training.data import register_dataset
from fedtrust.training.dp_sgd import DpSgdPlan, plan_dp_sgd
from fedtrust.training.models import MAX_PARAMETERS
from fedtrust.training.policy import check_training
from fedtrust.training.preprocess import Preprocessor
from fedtrust.training.server_step import Derivation, initial_seed
from fedtrust.training.spec import TrainingSpec
from fedtrust.trust.canonical import parse_time, utc_now
from fedtrust.trust.clock import check_not_expired
from fedtrust.trust.credentials import kx_public_key
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import Attestation, metrics_digest, sign_attestation
from fedtrust.trust.vectors import SignedVector, sign_vector, verify_round_vectors

log = logging.getLogger("fedtrust.node")

__all__ = ["TrainingRuntime", "RoundRelease", "PHASES", "MAX_ROUND_MESSAGE_BYTES", "mask_purpose"]

PHASES = ("train", "evaluate")
#: where a ClientApp's reply may carry its loss and accuracy: fedtrust's names, then Flower's templates'
LOSS_KEYS = {"train": ("loss", "train_loss"), "evaluate": ("loss", "eval_loss")}
ACCURACY_KEYS = {"train": ("accuracy", "train_acc", "train_accuracy"),
                 "evaluate": ("accuracy", "eval_acc", "eval_accuracy")}
NO_LOSS_WARNING = ("ClientApp {app} replied to training rounds without a `loss` (or `train_loss`) metric; the "
                   "aggregate training loss counts this node as 0")
#: training jobs whose derived global models a node holds at once (in memory)
MAX_DERIVATIONS = 16
#: a round's Flower message: the global model (float32, at most MAX_PARAMETERS) plus framing
MAX_ROUND_MESSAGE_BYTES = 4 * MAX_PARAMETERS + (1 << 20)


def _finite_metric(name: str, v: object) -> float:
    """A ClientApp's reported metric as a float; InvalidInput unless it is a finite number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise InvalidInput(f"the ClientApp's `{name}` is not a finite number; the node refuses to release it")
    return float(v)


def mask_purpose(phase: str, rnd: int, global_digest: str) -> bytes:
    """The `purpose` of a round's pairwise masks: distinct per round, phase and global model."""
    return training_purpose(rnd) + b"/" + phase.encode() + b"/" + global_digest.encode()


@dataclass(frozen=True)
class RoundRelease:
    phase: str
    round: int
    global_digest: str
    vector: bytes  # little-endian uint64, masked
    signature: bytes  # the node's Ed25519 signature over (node, job, phase, round, vector digest)


@dataclass(frozen=True)
class _Plan:
    preprocessor: Preprocessor
    shapes: dict[str, tuple[int, ...]]  # sorted by name: the order of the update vector
    params: int


class TrainingRuntime:
    kind: ClassVar[str] = TrainingSpec.kind

    def __init__(self, node: NodeRuntime, config: NodeConfig | None = None) -> None:
        config = config or node.config
        self.node = node
        self.store = TrainingStore(config.state)
        self.apps = AppRegistry(config.clientapps)  # ConfigError when an approved app's digest differs
        self.device = config.device
        self._plans: OrderedDict[str, _Plan] = OrderedDict()
        self._dp_plans: dict[str, DpSgdPlan] = {}
        self._checked: OrderedDict[tuple, CheckedJob] = OrderedDict()
        #: job digest -> what the attestation warns of (in memory: a node restarted mid-job forgets them)
        self._warnings: dict[str, set[str]] = {}
        #: job digest -> (lock, the chain of global models this node derived for the job)
        self._derivations: OrderedDict[str, tuple[threading.Lock, Derivation]] = OrderedDict()
        #: job digest -> (phase, round, bytes, sha256 hex) of the newest vector this node released for it
        self._own: OrderedDict[str, tuple[str, int, bytes, str]] = OrderedDict()
        self._lock = threading.Lock()
        #: ClientApps run one at a time, always on this one thread: one torch/OpenMP thread team, one job's
        #: tensors on the GPU at a time (rounds of concurrent jobs queue here)
        self._trainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clientapp")
        for held in node.datasets.values():
            register_dataset(str(held.path), held.dataset)

    # -- checks -----------------------------------------------------------
    def check(self, peer: tuple[str, str], job_bytes: bytes, contract_bytes: bytes) -> CheckedJob:
        """`NodeRuntime.check_job`, memoised per (caller, job, contract) bytes for the job's later rounds.

        Signatures and structure are pure functions of the bytes; what depends on
        the time (the job's expiry, the contract's validity) is checked again on
        every call.
        """
        key = (peer, hashlib.sha256(job_bytes).digest(), hashlib.sha256(contract_bytes).digest())
        with self._lock:
            checked = self._checked.get(key)
        if checked is None:
            checked = self.node.check_job(peer, job_bytes, contract_bytes)
            with self._lock:
                self._checked[key] = checked
                while len(self._checked) > 64:
                    self._checked.popitem(last=False)
            return checked
        now = datetime.now(timezone.utc)
        check_not_expired(checked.job.expires_at, "the job spec", "the buyer must submit a new job", now=now,
                          skew=self.node.skew)
        checked.contract.check_valid_at(now, self.node.skew)
        return checked

    @staticmethod
    def spec(checked: CheckedJob) -> TrainingSpec:
        return checked.job.payload_as(TrainingSpec, "the training endpoint")

    def _check(self, checked: CheckedJob) -> TrainingSpec:
        spec = self.spec(checked)
        check_training(spec, checked.contract.rules, checked.held.product.schema, checked.contract.dataset,
                       len(checked.job.participants))
        self.apps.get(spec.model)  # an app this node never approved is refused before anything is spent
        return spec

    def _plan(self, checked: CheckedJob) -> _Plan:
        with self._lock:
            plan = self._plans.get(checked.job_digest)
            if plan is not None:
                return plan
        from fedtrust.training.models import expected_shapes

        spec = self.spec(checked)
        pre = Preprocessor.build(checked.held.product.schema, spec.features, spec.label)
        shapes = dict(sorted(expected_shapes(spec, pre.width, pre.outputs).items()))
        plan = _Plan(pre, shapes, int(sum(int(np.prod(s)) for s in shapes.values())))
        with self._lock:
            self._plans[checked.job_digest] = plan
            while len(self._plans) > 16:
                self._plans.popitem(last=False)
        return plan

    # -- admission (phase one: every check, nothing spent) --------------------
    def admit(self, checked: CheckedJob) -> None:
        """Every check a training job passes before its first round (`node.admit.training_rules`); spends nothing."""
        self.node.decide(checked, self.rules(checked))

    def rules(self, checked: CheckedJob):
        """The decision core's training rules with this node's approved apps and the job's DP-SGD plan."""
        return partial(training_rules, approved=frozenset(self.apps.names),
                       dp_plan=lambda: self.dp_plan(checked))

    # -- rounds -----------------------------------------------------------
    def train_round(self, checked: CheckedJob, message: bytes, admissions=()) -> RoundRelease:
        decision = self.node.decide(checked, self.rules(checked))  # every refusal rule, before anything runs
        spec = self.spec(checked)
        job, store = checked.job, self.node.store
        plan = self._plan(checked)
        phase, rnd, arrays, named = self._parse(message, spec, plan)
        gdigest = arrays_digest(arrays) if arrays is not None else str(named)  # (_parse returns one of the two)
        if not decision.resume:
            self.node.check_admissions(checked, admissions)  # nothing runs or is debited before all admitted
        derived = self._check_global(checked, plan, phase, rnd, gdigest)
        arrays = arrays if arrays is not None else derived  # named by digest: this node's own copy of that global
        stored = self.store.claim(checked.job_digest, phase, rnd, gdigest)
        if stored is not None:
            digest = hashlib.sha256(stored).hexdigest()
            self._keep_own(checked.job_digest, phase, rnd, stored, digest)
            return RoundRelease(phase, rnd, gdigest, stored, self._sign(checked, phase, rnd, stored, digest))
        if arrays is None:  # named an earlier global whose round this node never answered (it folded past it)
            self.store.abandon(checked.job_digest, phase, rnd)
            raise VerificationError(f"{phase} round {rnd} names a global model this node has already moved past; a "
                                    "node trains only from the newest global it derived")
        dp, privacy = self.dp_plan(checked), checked.contract.rules.privacy
        try:
            # debited (and fsynced) before the first release; later rounds find the same row
            if dp is None or privacy is None:  # (a DP plan exists exactly under [privacy])
                store.debit_job(node=self.node.name, contract_digest=checked.contract_digest, kind="train",
                                job_id=job.job_id, nonce=job.nonce, job_digest=checked.job_digest,
                                mechanism="masked-sgd" if spec.secure_aggregation == "masking" else "plain-sgd",
                                max_jobs=self._max_jobs(checked))
            else:
                store.debit_job(node=self.node.name, contract_digest=checked.contract_digest, kind="train",
                                job_id=job.job_id, nonce=job.nonce, job_digest=checked.job_digest,
                                mechanism="dp-sgd", epsilon=dp.epsilon,
                                delta=dp.delta, epsilon_total=privacy.epsilon_total, delta_total=privacy.delta,
                                max_jobs=self._max_jobs(checked))
            n, loss, acc, delta = self._run_app(checked, plan, phase, rnd, arrays, dp)
            if dp is not None:
                # the row count and exact metrics are not DP: release the public declared minimum as the
                # update's weight and no metrics (evaluation is refused under [privacy])
                n, loss, acc = checked.held.product.min_rows, 0.0, 0.0
            vector = quantize.encode(n, loss, acc, delta)
            if spec.secure_aggregation == "masking":
                self._add_mask(checked, vector, mask_purpose(phase, rnd, gdigest))  # in place
            data = quantize.to_bytes(vector)
            del vector
            digest = hashlib.sha256(data).hexdigest()  # once: the store and the signature both name it
            self.store.release(checked.job_digest, phase, rnd, data, digest)
        except BaseException:
            self.store.abandon(checked.job_digest, phase, rnd)
            raise
        self._keep_own(checked.job_digest, phase, rnd, data, digest)
        return RoundRelease(phase, rnd, gdigest, data, self._sign(checked, phase, rnd, data, digest))

    def _keep_own(self, job_digest: str, phase: str, rnd: int, data: bytes, digest: str) -> None:
        """Keep the newest released vector of the job for `forward` (the coordinator need not send it back)."""
        with self._lock:
            self._own[job_digest] = (phase, rnd, data, digest)
            self._own.move_to_end(job_digest)
            while len(self._own) > MAX_DERIVATIONS:
                self._own.popitem(last=False)

    def _with_own(self, job_digest: str, phase: str, rnd: int, items: list[SignedVector]) -> list[SignedVector]:
        """The relayed vectors with this node's own filled in where the coordinator sent it empty.

        A forwarded vector is never empty (every vector holds at least the example count), so an empty
        one of this node stands for the vector this node released; it is then checked like any other
        (this node's signature over exactly those bytes). Any other empty vector fails its signature.
        """
        mine = [i for i, it in enumerate(items) if it.node == self.node.name and len(it.vector) == 0]
        if not mine:
            return items
        with self._lock:
            kept = self._own.get(job_digest)
        if kept is not None and kept[:2] == (phase, rnd):
            data, digest = kept[2], kept[3]
        else:
            found = self.store.output(job_digest, phase, rnd)
            if found is None:
                return items  # refused below: this node released no vector in that round
            data, digest = found
        out = list(items)
        for i in mine:
            own = replace(items[i], vector=data)
            own.__dict__["digest"] = digest  # SignedVector.digest (a cached_property): the digest stored with it
            out[i] = own
        return out

    @staticmethod
    def _max_jobs(checked: CheckedJob) -> int:
        rules = checked.contract.rules.training
        assert rules is not None  # check_training refused the job otherwise
        return rules.max_jobs

    def _sign(self, checked: CheckedJob, phase: str, rnd: int, vector: bytes, digest: str | None = None) -> bytes:
        return sign_vector(self.node.identity.signer, self.node.name, checked.job_digest, phase, rnd, vector, digest)

    # -- the globals this node derives itself ------------------------------------
    def _derivation(self, checked: CheckedJob, plan: _Plan) -> tuple[threading.Lock, Derivation]:
        """The job's chain of derived globals; started from the signed job at its first phase."""
        from fedtrust.training.models import initial_arrays

        with self._lock:
            found = self._derivations.get(checked.job_digest)
            if found is not None:
                self._derivations.move_to_end(checked.job_digest)
                return found
        if self.store.released(checked.job_digest):
            raise JobFailed(f"this node no longer holds the global models it derived for the job (it restarted during "
                            f"the job, or more than {MAX_DERIVATIONS} training jobs ran at once); the job cannot "
                            "continue, submit a new one")
        spec = self.spec(checked)
        init = initial_arrays(spec, plan.preprocessor.width, plan.preprocessor.outputs, initial_seed(checked.job_digest))
        if {k: tuple(v.shape) for k, v in init.items()} != plan.shapes:
            raise InvalidInput("the job's initial model does not match its architecture")
        with self._lock:
            found = self._derivations.setdefault(checked.job_digest, (threading.Lock(), Derivation.start(spec, init)))
            while len(self._derivations) > MAX_DERIVATIONS:
                self._derivations.popitem(last=False)
        return found

    def _check_global(self, checked: CheckedJob, plan: _Plan, phase: str, rnd: int,
                      gdigest: str) -> dict[str, np.ndarray] | None:
        """The coordinator's global must be the one this node derived for (phase, round); refuse anything else.

        Returns this node's own arrays of that global while it is the newest it derived (None for an
        earlier one, whose round this node has already answered).
        """
        lock, deriv = self._derivation(checked, plan)
        with lock:
            idx = deriv.index(phase, rnd)
            if idx > deriv.position:
                p, r = deriv.sequence[deriv.position]
                raise VerificationError(
                    f"the coordinator has not forwarded every participant's signed vectors of {p} round {r}; a node "
                    f"computes each global model itself and trains only from it, so {phase} round {rnd} cannot start")
            expected = deriv.digests[idx]
            own = deriv.state.arrays if idx == deriv.position else None  # a new dict per fold, never changed after
        if gdigest == expected:
            return own
        if idx == 0:
            raise VerificationError(
                f"the global model of {phase} round {rnd} is not the one the signed job determines (the registry "
                "model seeded from the job digest); a node trains only from a global it derived itself")
        raise VerificationError(
            f"the global model of {phase} round {rnd} differs from the one this node computed from the previous "
            "round's signed vectors; a node trains only from a global it derived itself")

    def forward_limit(self, checked: CheckedJob) -> int:
        """The most bytes a phase's forwarded vectors may take: every participant's vector of a train phase."""
        self._check(checked)
        plan = self._plan(checked)
        return len(checked.job.participants) * 8 * (plan.params + quantize.TAIL)

    def forward(self, checked: CheckedJob, phase: str, rnd: int, items: list[SignedVector]) -> str:
        """Check and add every participant's vector of (phase, round); fold the sum into the derived chain.

        Returns the digest of the global model the node now holds (after a
        train phase, the next round's). A phase forwarded again is accepted
        only with exactly the vectors already added.
        """
        self._check(checked)
        job = checked.job
        if phase not in PHASES:
            raise InvalidInput(f"phase {phase!r} is not a training phase; use train or evaluate")
        plan = self._plan(checked)
        lock, deriv = self._derivation(checked, plan)
        items = self._with_own(checked.job_digest, phase, rnd, items)
        with lock:
            idx = deriv.index(phase, rnd)
            vectors = verify_round_vectors(checked.contract, checked.job_digest, job.participants, phase, rnd, items)
            hashed = {it.node: it.digest for it in items}  # each vector hashed once (verify_round_vectors did)
            digests = tuple(hashed[n] for n in job.participants)
            if idx < deriv.position:
                if deriv.folded[idx] != hashlib.sha256("".join(digests).encode()).hexdigest():
                    raise VerificationError(f"the coordinator forwarded other vectors for {phase} round {rnd} than "
                                            "the ones this node already added; a round is added once")
                return deriv.digests[idx + 1]
            if idx > deriv.position:
                p, r = deriv.sequence[deriv.position]
                raise VerificationError(f"the vectors of {p} round {r} were not forwarded before those of {phase} "
                                        f"round {rnd}; phases are added in order")
            own = {(p, r): d for p, r, d in self.store.released(checked.job_digest)}.get((phase, rnd))
            if own is None:
                raise VerificationError(f"this node released no vector in {phase} round {rnd}; it adds only rounds "
                                        "it took part in")
            if own != hashed[self.node.name]:
                raise VerificationError(f"the relayed vector of this node in {phase} round {rnd} is not the one it "
                                        "released")
            length = deriv.vector_length(phase)
            total = quantize.sum_vectors([quantize.from_bytes(vectors[n], length, f"node {n}'s vector")
                                          for n in job.participants])
            deriv.fold(phase, rnd, total, digests)
            return deriv.model_digest

    def _add_mask(self, checked: CheckedJob, vector: np.ndarray, purpose: bytes) -> None:
        """vector += this node's pairwise mask mod 2^63, in place (bit for bit `add_masks(vector, pairwise_mask(…))`)."""
        peers = {h.credential.name: kx_public_key(h.credential)
                 for h in checked.contract.owners if h.credential.name != self.node.name}
        add_pairwise_mask(vector, self.node.kx_private, self.node.name, peers, checked.job_digest, quantize.MODULUS,
                          purpose)

    def _parse(self, message: bytes, spec,
               plan: _Plan) -> tuple[str, int, dict[str, np.ndarray] | None, str | None]:
        """(phase, round, the global's arrays or None, the digest the message names the global by or None)."""
        from flwr.app import ArrayRecord, ConfigRecord
        from flwr.common.serde import message_from_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage
        from google.protobuf.message import DecodeError

        try:
            msg = message_from_proto(ProtoMessage.FromString(message))
        except (DecodeError, ValueError, TypeError, KeyError, AttributeError):
            raise InvalidInput("the round's Flower message is malformed; it must be a serialized flwr Message") from None
        if not msg.has_content():
            raise InvalidInput("the round's Flower message carries no content")
        phase = msg.metadata.message_type
        if phase not in PHASES:
            raise InvalidInput(f"message type {phase!r} is not a training phase; use train or evaluate")
        if phase == "evaluate" and not spec.evaluate:
            raise PolicyViolation("the signed spec turns federated evaluation off (evaluate = false)")
        content = msg.content
        named = named_global(content)
        records = [r for r in content.values() if isinstance(r, ArrayRecord)]
        configs = [r for k, r in content.items() if isinstance(r, ConfigRecord) and k != GLOBAL_RECORD]
        if len(records) != (0 if named else 1):
            raise InvalidInput("the round's message must carry exactly one ArrayRecord (the global model) or name the "
                               "global model by digest, not both")
        rnd = next((c.get("server-round") for c in configs if "server-round" in c), None)
        if not isinstance(rnd, int) or isinstance(rnd, bool):
            raise InvalidInput("the round's message has no integer `server-round` in its config")
        if not 1 <= rnd <= spec.rounds:
            raise PolicyViolation(f"round {rnd} is outside the signed spec's rounds (1..{spec.rounds})")
        if named:
            return phase, rnd, None, named
        return phase, rnd, from_array_record(records[0], plan.shapes, "the global model"), None

    def dp_plan(self, checked: CheckedJob) -> DpSgdPlan | None:
        """The job's DP-SGD plan under the contract's [privacy] rules, from public numbers only (cached)."""
        privacy = checked.contract.rules.privacy
        if privacy is None:
            return None
        spec = self.spec(checked)
        assert privacy.training_epsilon is not None  # check_training refused the job otherwise
        with self._lock:
            cached = self._dp_plans.get(checked.job_digest)
        if cached is not None:
            return cached
        dp = plan_dp_sgd(privacy.training_epsilon, privacy.training_delta or privacy.delta,
                         min_rows=checked.held.product.min_rows, batch_size=spec.batch_size,
                         local_epochs=spec.local_epochs, rounds=spec.rounds)
        with self._lock:
            self._dp_plans[checked.job_digest] = dp
        return dp

    def _run_app(self, checked: CheckedJob, plan: _Plan, phase: str, rnd: int, arrays: dict[str, np.ndarray],
                 dp: DpSgdPlan | None = None):
        from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
        from flwr.app.constants import DEFAULT_TTL
        from flwr.app.typing import ConfigRecordValues

        from fedtrust.training.loop import resolve_device

        spec = self.spec(checked)
        app = self.apps.get(spec.model)
        run_id = int(checked.job_digest[:15], 16)
        node_index = checked.job.participants.index(self.node.name) + 1
        seed = int.from_bytes(bytes.fromhex(checked.job_digest[:16]), "big") ^ (rnd * 1_000_003 + node_index)
        cfg = node_config(spec, dataset_path=str(checked.held.path), schema=checked.held.product.schema.to_dict(),
                          device=resolve_device(self.device), seed=seed & ((1 << 62) - 1), job_id=checked.job.job_id,
                          dp=dp.run if dp is not None else None)
        values: dict[str, ConfigRecordValues] = {**round_config(spec, rnd)}
        config = ConfigRecord(values)
        meta = Metadata(run_id=run_id, message_id=f"{checked.job_digest[:16]}-{phase}-{rnd}", src_node_id=0,
                        dst_node_id=node_index, reply_to_message_id="", group_id=str(rnd), created_at=time.time(),
                        ttl=DEFAULT_TTL, message_type=phase)
        # Flower's overloads omit the metadata= form its __init__ accepts (the node sets the ids it derives)
        msg = Message(metadata=meta,  # type: ignore[call-overload]
                      content=RecordDict({"arrays": to_array_record(arrays), "config": config}))
        context = Context(run_id=run_id, node_id=node_index, node_config=cfg, state=RecordDict(),
                          run_config=run_config(spec))
        try:
            reply = self._trainer.submit(app, msg, context).result()
        except Error:
            raise
        except Exception as e:  # noqa: BLE001 - the app's failure fails this round, never the daemon
            # the message and traceback stay in this node's log; only the exception's class crosses the wire
            log.warning("ClientApp %s failed in %s round %d of job %s: %s: %s", spec.model, phase, rnd,
                        checked.job.job_id, type(e).__name__, e, exc_info=e)
            raise JobFailed(f"the ClientApp {spec.model} failed in {phase} round {rnd} ({type(e).__name__}); "
                            "see the node's log") from None
        released = self._strip(reply, phase, rnd, plan, arrays)
        if phase == "train" and released[1] is None:
            log.warning("ClientApp %s replied to train round %d of job %s without a `loss` metric; the aggregate "
                        "loss counts this node as 0", spec.model, rnd, checked.job.job_id)
            with self._lock:
                self._warnings.setdefault(checked.job_digest, set()).add(NO_LOSS_WARNING.format(app=spec.model))
        return released[0], released[1] or 0.0, released[2], released[3]

    def _strip(self, reply, phase: str, rnd: int, plan: _Plan, global_arrays: dict[str, np.ndarray]):
        """Keep the model arrays, num-examples, loss and accuracy; refuse anything malformed."""
        from flwr.app import ArrayRecord, Message, MetricRecord

        if not isinstance(reply, Message) or not reply.has_content():
            raise JobFailed(f"the ClientApp returned no result in {phase} round {rnd}")
        content = reply.content
        metrics = next((m for m in content.values() if isinstance(m, MetricRecord) and "num-examples" in m), None)
        if metrics is None:
            raise InvalidInput(f"the ClientApp's {phase} reply has no `num-examples` metric")
        n = metrics["num-examples"]
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= quantize.MAX_EXAMPLES:
            raise InvalidInput(f"the ClientApp's `num-examples` must be an integer in [0, {quantize.MAX_EXAMPLES}]")
        # Flower's app templates name them train_loss, eval_loss, eval_acc: read those where `loss`/`accuracy` lack
        loss = next((metrics[k] for k in LOSS_KEYS[phase] if k in metrics), None)
        acc = next((metrics[k] for k in ACCURACY_KEYS[phase] if k in metrics), 0.0)
        loss_value = None if loss is None else _finite_metric("loss", loss)
        acc_value = _finite_metric("accuracy", acc)
        delta = None
        if phase == "train":
            records = [r for r in content.values() if isinstance(r, ArrayRecord)]
            if len(records) != 1:
                raise InvalidInput("the ClientApp's update must hold exactly one ArrayRecord")
            new = from_array_record(records[0], plan.shapes, "the ClientApp's update")
            delta = np.empty(plan.params, dtype=np.float64)  # w − g in float64, written in place, array by array
            pos = 0
            for k in plan.shapes:
                size = new[k].size
                np.subtract(new[k].reshape(-1), global_arrays[k].reshape(-1), out=delta[pos:pos + size],
                            dtype=np.float64)
                pos += size
        return n, loss_value, acc_value, delta

    # -- end of the job -----------------------------------------------------
    def record_finished(self, checked: CheckedJob) -> None:
        """The owner's job-log row of a finished training job (once: a retried finish adds none)."""
        job = checked.job
        if any(r.job_id == job.job_id and r.outcome == "attested" for r in self.node.store.jobs.jobs(checked.contract_digest)):
            return
        debit = self.node.store.find_debit(checked.contract_digest, job.job_id, job.nonce, checked.job_digest)
        started = parse_time(debit.created_at) if debit else datetime.now(timezone.utc)
        self.node.record_job(checked, "attested", epsilon=debit.epsilon if debit else None,
                             duration_s=(datetime.now(timezone.utc) - started).total_seconds())

    def finish(self, checked: CheckedJob) -> Envelope:
        """Sign the attestation over every vector released for the job (once; retries get the same one)."""
        self._check(checked)
        job, store = checked.job, self.node.store
        done = store.lookup(checked.contract_digest, job.job_id, job.nonce, checked.job_digest)
        if done is not None:
            return done.attestation
        debit = store.find_debit(checked.contract_digest, job.job_id, job.nonce, checked.job_digest)
        released = self.store.released(checked.job_digest)
        if debit is None or not any(p == "train" for p, _, _ in released):
            raise NotFound("this node released no update for the job; there is nothing to attest")
        lock, deriv = self._derivation(checked, self._plan(checked))
        with lock:
            if not deriv.complete:
                p, r = deriv.sequence[deriv.position]
                raise VerificationError(f"the coordinator has not forwarded every participant's signed vectors of {p} "
                                        f"round {r}; a node attests only the final model it computed itself")
            model, metrics = deriv.model_digest, metrics_digest(deriv.metrics())
        att = Attestation(
            node=self.node.name, job_digest=checked.job_digest, contract_digest=checked.contract_digest,
            product_digest=checked.held.product_digest, data_commitment=checked.held.product.commitment,
            code_digest=self.node.code_digest, outputs=tuple(d for _, _, d in released), epsilon=debit.epsilon,
            delta=debit.delta, chain=debit.chain, dp=debit.mechanism == "dp-sgd", started_at=debit.created_at,
            released_at=utc_now(), warnings=tuple(sorted(self._warnings.get(checked.job_digest, ()))),
            model_digest=model, metrics_digest=metrics,
            accountant=ACCOUNTANT.name if debit.mechanism == "dp-sgd" else None,
        )
        try:
            attested = store.attach_attestation(checked.contract_digest, job.job_id,
                                                sign_attestation(att, self.node.identity.signer)).attestation
            with self._lock:  # the job is over: free its derived models (retries get the stored attestation)
                self._derivations.pop(checked.job_digest, None)
                self._own.pop(checked.job_digest, None)
            return attested
        except ReplayError:  # a concurrent retry attested first
            again = store.lookup(checked.contract_digest, job.job_id, job.nonce, checked.job_digest)
            if again is None:
                raise
            return again.attestation

"""Receipts: node attestations, the coordinator's statement, the buyer's acknowledgement.

Each node signs an `Attestation` for what it released, with a budget chain
entry (sequence number, previous attestation digest, cumulative ε) so double
spending is provable. The coordinator signs a `CoordinatorStatement` naming
what it relayed: for a query, per participant the attestation digest and the
output digests it forwarded to the buyer (it computes no aggregate; the buyer
adds the relayed ciphertexts itself); for a training job, the model it
delivered. The buyer signs an
`Acknowledgement` with a salted digest of the result. A `ReceiptBundle`
carries all envelopes to the exchange. Nothing here depends on one node's
data: only digests, privacy spends planned from public bounds, and times.

Privacy numbers are decimal strings with exactly six places ("0.100000"), so
sums agree everywhere (`fmt_eps`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Mapping, Sequence

from fedtrust.errors import InvalidInput, VerificationError
from fedtrust.trust.canonical import Fields, canonical, sha256_hex
from fedtrust.trust.contracts import Contract
from fedtrust.trust.credentials import signing_public_key
from fedtrust.trust.dsse import Envelope, Signer, keyid_of, load_json, verify_object, verify_object_by_one_of

__all__ = [
    "ATTESTATION_TYPE", "STATEMENT_TYPE", "ACK_TYPE", "GENESIS", "EPS_PLACES",
    "fmt_eps", "parse_eps", "fmt_metric", "metrics_digest", "result_digest", "ledger_entry_digest",
    "ChainEntry", "next_chain_entry", "Attestation", "RoundMetric", "TrainingSummary", "RelayedOutputs",
    "CoordinatorStatement",
    "Acknowledgement", "ReceiptBundle",
    "sign_attestation", "verify_attestation", "sign_coordinator_statement", "verify_statement_of_coordinator",
    "sign_acknowledgement", "verify_acknowledgement",
]

ATTESTATION_TYPE = "https://fedtrust.dev/Attestation/v1"
STATEMENT_TYPE = "https://fedtrust.dev/CoordinatorStatement/v2"
ACK_TYPE = "https://fedtrust.dev/Acknowledgement/v1"
#: `prev` of the first chain entry of a (node, contract) chain
GENESIS = "0" * 64
EPS_PLACES = 6
_QUANT = Decimal(1).scaleb(-EPS_PLACES)
_EPS = re.compile(r"(0|[1-9][0-9]{0,11})\.[0-9]{6}")
MAX_ATTESTATIONS = 1024


def fmt_eps(value: Decimal | float | int | str) -> str:
    """A privacy number as a six-place decimal string: fmt_eps(0.1) == "0.100000" (half-even rounding)."""
    if isinstance(value, bool):
        raise InvalidInput("privacy parameter must be a number, not a boolean")
    try:
        d = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        raise InvalidInput("privacy parameter is not a decimal number; write it like 0.5") from None
    if not d.is_finite() or d < 0:
        raise InvalidInput("privacy parameter must be a finite non-negative number")
    return str(d.quantize(_QUANT, rounding=ROUND_HALF_EVEN))


def parse_eps(value: str, what: str = "privacy parameter") -> Decimal:
    """Strict inverse of fmt_eps: only six-place decimal strings are accepted."""
    if not isinstance(value, str) or not _EPS.fullmatch(value):
        raise InvalidInput(f"{what} must be a decimal string with six places, like 0.500000")
    return Decimal(value)


def _json_value(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**53:
        return str(v)
    return v


def result_digest(document: Mapping[str, Any]) -> str:
    """sha256 of the canonical result document the buyer received, every field but `result_digest` itself.

    The whole document counts (columns, rows, withheld, ε, DP noise and
    error bars, SQL, job id, the buyer's random salt), so no part of what
    was delivered can be swapped after the acknowledgement. Values are taken
    as they read back from JSON; Decimals, ints beyond 2^53 and non-finite
    floats count as strings.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("salt"), str):
        raise InvalidInput("a result document is a JSON object with the buyer's random `salt`")
    body = {k: v for k, v in document.items() if k != "result_digest"}
    return sha256_hex(canonical(_plain(json.loads(json.dumps(body, default=_json_value)))))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**53:
        return str(v)
    return v


def ledger_entry_digest(node: str, contract_digest: str, job_digest: str, epsilon: str, delta: str,
                        chain: "ChainEntry") -> str:
    """Digest of one budget-ledger entry; the next entry's `prev` names it.

    Everything in it is in the node's attestation, so anyone holding the
    receipts can recompute the chain; and it exists from the moment the node
    debits (before any output or attestation), so a training job that debits
    at its first round and attests at its end is chained like a query. The
    cumulative δ is covered when the entry has one (every entry a node writes
    now; entries written before δ joined the chain have none, and keep their digest).
    """
    entry = {
        "node": node,
        "contract_digest": contract_digest,
        "job_digest": job_digest,
        "epsilon": epsilon,
        "delta": delta,
        "seq": chain.seq,
        "prev": chain.prev,
        "cumulative_epsilon": chain.cumulative_epsilon,
    }
    if chain.cumulative_delta is not None:
        entry["cumulative_delta"] = chain.cumulative_delta
    return sha256_hex(canonical(entry))


@dataclass(frozen=True)
class ChainEntry:
    """A position in a node's budget chain under one contract: Σε and Σδ of every job up to this one."""

    seq: int
    prev: str
    cumulative_epsilon: str
    #: Σδ (basic composition), six places like ε; None only in entries written before δ joined the chain
    cumulative_delta: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"seq": self.seq, "prev": self.prev, "cumulative_epsilon": self.cumulative_epsilon}
        if self.cumulative_delta is not None:
            d["cumulative_delta"] = self.cumulative_delta
        return d

    @classmethod
    def from_dict(cls, d: object) -> ChainEntry:
        f = Fields(d, "chain entry")
        entry = cls(f.integer("seq"), f.digest("prev"), f.text("cumulative_epsilon"),
                    f.text("cumulative_delta") if "cumulative_delta" in f.d else None)
        if entry.seq < 1:
            raise InvalidInput("chain entry: seq starts at 1")
        if (entry.seq == 1) != (entry.prev == GENESIS):
            raise InvalidInput("chain entry: exactly the first entry (seq 1) has the all-zero prev")
        parse_eps(entry.cumulative_epsilon, "chain entry cumulative_epsilon")
        if entry.cumulative_delta is not None:
            parse_eps(entry.cumulative_delta, "chain entry cumulative_delta")
        return entry


def next_chain_entry(prev: ChainEntry | None, prev_digest: str | None, epsilon: str,
                     delta: str = "0.000000") -> ChainEntry:
    """The entry after `prev` (whose attestation envelope digest is `prev_digest`), spending `epsilon` and `delta`."""
    if prev is None:
        return ChainEntry(1, GENESIS, fmt_eps(parse_eps(epsilon)), fmt_eps(parse_eps(delta)))
    if prev_digest is None:
        raise InvalidInput("the previous attestation's digest is needed to extend a chain")
    before_delta = parse_eps(prev.cumulative_delta or "0.000000")
    return ChainEntry(prev.seq + 1, prev_digest, fmt_eps(parse_eps(prev.cumulative_epsilon) + parse_eps(epsilon)),
                      fmt_eps(before_delta + parse_eps(delta)))


@dataclass(frozen=True)
class Attestation:
    node: str
    job_digest: str
    contract_digest: str
    product_digest: str
    data_commitment: str
    code_digest: str
    outputs: tuple[str, ...]
    epsilon: str
    delta: str
    chain: ChainEntry
    dp: bool
    started_at: str
    released_at: str
    #: what the node noticed about the software it ran, in fixed wording (never a data value),
    #: e.g. a ClientApp whose train replies carried no `loss`; omitted from the JSON when empty
    warnings: tuple[str, ...] = ()
    #: training jobs: `arrays_digest` of the final model and `metrics_digest` of the per-round aggregate
    #: metrics, both computed by this node itself from every participant's signed vectors
    model_digest: str | None = None
    metrics_digest: str | None = None
    #: PSI jobs: the size of the intersection this node found (both owners find the same; the buyer buys it)
    intersection_size: int | None = None
    #: differential-privacy jobs: the accountant that composed the node's spends
    #: (`fedtrust.privacy.accounting`, e.g. "basic-composition"); omitted when None
    accountant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = self._fields()
        if self.intersection_size is not None:
            d["intersection_size"] = self.intersection_size
        if self.accountant is not None:
            d["accountant"] = self.accountant
        if self.warnings:
            d["warnings"] = list(self.warnings)
        if self.model_digest is not None:
            d["model_digest"] = self.model_digest
            d["metrics_digest"] = self.metrics_digest
        return d

    def _fields(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "job_digest": self.job_digest,
            "contract_digest": self.contract_digest,
            "product_digest": self.product_digest,
            "data_commitment": self.data_commitment,
            "code_digest": self.code_digest,
            "outputs": list(self.outputs),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "chain": self.chain.to_dict(),
            "dp": self.dp,
            "started_at": self.started_at,
            "released_at": self.released_at,
        }

    @classmethod
    def from_dict(cls, d: object) -> Attestation:
        f = Fields(d, "attestation")
        att = cls(
            node=f.text("node"),
            job_digest=f.digest("job_digest"),
            contract_digest=f.digest("contract_digest"),
            product_digest=f.digest("product_digest"),
            data_commitment=f.digest("data_commitment"),
            code_digest=f.digest("code_digest"),
            outputs=f.digests("outputs"),
            epsilon=f.text("epsilon"),
            delta=f.text("delta"),
            chain=ChainEntry.from_dict(f.obj("chain")),
            dp=f.flag("dp"),
            started_at=f.time("started_at"),
            released_at=f.time("released_at"),
            warnings=_warnings(f.d.get("warnings", [])),
            model_digest=f.digest("model_digest") if "model_digest" in f.d else None,
            metrics_digest=f.digest("metrics_digest") if "model_digest" in f.d else None,
            intersection_size=_size(f.d["intersection_size"]) if "intersection_size" in f.d else None,
            accountant=f.text("accountant") if "accountant" in f.d else None,
        )
        parse_eps(att.epsilon, "attestation epsilon")
        parse_eps(att.delta, "attestation delta")
        return att


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise InvalidInput("attestation: `intersection_size` must be a whole number of rows")
    return value


def _warnings(value: object) -> tuple[str, ...]:
    if (not isinstance(value, list) or len(value) > 16
            or not all(isinstance(w, str) and 0 < len(w) <= 300 for w in value)):
        raise InvalidInput("attestation: field `warnings` must be a list of at most 16 short strings")
    return tuple(value)


_METRIC = re.compile(r"-?(0|[1-9][0-9]{0,11})\.[0-9]{6}")


def fmt_metric(value: float) -> str:
    """An aggregate metric (loss, accuracy) as a six-place decimal string."""
    return f"{float(value):.6f}"


@dataclass(frozen=True)
class RoundMetric:
    """One training round's aggregate metrics: example-weighted means over *all* participants."""

    round: int
    train_loss: str
    train_accuracy: str
    eval_loss: str | None = None
    eval_accuracy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "train_loss": self.train_loss, "train_accuracy": self.train_accuracy,
                "eval_loss": self.eval_loss, "eval_accuracy": self.eval_accuracy}

    @classmethod
    def from_dict(cls, d: object) -> RoundMetric:
        f = Fields(d, "round metrics")
        m = cls(f.integer("round"), f.text("train_loss"), f.text("train_accuracy"), f.opt_text("eval_loss"),
                f.opt_text("eval_accuracy"))
        for v in (m.train_loss, m.train_accuracy, m.eval_loss, m.eval_accuracy):
            if v is not None and not _METRIC.fullmatch(v):
                raise InvalidInput("round metrics must be decimal strings with six places, like 0.693147")
        return m


def metrics_digest(metrics: Sequence[RoundMetric]) -> str:
    """sha256 of the canonical per-round metrics list: what each node attests and the statement must match."""
    return sha256_hex(canonical([m.to_dict() for m in metrics]))


@dataclass(frozen=True)
class TrainingSummary:
    """The `training` block of a training job's coordinator statement."""

    model_digest: str  # sha256 of the delivered safetensors file
    rounds: int
    participants: tuple[str, ...]
    metrics: tuple[RoundMetric, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"model_digest": self.model_digest, "rounds": self.rounds, "participants": list(self.participants),
                "metrics": [m.to_dict() for m in self.metrics]}

    @classmethod
    def from_dict(cls, d: object) -> TrainingSummary:
        f = Fields(d, "training summary")
        return cls(f.digest("model_digest"), f.integer("rounds"), f.texts("participants"),
                   tuple(RoundMetric.from_dict(m) for m in f.items("metrics")))


@dataclass(frozen=True)
class RelayedOutputs:
    """What the coordinator forwarded to the buyer for one participant of a query."""

    node: str
    attestation: str  # digest of the node's attestation envelope
    outputs: tuple[str, ...]  # sha256 of each relayed ciphertext, in order

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "attestation": self.attestation, "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, d: object) -> RelayedOutputs:
        f = Fields(d, "relayed outputs")
        return cls(f.text("node"), f.digest("attestation"), f.digests("outputs"))


@dataclass(frozen=True)
class CoordinatorStatement:
    job_digest: str
    contract_digest: str
    aggregate_outputs: tuple[str, ...]  # training: the delivered model; queries: none (the buyer adds)
    attestations: tuple[str, ...]  # attestation envelope digests, in the job's participant order
    completed_at: str
    training: TrainingSummary | None = None  # training jobs only (absent from query statements)
    relayed: tuple[RelayedOutputs, ...] | None = None  # query jobs only: per participant, what was relayed

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "job_digest": self.job_digest,
            "contract_digest": self.contract_digest,
            "aggregate_outputs": list(self.aggregate_outputs),
            "attestations": list(self.attestations),
            "completed_at": self.completed_at,
        }
        if self.training is not None:
            d["training"] = self.training.to_dict()
        if self.relayed is not None:
            d["relayed"] = [r.to_dict() for r in self.relayed]
        return d

    @classmethod
    def from_dict(cls, d: object) -> CoordinatorStatement:
        f = Fields(d, "coordinator statement")
        training = f.d.get("training")
        relayed = None if f.d.get("relayed") is None else tuple(RelayedOutputs.from_dict(r) for r in f.items("relayed"))
        return cls(f.digest("job_digest"), f.digest("contract_digest"), f.digests("aggregate_outputs"),
                   f.digests("attestations"), f.time("completed_at"),
                   None if training is None else TrainingSummary.from_dict(training), relayed)


@dataclass(frozen=True)
class Acknowledgement:
    job_digest: str
    result_digest: str
    acknowledged_at: str

    def to_dict(self) -> dict[str, Any]:
        return {"job_digest": self.job_digest, "result_digest": self.result_digest,
                "acknowledged_at": self.acknowledged_at}

    @classmethod
    def from_dict(cls, d: object) -> Acknowledgement:
        f = Fields(d, "acknowledgement")
        return cls(f.digest("job_digest"), f.digest("result_digest"), f.time("acknowledged_at"))


def _check_digest(got: str, expected: str | None, what: str) -> None:
    if expected is not None and got != expected:
        raise VerificationError(f"{what} does not match; the receipt does not belong to this job")


def sign_attestation(attestation: Attestation, node_signer: Signer) -> Envelope:
    return node_signer.sign_statement(ATTESTATION_TYPE, attestation.to_dict(), [("job", attestation.job_digest)])


def verify_attestation(
    envelope: Envelope, contract: Contract, *, contract_digest: str | None = None, job_digest: str | None = None,
) -> Attestation:
    """Verify under the key of the contract owner that signed it; it must name that owner and its product.

    Optional `contract_digest` / `job_digest` are compared when given.
    """
    # the owner the keyid names is tried first (one signature check); as keyid is only a hint, an owner whose key
    # verifies counts too
    keys = [signing_public_key(h.credential) for h in contract.owners]
    found = verify_object_by_one_of(envelope, keys, ATTESTATION_TYPE, Attestation.from_dict, "attestation")
    if found is None:
        keyids = {s.keyid for s in envelope.signatures}
        named = next((k for k in keys if keyid_of(k) in keyids), None)
        if named is None:
            raise VerificationError("attestation carries no signature by an owner of the contract; only owners attest")
        raise VerificationError(f"signature by {keyid_of(named)} does not verify; the envelope was altered or signed "
                                "by another key")
    i, att = found
    signer = contract.owners[i]
    name = signer.credential.name
    if att.node != name:
        raise VerificationError(f"attestation names node {att.node} but is signed by node {name}")
    if att.product_digest != signer.product_digest:
        raise VerificationError(f"attestation of node {name} names a product other than its contract holding")
    _check_digest(att.contract_digest, contract_digest, f"attestation of node {name}: contract digest")
    _check_digest(att.job_digest, job_digest, f"attestation of node {name}: job digest")
    return att


def sign_coordinator_statement(statement: CoordinatorStatement, coordinator_signer: Signer) -> Envelope:
    return coordinator_signer.sign_statement(STATEMENT_TYPE, statement.to_dict(), [("job", statement.job_digest)])


def verify_statement_of_coordinator(
    envelope: Envelope, contract: Contract, *, contract_digest: str | None = None, job_digest: str | None = None,
) -> CoordinatorStatement:
    st = verify_object(envelope, signing_public_key(contract.coordinator), STATEMENT_TYPE,
                       CoordinatorStatement.from_dict, "coordinator statement")
    _check_digest(st.contract_digest, contract_digest, "coordinator statement: contract digest")
    _check_digest(st.job_digest, job_digest, "coordinator statement: job digest")
    return st


def sign_acknowledgement(ack: Acknowledgement, buyer_signer: Signer) -> Envelope:
    return buyer_signer.sign_statement(ACK_TYPE, ack.to_dict(), [("result", ack.result_digest)])


def verify_acknowledgement(envelope: Envelope, contract: Contract, *, job_digest: str | None = None) -> Acknowledgement:
    ack = verify_object(envelope, signing_public_key(contract.buyer), ACK_TYPE, Acknowledgement.from_dict,
                        "acknowledgement")
    _check_digest(ack.job_digest, job_digest, "acknowledgement: job digest")
    return ack


@dataclass(frozen=True)
class ReceiptBundle:
    contract: Envelope
    job: Envelope
    attestations: tuple[Envelope, ...]
    statement: Envelope
    acknowledgement: Envelope | None = None

    @property
    def digest(self) -> str:
        """sha256 of the bundle's canonical JSON."""
        return sha256_hex(self.to_json())

    def to_dict(self) -> dict[str, Any]:
        return {
            "contract": self.contract.to_dict(),
            "job": self.job.to_dict(),
            "attestations": [a.to_dict() for a in self.attestations],
            "statement": self.statement.to_dict(),
            "acknowledgement": self.acknowledgement.to_dict() if self.acknowledgement else None,
        }

    def to_json(self) -> bytes:
        return canonical(self.to_dict())

    @classmethod
    def from_dict(cls, d: object) -> ReceiptBundle:
        """InvalidInput (and nothing else) when `d` is not a well-formed bundle."""
        if not isinstance(d, dict) or set(d) != {"contract", "job", "attestations", "statement", "acknowledgement"}:
            raise InvalidInput(
                "receipt bundle must be an object with exactly contract, job, attestations, statement, acknowledgement"
            )
        atts = d["attestations"]
        if not isinstance(atts, list) or not atts or len(atts) > MAX_ATTESTATIONS:
            raise InvalidInput(f"receipt bundle needs 1 to {MAX_ATTESTATIONS} attestations")
        ack = d["acknowledgement"]
        return cls(
            contract=Envelope.from_dict(d["contract"]),
            job=Envelope.from_dict(d["job"]),
            attestations=tuple(Envelope.from_dict(a) for a in atts),
            statement=Envelope.from_dict(d["statement"]),
            acknowledgement=None if ack is None else Envelope.from_dict(ack),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> ReceiptBundle:
        return cls.from_dict(load_json(data, "receipt bundle"))

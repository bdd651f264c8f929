"""`fedtrust exchange verify`: check a receipt offline, then record it in the exchange's log.

On top of `fedtrust.trust.verify.verify_bundle` (signatures, participants,
contract validity and rules, digests; for a query, that the coordinator's
statement names exactly each participant's attestation and the outputs it
signed, and no aggregate of its own), the exchange checks what needs its
records: that the contract is one it issued, that no other receipt for the
same job id or nonce was recorded (replay), that every node's budget chain
links to the entries already recorded for this contract (sequence, previous
digest, cumulative ε) — two different releases at one chain position are a
provable double spend — and, given the delivered result, that it matches the
digest the buyer acknowledged (for a model: and that its weights are the
final model every node attested).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from fedtrust.errors import ConfigError, InvalidInput, ReplayError, VerificationError
from fedtrust.exchange.issuer import load_exchange
from fedtrust.query.checks import QUERY
from fedtrust.query.joint_checks import JOINT
from fedtrust.query.mpc_stats import MPC_STATS, MpcStatsJob
from fedtrust.query.payload import QueryPayload
from fedtrust.training.checks import TRAINING
from fedtrust.training.spec import TrainingSpec
from fedtrust.training.vertical_lr_program import VERTICAL_LR
from fedtrust.trust.canonical import sha256_hex
from fedtrust.trust.psi_checks import PSI
from fedtrust.trust.receipts import GENESIS, ReceiptBundle, ledger_entry_digest, result_digest
from fedtrust.trust.verify import KindCheck, VerifiedReceipt, check_model_attested, verify_bundle
from fedtrust.trust.vertical import JointJob, VerticalJob
from fedtrust.trust.vertical_lr import VerticalLRSpec

#: the job kinds the exchange settles, each with its receipt checks (one line per kind)
JOB_KINDS: dict[str, KindCheck] = {QueryPayload.kind: QUERY, TrainingSpec.kind: TRAINING, VerticalJob.kind: PSI,
                                   MpcStatsJob.kind: MPC_STATS, JointJob.kind: JOINT, VerticalLRSpec.kind: VERTICAL_LR}


@dataclass(frozen=True)
class Verdict:
    verified: VerifiedReceipt
    already_recorded: bool
    result_checked: bool
    summary: str


def verify_receipt_file(exchange_dir: str | Path, receipt_path: str | Path,
                        result_path: str | Path | None = None) -> Verdict:
    try:
        raw = Path(receipt_path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"receipt file {receipt_path} does not exist") from None
    result = None
    if result_path is not None:
        try:
            result = Path(result_path).read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"result file {result_path} does not exist") from None
    return verify_receipt(exchange_dir, ReceiptBundle.from_json(raw), result)


def verify_receipt(exchange_dir: str | Path, bundle: ReceiptBundle, result: dict | bytes | None = None) -> Verdict:
    """`result`: a query's result.json (parsed, or its bytes) or a training job's model file (bytes)."""
    ex = load_exchange(exchange_dir)
    v = verify_bundle(bundle, ex.signer.public_key, JOB_KINDS, require_acknowledgement=True)
    ex.store.get_contract(v.contract_digest)  # NotFound unless this exchange issued it
    if result is not None:
        _check_result(v, result)
    bundle_digest = sha256_hex(bundle.to_json())
    prior = ex.store.receipt_for_job(v.contract_digest, v.job.job_id) or ex.store.receipt_for_nonce(v.job.nonce)
    if prior is not None:
        if prior.bundle_digest != bundle_digest:
            raise ReplayError(
                f"a different receipt for job {prior.job_id} (or its nonce) is already recorded; a job settles once"
            )
        return Verdict(v, True, result is not None, _summary(v, result is not None, True))
    rows = [_chain_row(ex.store, v, i) for i in range(len(v.attestations))]
    ex.store.record_receipt(v.job.job_id, v.job.nonce, v.contract_digest, bundle_digest, bundle.to_json(), rows)
    return Verdict(v, False, result is not None, _summary(v, result is not None, False))


def _check_result(v: VerifiedReceipt, result: dict | bytes) -> None:
    assert v.acknowledgement is not None
    check = JOB_KINDS[v.job.kind]
    if check.model_digest is not None:  # kinds that deliver a model file
        if not isinstance(result, (bytes, bytearray)):
            raise VerificationError(f"a {v.job.kind} job's result is its model file; pass the model.safetensors "
                                    "delivered")
        digest = sha256_hex(bytes(result))
        if digest != v.acknowledgement.result_digest or digest not in v.statement.aggregate_outputs:
            raise VerificationError("the model file does not match the digest the buyer acknowledged and the "
                                    "coordinator signed in the receipt")
        check_model_attested(bytes(result), v.attestations, check)
        return
    document: Any = result
    if isinstance(result, (bytes, bytearray)):
        try:
            document = json.loads(result)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError("the result file is not JSON; pass the result.json `fedtrust query` wrote") from None
    try:
        digest = result_digest(document)
    except (InvalidInput, TypeError, ValueError):
        raise VerificationError("the result file is not a result document with its salt; pass the result.json "
                                "`fedtrust query` wrote") from None
    if digest != v.acknowledgement.result_digest:
        raise VerificationError("the result does not match the digest the buyer acknowledged in the receipt")


def _chain_row(store, v: VerifiedReceipt, i: int) -> tuple:
    att = v.attestations[i]
    chain = att.chain
    # chain links are ledger-entry digests, recomputable from the attestation's own fields
    digest = ledger_entry_digest(att.node, v.contract_digest, v.job_digest, att.epsilon, att.delta, chain)
    entries = {e.seq: e for e in store.chain_entries(att.node, v.contract_digest)}
    same = entries.get(chain.seq)
    if same is not None and same.attestation_digest != digest:
        raise VerificationError(
            f"double spend: node {att.node} signed two different releases at budget chain position {chain.seq} "
            "under this contract"
        )
    before = entries.get(chain.seq - 1)
    expected_prev: str | None
    expected_cum: Decimal | None
    expected_delta: Decimal | None
    if chain.seq == 1:
        expected_prev, expected_cum = GENESIS, Decimal(att.epsilon)
        expected_delta = Decimal(att.delta)
    elif before is not None:
        expected_prev, expected_cum = before.attestation_digest, Decimal(before.cumulative_epsilon) + Decimal(att.epsilon)
        expected_delta = None if before.cumulative_delta is None else Decimal(before.cumulative_delta) + Decimal(att.delta)
    else:
        expected_prev = expected_cum = expected_delta = None  # earlier receipts not (yet) presented: checked then
    if expected_prev is not None and (chain.prev != expected_prev or Decimal(chain.cumulative_epsilon) != expected_cum):
        raise VerificationError(
            f"budget chain of node {att.node} is inconsistent at position {chain.seq}: it does not extend the "
            "recorded previous entry (previous digest or cumulative ε differ)"
        )
    if chain.cumulative_delta is not None and expected_delta is not None \
            and Decimal(chain.cumulative_delta) != expected_delta:
        raise VerificationError(
            f"budget chain of node {att.node} is inconsistent at position {chain.seq}: its cumulative δ is not the "
            "recorded previous entry's plus this job's δ (basic composition)"
        )
    after = entries.get(chain.seq + 1)
    if after is not None and (after.prev != digest or
                              Decimal(after.cumulative_epsilon) < Decimal(chain.cumulative_epsilon) or
                              (after.cumulative_delta is not None and chain.cumulative_delta is not None and
                               Decimal(after.cumulative_delta) < Decimal(chain.cumulative_delta))):
        raise VerificationError(
            f"budget chain of node {att.node} is inconsistent at position {chain.seq}: the recorded next entry "
            "does not extend this one"
        )
    return (att.node, v.contract_digest, chain.seq, digest, chain.prev, chain.cumulative_epsilon,
            chain.cumulative_delta)


def _summary(v: VerifiedReceipt, result_checked: bool, again: bool) -> str:
    eps = sum(Decimal(a.epsilon) for a in v.attestations)
    parts = [
        f"VALID: job {v.job.job_id} under contract {v.contract_digest[:12]}…",
        f"{len(v.attestations)} owners attested ({', '.join(a.node for a in v.attestations)})",
        f"coordinator {v.contract.coordinator.name} relayed exactly the owners' attested outputs "
        "(the buyer added them itself)",
        "buyer acknowledged delivery" + (" and the result matches" if result_checked else ""),
        ("ε, δ spent per owner: " + ", ".join(f"{a.node} ε={a.epsilon} δ={a.delta}" for a in v.attestations)) if eps
        else "no differential privacy (exact aggregates under the contract's rules)",
    ]
    if v.statement.training is not None:
        t = v.statement.training
        parts[2] = (f"coordinator {v.contract.coordinator.name} signed model {t.model_digest[:12]}… trained over "
                    f"{t.rounds} rounds with secure aggregation "
                    f"{getattr(v.job.payload, 'secure_aggregation', '?')}")
        parts[2] += "; every owner attested that it computed this model and these metrics itself"
        parts[3] = "buyer acknowledged delivery" + (" and the model file matches" if result_checked else "")
        if not eps:
            parts[4] = "no differential privacy (masked updates; the model itself is not DP)"
    if v.job.kind == "psi":
        parts[2] = (f"coordinator {v.contract.coordinator.name} relayed the owners' sealed PSI messages; every owner "
                    f"attested intersection size {v.attestations[0].intersection_size} and the messages it released")
        parts[4] = "no differential privacy (an exact intersection size; PSI is refused under [privacy])"
    if v.job.is_mpc:
        parts[2] = (f"coordinator {v.contract.coordinator.name} relayed the MPC session's sealed frames and each "
                    "owner's output shares sealed to the buyer; every owner attested the frames it sent and received "
                    "and its sealed output (the buyer added the shares itself)")
    parts += [f"warning from {a.node}: {w}" for a in v.attestations for w in a.warnings]
    parts += [
        "already recorded" if again else "recorded",
    ]
    return "; ".join(parts)

"""The buyer's side of an MPC job: make an output key, sign, submit, verify, open and add the shares, acknowledge.

For each MPC job the buyer makes a fresh X25519 key pair; the public key goes into the job spec it signs, the
private key stays in the job's folder (mode 0600). Every owner seals its output shares to that key, so the
coordinator relays them without being able to open one. The buyer accepts the shares only from a receipt that
verifies (`trust.verify`: every owner attested, naming the digests of the frames it exchanged and of the sealed
output; the coordinator signed over exactly those attestations) and only if each sealed output hashes to the
digest its owner signed and opens under that owner's certified key; then it adds the shares (mod 2^64), decodes
them and lets the job kind's program make the result (`MpcProgram.finish`). One owner's shares alone are uniform
noise; only their sum is the answer.
"""
from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrust.buyer.client import CoordinatorClient, JobOutcome, OnProgress
from fedtrust.buyer.jobdir import JobFiles, jobs_root
from fedtrust.buyer.query import check_agreed, load_contract, reopen, tls_of
from fedtrust.errors import VerificationError
from fedtrust.privacy.mpc.program import (
    OUTPUT_STEP,
    MpcProgramError,
    buyer_context,
    combine_shares,
    decode_outputs,
    decode_shares,
    program,
)
from fedtrust.privacy.sealed import open_sealed
from fedtrust.query.joint_checks import JOINT
from fedtrust.query.mpc_stats import KIND as STATS_KIND
from fedtrust.query.mpc_stats import MPC_STATS, MpcStatsJob, resolution, stats_plan
from fedtrust.training.vertical_lr_program import VERTICAL_LR
from fedtrust.trust.canonical import sha256_hex, utc_now
from fedtrust.trust.contracts import Contract
from fedtrust.trust.credentials import Identity, kx_public_key
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobPayload, JobSpec, sign_job
from fedtrust.trust.receipts import Acknowledgement, ReceiptBundle, result_digest, sign_acknowledgement
from fedtrust.trust.verify import VerifiedReceipt, verify_bundle
from fedtrust.trust.vertical import JointJob
from fedtrust.trust.vertical_lr import KIND as VERTICAL_LR_KIND

__all__ = ["MpcOutcome", "is_mpc_sql", "submit_mpc", "submit_mpc_stats", "fetch_mpc_again", "finish", "open_outputs", "KIND_CHECKS"]

#: the MPC kinds this client settles, with their rules checks
KIND_CHECKS = {STATS_KIND: MPC_STATS, JointJob.kind: JOINT, VERTICAL_LR_KIND: VERTICAL_LR}


@dataclass(frozen=True)
class MpcOutcome:
    job_id: str
    result: dict  # what result.json holds: columns, rows, and the job's facts
    receipt: ReceiptBundle  # with the buyer's acknowledgement
    verified: VerifiedReceipt


def is_mpc_sql(sql: str) -> bool:
    """Whether the SQL asks for MIN, MAX, MEDIAN or a quantile (an MPC job); False when it does not parse (the
    query path reports the syntax error)."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, dialect="duckdb")
    except sqlglot.errors.SqlglotError:
        return False
    return tree is not None and tree.find(exp.Min, exp.Max, exp.Median, exp.PercentileCont) is not None


def new_output_key() -> tuple[X25519PrivateKey, str]:
    key = X25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, base64.b64encode(raw).decode()


def _private_bytes(key: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def submit_mpc_stats(identity: Identity, credentials_dir: Path, contract_path: Path, coordinator: str, sql: str,
                     on_progress: OnProgress | None = None, timeout: float = 600.0) -> MpcOutcome:
    """MIN / MAX / MEDIAN / QUANTILE_CONT over all owners' rows, computed in MPC (kind "mpc-stats")."""
    contract, _ = load_contract(identity, contract_path)
    stats_plan(sql, contract)  # fast, clear refusal before any key is made or byte is sent
    return submit_mpc(identity, credentials_dir, contract_path, coordinator, lambda key: MpcStatsJob(sql, key),
                      {"sql": sql}, on_progress, timeout)


def submit_mpc(identity: Identity, credentials_dir: Path, contract_path: Path, coordinator: str,
               payload: Callable[[str], JobPayload], meta: dict, on_progress: OnProgress | None = None,
               timeout: float = 600.0) -> MpcOutcome:
    """Any MPC job: `payload(output_key)` is the kind's payload naming the fresh per-job key (the kind's own checks
    ran before); the job is signed, submitted, and its result finished here."""
    contract, contract_raw = load_contract(identity, contract_path)
    check_agreed(contract, contract_raw)
    contract_env = Envelope.from_json(contract_raw)
    key, public = new_output_key()
    job = JobSpec.create(contract, contract_env.digest, payload(public))
    job_env = sign_job(job, identity.signer)
    files = JobFiles(jobs_root(credentials_dir) / job.job_id)
    files.create(_private_bytes(key), job_env.to_json(), contract_raw,
                 {"job_id": job.job_id, "coordinator": coordinator, "kind": job.kind, **meta,
                  "submitted_at": utc_now()})
    client = CoordinatorClient(coordinator, tls_of(identity), contract.coordinator.name, timeout)
    return finish(identity, files, contract, client.submit_mpc(job_env.to_json(), contract_raw, on_progress))


def fetch_mpc_again(identity: Identity, credentials_dir: Path, job_id: str, coordinator: str | None = None) -> MpcOutcome:
    job = reopen(identity, credentials_dir, job_id, coordinator)
    return finish(identity, job.files, job.contract, job.client.fetch_result(job_id, max_nodes=len(job.contract.owners)))


def open_outputs(verified: VerifiedReceipt, relayed, contract: Contract, key: X25519PrivateKey) -> list[dict]:
    """Each owner's output shares, in the job's order: relayed exactly once, matching the digest it signed, and
    opening under its certified key for this job; VerificationError otherwise (the result is refused)."""
    job = verified.job
    got: dict[str, Any] = {}
    for node, outputs in relayed:
        if node not in job.participants or node in got:
            raise VerificationError(f"the coordinator relayed outputs of {node!r} that are not exactly one per "
                                    "participant of the job; refusing the result")
        got[node] = outputs
    shares = []
    for att in verified.attestations:
        outs = got.get(att.node)
        if outs is None or len(outs) != 1 or sha256_hex(bytes(outs[0])) != att.outputs[-1]:
            raise VerificationError(f"the output relayed for node {att.node} is missing or not the one it signed in "
                                    "its attestation (forged, swapped or from another job); refusing the result")
        try:
            plain = open_sealed(key, kx_public_key(contract.holding(att.node).credential), job_digest=verified.job_digest,
                                sender=att.node, receiver="buyer", step=OUTPUT_STEP, sealed=bytes(outs[0]))
            shares.append(decode_shares(plain))
        except (MpcProgramError, ValueError) as e:
            raise VerificationError(f"the output shares of node {att.node} do not open or parse ({e}); refusing the "
                                    "result") from None
    return shares


def finish(identity: Identity, files: JobFiles, contract: Contract, outcome: JobOutcome) -> MpcOutcome:
    bundle = ReceiptBundle.from_json(outcome.receipt)
    if bundle.job.digest != Envelope.from_json(files.job.read_bytes()).digest:
        raise VerificationError("the coordinator returned a receipt for another job")
    verified = verify_bundle(bundle, identity.exchange_key, KIND_CHECKS)
    key = X25519PrivateKey.from_private_bytes(files.secret.read_bytes())
    shares = open_outputs(verified, outcome.relayed, contract, key)
    try:
        outputs = decode_outputs(combine_shares(shares))
        table = program(verified.job.kind).finish(buyer_context(verified.job, contract), outputs)
    except MpcProgramError as e:
        raise VerificationError(f"the owners' output shares do not combine ({e}); refusing the result") from None
    result = {**table, "job_id": verified.job.job_id, "kind": verified.job.kind, "sql": verified.job.payload.describe(),
              "epsilon": verified.epsilon_spent, "salt": secrets.token_hex(16)}
    if isinstance(verified.job.payload, JointJob):
        result.update(sql=verified.job.payload.sql, alignment=verified.job.payload.alignment)
    if verified.job.kind == STATS_KIND:
        result["resolution"] = resolution(stats_plan(verified.job.payload_as(MpcStatsJob, "the buyer").sql, contract))
    digest = result["result_digest"] = result_digest(result)
    ack = sign_acknowledgement(Acknowledgement(job_digest=verified.job_digest, result_digest=digest,
                                               acknowledged_at=utc_now()), identity.signer)
    receipt = ReceiptBundle(bundle.contract, bundle.job, bundle.attestations, bundle.statement, ack)
    files.result.write_text(json.dumps(result, indent=2))
    files.receipt.write_bytes(receipt.to_json())
    return MpcOutcome(verified.job.job_id, result, receipt, verified)

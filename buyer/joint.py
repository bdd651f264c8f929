"""The buyer's side of a joint-statistics job (kind "joint"): check the SQL, pick the PSI alignment, submit it as
an MPC job, then verify, open and add the owners' output shares (`buyer.mpc.finish`).

The job names the PSI job whose alignment it joins. By default that is the newest PSI job this buyer finished
under the same contract (its job folders under `<credentials>/jobs/` hold the verified result): both owners then
read the same stored alignment, and a job naming a PSI job an owner does not hold is refused at admission,
spending nothing. The buyer checks the SQL against the contract's `[vertical.joint]` rules first
(`query.joint_checks`), so a refused query fails before any key is made or byte is sent; every owner checks it
again by itself.
"""
from __future__ import annotations

import json
from pathlib import Path

from fedtrust.buyer.client import CoordinatorClient, OnProgress
from fedtrust.buyer.jobdir import JobFiles, jobs_root
from fedtrust.buyer.mpc import MpcOutcome, _private_bytes, finish, new_output_key
from fedtrust.buyer.query import check_agreed, load_contract, tls_of
from fedtrust.errors import ConfigError, Error, NotFound
from fedtrust.query.joint_checks import plan_joint_job
from fedtrust.trust.canonical import utc_now
from fedtrust.trust.credentials import Identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec, sign_job
from fedtrust.trust.vertical import JointJob

__all__ = ["is_joint_sql", "newest_alignment", "submit_joint"]


def is_joint_sql(sql: str) -> bool:
    """Whether the SQL joins two products (a joint statistics job); False when it does not parse."""
    import sqlglot

    try:
        tree = sqlglot.parse_one(sql, dialect="duckdb")
    except sqlglot.errors.SqlglotError:
        return False
    return tree is not None and bool(tree.args.get("joins"))


def newest_alignment(credentials_dir: Path, contract_digest: str) -> str:
    """The id of the newest PSI job this buyer finished (a verified result is on disk) under the contract."""
    best: tuple[str, str] | None = None
    root = jobs_root(credentials_dir)
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("kind") != "psi" or not (folder / "result.json").is_file():
                continue
            if Envelope.from_json((folder / "contract.json").read_bytes()).digest != contract_digest:
                continue
        except (OSError, ValueError, Error):  # a folder this buyer cannot read is not a candidate
            continue
        when = str(meta.get("submitted_at", ""))
        if best is None or when > best[0]:
            best = (when, str(meta.get("job_id", folder.name)))
    if best is None:
        raise NotFound("no finished PSI job under this contract in this buyer's job folders; run `fedtrust psi` "
                       "first, or name one with --alignment")
    return best[1]


def submit_joint(identity: Identity, credentials_dir: Path, contract_path: Path, coordinator: str, sql: str,
                 alignment: str | None = None, on_progress: OnProgress | None = None,
                 timeout: float = 600.0) -> MpcOutcome:
    """Joint statistics over the rows PSI job `alignment` (default: the newest this buyer ran) aligned."""
    contract, contract_raw = load_contract(identity, contract_path)
    check_agreed(contract, contract_raw)
    rules = contract.rules.vertical
    if rules is None:
        raise ConfigError("this contract sells no vertical jobs (its rules have no [vertical] table); a query that "
                          "joins products needs a vertical contract")
    contract_env = Envelope.from_json(contract_raw)
    alignment = alignment or newest_alignment(credentials_dir, contract_env.digest)
    key, public = new_output_key()
    job = JobSpec.create(contract, contract_env.digest, JointJob(rules.key, sql, alignment, public))
    plan_joint_job(contract, job)  # fast, clear refusal before anything is sent
    job_env = sign_job(job, identity.signer)
    files = JobFiles(jobs_root(credentials_dir) / job.job_id)
    files.create(_private_bytes(key), job_env.to_json(), contract_raw,
                 {"job_id": job.job_id, "coordinator": coordinator, "kind": job.kind, "sql": sql,
                  "alignment": alignment, "submitted_at": utc_now()})
    client = CoordinatorClient(coordinator, tls_of(identity), contract.coordinator.name, timeout)
    return finish(identity, files, contract, client.submit_mpc(job_env.to_json(), contract_raw, on_progress))

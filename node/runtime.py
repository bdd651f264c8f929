"""The node's core: check a job against the contract, its admissions, and the owner's job log.

No protobuf here (see `node_servicer.py`). Every job kind starts with
`check_job` (steps 1-3 below); the kind's handler, registered by name in
`node/kinds.py` (`query_runtime.py`, `training_runtime.py`,
`vertical_runtime.py`), adds its own checks, spends and computes:

1. the contract verifies under the exchange key, carries the signatures of
   the buyer and of this node's own owner, and the caller's mTLS identity is
   the contract's coordinator; it is not revoked and the owner did not
   withdraw from it;
2. this node is an owner of the contract and holds the product it names,
   whose data commitment matched the file at start-up;
3. the job is signed by the contract's buyer, names exactly the contract's
   owners and coordinator, is unexpired, within the contract's validity;
4. (the kind's admit) its rules, caps and budget allow it; this is the
   *admission* the node signs in phase one (`sign_admission`), spending
   nothing;
5. (the kind's run) every participant signed a valid admission of this exact
   job (`check_admissions`): nothing is computed or debited for a job that
   one owner refused or that could not reach one owner.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrust.code import code_digest
from fedtrust.config import NodeConfig, check_private_files
from fedtrust.errors import ConfigError, Error
from fedtrust.node import admit as core
from fedtrust.node.admit import KindRules, LedgerView, NodeFacts, Refusal
from fedtrust.node.job_log import JobRecord
from fedtrust.node.store import NodeStore
from fedtrust.query.dataset import Dataset, file_digest
from fedtrust.trust.admission import Admission, sign_admission, verify_admissions
from fedtrust.trust.contracts import Contract, contract_envelope, require_signatures, verify_contract
from fedtrust.trust.credentials import KX_KEY, SIGNING_KEY, TLS_KEY, Identity, load_identity_as
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import MAX_SQL_CHARS, JobSpec, verify_job_signature
from fedtrust.trust.products import Product, verify_product
from fedtrust.trust.revocation import RevocationHolder

log = logging.getLogger("fedtrust.node")


@dataclass(frozen=True)
class HeldDataset:
    product: Product
    product_digest: str
    path: Path
    dataset: Dataset


@dataclass(frozen=True)
class CheckedJob:
    contract: Contract
    contract_digest: str
    job: JobSpec
    job_digest: str
    held: HeldDataset
    facts: NodeFacts


def open_held_dataset(identity: Identity, name: str, product_path: Path, data_path: Path, encoding: str = "utf-8",
                      null_values: tuple[str, ...] = ("",), query_threads: int | None = None) -> HeldDataset:
    """A product credential of this node, verified, and its data file, matching the listed commitment."""
    try:
        env = Envelope.from_json(product_path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"product credential {product_path} does not exist") from None
    product = verify_product(env, identity.exchange_key)
    if product.owner != name:
        raise ConfigError(f"product {product_path} is listed for owner {product.owner!r}, not this node {name!r}")
    if not data_path.is_file():
        raise ConfigError(f"data file {data_path} does not exist")
    digest = file_digest(data_path)
    if digest != product.commitment:
        raise ConfigError(
            f"data file {data_path} does not match the commitment in {product_path}; "
            "serve the listed data version or ask the exchange to list the new one "
            "(`fedtrust node digest` prints the file's commitment)"
        )
    return HeldDataset(product, env.digest, data_path,
                       Dataset.open(data_path, product.schema, encoding=encoding, null_values=null_values,
                                    threads=query_threads))


class NodeRuntime:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        check_private_files(config.credentials / f for f in (TLS_KEY, SIGNING_KEY, KX_KEY))
        self.identity: Identity = load_identity_as(config.credentials, "node", config.name)
        if self.identity.kx_private is None:
            raise ConfigError(f"credentials in {config.credentials} have no kx.key; re-register the node")
        #: the node's X25519 key (pairwise masks, sealed PSI messages); every node has one
        self.kx_private: X25519PrivateKey = self.identity.kx_private
        self.name = config.name
        self.skew = timedelta(seconds=config.server.clock_skew_s)
        self.store = NodeStore(config.state, config.watermark)
        #: the newest exchange revocation list this node holds (fetched, or forwarded by a coordinator)
        self.revocations = RevocationHolder(config.state, self.identity.exchange_key)
        self.code_digest = code_digest()
        self.datasets: dict[str, HeldDataset] = {}
        for d in config.datasets:
            self._open_dataset(d.product, d.path, d.encoding, d.null_values, d.query_threads)

    def _open_dataset(self, product_path: Path, data_path: Path, encoding: str = "utf-8",
                      null_values: tuple[str, ...] = ("",), query_threads: int | None = None) -> None:
        held = open_held_dataset(self.identity, self.name, product_path, data_path, encoding, null_values,
                                 query_threads)
        outside = held.dataset.out_of_domain_rows()
        if outside:
            # the owner's own log: a count only. No query counts these rows (the same domain filter for all).
            log.warning("product %s: %d row(s) of %s have a category value that is NULL or not listed in the "
                        "public schema; no query counts them (fix the data or list the value in a new product)",
                        held.product.dataset, outside, data_path.name)
        self.datasets[held.product_digest] = held

    # -- checks -----------------------------------------------------------
    def check_job(self, peer: tuple[str, str], job_bytes: bytes, contract_bytes: bytes) -> CheckedJob:
        """Every check a job must pass at this node; a refusal is written to the owner's job log."""
        clock = time.monotonic()
        try:
            return self._check_job(peer, job_bytes, contract_bytes)
        except Error as e:
            self._record_refusal(job_bytes, contract_bytes, e, time.monotonic() - clock)
            raise

    def _record_refusal(self, job_bytes: bytes, contract_bytes: bytes, e: Error, duration_s: float) -> None:
        """What the refused request claimed (unverified: it failed a check), for the owner's job log."""
        fields: dict = {}
        try:
            contract_env = Envelope.from_json(contract_bytes)
            fields["contract_digest"] = contract_env.digest
            c = json.loads(contract_env.payload)["predicate"]
            fields["buyer"], fields["coordinator"] = str(c["buyer"]["name"])[:64], str(c["coordinator"]["name"])[:64]
            j = json.loads(Envelope.from_json(job_bytes).payload)["predicate"]
            fields["job_id"], fields["kind"] = str(j["job_id"])[:64], str(j["kind"])[:16]
            fields["request"] = str(j.get("sql") or json.dumps(j.get("training"), sort_keys=True))[:MAX_SQL_CHARS]
        except (Error, ValueError, KeyError, TypeError, AttributeError):
            pass
        self.store.jobs.record(JobRecord(
            fields.get("contract_digest"), fields.get("job_id"), fields.get("kind"), fields.get("buyer"),
            fields.get("coordinator"), fields.get("request"), None, None, "refused", f"{e.kind}: {e}", duration_s))

    def _check_job(self, peer: tuple[str, str], job_bytes: bytes, contract_bytes: bytes) -> CheckedJob:
        """The signatures (contract: exchange, buyer and this node's owner; job: buyer), then the rules every kind
        shares (`node.admit.check_common`: caller, owner, revocation, withdrawal, product, the job's fit)."""
        contract_env = contract_envelope(contract_bytes)
        contract = verify_contract(contract_env, self.identity.exchange_key)
        facts = self.facts(peer, contract_env.digest)
        self.refuse(core.refusal_of(core.check_parties, contract, facts))
        # the owner agreed to this contract, and so did the buyer: the exchange alone cannot commit this node
        require_signatures(contract_env, contract, [("buyer", contract.buyer.name), ("node", self.name)])
        job_env = Envelope.from_json(job_bytes)
        job = verify_job_signature(job_env, contract)
        ledger = LedgerView(withdrawn_at=self.store.jobs.withdrawn_at(contract_env.digest))
        self.refuse(core.refusal_of(core.check_common, job, contract, ledger, datetime.now(timezone.utc), facts))
        held = self.datasets[contract.holding(self.name).product_digest]
        return CheckedJob(contract, contract_env.digest, job, job_env.digest, held, facts)

    def facts(self, peer: tuple[str, str], contract_digest: str) -> NodeFacts:
        """What the decision core needs to know of this node and of the call."""
        return NodeFacts(self.name, peer, contract_digest, {d: h.product for d, h in self.datasets.items()},
                         self.revocations.current, self.skew)

    @staticmethod
    def refuse(refusal: Refusal | None) -> None:
        if refusal is not None:
            refusal.raise_error()

    def decide(self, checked: CheckedJob, rules: KindRules) -> core.Admission:
        """The decision core on this job, with what the ledger and the revocation list hold now; the Refusal's error
        raised. A checked job kept across a training job's rounds is decided again at each round boundary with the
        newest list, so a revocation adopted mid-job refuses the next round before anything is spent."""
        job = checked.job
        ledger = self.store.view(checked.contract_digest, job.kind, job.job_id, job.nonce, checked.job_digest)
        decision = core.admit(job, checked.contract, ledger, datetime.now(timezone.utc), self._current(checked.facts),
                              rules)
        if isinstance(decision, Refusal):
            decision.raise_error()
        return decision

    def check_still_served(self, checked: CheckedJob) -> None:
        """Before a running session releases its output: the contract is not revoked (by the newest list this node
        holds) and the owner did not withdraw since the session started; the Refusal's error raised."""
        ledger = LedgerView(withdrawn_at=self.store.jobs.withdrawn_at(checked.contract_digest))
        self.refuse(core.refusal_of(core.check_still_served, checked.contract, ledger, datetime.now(timezone.utc),
                                    self._current(checked.facts)))

    def _current(self, facts: NodeFacts) -> NodeFacts:
        """`facts` with the newest revocation list this node holds (a checked job may outlive the list it saw)."""
        current = self.revocations.current
        return facts if facts.revocations is current else replace(facts, revocations=current)

    # -- admission (phase one: every check, nothing spent) --------------------
    def sign_admission(self, checked: CheckedJob) -> Envelope:
        """The node's signed, short-lived promise to run this job (after the kind's admit checks passed)."""
        return sign_admission(Admission.new(self.name, checked.job_digest, checked.contract_digest, checked.job.kind),
                              self.identity.signer)

    def check_admissions(self, checked: CheckedJob, admissions: Sequence[bytes]) -> None:
        """Run phase: nothing is computed or debited unless every participant admitted this job."""
        verify_admissions([Envelope.from_json(a) for a in admissions], checked.contract,
                          contract_digest=checked.contract_digest, job_digest=checked.job_digest,
                          participants=checked.job.participants, skew=self.skew)

    # -- the owner's job log --------------------------------------------------
    def record_job(self, checked: CheckedJob, outcome: str, *, epsilon: str | None = None, withheld: int | None = None,
                   detail: str = "", duration_s: float = 0.0) -> None:
        """One row (and one info log line) per job in the owner's job log (`fedtrust node log`)."""
        job, c = checked.job, checked.contract
        request = job.payload.describe()
        self.store.jobs.record(JobRecord(checked.contract_digest, job.job_id, job.kind, c.buyer.name,
                                         c.coordinator.name, request, epsilon, withheld, outcome, detail, duration_s))

"""The node's handler of query jobs (kind "query"): admit, compute, protect, release.

The order of `run_query` is the security argument, after `NodeRuntime.check_job`
(contract, caller, this node's product, the buyer's signed job):

4. the SQL passes the contract's rules (`fedtrust.query.sql`) and is rebuilt
   from the checked tree; the HE context is the one the job names, with the
   supported parameters;
5. a recorded release of the same job is returned as it was (no second
   debit); a reused job id or nonce is refused; the query cap and the
   privacy budget allow it — steps 1-5 are also the *admission* the node
   signs in phase one, spending nothing;
6. every participant signed a valid admission of this exact job
   (`fedtrust.trust.admission`): nothing is computed or debited for a job
   that one owner refused or that could not reach one owner;
7. DuckDB computes exact per-group integers over the node's file only; small
   groups are withheld; pairwise masks are added mod t; the vector is
   encrypted in a worker process under the buyer's public context;
8. the ledger row (chain entry, attestation, ciphertexts) is committed and
   fsynced, and only then does anything leave the node.
"""
from __future__ import annotations

import time
from typing import ClassVar, Sequence

from fedtrust.errors import ContextNeeded, InvalidInput
from fedtrust.node.admit import Admission, query_rules
from fedtrust.node.runtime import CheckedJob, NodeRuntime
from fedtrust.node.store import ACCOUNTANT, StoredRelease
from fedtrust.privacy import he
from fedtrust.privacy.context_cache import ContextCache
from fedtrust.privacy.dp import noise_plan
from fedtrust.privacy.masking import add_mod, pairwise_mask
from fedtrust.privacy.params import PLAIN_MODULUS
from fedtrust.query.encoding import encode_arrays
from fedtrust.query.layout import Layout
from fedtrust.query.noisy import add_noise, encode_signed
from fedtrust.query.payload import QueryPayload
from fedtrust.query.sql import QueryPlan
from fedtrust.trust.canonical import sha256_hex, utc_now
from fedtrust.trust.credentials import kx_public_key
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.receipts import Attestation, sign_attestation

__all__ = ["QueryRuntime"]


class QueryRuntime:
    kind: ClassVar[str] = QueryPayload.kind

    def __init__(self, node: NodeRuntime) -> None:
        self.node = node
        #: buyers' public HE contexts received with earlier released jobs, per (contract, context digest)
        self.contexts = ContextCache()

    def admit(self, checked: CheckedJob) -> None:
        self.admit_query(checked)

    def admit_query(self, checked: CheckedJob) -> tuple[Admission, StoredRelease | None]:
        """Every check of a query job short of its HE context (`node.admit.query_rules`); spends nothing.

        Returns the admission (its plan and exact spend) and, for a job this node already released, the recorded
        release.
        """
        decision = self.node.decide(checked, query_rules)
        if not decision.replay:
            return decision, None
        job = checked.job
        return decision, self.node.store.lookup(checked.contract_digest, job.job_id, job.nonce, checked.job_digest)

    def run_query(self, checked: CheckedJob, context: bytes, admissions: Sequence[bytes] = ()) -> StoredRelease:
        contract, job, held, node = checked.contract, checked.job, checked.held, self.node
        decision, existing = self.admit_query(checked)
        if existing is not None:
            return existing
        plan: QueryPlan = decision.plan
        payload = job.payload_as(QueryPayload, "the query endpoint")
        context = self.job_context(checked, payload, context)
        node.check_admissions(checked, admissions)
        rules = contract.rules.query
        assert rules is not None  # admit_query refused the job otherwise
        privacy = contract.rules.privacy
        epsilon = decision.spend.epsilon  # the decision core's exact spend: ε per query under [privacy], else 0
        started, clock = utc_now(), time.monotonic()
        layout = Layout.from_plan(plan, held.product.schema)
        if privacy is None:
            vector, n_withheld = encode_arrays(layout, held.dataset.aggregate_arrays(plan, layout),
                                               rules.min_group_size)
        else:
            noise = noise_plan(layout, epsilon, rules.min_group_size)
            noisy = add_noise(layout, held.dataset.aggregate(plan, layout), noise, rules.min_group_size)
            vector = encode_signed(layout, noisy)
            n_withheld = len(noisy.withheld)
        peers = {
            h.credential.name: kx_public_key(h.credential) for h in contract.owners if h.credential.name != node.name
        }
        # keyed by the digest of the signed job, not its id: a buyer who reused a job id under another
        # contract must not get two vectors under the same mask (their difference would be in the clear)
        mask = pairwise_mask(node.kx_private, node.name, peers, checked.job_digest, layout.length,
                             PLAIN_MODULUS)
        masked = add_mod(vector, mask, PLAIN_MODULUS)
        # the worker keeps the parsed context for this contract's next job under the same context
        ciphertexts = he.encrypt_isolated(context, payload.he, masked, session=(node.name, checked.contract_digest))

        def attest(debit) -> Envelope:
            return sign_attestation(
                Attestation(
                    node=node.name,
                    job_digest=checked.job_digest,
                    contract_digest=checked.contract_digest,
                    product_digest=held.product_digest,
                    data_commitment=held.product.commitment,
                    code_digest=node.code_digest,
                    outputs=tuple(sha256_hex(c) for c in ciphertexts),
                    epsilon=debit.epsilon,
                    delta=debit.delta,
                    chain=debit.chain,
                    dp=privacy is not None,
                    accountant=None if privacy is None else ACCOUNTANT.name,
                    started_at=started,
                    released_at=utc_now(),
                ),
                node.identity.signer,
            )

        release = node.store.commit_release(
            node=node.name,
            contract_digest=checked.contract_digest,
            job_id=job.job_id,
            nonce=job.nonce,
            job_digest=checked.job_digest,
            max_queries=rules.max_queries,
            mechanism=decision.spend.mechanism,
            outputs=ciphertexts,
            make_attestation=attest,
            epsilon=epsilon,
            epsilon_total=privacy.epsilon_total if privacy else None,
            delta_total=privacy.delta if privacy else None,
        )
        node.record_job(checked, "released", epsilon=release.debit.epsilon, withheld=n_withheld,
                        duration_s=time.monotonic() - clock)
        # kept only for a job that was admitted everywhere and released: later jobs of the contract may name it
        self.contexts.keep(checked.contract_digest, payload.he.context_digest, context)
        return release

    def job_context(self, checked: CheckedJob, payload: QueryPayload, context: bytes) -> bytes:
        """The buyer's public HE context for this job: the one sent, else the copy kept for (contract, digest).

        Either way its SHA-256 is the digest the buyer signed in the job spec
        (`privacy.context_cache`); with neither, ContextNeeded asks the
        coordinator to resend it (nothing was computed or spent).
        """
        digest = payload.he.context_digest
        if context:
            if sha256_hex(context) != digest:
                raise InvalidInput("HE context does not match the digest in the signed job spec; resend the buyer's "
                                   "context")
            return context
        kept = self.contexts.get(checked.contract_digest, digest)
        if kept is None:
            raise ContextNeeded(f"node {self.node.name} keeps no copy of the buyer's HE context this job names; "
                                "resend the job with the context")
        return kept


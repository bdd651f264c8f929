"""Build signed jobs by hand, to send what an honest buyer's CLI never would."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

from fedtrust.buyer.query import load_contract, tls_of
from fedtrust.privacy import he
from fedtrust.trust.canonical import format_time
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec, new_job_id, new_nonce, sign_job


def make_job(identity, contract_path, sql, keys=None, **changes):
    contract, raw = load_contract(identity, contract_path)
    keys = keys or he.BuyerKeys.generate()
    now = datetime.now(timezone.utc)
    job = JobSpec(
        contract_digest=Envelope.from_json(raw).digest,
        job_id=new_job_id(),
        nonce=new_nonce(),
        kind="query",
        coordinator=contract.coordinator.name,
        participants=tuple(contract.owner_names),
        dataset=contract.dataset,
        sql=sql,
        he=keys.params,
        created_at=format_time(now),
        expires_at=format_time(now + timedelta(hours=1)),
    )
    return replace(job, **changes), raw, keys

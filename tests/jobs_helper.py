"""Build signed jobs by hand, to send what an honest buyer's CLI never would."""
from __future__ import annotations

from dataclasses import replace

from fedtrust.buyer.query import load_contract
from fedtrust.privacy import he
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec


def make_job(identity, contract_path, sql, keys=None, **changes):
    """A query job as the buyer's CLI makes it, then with `changes` applied (unsigned)."""
    contract, raw = load_contract(identity, contract_path)
    keys = keys or he.BuyerKeys.generate()
    job = JobSpec.new(contract, Envelope.from_json(raw).digest, sql, keys.params)
    return replace(job, **changes), raw, keys

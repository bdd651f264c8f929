"""Build signed jobs by hand, to send what an honest buyer's CLI never would."""
from __future__ import annotations

from dataclasses import replace

from fedtrust.buyer.query import load_contract
from fedtrust.privacy import he
from fedtrust.query.payload import QueryPayload
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec


def make_job(identity, contract_path, sql, keys=None, **changes):
    """A query job as the buyer's CLI makes it, then with `changes` applied (unsigned; `he` changes the payload)."""
    contract, raw = load_contract(identity, contract_path)
    keys = keys or he.BuyerKeys.generate()
    payload = QueryPayload(sql, changes.pop("he", keys.params))
    job = JobSpec.create(contract, Envelope.from_json(raw).digest, payload)
    return replace(job, **changes), raw, keys


def admit_everywhere(fed, job_bytes: bytes, contract_bytes: bytes, first: str | None = None,
                     caller: str = "coord") -> list[bytes]:
    """Phase one as the coordinator runs it: every node's signed admission (asking `first` first, so that
    a refusal comes from the node under test)."""
    from fedtrust.buyer.query import tls_of
    from fedtrust.coordinator.node_client import admit_on_node
    from fedtrust.trust.credentials import load_identity

    tls = tls_of(load_identity(fed.root / "credentials" / caller))
    order = sorted(fed.nodes, key=lambda n: n != first)
    return [admit_on_node(n, f"127.0.0.1:{fed.nodes[n].port}", tls, job_bytes, contract_bytes, 60) for n in order]

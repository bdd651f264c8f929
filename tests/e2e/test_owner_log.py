"""The owner sees every job its node was asked to run, and can withdraw from a contract it signed."""
from __future__ import annotations

import logging

import pytest

from fedtrust.buyer.query import submit_query
from fedtrust.demo.federation import issue_signed_contract
from fedtrust.errors import JobFailed
from fedtrust.node.store import NodeStore
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope

SQL = "SELECT region, COUNT(*) AS n, AVG(income) AS mean_income FROM loans GROUP BY region"


def test_node_log_shows_each_job_and_withdrawal_makes_the_node_refuse(federation, caplog):
    root = federation.root
    path = issue_signed_contract(root, "analyst", "coord",
                                 [root / "products" / f"{n}.json" for n in ("bank-a", "bank-b", "insurer-c")],
                                 root / "rules.toml", root / "contract-withdraw.json")
    digest = Envelope.from_json(path.read_bytes()).digest
    buyer = load_identity(federation.buyer_dir)
    with caplog.at_level(logging.INFO, logger="fedtrust.node"):
        res = submit_query(buyer, federation.buyer_dir, path, federation.coordinator_address, SQL)
    node = federation.nodes["insurer-c"]
    [rec] = node.runtime.store.jobs.jobs(digest)
    assert (rec.job_id, rec.kind, rec.buyer, rec.coordinator, rec.request, rec.outcome) == (
        res.job_id, "query", "analyst", "coord", SQL, "released")
    assert rec.epsilon == "0.000000" and rec.withheld >= 1 and rec.duration_s > 0  # insurer-c holds small groups
    lines = [r.getMessage() for r in caplog.records if res.job_id in r.getMessage()]
    assert len(lines) == 3 and all("released" in m and "analyst" in m for m in lines)  # one line per node

    # the owner withdraws (as `fedtrust node withdraw` does, through its own handle on the ledger file)
    NodeStore(node.runtime.config.state).jobs.withdraw(digest.upper(), "no longer agreed")
    with pytest.raises(JobFailed, match=r"owner of node insurer-c withdrew from this contract"):
        submit_query(buyer, federation.buyer_dir, path, federation.coordinator_address, SQL)
    refused = node.runtime.store.jobs.jobs(digest)[-1]
    assert refused.outcome == "refused" and "withdrew" in refused.detail and refused.request == SQL
    # durable: a fresh handle (a restarted daemon) still sees it; other contracts are unaffected
    assert NodeStore(node.runtime.config.state).jobs.withdrawn_at(digest) is not None
    assert NodeStore(node.runtime.config.state).jobs.withdrawn_at(
        Envelope.from_json(federation.contract_path.read_bytes()).digest) is None
    with pytest.raises(Exception, match="64-hex digest"):
        node.runtime.store.jobs.withdraw("abc")

"""A revocation stops a running training job at its next round, and that round spends nothing.

Real daemons: the exchange service over HTTPS, two nodes refreshing its revocation list every 0.2 s, a
coordinator and the buyer's client. Round 1 of a three-round job passes its checks, then its ClientApp waits
(the `gated` test app) while the exchange revokes the contract and every node adopts the new list; from round 2 on
every node refuses the job, naming the revocation, and its ledger holds the job's one debit and nothing more.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fedtrust.buyer.train import submit_training
from fedtrust.demo.federation import build_federation
from fedtrust.errors import JobFailed
from fedtrust.exchange.issuer import revoke
from fedtrust.exchange.service import ExchangeService
from fedtrust.trust.dsse import Envelope

from training_helper import MODELS, clientapps_toml, identity, make_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
OWNERS = {"bank-a": 300, "bank-b": 250}


def until(fn, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_revocation_refuses_the_next_round_of_a_running_job(tmp_path: Path, monkeypatch):
    fed = build_federation(tmp_path / "fed", OWNERS, training={"models": MODELS}, node_extra=clientapps_toml())
    service = ExchangeService(fed.exchange_dir, "127.0.0.1:0")
    url = f"https://127.0.0.1:{service.start()}"
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv("FEDTRUST_TEST_GATE", str(gate))
    for cfg in fed.node_configs.values():  # each node fetches the list itself (the coordinator forwards none)
        cfg.write_text(cfg.read_text() + f'\n[exchange]\nurl = "{url}"\nrefresh_s = 0.2\n')
    digest = Envelope.from_json(fed.contract_path.read_bytes()).digest
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = submit_training(identity(fed, "analyst"), fed.buyer_dir, fed.contract_path,
                                                 fed.coordinator_address, make_spec(model="gated", rounds=3,
                                                                                    evaluate=False))
        except Exception as e:  # noqa: BLE001 - asserted below
            outcome["error"] = e

    fed.start()
    try:
        buyer = threading.Thread(target=train)
        buyer.start()
        # round 1 passed every node's checks (its app started); now the exchange revokes the contract
        until(lambda: len(list(gate.glob("started-*"))) == len(OWNERS), "round 1 to start at every node")
        revoke(fed.exchange_dir, contract=digest, reason="the buyer broke the stated purpose")
        runtimes = [d.runtime for d in fed.nodes.values()]
        until(lambda: all(r.revocations.current is not None and r.revocations.current.revoked("contract", digest)
                          for r in runtimes), "every node to adopt the new revocation list")
        (gate / "go").touch()
        buyer.join(120)
        assert not buyer.is_alive()

        assert "result" not in outcome
        error = outcome["error"]
        assert isinstance(error, JobFailed)
        assert "failed in train round 2" in str(error)
        assert "this contract was revoked by the exchange" in str(error)
        refused = []
        for name, node in fed.nodes.items():
            debits = node.runtime.store.debits(digest)
            assert len(debits) == 1, name  # the job's one debit, from round 1; the refused round took none
            released = node.training.store.released(debits[0].job_digest)
            assert [(phase, rnd) for phase, rnd, _ in released] == [("train", 1)], name
            log = node.runtime.store.jobs.jobs(digest)
            refused += [name for r in log if r.outcome == "refused" and "revoked by the exchange" in r.detail]
        # the owner's job log names the rule at the node the job failed on (the coordinator stops at the first)
        assert any(f"node {name} failed in train round 2" in str(error) for name in refused), refused
    finally:
        fed.stop()
        service.stop()

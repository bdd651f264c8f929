"""A coordinator restart mid-training resumes the job from the rounds the nodes already released."""
from __future__ import annotations

import threading
import time

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.query import tls_of
from fedtrust.buyer.train import fetch_model_again, submit_training
from fedtrust.config import load_coordinator_config
from fedtrust.coordinator.daemon import CoordinatorDaemon
from fedtrust.demo.federation import build_federation
from fedtrust.errors import Error
from fedtrust.trust.credentials import load_identity

from training_helper import make_spec


def test_a_coordinator_restart_mid_training_resumes_the_job(tmp_path):
    fed = build_federation(tmp_path, {"bank-a": 300, "bank-b": 250}, min_group_size=3)
    buyer = load_identity(fed.buyer_dir)
    with fed:
        round2 = threading.Event()
        box: dict = {}

        def on_round(ev):
            if ev.stage == "aggregated" and ev.round == 2 and ev.phase == "evaluate":
                round2.set()

        def train():
            try:
                submit_training(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address,
                                make_spec(rounds=6), on_round)
            except Error as e:
                box["error"] = e

        t = threading.Thread(target=train)
        t.start()
        assert round2.wait(120)
        fed.coordinator.stop(0)  # the coordinator goes down after round 2
        t.join(60)
        assert "error" in box  # the buyer's stream ended with the coordinator
        job_id = max((fed.buyer_dir / "jobs").iterdir(), key=lambda p: p.stat().st_mtime).name
        addresses = {n: f"127.0.0.1:{d.port}" for n, d in fed.nodes.items()}
        fed.coordinator = CoordinatorDaemon(load_coordinator_config(fed.coordinator_config), addresses)
        address = f"127.0.0.1:{fed.coordinator.start('127.0.0.1:0')}"
        client = CoordinatorClient(address, tls_of(buyer), fed.coordinator_name)
        deadline = time.monotonic() + 180
        while (st := client.job_status(job_id)).state == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert st.state == "succeeded", st.error
        res = fetch_model_again(buyer, fed.buyer_dir, job_id, address)  # verifies the receipt
        assert [m.round for m in res.metrics] == [1, 2, 3, 4, 5, 6]
        for name, d in fed.nodes.items():
            # each round released once (rounds 1-2 answered again from the stored vectors), one debit per job
            released = d.training.store.released(res.verified.job_digest)
            assert sorted(r for p, r, _ in released if p == "train") == [1, 2, 3, 4, 5, 6]
            assert [x.job_id for x in d.runtime.store.debits()].count(job_id) == 1


def test_stopping_the_coordinator_drains_a_running_job_to_completion(tmp_path):
    """What SIGTERM does (`stop(drain_s)`): no new calls, but the job in flight finishes and is delivered."""
    fed = build_federation(tmp_path, {"bank-a": 300, "bank-b": 250}, min_group_size=3)
    buyer = load_identity(fed.buyer_dir)
    with fed:
        stopper: list[threading.Thread] = []

        def on_round(ev):
            if ev.stage == "aggregated" and ev.round == 1 and not stopper:
                stopper.append(threading.Thread(target=fed.coordinator.stop, args=(60,)))
                stopper[0].start()

        res = submit_training(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address,
                              make_spec(rounds=3), on_round)
        assert [m.round for m in res.metrics] == [1, 2, 3] and stopper
        stopper[0].join(60)
        assert fed.coordinator.server is None  # and then it stopped

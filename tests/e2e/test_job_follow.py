"""Jobs you can follow: `job list`, `job cancel`, round and last heartbeat in `job status`, and progress as
plain lines when stderr is not a terminal."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.query import submit_query, tls_of
from fedtrust.buyer.train import submit_training
from fedtrust.demo.federation import build_federation, enroll
from fedtrust.errors import JobFailed, NotFound, VerificationError
from fedtrust.trust.credentials import load_identity

from training_helper import make_spec

OWNERS = {"bank-a": 300, "bank-b": 250}
SQL = "SELECT region, COUNT(*) AS n FROM loans GROUP BY region"
FEDTRUST = [sys.executable, "-m", "fedtrust.cli.main"]


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    f = build_federation(tmp_path_factory.mktemp("follow"), OWNERS, min_group_size=3)
    enroll(f.exchange_dir, "buyer", "other-buyer", [], f.root / "credentials" / "other-buyer")
    with f:
        yield f


def client(fed, who="analyst"):
    return CoordinatorClient(fed.coordinator_address, tls_of(load_identity(fed.root / "credentials" / who)),
                             fed.coordinator_name)


def test_job_list_shows_the_buyers_own_jobs_newest_first(fed):
    buyer = load_identity(fed.buyer_dir)
    first = submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
    second = submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL)
    jobs = client(fed).list_jobs()
    ids = [j.job_id for j in jobs]
    assert ids.index(second.job_id) < ids.index(first.job_id)
    done = next(j for j in jobs if j.job_id == first.job_id)
    assert done.kind == "query" and done.state == "succeeded" and done.answered == 2 and done.heartbeat_at
    assert client(fed, "other-buyer").list_jobs() == []  # another buyer sees none of them
    with pytest.raises(VerificationError, match="is not the buyer of this job"):
        client(fed, "other-buyer").cancel_job(first.job_id)
    with pytest.raises(NotFound, match="is not running \\(state: succeeded\\); there is nothing to cancel"):
        client(fed).cancel_job(first.job_id)
    env = dict(os.environ, FEDTRUST_CREDENTIALS=str(fed.buyer_dir), FEDTRUST_CONTRACT=str(fed.contract_path),
               FEDTRUST_COORDINATOR=fed.coordinator_address)
    p = subprocess.run(FEDTRUST + ["job", "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert first.job_id in p.stdout and second.job_id in p.stdout


def test_a_training_job_shows_its_round_and_heartbeat_and_can_be_cancelled(fed):
    buyer = load_identity(fed.buyer_dir)
    seen, statuses = [], []
    box: dict = {}

    def on_round(ev):
        seen.append(ev)
        if ev.stage == "aggregated" and ev.round == 1 and ev.phase == "train" and "cancelled" not in box:
            job_id = max((fed.buyer_dir / "jobs").iterdir(), key=lambda p: p.stat().st_mtime).name
            statuses.append(client(fed).job_status(job_id))
            box["cancelled"] = client(fed).cancel_job(job_id)

    with pytest.raises(JobFailed, match="was cancelled by the buyer; the training was stopped"):
        submit_training(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address,
                        make_spec(rounds=20, evaluate=False), on_round)
    [running] = statuses
    assert running.state == "running" and running.kind == "train" and running.rounds == 20
    assert running.round >= 1 and running.heartbeat_at
    after = client(fed).job_status(running.job_id)
    assert after.state == "failed" and "cancelled by the buyer" in after.error
    assert max(e.round for e in seen) < 20  # stopped long before its last round


def test_progress_is_printed_as_plain_lines_when_stderr_is_not_a_terminal(fed):
    env = dict(os.environ, FEDTRUST_CREDENTIALS=str(fed.buyer_dir), FEDTRUST_CONTRACT=str(fed.contract_path),
               FEDTRUST_COORDINATOR=fed.coordinator_address)
    p = subprocess.run(FEDTRUST + ["query", SQL], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert "query: admitting [0/2]" in lines and "query: dispatched [0/2]" in lines
    assert "query: node-released [1/2]" in lines and "query: node-released [2/2]" in lines

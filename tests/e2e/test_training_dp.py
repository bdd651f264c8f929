"""Differentially private training: each node plans DP-SGD from public numbers, debits the planned ε before
its first release, trains with CSPRNG noise, and refuses what it cannot make DP."""
from __future__ import annotations

from decimal import Decimal

import pytest

from fedtrust.buyer.train import submit_training
from fedtrust.demo.federation import build_federation
from fedtrust.errors import Error, JobFailed, PolicyViolation
from fedtrust.exchange.verify import verify_receipt
from fedtrust.training.dp_sgd import plan_dp_sgd
from fedtrust.training.predict import load_model

from training_helper import identity, make_spec, node_client, signed_job

pytestmark = pytest.mark.slow
OWNERS = {"bank-a": 1500, "bank-b": 1200}
PRIVACY = {"epsilon_total": "5", "delta": "1e-6", "epsilon_per_query": "1", "training_epsilon": "2",
           "training_delta": "1e-6"}


@pytest.fixture(scope="module")
def dpfed(tmp_path_factory):
    fed = build_federation(tmp_path_factory.mktemp("dptrain"), OWNERS, privacy=PRIVACY,
                           training={"models": ["logreg", "mlp"]})
    with fed:
        yield fed


def train(fed, spec):
    return submit_training(identity(fed, "analyst"), fed.buyer_dir, fed.contract_path, fed.coordinator_address, spec)


def test_dp_training_debits_the_planned_epsilon_and_attests_it(dpfed):
    spec = make_spec(rounds=2, evaluate=False, batch_size=100, learning_rate=0.5)
    res = train(dpfed, spec)
    atts = res.verified.attestations
    assert all(a.dp for a in atts)
    for a in atts:
        min_rows = {"bank-a": 1500, "bank-b": 1200}[a.node]
        plan = plan_dp_sgd(Decimal("2"), Decimal("1e-6"), min_rows=min_rows, batch_size=100, local_epochs=1, rounds=2)
        assert Decimal(a.epsilon) == plan.epsilon and Decimal(0) < plan.epsilon <= Decimal(2)
        assert a.delta == "0.000001"
    for name in OWNERS:
        store = dpfed.nodes[name].runtime.store
        [b] = store.budgets()
        assert Decimal(b.spent_epsilon) == Decimal([a for a in atts if a.node == name][0].epsilon)
    model, _, _ = load_model(res.model)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert "recorded" in verify_receipt(dpfed.exchange_dir, res.receipt).summary


def test_a_training_plan_over_the_remaining_budget_is_refused_with_what_is_left(dpfed):
    # after the job above δ is spent (see the test before); whichever runs out first, the refusal says what is left
    spec = make_spec(rounds=1, evaluate=False, batch_size=100)
    with pytest.raises(JobFailed, match="privacy budget exhausted.*is left for this contract"):
        for _ in range(3):
            train(dpfed, spec)


def test_a_job_past_the_contracts_delta_is_refused_and_spends_nothing(dpfed):
    """δ is a total per owner per contract (basic composition: Σδ ≤ the contract's `delta`): after one DP-SGD
    job at δ=1e-6 under δ=1e-6, the next is refused at admission naming δ, although ε is left (2 of 5 per job)."""
    import json
    import subprocess
    import sys

    spec = make_spec(rounds=1, evaluate=False, batch_size=100)
    stores = {n: dpfed.nodes[n].runtime.store for n in OWNERS}
    if not stores["bank-a"].budgets():  # (run alone: the first job of the module spends the δ)
        train(dpfed, spec)
    before = {n: s.debits() for n, s in stores.items()}
    assert all(Decimal(s.budgets()[0].remaining_epsilon) >= 1 for s in stores.values())  # ε is not what runs out
    with pytest.raises(JobFailed, match=r"privacy budget exhausted: this job needs δ=0\.000001 but only "
                                        r"δ=0\.000000 of δ=0\.000001 is left .*total over all its jobs"):
        train(dpfed, spec)
    assert {n: s.debits() for n, s in stores.items()} == before  # refused: nothing spent anywhere
    [last] = [d for d in before["bank-a"] if d.kind == "train"][-1:]
    assert last.chain.cumulative_delta == "0.000001"  # Σδ is in the signed chain entry
    p = subprocess.run([sys.executable, "-m", "fedtrust.cli.main", "node", "budget", "--config",
                        str(dpfed.node_configs["bank-a"]), "--json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    [report] = json.loads(p.stdout)
    assert (report["spent_delta"], report["delta_total"], report["remaining_delta"]) == \
        ("0.000001", "0.000001", "0.000000")
    assert report["last"][0]["delta"] == "0.000001"


@pytest.mark.parametrize("changes, rule", [
    ({"evaluate": True}, "federated evaluation releases exact metrics"),
    ({"strategy": "fedprox", "strategy_options": {"proximal_mu": 0.1}, "evaluate": False}, "FedProx"),
])
def test_what_dp_training_cannot_protect_is_refused_by_the_node(dpfed, changes, rule):
    job, contract, _ = signed_job(dpfed, make_spec(**changes))
    with pytest.raises(PolicyViolation, match=rule):
        node_client(dpfed, "bank-a").finish(job, contract)


def test_dp_training_needs_the_declared_minimum_row_count(tmp_path):
    from fedtrust.demo.federation import issue_signed_contract
    from fedtrust.exchange.issuer import list_product
    from fedtrust.query.dataset import file_digest

    fed = build_federation(tmp_path, OWNERS, privacy=PRIVACY, training={"models": ["logreg"]})
    # a product listed without --min-rows: its owner cannot plan DP-SGD from public numbers
    bare = tmp_path / "products" / "bank-a-bare.json"
    list_product(fed.exchange_dir, "bank-a", "loans", tmp_path / "schema.toml", file_digest(fed.data["bank-a"]), bare)
    (tmp_path / "config" / "bank-a.toml").write_text(
        (tmp_path / "config" / "bank-a.toml").read_text().replace("bank-a.json", "bank-a-bare.json"))
    contract = tmp_path / "contract-bare.json"
    issue_signed_contract(fed.root, "analyst", "coord", [bare, tmp_path / "products" / "bank-b.json"],
                          tmp_path / "rules.toml", contract)
    fed.contract_path = contract
    with fed:
        with pytest.raises(Error, match="declared minimum row count"):
            train(fed, make_spec(rounds=1, evaluate=False, batch_size=100))

"""The node's budget ledger never overspends, never double-debits, and stays a valid chain."""
from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtrust.errors import BudgetExhausted, ReplayError
from fedtrust.node.store import NodeStore
from fedtrust.trust.dsse import Signer
from fedtrust.trust.receipts import GENESIS, ledger_entry_digest

CONTRACT = "c" * 64
SIGNER = Signer.generate()


def attest(debit):
    return SIGNER.sign_statement("https://fedtrust.dev/test/v1", {"seq": debit.chain.seq})


def commit(store, i, eps, total, nonce=None, job_digest=None, max_queries=10_000):
    return store.commit_release(
        node="n1", contract_digest=CONTRACT, job_id=f"job-{i}", nonce=nonce or f"{i:064x}",
        job_digest=job_digest or f"{i:064x}", max_queries=max_queries, mechanism="discrete-laplace",
        outputs=[b"ct-%d" % i], make_attestation=attest, epsilon=eps, epsilon_total=total,
    )


def check_chain(store, total):
    rows = store.debits(CONTRACT)
    prev, cum = GENESIS, Decimal(0)
    for k, d in enumerate(rows, start=1):
        assert d.chain.seq == k
        assert d.chain.prev == prev
        cum += Decimal(d.epsilon)
        assert Decimal(d.chain.cumulative_epsilon) == cum
        assert ledger_entry_digest("n1", CONTRACT, d.job_digest, d.epsilon, d.delta, d.chain) == d.entry_digest
        prev = d.entry_digest
    assert cum <= total
    return rows


ops = st.lists(
    st.tuples(st.sampled_from(["new", "retry", "reuse-nonce", "reuse-id"]),
              st.sampled_from(["0.1", "0.25", "0.5", "1", "1.5"])),
    min_size=1, max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, total=st.sampled_from(["1", "2.5", "4"]))
def test_any_interleaving_of_jobs_never_exceeds_the_budget(tmp_path_factory, ops, total):
    store = NodeStore(tmp_path_factory.mktemp("ledger"))
    total = Decimal(total)
    done: list[int] = []
    for i, (op, eps) in enumerate(ops):
        before = len(store.debits(CONTRACT))
        eps = Decimal(eps)
        try:
            if op == "new" or not done:
                commit(store, i, eps, total)
                done.append(i)
            elif op == "retry":  # the same job again: same release, no second debit
                j = done[-1]
                again = commit(store, j, eps, total)
                assert len(store.debits(CONTRACT)) == before
                assert again.outputs == (b"ct-%d" % j,)
            elif op == "reuse-nonce":
                with pytest.raises(ReplayError, match="nonce"):
                    commit(store, i, eps, total, nonce=f"{done[-1]:064x}")
            else:
                with pytest.raises(ReplayError):
                    store.commit_release(
                        node="n1", contract_digest=CONTRACT, job_id=f"job-{done[-1]}", nonce=f"{i:064x}",
                        job_digest="f" * 64, max_queries=10_000, mechanism="x", outputs=[], make_attestation=attest,
                        epsilon=eps, epsilon_total=total)
        except BudgetExhausted as e:
            assert "left for this contract" in str(e)
            assert len(store.debits(CONTRACT)) == before  # a refused job debits nothing
        check_chain(store, total)


def test_concurrent_jobs_cannot_overspend(tmp_path):
    store = NodeStore(tmp_path)
    total = Decimal(5)
    results, errors = [], []

    def run(i):
        try:
            results.append(commit(store, i, Decimal(1), total))
        except BudgetExhausted as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 5 and len(errors) == 19
    rows = check_chain(store, total)
    assert len(rows) == 5 and store.spent_epsilon(CONTRACT) == total


def test_training_jobs_debit_before_release_and_attest_once(tmp_path):
    store = NodeStore(tmp_path)
    d1 = store.debit_job(node="n1", contract_digest=CONTRACT, kind="train", job_id="t1", nonce="1" * 64,
                         job_digest="a" * 64, mechanism="dp-sgd", epsilon=Decimal(2), epsilon_total=Decimal(3))
    again = store.debit_job(node="n1", contract_digest=CONTRACT, kind="train", job_id="t1", nonce="1" * 64,
                            job_digest="a" * 64, mechanism="dp-sgd", epsilon=Decimal(2), epsilon_total=Decimal(3))
    assert again == d1
    with pytest.raises(BudgetExhausted, match="only ε=1.000000 of ε=3.000000 is left"):
        commit(store, 9, Decimal("1.5"), Decimal(3))
    commit(store, 10, Decimal(1), Decimal(3))
    env = attest(d1)
    store.attach_attestation(CONTRACT, "t1", env, [b"u1", b"u2"])
    with pytest.raises(ReplayError):
        store.attach_attestation(CONTRACT, "t1", attest(store.debits(CONTRACT)[1]))
    check_chain(store, Decimal(3))


def test_state_files_are_private(tmp_path):
    """Node, coordinator and training state: the folder 0700, the SQLite files (and WAL) 0600."""
    import stat

    from fedtrust.coordinator.store import JobStore
    from fedtrust.node.training_store import TrainingStore

    store = NodeStore(tmp_path / "state" / "node")
    commit(store, 1, Decimal("0.1"), Decimal("1"))
    TrainingStore(tmp_path / "state" / "node")
    JobStore(tmp_path / "state" / "coord")
    for d in ("node", "coord"):
        folder = tmp_path / "state" / d
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = list(folder.iterdir())
        assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), files


def test_delta_is_a_total_over_the_contracts_jobs(tmp_path):
    """The contract's δ caps the sum of the jobs' δ (DP-SGD spends its δ, rounded up in the ledger; a query
    spends δ = 0); a job past it is refused, names what is left and spends nothing."""
    store = NodeStore(tmp_path)
    kw = dict(node="n1", contract_digest=CONTRACT, epsilon=Decimal(1), epsilon_total=Decimal(10),
              delta_total=Decimal("0.000002"))
    store.debit_job(kind="train", job_id="t1", nonce="1" * 64, job_digest="a" * 64, mechanism="dp-sgd",
                    delta=Decimal("0.0000015"), **kw)
    before = store.debits(CONTRACT)
    assert before[0].delta == "0.000002"  # rounded up: the ledger never under-states a spend
    with pytest.raises(BudgetExhausted, match=r"needs δ=0\.000001 but only δ=0\.000000 of δ=0\.000002 is left .*"
                                              r"total over all its jobs"):
        store.debit_job(kind="train", job_id="t2", nonce="2" * 64, job_digest="b" * 64, mechanism="dp-sgd",
                        delta=Decimal("0.000001"), **kw)
    assert store.debits(CONTRACT) == before and store.spends(CONTRACT)[0].delta == Decimal("0.000002")
    q = store.debit_job(kind="query", job_id="q1", nonce="3" * 64, job_digest="c" * 64,
                        mechanism="discrete-laplace", **kw)
    assert (q.delta, q.chain.cumulative_epsilon) == ("0.000000", "2.000000")

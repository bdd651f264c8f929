"""δ in the budget chain: each node's chain entry states Σδ (basic composition), the node caps it with the
contract's δ, and the exchange checks that Σδ extends the recorded chain and stays within the contract's δ."""
from __future__ import annotations

import sqlite3
from dataclasses import replace
from decimal import Decimal
from types import SimpleNamespace

import pytest

from fedtrust.errors import BudgetExhausted, VerificationError
from fedtrust.exchange.store import ChainRow
from fedtrust.exchange.verify import _chain_row
from fedtrust.node.store import NodeStore
from fedtrust.trust.receipts import GENESIS, ChainEntry, ledger_entry_digest, next_chain_entry

CONTRACT = "c" * 64


def _debit(store, i, delta, *, kind="train", mechanism="dp-sgd", delta_total="0.000003"):
    return store.debit_job(node="n1", contract_digest=CONTRACT, kind=kind, job_id=f"j{i}", nonce=f"{i:064x}",
                           job_digest=f"{i:064x}", mechanism=mechanism, epsilon=Decimal("0.5"),
                           delta=Decimal(delta), epsilon_total=Decimal(10), delta_total=Decimal(delta_total))


def test_the_chain_entry_states_the_composed_delta_and_its_digest_covers_it(tmp_path):
    store = NodeStore(tmp_path)
    a = _debit(store, 1, "0.000001")
    q = _debit(store, 2, "0", kind="query", mechanism="discrete-laplace")  # a query spends δ = 0
    b = _debit(store, 3, "0.0000015")  # rounded up to 0.000002 in the ledger, and charged so
    assert [d.chain.cumulative_delta for d in (a, q, b)] == ["0.000001", "0.000001", "0.000003"]
    for d in store.debits(CONTRACT):
        assert ledger_entry_digest("n1", CONTRACT, d.job_digest, d.epsilon, d.delta, d.chain) == d.entry_digest
    changed = replace(b.chain, cumulative_delta="0.000001")  # a node cannot restate Σδ under the same digest
    assert ledger_entry_digest("n1", CONTRACT, b.job_digest, b.epsilon, b.delta, changed) != b.entry_digest
    [budget] = store.budgets()
    assert (budget.spent_delta, budget.delta_total, budget.remaining_delta) == ("0.000003", "0.000003", "0.000000")
    with pytest.raises(BudgetExhausted, match=r"needs δ=0\.000001 but only δ=0\.000000 of δ=0\.000003 is left"):
        _debit(store, 4, "0.000001")
    assert len(store.debits(CONTRACT)) == 3  # refused: nothing written


def test_entries_without_cumulative_delta_keep_their_old_digest_and_json():
    old = ChainEntry(1, GENESIS, "0.500000")
    assert old.to_dict() == {"seq": 1, "prev": GENESIS, "cumulative_epsilon": "0.500000"}
    assert ChainEntry.from_dict(old.to_dict()) == old
    new = next_chain_entry(None, None, "0.500000", "0.000001")
    assert new == ChainEntry(1, GENESIS, "0.500000", "0.000001") == ChainEntry.from_dict(new.to_dict())
    assert next_chain_entry(new, "d" * 64, "0.500000", "0.000002").cumulative_delta == "0.000003"
    assert next_chain_entry(old, "d" * 64, "0.500000").cumulative_delta == "0.000000"


def test_a_ledger_from_before_delta_joined_the_chain_opens_and_gains_the_columns(tmp_path):
    state = tmp_path / "state"
    NodeStore(state)
    con = sqlite3.connect(state / "node.sqlite3")
    con.execute("ALTER TABLE releases DROP COLUMN cumulative_delta")
    con.execute("ALTER TABLE releases DROP COLUMN delta_total")
    con.commit()
    con.close()
    store = NodeStore(state)
    assert _debit(store, 1, "0.000001").chain.cumulative_delta == "0.000001"


def _receipt(chain: ChainEntry, delta: str, epsilon: str = "0.500000"):
    att = SimpleNamespace(node="n1", epsilon=epsilon, delta=delta, chain=chain)
    return SimpleNamespace(attestations=[att], contract_digest=CONTRACT, job_digest="a" * 64)


class _Recorded:
    def __init__(self, *rows: ChainRow) -> None:
        self.rows = rows

    def chain_entries(self, node, contract_digest):
        return list(self.rows)


def test_the_exchange_refuses_a_cumulative_delta_that_does_not_extend_the_recorded_chain():
    first = ChainRow("n1", CONTRACT, 1, "f" * 64, GENESIS, "0.500000", "j1", "0.000001")
    honest = ChainEntry(2, "f" * 64, "1.000000", "0.000002")
    row = _chain_row(_Recorded(first), _receipt(honest, "0.000001"), 0)
    assert row[-1] == "0.000002"
    # a node that restarts its Σδ (to fit more jobs under the contract's δ) is caught at the next receipt
    with pytest.raises(VerificationError, match="cumulative δ is not the recorded previous entry's plus"):
        _chain_row(_Recorded(first), _receipt(replace(honest, cumulative_delta="0.000001"), "0.000001"), 0)
    with pytest.raises(VerificationError, match="cumulative δ is not the recorded previous entry's plus"):
        _chain_row(_Recorded(), _receipt(ChainEntry(1, GENESIS, "0.500000", "0.000000"), "0.000001"), 0)
    # an entry recorded before δ joined the chain: ε is still checked, δ from here on
    legacy = replace(first, cumulative_delta=None)
    assert _chain_row(_Recorded(legacy), _receipt(honest, "0.000001"), 0)[-1] == "0.000002"

"""Only writes that guard no release skip their fsync; a release's debit is committed with synchronous=FULL."""
from __future__ import annotations

from decimal import Decimal

import pytest

from fedtrust.node.store import NodeStore
from fedtrust.sqlite import Database
from fedtrust.trust.dsse import Signer

FULL, NORMAL = 2, 1
SIGNER = Signer.generate()


def synchronous(db: Database) -> int:
    return db.read().execute("PRAGMA synchronous").fetchone()[0]


def test_a_write_is_fsynced_unless_it_says_it_guards_nothing_and_the_setting_comes_back(tmp_path):
    db = Database(tmp_path / "x.sqlite3", "CREATE TABLE IF NOT EXISTS t (x INTEGER);")
    with db.write() as con:
        assert con.execute("PRAGMA synchronous").fetchone()[0] == FULL
        con.execute("INSERT INTO t VALUES (1)")
    with db.write(durable=False) as con:
        assert con.execute("PRAGMA synchronous").fetchone()[0] == NORMAL
        con.execute("INSERT INTO t VALUES (2)")
    assert synchronous(db) == FULL
    with pytest.raises(RuntimeError):
        with db.write(durable=False) as con:
            con.execute("INSERT INTO t VALUES (3)")
            raise RuntimeError("boom")
    assert synchronous(db) == FULL  # restored after a rollback too
    assert [r[0] for r in db.read().execute("SELECT x FROM t ORDER BY x")] == [1, 2]


def test_the_debit_of_a_release_is_committed_with_a_full_fsync_even_after_unsynced_audit_lines(tmp_path):
    store = NodeStore(tmp_path / "state", tmp_path / "mark")
    store.audit("admitted", "query")  # not fsynced by itself
    seen = []

    def attest(debit):
        seen.append(synchronous(store.db))  # inside the ledger transaction, on the same connection
        return SIGNER.sign_statement("https://fedtrust.dev/test/v1", {"seq": debit.chain.seq})

    store.commit_release(node="n1", contract_digest="c" * 64, job_id="j1", nonce="1" * 64, job_digest="a" * 64,
                         max_queries=10, mechanism="exact", outputs=[b"ct"], make_attestation=attest,
                         epsilon=Decimal(0))
    assert seen == [FULL]
    assert synchronous(store.db) == FULL

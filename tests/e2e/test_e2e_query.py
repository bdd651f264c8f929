"""End to end: exchange → nodes → coordinator → buyer → receipt → exchange, real daemons over mTLS."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from fedtrust.buyer.query import fetch_again, plan_for, submit_query
from fedtrust.demo.reference import pooled_answer
from fedtrust.errors import ReplayError, VerificationError
from fedtrust.exchange.verify import verify_receipt_file
from fedtrust.trust.credentials import load_identity

GROUPED = "SELECT region, COUNT(*) AS n, AVG(income) AS mean_income FROM loans GROUP BY region"
STATS = ("SELECT COUNT(*) AS n, SUM(age) AS total_age, AVG(income) AS mean_income, VAR_SAMP(income) AS var_income, "
         "STDDEV_SAMP(age) AS sd_age FROM loans WHERE age >= 30 AND NOT region = 'west'")
GROUPED_FILTERED = ("SELECT region, SUM(defaulted) AS defaults, STDDEV_SAMP(income) AS sd FROM loans "
                    "WHERE region IN ('north', 'central', 'east') AND age BETWEEN 25 AND 60 GROUP BY region")


def _key(row):
    return tuple(str(v) for v in row if isinstance(v, str))


def assert_rows_close(got, want):
    assert len(got) == len(want)
    got, want = sorted(got, key=_key), sorted(want, key=_key)
    for g, w in zip(got, want):
        assert len(g) == len(w)
        for a, b in zip(g, w):
            if isinstance(b, (int, float)) and not isinstance(b, bool):
                assert a is not None
                assert math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9), (g, w)
            else:
                assert a == b, (g, w)


def ask(fed, sql):
    buyer = load_identity(fed.buyer_dir)
    return submit_query(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, sql)


@pytest.mark.parametrize("sql", [GROUPED, STATS, GROUPED_FILTERED])
def test_answer_equals_plaintext_over_admitted_pooled_rows(federation, sql):
    res = ask(federation, sql)
    contract = res.verified.contract
    cols, rows = pooled_answer(plan_for(contract, sql), sql, list(federation.data.values()),
                               contract.rules.query.min_group_size)
    assert list(res.table.columns) == cols
    assert_rows_close(res.table.rows, rows)
    assert res.result["columns"] == cols and len(res.result["rows"]) == len(rows)


def test_small_groups_are_withheld_and_reported(federation):
    # insurer-c's mix puts about 0.5% of its 1200 rows in `central`: below the minimum of 10
    res = ask(federation, GROUPED)
    assert res.table.withheld >= 1
    central = [r for r in res.table.rows if r[0] == "central"][0]
    # the pooled count excludes the withheld contribution
    contract = res.verified.contract
    _, rows = pooled_answer(plan_for(contract, GROUPED), GROUPED, list(federation.data.values()), 1)
    unfiltered = [r for r in rows if r[0] == "central"][0]
    assert central[1] < unfiltered[1]


def test_receipt_verifies_at_the_exchange_once(federation, tmp_path):
    res = ask(federation, GROUPED)
    receipt, result = tmp_path / "receipt.json", tmp_path / "result.json"
    receipt.write_bytes(res.receipt.to_json())
    result.write_text(json.dumps(res.result))
    verdict = verify_receipt_file(federation.exchange_dir, receipt, result)
    assert not verdict.already_recorded and verdict.result_checked
    assert "VALID" in verdict.summary and "3 owners attested" in verdict.summary
    # the same receipt again is recognised, not double-counted
    assert verify_receipt_file(federation.exchange_dir, receipt).already_recorded
    # a result other than the delivered one does not match the acknowledgement
    forged = dict(res.result, rows=[[r[0], r[1] + 1, r[2]] for r in res.result["rows"]])
    # not only the rows: any field of the delivered document (here, how many contributions were withheld)
    for forged in (forged, dict(res.result, withheld=res.result["withheld"] + 1)):
        result.write_text(json.dumps(forged))
        with pytest.raises(VerificationError, match="does not match the digest the buyer acknowledged"):
            verify_receipt_file(federation.exchange_dir, receipt, result)


def test_the_exchange_refuses_a_statement_that_names_other_outputs_than_the_nodes_signed(federation, tmp_path):
    """Even with the buyer colluding (acknowledging anything), the exchange records no receipt whose coordinator
    statement names an aggregate of its own or outputs other than the attested ones."""
    from dataclasses import replace

    from fedtrust.trust.canonical import sha256_hex
    from fedtrust.trust.receipts import ReceiptBundle, sign_coordinator_statement

    res = ask(federation, GROUPED)
    coord = load_identity(federation.root / "credentials" / "coord")
    st = res.verified.statement
    forged_outputs = (replace(st.relayed[0], outputs=(sha256_hex(b"forged"),)),) + st.relayed[1:]
    cases = [
        (dict(aggregate_outputs=(sha256_hex(b"my sum"),), relayed=None), "does not name the outputs it relayed"),
        (dict(aggregate_outputs=(sha256_hex(b"my sum"),)), "names an aggregate of its own"),
        (dict(relayed=forged_outputs), "names outputs for node bank-a other than those the node signed"),
        (dict(relayed=st.relayed[1:]), "other than exactly the job's participants"),
    ]
    for changes, message in cases:
        b = res.receipt
        forged = ReceiptBundle(b.contract, b.job, b.attestations,
                               sign_coordinator_statement(replace(st, **changes), coord.signer), b.acknowledgement)
        path = tmp_path / "forged.json"
        path.write_bytes(forged.to_json())
        with pytest.raises(VerificationError, match=message):
            verify_receipt_file(federation.exchange_dir, path)
    honest = tmp_path / "honest.json"
    honest.write_bytes(res.receipt.to_json())
    assert "relayed exactly the owners' attested outputs" in verify_receipt_file(federation.exchange_dir, honest).summary


def test_fetching_again_decrypts_the_same_result_and_a_second_receipt_is_a_replay(federation, tmp_path):
    res = ask(federation, STATS)
    buyer = load_identity(federation.buyer_dir)
    again = fetch_again(buyer, federation.buyer_dir, res.job_id)
    assert again.table.rows == res.table.rows
    first, second = tmp_path / "r1.json", tmp_path / "r2.json"
    first.write_bytes(res.receipt.to_json())
    second.write_bytes(again.receipt.to_json())  # new acknowledgement (new salt): a different bundle
    verify_receipt_file(federation.exchange_dir, first)
    with pytest.raises(ReplayError, match="already recorded"):
        verify_receipt_file(federation.exchange_dir, second)


def test_cli_query_status_result_and_verify(federation, tmp_path):
    env = dict(os.environ, FEDTRUST_LOG="warning")
    out, receipt = tmp_path / "result.json", tmp_path / "receipt.json"
    cmd = [sys.executable, "-m", "fedtrust.cli.main"]
    p = subprocess.run(cmd + ["query", "--credentials", str(federation.buyer_dir), "--contract",
                              str(federation.contract_path), "--coordinator", federation.coordinator_address,
                              "--out", str(out), "--receipt", str(receipt), "--json", GROUPED],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    printed = json.loads(p.stdout)
    saved = json.loads(out.read_text())
    assert printed == saved and saved["columns"] == ["region", "n", "mean_income"]
    job_id = saved["job_id"]
    p = subprocess.run(cmd + ["job", "status", job_id, "--credentials", str(federation.buyer_dir), "--json"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == "succeeded"
    p = subprocess.run(cmd + ["job", "result", job_id, "--credentials", str(federation.buyer_dir), "--json"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows"] == saved["rows"]
    # FEDTRUST_CREDENTIALS / _CONTRACT / _COORDINATOR instead of repeating the flags; results as CSV
    buyer_env = dict(env, FEDTRUST_CREDENTIALS=str(federation.buyer_dir), FEDTRUST_CONTRACT=str(federation.contract_path),
                     FEDTRUST_COORDINATOR=federation.coordinator_address)
    p = subprocess.run(cmd + ["job", "result", job_id, "--format", "csv"], capture_output=True, text=True,
                       env=buyer_env, timeout=60)
    assert p.returncode == 0, p.stderr
    import csv
    import io

    table = list(csv.reader(io.StringIO(p.stdout)))
    assert table[0] == saved["columns"] and [r[0] for r in table[1:]] == [str(r[0]) for r in saved["rows"]]
    p = subprocess.run(cmd + ["query", "--format", "csv", "SELECT COUNT(*) AS n FROM loans"], capture_output=True,
                       text=True, env=buyer_env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "n" and int(p.stdout.splitlines()[1]) > 0
    p = subprocess.run(cmd + ["exchange", "verify", str(federation.exchange_dir), str(receipt), "--result", str(out)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "VALID" in p.stdout
    # a forbidden query: non-zero exit, the rule named, no traceback
    p = subprocess.run(cmd + ["query", "--credentials", str(federation.buyer_dir), "--contract",
                              str(federation.contract_path), "--coordinator", federation.coordinator_address,
                              "SELECT * FROM loans"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 6  # the exit status of a policy refusal
    assert "Traceback" not in p.stderr and "SELECT *" in p.stderr


def test_the_buyers_client_refuses_an_unlisted_filter_value_before_anything_is_made_or_sent(federation):
    from fedtrust.buyer.jobdir import jobs_root
    from fedtrust.errors import PolicyViolation

    before = set(jobs_root(federation.buyer_dir).glob("*"))
    with pytest.raises(PolicyViolation, match="outside its public domain; use one of its listed values: north, south"):
        ask(federation, "SELECT COUNT(*) AS n FROM loans WHERE region = 'dermatology'")
    assert set(jobs_root(federation.buyer_dir).glob("*")) == before  # no key, no job, nothing sent


def test_a_node_tells_its_owner_at_start_how_many_rows_lie_outside_the_domain(tmp_path, caplog):
    """A count only, in the owner's own log; queries never count those rows."""
    from fedtrust.config import load_node_config
    from fedtrust.demo.federation import build_federation
    from fedtrust.exchange.issuer import list_product
    from fedtrust.node.runtime import NodeRuntime
    from fedtrust.query.dataset import file_digest

    fed = build_federation(tmp_path, {"bank-a": 100, "bank-b": 100})
    data = fed.data["bank-a"]
    with data.open("a") as f:
        f.write("mars,1000.0,40,0\n,2000.0,41,1\nnorth,3000.0,42,0\n")
    (fed.root / "products" / "bank-a.json").unlink()  # the owner lists the new data version
    list_product(fed.exchange_dir, "bank-a", "loans", fed.root / "schema.toml", file_digest(data),
                 fed.root / "products" / "bank-a.json")
    caplog.set_level("INFO", logger="fedtrust.node")
    rt = NodeRuntime(load_node_config(fed.node_configs["bank-a"]))
    try:
        (held,) = rt.datasets.values()
        assert held.dataset.out_of_domain_rows() == 2
        lines = [r.getMessage() for r in caplog.records if "outside" in r.getMessage() or "not listed" in r.getMessage()]
        assert len(lines) == 1 and " 2 row(s) " in lines[0]
        assert "mars" not in lines[0] and "1000" not in lines[0]
    finally:
        for h in rt.datasets.values():
            h.dataset.close()


def test_the_buyer_reuses_one_key_pair_per_contract_and_each_job_still_decodes(federation, tmp_path):
    from fedtrust.buyer.keys import contract_keys, keys_dir
    from fedtrust.trust.dsse import Envelope

    first, second = ask(federation, GROUPED), ask(federation, GROUPED)
    assert first.verified.job.job_id != second.verified.job.job_id
    # key generation and the context happen once per contract; the masks stay per job (results exact)
    assert first.verified.job.payload.he.context_digest == second.verified.job.payload.he.context_digest
    assert first.table.rows == second.table.rows
    digest = Envelope.from_json(federation.contract_path.read_bytes()).digest
    secret = keys_dir(federation.buyer_dir, digest) / "he-secret.bin"
    assert secret.stat().st_mode & 0o777 == 0o600
    # another contract (or another buyer's folder) never gets this pair
    other = contract_keys(tmp_path, "ab" * 32)
    assert other.params.context_digest != first.verified.job.payload.he.context_digest

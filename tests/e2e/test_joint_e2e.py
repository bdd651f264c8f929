"""Joint statistics through the daemons (kind "joint"): a PSI job aligns the bank's and the telco's customers,
then a joint GROUP BY runs in MPC between the two owners with the dealer over the coordinator's relay; the buyer
adds the output shares. Exact against a plaintext DuckDB join of the two files; the receipt verifies at the
exchange; refusals through the daemons spend nothing; a colluding coordinator and buyer hold sealed frames and
output shares only."""
from __future__ import annotations

import duckdb
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.joint import submit_joint
from fedtrust.buyer.mpc import new_output_key, open_outputs
from fedtrust.buyer.query import load_contract, tls_of
from fedtrust.buyer.vertical import submit_psi
from fedtrust.coordinator import mpc_job
from fedtrust.demo.vertical import build_vertical_federation
from fedtrust.errors import Error
from fedtrust.exchange.verify import verify_receipt
from fedtrust.query.joint_checks import plan_joint_job
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec, sign_job
from fedtrust.trust.vertical import JointJob

SQL = ("SELECT bank.segment, COUNT(*) AS n, AVG(telco.arpu) AS arpu, SUM(bank.income) AS income "
       "FROM bank JOIN telco USING (phone_key) WHERE telco.tenure_months >= 24 GROUP BY bank.segment")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    f = build_vertical_federation(tmp_path_factory.mktemp("joint"), bank_rows=200, telco_rows=260, shared=160,
                                  min_intersection=50, mpc=True)
    f.start()
    try:
        identity = load_identity(f.buyer_dir)
        f.psi = submit_psi(identity, f.buyer_dir, f.contract_path, f.coordinator_address, timeout=300)
        yield f
    finally:
        f.stop()


def _plain(fed, sql: str):
    con = duckdb.connect()
    for node, path in fed.data.items():
        con.execute(f"CREATE TABLE {node.split('-')[0]} AS SELECT * FROM read_csv('{path}')")
    return con.execute(sql).fetchall()


def test_a_joint_group_by_equals_the_plaintext_join_and_the_receipt_verifies(fed):
    identity = load_identity(fed.buyer_dir)
    res = submit_joint(identity, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL, timeout=300)
    assert res.result["alignment"] == fed.psi.job_id  # the newest PSI job of this contract, by default
    got = {r[0]: r for r in res.result["rows"]}
    contract, _ = load_contract(identity, fed.contract_path)
    plan = plan_joint_job(contract, res.verified.job)
    want = _plain(fed, plan.canonical_sql)
    assert want and len(got) == 3
    for row in want:
        mine = got[row[0]]
        if row[1] < 10:  # the demo contract's min_group_size
            assert mine[1:] == [None, None, None]
            continue
        assert mine[1] == row[1] and mine[2] == pytest.approx(row[2], abs=1e-6)
        assert mine[3] == pytest.approx(row[3], abs=1e-4)
    verdict = verify_receipt(fed.exchange_dir, res.receipt, res.result)
    assert verdict.result_checked and "relayed the MPC session's sealed frames" in verdict.summary


def test_a_joint_job_the_rules_refuse_spends_nothing_at_either_owner(fed):
    identity = load_identity(fed.buyer_dir)
    contract, raw = load_contract(identity, fed.contract_path)
    env = Envelope.from_json(raw)
    before = {n: len(d.runtime.store.debits()) for n, d in fed.nodes.items()}
    client = CoordinatorClient(fed.coordinator_address, tls_of(identity), "coord", 120)
    # signed by the buyer's key directly, past its client's own check: the owners refuse by themselves
    for sql, alignment, match in (
        ("SELECT COUNT(bank.phone_key) FROM bank JOIN telco USING (phone_key)", fed.psi.job_id, "is a join key"),
        ("SELECT telco.tenure_months, COUNT(*) FROM bank JOIN telco USING (phone_key) GROUP BY telco.tenure_months",
         fed.psi.job_id, "may not be grouped by"),
        ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key)", "no-such-psi-job", "holds no alignment"),
    ):
        job = JobSpec.create(contract, env.digest, JointJob("phone_key", sql, alignment, new_output_key()[1]))
        with pytest.raises(Error, match=f"nobody was charged.*{match}"):
            client.submit_mpc(sign_job(job, identity.signer).to_json(), raw)
    assert {n: len(d.runtime.store.debits()) for n, d in fed.nodes.items()} == before


def test_a_colluding_coordinator_and_buyer_see_sealed_frames_and_uniform_shares_only(fed, monkeypatch):
    frames: list[bytes] = []
    orig = mpc_job._entry

    def entry(peer, frame):
        frames.append(bytes(frame))
        return orig(peer, frame)
    monkeypatch.setattr(mpc_job, "_entry", entry)
    identity = load_identity(fed.buyer_dir)
    sql = "SELECT COUNT(*) AS n, SUM(telco.tenure_months) AS t FROM bank JOIN telco USING (phone_key)"
    res = submit_joint(identity, fed.buyer_dir, fed.contract_path, fed.coordinator_address, sql, timeout=300)
    assert res.result["rows"][0] == list(_plain(fed, sql)[0])
    assert frames and all(b'"dtype"' not in f for f in frames)
    key = X25519PrivateKey.from_private_bytes((fed.buyer_dir / "jobs" / res.job_id / "he-secret.bin").read_bytes())
    contract, _ = load_contract(identity, fed.contract_path)
    outcome = CoordinatorClient(fed.coordinator_address, tls_of(identity), "coord").fetch_result(res.job_id, 2)
    shares = open_outputs(res.verified, outcome.relayed, contract, key)
    n = res.result["rows"][0][0]
    # the output row: [group withheld, column withheld, count, non-null count, sum]; one owner's share of the
    # count alone is a uniform ring element, far from it; the two add up to it
    for s in shares:
        assert abs(int(s["joint"][0][2]) - n) > 2 ** 32
    assert sum(int(s["joint"][0][2]) for s in shares) % 2 ** 64 == n


def test_fedtrust_query_sends_a_join_as_a_joint_job_and_job_result_fetches_it_again(fed, tmp_path, capsys):
    import json

    from typer.testing import CliRunner

    from fedtrust.cli.main import EXIT_CODES, app, run

    common = ["--credentials", str(fed.buyer_dir), "--contract", str(fed.contract_path), "--coordinator",
              fed.coordinator_address]
    sql = "SELECT bank.segment, COUNT(*) AS n FROM bank JOIN telco USING (phone_key) GROUP BY bank.segment"
    out = tmp_path / "r.json"
    done = CliRunner().invoke(app, ["query", sql, *common, "--alignment", fed.psi.job_id, "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert f"rows PSI job {fed.psi.job_id} aligned" in done.output
    result = json.loads(out.read_text())
    assert result["kind"] == "joint" and result["columns"] == ["segment", "n"] and result["sql"] == sql
    want = dict(_plain(fed, sql))
    assert {r[0]: r[1] for r in result["rows"]} == {s: (n if n >= 10 else None) for s, n in want.items()}
    again = CliRunner().invoke(app, ["job", "result", result["job_id"], "--credentials", str(fed.buyer_dir),
                                     "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output[again.output.index("{"):])["rows"] == result["rows"]
    # a rule broken: refused by the buyer's own check before anything is sent, as JSON naming the rule, exit 6
    bad = run(["query", sql.replace("COUNT(*)", "MAX(telco.arpu)"), *common, "--json"])
    err = json.loads(capsys.readouterr().out)
    assert bad == EXIT_CODES["policy"] and "MAX is not offered for joint statistics" in err["error"]["message"]
    plain = run(["query", "SELECT COUNT(*) FROM bank", *common, "--alignment", "x", "--json"])
    err = json.loads(capsys.readouterr().out)
    assert plain == EXIT_CODES["invalid-input"] and "--alignment names the PSI job" in err["error"]["message"]

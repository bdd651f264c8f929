"""MIN, MAX, MEDIAN and quantiles through the daemons (kind "mpc-stats"): three owners compute in MPC with a dealer
over the coordinator's relay; the buyer adds the shares. Exact MIN/MAX and quantiles within the documented
resolution against a plaintext DuckDB answer over all owners' files; the receipt verifies at the exchange; a
coordinator and buyer who collude (everything relayed, everything delivered) learn the answer and nothing else;
a refused job spends nothing; a relay that alters one frame fails the job."""
from __future__ import annotations

import json
import threading

import duckdb
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.mpc import new_output_key, open_outputs, submit_mpc_stats
from fedtrust.buyer.query import load_contract, tls_of
from fedtrust.coordinator import mpc_job
from fedtrust.demo.federation import DEALER_NAME, build_federation, issue_signed_contract
from fedtrust.errors import Error
from fedtrust.exchange.verify import verify_receipt
from fedtrust.query.mpc_stats import BINS, MpcStatsJob
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec, sign_job

OWNERS = {"bank-a": 240, "bank-b": 160, "insurer-c": 90}
SQL = ("SELECT MIN(income), MAX(income), MAX(age), MEDIAN(income), QUANTILE_CONT(age, 0.9) FROM loans "
       "WHERE region <> 'south'")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    f = build_federation(tmp_path_factory.mktemp("mpc"), OWNERS, min_group_size=5, mpc=True)
    f.start()
    try:
        yield f
    finally:
        f.stop()


class Recorder:
    """Sits in the coordinator's relay (its transcript hook sees every frame it forwards): the colluding
    coordinator's view."""

    def __init__(self, monkeypatch):
        self.frames: list[bytes] = []
        orig = mpc_job._entry

        def entry(peer, frame):
            self.frames.append(bytes(frame))
            return orig(peer, frame)
        monkeypatch.setattr(mpc_job, "_entry", entry)


def _plain(fed, sql: str):
    files = ", ".join(f"'{p}'" for p in fed.data.values())
    return duckdb.connect().execute(sql.replace("FROM loans", f"FROM read_csv([{files}])")).fetchone()


def test_min_max_exact_and_quantiles_within_resolution_and_the_receipt_verifies(fed, monkeypatch):
    rec = Recorder(monkeypatch)
    identity = load_identity(fed.buyer_dir)
    res = submit_mpc_stats(identity, fed.buyer_dir, fed.contract_path, fed.coordinator_address, SQL, timeout=300)
    got = res.result["rows"][0]
    want = _plain(fed, SQL)
    assert got[0] == pytest.approx(want[0], abs=1e-3) and got[1] == pytest.approx(want[1], abs=1e-3)
    assert got[2] == want[2]
    assert abs(got[3] - want[3]) <= 500000 / BINS  # one bin of income's public bounds [0, 500000]
    assert abs(got[4] - want[4]) <= (100 - 18) / BINS
    assert res.result["resolution"] == {"income": 500000 / BINS, "age": 82 / BINS}
    verdict = verify_receipt(fed.exchange_dir, res.receipt, res.result)
    assert verdict.result_checked and "relayed the MPC session's sealed frames" in verdict.summary
    # the colluding coordinator saw only sealed frames: no tensor header, no fixed-point encoding of any owner's
    # own extremum (the local minima and maxima of income are single rows' values)
    assert rec.frames and all(b'"dtype"' not in f and b'"fn"' not in f for f in rec.frames)
    local = []
    for path in fed.data.values():
        mn, mx = duckdb.connect().execute(f"SELECT MIN(income), MAX(income) FROM read_csv('{path}') "
                                          "WHERE region <> 'south'").fetchone()
        local += [mn, mx]
    encoded = [int(round(v * 2 ** 16)).to_bytes(8, "little", signed=True) for v in local]
    assert not any(e in f for f in rec.frames for e in encoded)


def test_colluding_coordinator_and_buyer_learn_only_the_answer_from_what_they_hold(fed):
    """Everything the buyer holds (its key opens every owner's output) and the coordinator stored: one owner's
    shares alone are uniform ring elements; only all of them together give the answer."""
    identity = load_identity(fed.buyer_dir)
    sql = "SELECT MIN(age) FROM loans"
    res = submit_mpc_stats(identity, fed.buyer_dir, fed.contract_path, fed.coordinator_address, sql, timeout=300)
    files = fed.buyer_dir / "jobs" / res.job_id
    key = X25519PrivateKey.from_private_bytes((files / "he-secret.bin").read_bytes())
    contract, _ = load_contract(identity, fed.contract_path)
    outcome = CoordinatorClient(fed.coordinator_address, tls_of(identity), "coord").fetch_result(res.job_id, 3)
    shares = open_outputs(res.verified, outcome.relayed, contract, key)
    answer = int(round(res.result["rows"][0][0] * 2 ** 16))
    for s in shares:  # each owner's share of MIN(age) alone is far from it (uniform in Z/2^64)
        assert abs(int(s["min"][0]) - answer) > 2 ** 32
    assert sum(int(s["min"][0]) for s in shares) % 2 ** 64 == answer % 2 ** 64


def test_a_job_the_rules_refuse_spends_nothing_at_any_owner(fed):
    identity = load_identity(fed.buyer_dir)
    contract, raw = load_contract(identity, fed.contract_path)
    env = Envelope.from_json(raw)
    before = {n: len(d.runtime.store.debits()) for n, d in fed.nodes.items()}
    # signed by the buyer's key directly, past its client's own check: the owners must refuse it themselves
    job = JobSpec.create(contract, env.digest, MpcStatsJob("SELECT MIN(defaulted) FROM loans GROUP BY region",
                                                           new_output_key()[1]))
    client = CoordinatorClient(fed.coordinator_address, tls_of(identity), "coord", 120)
    with pytest.raises(Error, match="nobody was charged.*GROUP BY is not supported"):
        client.submit_mpc(sign_job(job, identity.signer).to_json(), raw)
    assert {n: len(d.runtime.store.debits()) for n, d in fed.nodes.items()} == before


def test_a_relay_that_alters_one_frame_fails_the_job(fed, monkeypatch):
    orig = mpc_job._Session._requests

    def tampering(self, p):
        for i, msg in enumerate(orig(self, p)):
            if p.role == "node" and p.rank == 1 and i == 3 and msg.WhichOneof("part") == "frame":
                sealed = msg.frame.sealed
                msg.frame.sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
            yield msg
    monkeypatch.setattr(mpc_job._Session, "_requests", tampering)
    identity = load_identity(fed.buyer_dir)
    with pytest.raises(Error, match="does not open"):
        submit_mpc_stats(identity, fed.buyer_dir, fed.contract_path, fed.coordinator_address,
                         "SELECT MAX(age) FROM loans", timeout=120)
    monkeypatch.undo()  # the daemons keep serving: the next job runs
    res = submit_mpc_stats(identity, fed.buyer_dir, fed.contract_path, fed.coordinator_address,
                           "SELECT MAX(age) FROM loans", timeout=120)
    assert res.result["rows"][0][0] == _plain(fed, "SELECT MAX(age) FROM loans")[0]


def test_fedtrust_query_sends_median_as_an_mpc_job_and_job_result_fetches_it_again(fed, tmp_path):
    from typer.testing import CliRunner

    from fedtrust.cli.main import app

    common = ["--credentials", str(fed.buyer_dir), "--contract", str(fed.contract_path), "--coordinator",
              fed.coordinator_address]
    out = tmp_path / "r.json"
    run = CliRunner().invoke(app, ["query", "SELECT MEDIAN(age) AS m FROM loans", *common, "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "midpoint of a histogram bin" in run.output and "only you added the shares" in run.output
    result = json.loads(out.read_text())
    assert result["kind"] == "mpc-stats" and result["columns"] == ["m"]
    want = _plain(fed, "SELECT MEDIAN(age) FROM loans")[0]
    assert abs(result["rows"][0][0] - want) <= 82 / BINS
    again = CliRunner().invoke(app, ["job", "result", result["job_id"], "--credentials", str(fed.buyer_dir),
                                     "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output[again.output.index("{"):])["rows"] == result["rows"]


def test_a_coordinator_that_replays_a_finished_session_to_an_owner_is_refused(fed):
    """A second session of one job would draw fresh randomness (and, under [privacy], fresh noise) for one debit."""
    import grpc

    from fedtrust.transport.server import secure_channel
    from fedtrust.v1 import mpc_pb2, mpc_pb2_grpc

    identity = load_identity(fed.buyer_dir)
    res = submit_mpc_stats(identity, fed.buyer_dir, fed.contract_path, fed.coordinator_address,
                           "SELECT MAX(income) FROM loans", timeout=120)
    files = fed.buyer_dir / "jobs" / res.job_id
    header = mpc_pb2.MpcHeader(job_envelope=(files / "job.json").read_bytes(),
                               contract_envelope=fed.contract_path.read_bytes())
    node = "bank-a"
    debits = len(fed.nodes[node].runtime.store.debits())
    with secure_channel(f"127.0.0.1:{fed.nodes[node].port}", fed.coordinator.runtime.tls, ("node", node)) as ch:
        with pytest.raises(grpc.RpcError) as err:
            list(mpc_pb2_grpc.MpcServiceStub(ch).Session(iter([mpc_pb2.MpcIn(header=header)]), timeout=30))
    assert "already ran" in err.value.details()
    assert len(fed.nodes[node].runtime.store.debits()) == debits


def test_the_relay_caps_a_partys_frames_and_the_job_fails_naming_it(fed, monkeypatch):
    orig = mpc_job._Session.run

    def small_frames(self):
        self.max_frame = 64  # a seed frame (8 bytes + seal) passes; the first share frame does not
        return orig(self)
    monkeypatch.setattr(mpc_job._Session, "run", small_frames)
    identity = load_identity(fed.buyer_dir)
    with pytest.raises(Error, match="over the relay's limit of 64"):
        submit_mpc_stats(identity, fed.buyer_dir, fed.contract_path, fed.coordinator_address,
                         "SELECT MAX(age) FROM loans", timeout=120)


def test_a_contract_revoked_during_a_session_releases_no_output_and_the_job_names_the_revocation(fed, monkeypatch):
    from fedtrust.exchange.issuer import load_exchange, revoke
    from fedtrust.node import mpc_runtime

    contract = issue_signed_contract(fed.root, "analyst", "coord", [fed.root / "products" / f"{n}.json" for n in OWNERS],
                                     fed.root / "rules.toml", fed.root / "contract-revoked-mid-session.json",
                                     dealer=DEALER_NAME)
    digest = Envelope.from_json(contract.read_bytes()).digest
    compute, once = mpc_runtime.run_party, threading.Lock()

    def revoked_while_computing(*args, **kwargs):
        shares = compute(*args, **kwargs)
        # the exchange revokes the contract while the session runs; every node adopts the list (as its refresh does)
        with once:  # (each owner's session runs on its own thread)
            if not load_exchange(fed.exchange_dir).store.revocations():
                revoke(fed.exchange_dir, contract=digest, reason="the buyer broke the stated purpose")
            signed = load_exchange(fed.exchange_dir).revocation_list().to_json()
        for d in fed.nodes.values():
            d.runtime.revocations.offer(signed)
        return shares
    monkeypatch.setattr(mpc_runtime, "run_party", revoked_while_computing)
    with pytest.raises(Error, match="this contract was revoked by the exchange"):
        submit_mpc_stats(load_identity(fed.buyer_dir), fed.buyer_dir, contract, fed.coordinator_address,
                         "SELECT MAX(age) FROM loans", timeout=120)
    for name, d in fed.nodes.items():
        [debit] = d.runtime.store.debits(digest)  # spent when the session started, before its first frame
        assert d.runtime.store.lookup(digest, debit.job_id, debit.nonce, debit.job_digest) is None, name  # no output


def test_under_privacy_a_median_debits_epsilon_at_every_owner_first_and_min_is_refused(tmp_path):
    from decimal import Decimal

    from fedtrust.errors import PolicyViolation

    f = build_federation(tmp_path, {"bank-a": 120, "bank-b": 80}, min_group_size=5, mpc=True,
                         privacy={"epsilon_total": "2", "delta": "1e-6", "epsilon_per_query": "0.5"})
    f.start()
    try:
        identity = load_identity(f.buyer_dir)
        res = submit_mpc_stats(identity, f.buyer_dir, f.contract_path, f.coordinator_address,
                               "SELECT MEDIAN(income) FROM loans", timeout=120)
        assert {n: Decimal(e) for n, e in res.verified.epsilon_spent.items()} == {"bank-a": Decimal("0.5"),
                                                                                   "bank-b": Decimal("0.5")}
        assert all(a.dp for a in res.verified.attestations)
        for d in f.nodes.values():
            assert [Decimal(x.epsilon) for x in d.runtime.store.debits()] == [Decimal("0.5")]
        assert verify_receipt(f.exchange_dir, res.receipt, res.result).result_checked
        with pytest.raises(PolicyViolation, match="MIN and MAX are refused"):
            submit_mpc_stats(identity, f.buyer_dir, f.contract_path, f.coordinator_address,
                             "SELECT MIN(income) FROM loans", timeout=120)
        assert all(len(d.runtime.store.debits()) == 1 for d in f.nodes.values())
    finally:
        f.stop()

"""Vertical PSI jobs through real daemons (mutual TLS on 127.0.0.1:0): a bank and a telecom operator
intersect their customers on a salted phone hash. Exact size and row alignment against a plaintext
join; what every party received holds no key outside the intersection; refusals for each rule; a
coordinator that alters, swaps or replays the owners' messages is refused by the owners."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.query import load_contract, submit_query, tls_of
from fedtrust.buyer.vertical import submit_psi
from fedtrust.coordinator import vertical_job
from fedtrust.coordinator.vertical_client import psi_step_on_node
from fedtrust.demo.federation import build_federation, issue_signed_contract
from fedtrust.demo.vertical import VERTICAL_RULES, build_vertical_federation
from fedtrust.errors import ConfigError, InvalidInput, JobFailed, PolicyViolation, VerificationError
from fedtrust.exchange.verify import JOB_KINDS, verify_receipt
from fedtrust.privacy.psi import hash_to_point
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec, sign_job
from fedtrust.trust.receipts import ReceiptBundle
from fedtrust.trust.verify import verify_bundle
from fedtrust.trust.vertical import VerticalJob

SHARED = 120


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    root = tmp_path_factory.mktemp("vertical")
    f = build_vertical_federation(root, bank_rows=200, telco_rows=260, shared=SHARED, min_intersection=50)
    products = [root / "products" / "bank-node.json", root / "products" / "telco-node.json"]

    def contract(name: str, rules: str) -> Path:
        (root / f"{name}.toml").write_text(rules)
        return issue_signed_contract(root, "bank-analyst", "coord", products, root / f"{name}.toml",
                                     root / f"{name}.json", purpose="joint statistics of shared customers")

    base = dict(min_intersection=50, max_keys=100_000, max_jobs=20)
    f.extra = {
        "cap": contract("cap", VERTICAL_RULES.format(**{**base, "max_jobs": 1})),
        "big_min": contract("big_min", VERTICAL_RULES.format(**{**base, "min_intersection": SHARED + 1})),
        "small_max": contract("small_max", VERTICAL_RULES.format(**{**base, "max_keys": 100})),
        "dp": contract("dp", VERTICAL_RULES.format(**base) + '[privacy]\nepsilon_total = "1"\ndelta = "1e-6"\n'
                                                             'epsilon_per_query = "0.5"\n'),
    }
    with f:
        yield f


def _keys(path: Path) -> list[str]:
    with path.open() as fh:
        return [row["phone_key"] for row in csv.DictReader(fh)]


def _submit(fed, contract=None):
    ident = load_identity(fed.buyer_dir)
    return submit_psi(ident, fed.buyer_dir, contract or fed.contract_path, fed.coordinator_address, timeout=120)


def _state_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


def test_psi_gives_the_exact_size_and_aligned_rows_and_the_exchange_verifies_it(fed, monkeypatch):
    relayed: list[bytes] = []
    released: dict[tuple[str, int], bytes] = {}
    real = vertical_job.psi_step_on_node

    def recording(node, address, tls, job, contract, admissions, step, sealed, timeout):
        relayed.append(sealed)  # what the coordinator forwards to `node`
        out = real(node, address, tls, job, contract, admissions, step, sealed, timeout)
        relayed.append(out[0])  # and what it receives from it
        released[(node, step)] = out[0]
        return out

    monkeypatch.setattr(vertical_job, "psi_step_on_node", recording)
    out = _submit(fed)
    bank, telco = _keys(fed.data["bank-node"]), _keys(fed.data["telco-node"])
    common = set(bank) & set(telco)
    assert out.intersection_size == len(common) == SHARED
    # each owner kept its own rows in the intersection, in one common order: row i is the same customer at both
    job_id, cd = out.job_id, out.verified.contract_digest
    bank_rows = fed.nodes["bank-node"].psi.store.alignment(cd, job_id)
    telco_rows = fed.nodes["telco-node"].psi.store.alignment(cd, job_id)
    assert [bank[r] for r in bank_rows] == [telco[r] for r in telco_rows]
    assert set(bank[r] for r in bank_rows) == common
    # both owners attested the same size and the digests of the two messages each released
    assert {a.intersection_size for a in out.verified.attestations} == {SHARED}
    assert all(len(a.outputs) == 2 for a in out.verified.attestations)
    verdict = verify_receipt(fed.exchange_dir, out.receipt, out.result)
    assert "intersection size 120" in verdict.summary
    with pytest.raises(VerificationError, match="does not match the digest the buyer acknowledged"):
        verify_receipt(fed.exchange_dir, out.receipt, {**out.result, "rows": [[SHARED + 1]]})

    # inspection: nothing any party received or stored holds a key outside the intersection (nor its hash point)
    others = (set(bank) | set(telco)) - common
    ctx = out.verified.job_digest.encode()
    coordinator_saw = b"".join(relayed) + _state_bytes(fed.root / "state" / "coord")
    buyer_got = out.receipt.to_json() + _state_bytes(fed.buyer_dir / "jobs")
    assert len(relayed) == 12 and sum(1 for m in relayed if m) == 8  # 4 messages out, each relayed in once
    for key in others:
        point = hash_to_point(key.encode(), ctx)
        for what, seen in (("coordinator", coordinator_saw), ("buyer", buyer_got)):
            assert key.encode() not in seen and point not in seen, f"the {what} saw a key outside the intersection"
    # an owner never stores a key of the other owner's: the bank's state holds no telco-only key, and vice versa
    bank_state, telco_state = _state_bytes(fed.root / "state" / "bank-node"), _state_bytes(fed.root / "state" / "telco-node")
    assert not any(k.encode() in bank_state for k in set(telco) - common)
    assert not any(k.encode() in telco_state for k in set(bank) - common)
    # in the clear, both owners' step-2 answers would share the 120 doubly blinded values of the common keys, and
    # a coordinator could count them; sealed, the two answers share no 32-byte window at any offset
    a, b = released[("bank-node", 2)], released[("telco-node", 2)]
    windows = {a[i:i + 32] for i in range(len(a) - 31)}
    assert not any(b[i:i + 32] in windows for i in range(len(b) - 31))


def test_below_min_intersection_the_job_fails_before_any_attestation(fed):
    with pytest.raises(JobFailed, match="smaller than the contract's min_intersection"):
        _submit(fed, fed.extra["big_min"])
    cd = Envelope.from_json(fed.extra["big_min"].read_bytes()).digest
    for node in fed.nodes.values():
        assert node.runtime.store.releases(cd) == []  # no attestation was signed
        assert node.psi.store.db.read().execute("SELECT COUNT(*) FROM alignments WHERE contract_digest = ?",
                                                (cd,)).fetchone()[0] == 0


def test_cap_max_keys_and_privacy_refusals(fed):
    _submit(fed, fed.extra["cap"])
    with pytest.raises(JobFailed, match="psi jobs at this node and all are spent"):
        _submit(fed, fed.extra["cap"])
    with pytest.raises(JobFailed, match="larger than the contract's max_keys"):
        _submit(fed, fed.extra["small_max"])
    with pytest.raises(JobFailed, match="not differentially private"):
        _submit(fed, fed.extra["dp"])


def test_a_horizontal_contract_refuses_vertical_jobs(tmp_path):
    """The buyer's client, the coordinator and each node refuse a PSI job under a contract without [vertical]."""
    hfed = build_federation(tmp_path, {"bank-a": 40, "bank-b": 40})
    with hfed:
        ident = load_identity(hfed.buyer_dir)
        with pytest.raises(ConfigError, match="sells no vertical jobs"):
            submit_psi(ident, hfed.buyer_dir, hfed.contract_path, hfed.coordinator_address)
        raw = hfed.contract_path.read_bytes()
        contract, _ = load_contract(ident, hfed.contract_path)
        job = sign_job(JobSpec.create(contract, Envelope.from_json(raw).digest, VerticalJob("region")), ident.signer).to_json()
        client = CoordinatorClient(hfed.coordinator_address, tls_of(ident), "coord", 60)
        with pytest.raises(InvalidInput, match="sells no vertical jobs"):
            client.submit_vertical(job, raw)
        coord = load_identity(hfed.root / "credentials" / "coord")
        for name, node in hfed.nodes.items():  # a coordinator that skips its own check: each node refuses
            with pytest.raises(PolicyViolation, match="sells no vertical jobs"):
                psi_step_on_node(name, f"127.0.0.1:{node.port}", tls_of(coord), job, raw, [], 1, b"", 30)


@pytest.mark.parametrize("attack, match", [
    ("flip", "does not open for this job and step"),
    ("swap", "does not open for this job and step"),
    ("replay-step1-as-step2", "does not open for this job and step"),
])
def test_owners_refuse_messages_the_coordinator_altered(fed, monkeypatch, attack, match):
    real = vertical_job.psi_step_on_node
    sent: dict[tuple[str, int], bytes] = {}

    def hostile(node, address, tls, job, contract, admissions, step, sealed, timeout):
        if step == 2 and node == "telco-node":
            if attack == "flip":
                sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
            elif attack == "swap":  # telco gets its own step-1 message back instead of the bank's
                sealed = sent[("telco-node", 1)]
        if step == 3 and node == "telco-node" and attack == "replay-step1-as-step2":
            sealed = sent[("bank-node", 1)]
        out = real(node, address, tls, job, contract, admissions, step, sealed, timeout)
        sent[(node, step)] = out[0]
        return out

    monkeypatch.setattr(vertical_job, "psi_step_on_node", hostile)
    with pytest.raises(JobFailed, match=match):
        _submit(fed)


def test_the_buyer_refuses_a_receipt_whose_owners_disagree(fed):
    out = _submit(fed)
    bundle = out.receipt
    # a receipt whose attestations are from another job (both owners must attest this one)
    other = _submit(fed)
    mixed = ReceiptBundle(bundle.contract, bundle.job, (bundle.attestations[0], other.receipt.attestations[1]),
                          bundle.statement, None)
    with pytest.raises(VerificationError):
        verify_bundle(mixed, load_identity(fed.buyer_dir).exchange_key, JOB_KINDS)


def test_a_query_under_a_vertical_contract_or_a_job_on_another_key_is_refused(fed):
    ident = load_identity(fed.buyer_dir)
    with pytest.raises(ConfigError, match="sells no queries"):
        submit_query(ident, fed.buyer_dir, fed.contract_path, fed.coordinator_address,
                     "SELECT COUNT(*) FROM bank")
    raw = fed.contract_path.read_bytes()
    env = Envelope.from_json(raw)
    contract, _ = load_contract(ident, fed.contract_path)
    job = JobSpec.create(contract, env.digest, VerticalJob("segment"))  # a key the contract does not join on
    client = CoordinatorClient(fed.coordinator_address, tls_of(ident), "coord", 60)
    with pytest.raises(JobFailed, match="joins on 'segment' but the contract's join key is 'phone_key'"):
        client.submit_vertical(sign_job(job, ident.signer).to_json(), raw)


def test_cli_psi_and_job_result(fed, tmp_path):
    from typer.testing import CliRunner

    from fedtrust.cli.main import app

    common = ["--credentials", str(fed.buyer_dir)]
    r = CliRunner().invoke(app, ["psi", *common, "--contract", str(fed.contract_path), "--coordinator",
                                 fed.coordinator_address, "--out", str(tmp_path / "r.json"), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["rows"] == [[SHARED]] and got["columns"] == ["intersection_size"]
    again = CliRunner().invoke(app, ["job", "result", got["job_id"], *common, "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout[again.stdout.index("{"):])["rows"] == [[SHARED]]


def test_only_the_coordinator_may_call_a_node_and_only_the_buyer_the_coordinator(fed):
    from fedtrust.errors import Error

    buyer = load_identity(fed.buyer_dir)
    raw = fed.contract_path.read_bytes()
    contract, _ = load_contract(buyer, fed.contract_path)
    job = sign_job(JobSpec.create(contract, Envelope.from_json(raw).digest, VerticalJob("phone_key")), buyer.signer).to_json()
    node = fed.nodes["telco-node"]
    with pytest.raises(Error, match="buyer"):  # a valid buyer certificate is not the coordinator's
        psi_step_on_node("telco-node", f"127.0.0.1:{node.port}", tls_of(buyer), job, raw, [], 1, b"", 30)
    bank = load_identity(fed.root / "credentials" / "bank-node")
    client = CoordinatorClient(fed.coordinator_address, tls_of(bank), "coord", 30)
    with pytest.raises(Error, match="node"):  # an owner cannot submit jobs in the buyer's name
        client.submit_vertical(job, raw)

"""Joint statistics over PSI-aligned rows (issue 11 item 3): the SQL policy (`query.joint_sql`), the
`[vertical.joint]` rules, and the MPC program (`query.joint_program`) run in process by two CrypTen parties over
sealed links — exact against a plaintext DuckDB join, withholding small groups without revealing their size, and
a colluding coordinator + buyer seeing sealed frames and output shares only."""
from __future__ import annotations

import base64
import csv
import threading

import duckdb
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrust.demo.federation import issue_signed_contract
from fedtrust.demo.vertical import BANK_SCHEMA, TELCO_SCHEMA, VERTICAL_RULES, build_vertical_federation, write_customers
from fedtrust.errors import ConfigError, InvalidInput, PolicyViolation, VerificationError
from fedtrust.privacy import crypten_shim
from fedtrust.privacy.mpc.communicator import QueueLinks
from fedtrust.privacy.mpc.sealed_link import SealedLink
from fedtrust.query import joint_program as jp
from fedtrust.query.dataset import Dataset
from fedtrust.query.joint_checks import check_joint_job, plan_joint_job
from fedtrust.query.joint_sql import plan_joint
from fedtrust.trust.contracts import verify_contract
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec
from fedtrust.trust.rules import load_rules_toml
from fedtrust.trust.schema import load_schema_toml
from fedtrust.trust.vertical import JointJob, VerticalRules

NAMES = ["bank-node", "telco-node"]
MAX_ROWS = 10_000  # the rules' max_keys
OUTPUT_KEY = base64.b64encode(bytes(range(32))).decode()  # the buyer's per-job key (its form only, here)
JOINT = dict(aggregates=["COUNT", "SUM", "AVG"], group_by=["bank.segment"],
             filters=["bank.segment", "telco.tenure_months"], min_group_size=5)


def _rules(**joint) -> VerticalRules:
    return VerticalRules.from_dict(dict(
        key="phone_key", kinds=["psi", "joint"], min_intersection=5, max_keys=10_000, max_jobs=5,
        columns={"bank": ["segment", "income", "defaulted"], "telco": ["arpu", "tenure_months"]},
        joint={**JOINT, **joint}))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    bank, telco = write_customers(root, 600, 800, 400, 7)
    (root / "bank.toml").write_text(BANK_SCHEMA)
    (root / "telco.toml").write_text(TELCO_SCHEMA)
    schemas = [("bank", load_schema_toml(root / "bank.toml")), ("telco", load_schema_toml(root / "telco.toml"))]
    ds = {"bank": Dataset.open(bank, schemas[0][1]), "telco": Dataset.open(telco, schemas[1][1])}
    ref = duckdb.connect()
    for name, path in (("bank", bank), ("telco", telco)):
        ref.execute(f"CREATE TABLE {name} AS SELECT * FROM read_csv('{path}')")
    yield {"root": root, "schemas": schemas, "ds": ds, "rows": _align(ds), "ref": ref}
    for d in ds.values():
        d.close()


def _align(ds) -> dict[str, list[int]]:
    """The PSI's outcome in plaintext: each owner's row ids of the common keys, in one common order."""
    ids = {}
    for p, d in ds.items():
        rid, keys = d.join_keys("phone_key")
        ids[p] = dict(zip(keys, rid))
    common = sorted(set(ids["bank"]) & set(ids["telco"]))
    return {p: [ids[p][k] for k in common] for p in ds}


def _sealed_links(log: list | None = None):
    keys = [X25519PrivateKey.generate() for _ in NAMES]
    peers = {n: k.public_key() for n, k in zip(NAMES, keys)}
    q = QueueLinks(2, timeout_s=30)

    class Relay:  # what the coordinator sees and forwards
        def __init__(self, inner):
            self.inner = inner

        def send(self, dst, frame):
            if log is not None:
                log.append(frame)
            self.inner.send(dst, frame)

        def recv(self, src):
            return self.inner.recv(src)

    return [SealedLink(Relay(q.link(r)), session="joint-job", names=NAMES, rank=r, own=keys[r], peers=peers)
            for r in range(2)]


def _run(plan, schemas, ds, rows, m, log=None) -> list[torch.Tensor]:
    """Both owners' programs in threads over sealed links; returns each party's output share."""
    links, shares, errors = _sealed_links(log), [None, None], []
    n = len(rows[plan.products[0]])

    def party(rank):
        try:
            product = plan.products[rank]
            inputs = jp.local_tensors(plan, product, ds[product], rows[product], MAX_ROWS)
            with crypten_shim.party(rank, 2, links[rank]):
                shares[rank] = jp.compute_shares(plan, schemas, rank, n, m, inputs)["joint"]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=party, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    if errors:
        raise errors[0]
    return shares


def _answer(world, sql, m=5, **joint):
    plan = plan_joint(sql, _rules(min_group_size=m, **joint), world["schemas"])
    jp.check_capacity(plan, world["schemas"], MAX_ROWS, len(world["rows"]["bank"]))
    shares = _run(plan, world["schemas"], world["ds"], world["rows"], m)
    return plan, jp.finish(plan, world["schemas"], shares[0] + shares[1], MAX_ROWS), shares


def _close(a, b):
    return a == b if isinstance(a, (str, int)) and isinstance(b, (str, int)) else abs(a - b) <= 1e-6 * max(1, abs(b))


@pytest.mark.parametrize("sql", [
    "SELECT bank.segment, COUNT(*) AS n, AVG(telco.arpu) FROM bank JOIN telco USING (phone_key) GROUP BY bank.segment",
    "SELECT COUNT(*), SUM(bank.income), AVG(telco.tenure_months), COUNT(telco.arpu) FROM bank JOIN telco "
    "USING (phone_key)",
    "SELECT b.segment, SUM(t.arpu), AVG(b.defaulted) FROM bank AS b JOIN telco t ON b.phone_key = t.phone_key "
    "WHERE t.tenure_months >= 60 AND b.segment IN ('retail', 'private') GROUP BY b.segment",
])
def test_joint_statistics_equal_a_plaintext_join(world, sql):
    plan, result, _ = _answer(world, sql, m=1)
    expected = world["ref"].execute(plan.canonical_sql).fetchall()
    got = {r[0] if plan.group_by else (): r for r in result.rows}
    assert result.withheld_groups == sum(1 for r in result.rows if r[-1] is None)
    for row in expected:
        mine = got[row[0] if plan.group_by else ()]
        assert all(_close(a, b) for a, b in zip(mine, row)), (mine, row)
    # groups the join leaves empty are withheld (fewer than min_group_size rows), never shown as 0
    assert len(result.rows) == (3 if plan.group_by else 1)


def test_a_small_joined_group_is_withheld_and_its_size_is_not_in_the_output(world):
    sql = ("SELECT bank.segment, COUNT(*), AVG(telco.arpu) FROM bank JOIN telco USING (phone_key) "
           "WHERE telco.tenure_months >= 200 GROUP BY bank.segment")
    plan = plan_joint(sql, _rules(), world["schemas"])
    counts = {r[0]: r[1] for r in world["ref"].execute(plan.canonical_sql).fetchall()}
    m = sorted(counts.values())[1]  # the smallest group falls below the threshold, the others do not
    small = min(counts, key=counts.get)
    _, result, shares = _answer(world, sql, m=m)
    row = next(r for r in result.rows if r[0] == small)
    assert row[1:] == (None, None) and result.withheld_groups == 1
    segments = list(dict(world["schemas"])["bank"].column("segment").values)
    summed = (shares[0] + shares[1]).tolist()[segments.index(small)]
    assert summed[0] == 1 and all(v == 0 for v in summed[2:])  # the flag only: its count is 0 in the output


def test_a_column_with_few_non_null_values_in_a_group_is_withheld_alone(tmp_path):
    bank = tmp_path / "bank.csv"
    telco = tmp_path / "telco.csv"
    with bank.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone_key", "segment", "income", "defaulted"])
        for i in range(12):
            w.writerow([f"k{i:02d}", "retail", 1000 + i, 0])
    with telco.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone_key", "arpu", "tenure_months"])
        for i in range(12):
            w.writerow([f"k{i:02d}", 10.5 if i < 3 else "", i])  # arpu known for 3 joined rows only
    (tmp_path / "b.toml").write_text(BANK_SCHEMA)
    (tmp_path / "t.toml").write_text(TELCO_SCHEMA)
    schemas = [("bank", load_schema_toml(tmp_path / "b.toml")), ("telco", load_schema_toml(tmp_path / "t.toml"))]
    ds = {"bank": Dataset.open(bank, schemas[0][1]), "telco": Dataset.open(telco, schemas[1][1])}
    rows = _align(ds)
    sql = ("SELECT bank.segment, COUNT(*), AVG(telco.arpu), SUM(telco.tenure_months) FROM bank JOIN telco "
           "USING (phone_key) GROUP BY bank.segment")
    plan = plan_joint(sql, _rules(min_group_size=5), schemas)
    shares = _run(plan, schemas, ds, rows, 5)
    result = jp.finish(plan, schemas, shares[0] + shares[1], MAX_ROWS)
    assert result.rows[0] == ("retail", 12, None, 66) and result.withheld_columns == 1
    assert result.rows[1][1:] == (None, None, None)  # sme: no joined rows at all


def test_a_colluding_coordinator_and_buyer_learn_only_the_output(world):
    """The coordinator relays every frame (sealed: it cannot open one) and the buyer adds the output shares:
    each share alone is uniform, their sum is the output, and inputs that do not change the output (here, the
    values inside a withheld group) give the buyer exactly the same sum."""
    sql = ("SELECT bank.segment, COUNT(*), SUM(telco.arpu) FROM bank JOIN telco USING (phone_key) "
           "WHERE telco.tenure_months >= 200 GROUP BY bank.segment")
    plan = plan_joint(sql, _rules(), world["schemas"])
    expected = {r[0]: r[1] for r in world["ref"].execute(plan.canonical_sql).fetchall()}
    m = sorted(expected.values())[1]
    log: list[bytes] = []
    first = _run(plan, world["schemas"], world["ds"], world["rows"], m, log=log)
    # the relay's view: sealed frames only, no tensor header, none of the telco owner's quantized values
    values = jp.local_tensors(plan, "telco", world["ds"]["telco"], world["rows"]["telco"], MAX_ROWS)["values"]
    needles = {int(v).to_bytes(8, "little", signed=True) for v in values[:, 1].tolist() if v > 2 ** 20}
    assert log and not any(b'"dtype"' in f or any(x in f for x in needles) for f in log)
    # the buyer's view: two shares that look random and differ from run to run, adding up to the output
    second = _run(plan, world["schemas"], world["ds"], world["rows"], m)
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[1], second[1])
    assert torch.equal(first[0] + first[1], second[0] + second[1])
    # the withheld group's rows changed (fewer of them): the buyer's sum does not change at all
    small = min(expected, key=expected.get)
    bank_rows = world["ds"]["bank"].aligned_columns(world["rows"]["bank"], ("segment",), (), None).groups[:, 0]
    code = list(dict(world["schemas"])["bank"].column("segment").values).index(small)
    drop = next(i for i, c in enumerate(bank_rows.tolist()) if c == code)
    fewer = {p: r[:drop] + r[drop + 1:] for p, r in world["rows"].items()}
    third = _run(plan, world["schemas"], world["ds"], fewer, m)
    assert torch.equal(first[0] + first[1], third[0] + third[1])


def test_owners_with_different_alignments_refuse(world):
    plan = plan_joint("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key)", _rules(), world["schemas"])
    rows = dict(world["rows"])
    rows["telco"] = rows["telco"][:-1]
    links, errors = _sealed_links(), []

    def party(rank):
        p = plan.products[rank]
        try:
            with crypten_shim.party(rank, 2, links[rank]):
                jp.compute_shares(plan, world["schemas"], rank, len(rows[p]), 5,
                                  jp.local_tensors(plan, p, world["ds"][p], rows[p], MAX_ROWS))
        except InvalidInput as e:
            errors.append(str(e))

    threads = [threading.Thread(target=party, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert len(errors) == 2 and all("aligned rows differ in number" in e for e in errors)


@pytest.mark.parametrize("sql, match", [
    ("SELECT segment, COUNT(*) FROM bank JOIN telco USING (phone_key) GROUP BY segment", "must name its product"),
    ("SELECT COUNT(bank.phone_key) FROM bank JOIN telco USING (phone_key)", "is a join key"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key) WHERE bank.phone_key = 'x'", "is a join key"),
    ("SELECT telco.phone_key, COUNT(*) FROM bank JOIN telco USING (phone_key) GROUP BY telco.phone_key",
     "is a join key"),
    ("SELECT SUM(bank.income) FROM bank JOIN telco USING (phone_key)", None),
    ("SELECT MAX(telco.arpu) FROM bank JOIN telco USING (phone_key)", "MAX is not offered"),
    ("SELECT VAR_SAMP(telco.arpu) FROM bank JOIN telco USING (phone_key)", "VAR_SAMP is not allowed"),
    ("SELECT AVG(bank.segment) FROM bank JOIN telco USING (phone_key)", "is a category"),
    ("SELECT telco.tenure_months, COUNT(*) FROM bank JOIN telco USING (phone_key) GROUP BY telco.tenure_months",
     "may not be grouped by"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key) WHERE bank.income > 10", "may not be used in WHERE"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key) WHERE bank.segment = 'sme' OR "
     "telco.tenure_months > 3", "one product only"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key) WHERE bank.segment = 'gold'", "public domain"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key) WHERE telco.tenure_months > 9999", "public bounds"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key) WHERE (telco.tenure_months) > 9999", "public bounds"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key) WHERE ABS(telco.tenure_months) > 3",
     r"e\.g\. telco\.tenure_months >= 12\); functions and expressions on columns are not allowed"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key) WHERE COUNT(*) > 3", "aggregates are not allowed in WHERE"),
    ("SELECT COUNT(*) FROM bank LEFT JOIN telco USING (phone_key)", "LEFT JOIN is not allowed"),
    ("SELECT COUNT(*) FROM bank JOIN telco ON bank.phone_key = telco.arpu", "joined on the contract's key"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (arpu)", "joined on the contract's key"),
    ("SELECT COUNT(*) FROM bank, telco", "needs its condition on the contract's key"),
    ("SELECT COUNT(*) FROM bank JOIN bank USING (phone_key)", "joined with itself"),
    ("SELECT COUNT(*) FROM bank JOIN loans USING (phone_key)", "not a product of this contract"),
    ("SELECT COUNT(*) FROM bank", "join exactly the two products"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key) JOIN telco t2 USING (phone_key)",
     "join exactly the two products"),
    ("SELECT COUNT(*) FROM (SELECT * FROM bank) JOIN telco USING (phone_key)", "subqueries"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key) HAVING COUNT(*) > 3", "HAVING is not allowed"),
    ("SELECT telco.arpu FROM bank JOIN telco USING (phone_key)", "not grouped by"),
    ("SELECT bank.segment FROM bank JOIN telco USING (phone_key) GROUP BY bank.segment", "no aggregate"),
    ("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key); DROP TABLE bank", "exactly one SELECT"),
])
def test_joint_query_refusals_name_the_rule(world, sql, match):
    rules = _rules(aggregates=["COUNT", "AVG"])
    if match is None:
        with pytest.raises(PolicyViolation, match="aggregate SUM is not allowed"):
            plan_joint(sql, rules, world["schemas"])
        return
    with pytest.raises((PolicyViolation, InvalidInput), match=match):
        plan_joint(sql, rules, world["schemas"])


def test_a_contract_without_joint_refuses_joint_queries(world):
    psi_only = VerticalRules.from_dict(dict(key="phone_key", kinds=["psi"], min_intersection=5, max_keys=10,
                                            max_jobs=1, columns={"bank": ["segment"]}))
    for rules in (psi_only, None):
        with pytest.raises(PolicyViolation, match="sells no joint statistics"):
            plan_joint("SELECT COUNT(*) FROM bank JOIN telco USING (phone_key)", rules, world["schemas"])


def test_sums_that_could_wrap_the_ring_are_refused(world):
    plan = plan_joint("SELECT SUM(bank.income) FROM bank JOIN telco USING (phone_key)", _rules(), world["schemas"])
    jp.check_capacity(plan, world["schemas"], 10 ** 8, 10_000)
    income = dict(world["schemas"])["bank"].column("income")
    assert jp.value_scale(income, 10_000) == 10 ** 6 and jp.value_scale(income, 10 ** 8) == 100  # coarser as max_keys grows
    with pytest.raises(PolicyViolation, match="could not be exact in MPC"):
        jp.check_capacity(plan, world["schemas"], 10 ** 11, 10_000)
    with pytest.raises(PolicyViolation, match="exceed the contract's max_keys"):
        jp.check_capacity(plan, world["schemas"], 1000, 10_000)


@pytest.mark.parametrize("change, match", [
    ({"joint": None}, "no \\[vertical.joint\\] table"),
    ({"joint": {**JOINT, "aggregates": ["VAR_SAMP"]}}, "VAR_SAMP is not offered"),
    ({"joint": {**JOINT, "group_by": ["segment"]}}, "must name its product"),
    ({"joint": {**JOINT, "min_group_size": 0}}, "at least 1"),
    ({"joint": {**JOINT, "colour": 1}}, "unknown setting `colour`"),
    ({"kinds": ["psi"]}, "kinds do not include \"joint\""),
])
def test_joint_rules_refusals(change, match):
    d = dict(key="phone_key", kinds=["psi", "joint"], min_intersection=5, max_keys=10, max_jobs=1,
             columns={"bank": ["segment"]}, joint=JOINT)
    d.update(change)
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(ConfigError, match=match):
        VerticalRules.from_dict(d)


def test_joint_rules_are_checked_against_the_products(world):
    from fedtrust.trust.vertical import check_vertical_products

    class P:
        def __init__(self, dataset, schema):
            self.dataset, self.schema = dataset, schema

    products = [P(d, s) for d, s in world["schemas"]]
    check_vertical_products(_rules(), products)
    for joint, match in (({"group_by": ["bank.income"]}, "is not a category"),
                         ({"group_by": ["loans.segment"]}, "names no product"),
                         ({"filters": ["telco.churn"]}, "not in \\[vertical.columns\\]")):
        with pytest.raises(ConfigError, match=match):
            check_vertical_products(_rules(**joint), products)


def test_rules_toml_round_trips_and_psi_only_contracts_sign_the_same_json(tmp_path):
    base = ('[vertical]\nkey = "phone_key"\nkinds = ["psi"{extra}]\nmin_intersection = 5\nmax_keys = 10\n'
            'max_jobs = 2\n[vertical.columns]\nbank = ["segment"]\n')
    (tmp_path / "a.toml").write_text(base.format(extra=""))
    assert "joint" not in load_rules_toml(tmp_path / "a.toml").to_dict()["vertical"]
    (tmp_path / "b.toml").write_text(base.format(extra=', "joint"') + '[vertical.joint]\naggregates = ["COUNT"]\n'
                                     'group_by = ["bank.segment"]\nmin_group_size = 3\n')
    v = load_rules_toml(tmp_path / "b.toml").vertical
    assert v.joint.filters == ("bank.segment",) and VerticalRules.from_dict(v.to_dict()) == v


def test_a_joint_job_spec_names_its_sql_and_alignment():
    d = {"contract_digest": "a" * 64, "job_id": "j1", "nonce": "b" * 64, "kind": "joint", "coordinator": "coord",
         "participants": NAMES, "dataset": "bank", "created_at": "2026-01-01T00:00:00Z",
         "expires_at": "2026-01-01T01:00:00Z",
         "vertical": {"key": "phone_key", "sql": "SELECT COUNT(*) FROM bank JOIN telco USING (phone_key)",
                      "alignment": "psi-1"}, "output_key": OUTPUT_KEY}
    job = JobSpec.from_dict(d)
    assert job.payload == JointJob("phone_key", d["vertical"]["sql"], "psi-1", OUTPUT_KEY)
    assert JobSpec.from_dict(job.to_dict()) == job and job.is_mpc and job.output_key == OUTPUT_KEY
    with pytest.raises(InvalidInput, match="output_key must be a base64 raw 32-byte X25519 public key"):
        JobSpec.from_dict({**d, "output_key": "c2hvcnQ="})
    for bad in ({"key": "phone_key"}, {"key": "phone_key", "sql": "SELECT 1", "alignment": ""},
                {"key": "phone_key", "sql": "", "alignment": "psi-1"}):
        with pytest.raises(InvalidInput, match="joint job's vertical payload"):
            JobSpec.from_dict({**d, "vertical": bad})
    with pytest.raises(InvalidInput, match="names neither"):
        JobSpec.from_dict({**d, "kind": "psi"})


def test_the_registered_program_runs_with_the_dealer_and_equals_the_join(tmp_path):
    """The "joint" MPC program as the daemons run it (admission, each owner's inputs from its stored alignment,
    compute with the dealer's correlated randomness over sealed links, the buyer's finish)."""
    from types import SimpleNamespace

    from fedtrust.demo.vertical import plaintext_alignment
    from fedtrust.privacy.mpc.program import ProgramContext, program, run_in_process

    fed = build_vertical_federation(tmp_path, bank_rows=80, telco_rows=90, shared=70, min_intersection=10)
    env = Envelope.from_json(fed.contract_path.read_bytes())
    contract = verify_contract(env, load_identity(fed.buyer_dir).exchange_key)
    sql = ("SELECT bank.segment, COUNT(*) AS n, AVG(telco.arpu) AS arpu, SUM(bank.income) AS income FROM bank "
           "JOIN telco USING (phone_key) GROUP BY bank.segment")
    job = JobSpec.create(contract, env.digest, JointJob("phone_key", sql, "psi-1", OUTPUT_KEY))
    schemas = {h.credential.name: h.product.schema for h in contract.owners}
    rows = plaintext_alignment(fed.data, schemas)
    data = {}
    for h in contract.owners:
        name = h.credential.name
        held = SimpleNamespace(dataset=Dataset.open(fed.data[name], schemas[name]), product=h.product)
        data[name] = SimpleNamespace(held=held, alignment=lambda cd, j, r=rows[name]: r if j == "psi-1" else None)
    joint = program("joint")
    for r, name in enumerate(NAMES):
        assert joint.admit(ProgramContext(r, 2, tuple(NAMES), job, contract, data[name])).counts_as == "joint"
    run = run_in_process(joint, {n: None for n in NAMES}, job=job, contract=contract, data_by_party=data)
    assert run.dealt > 0  # the dealer, not party 0, made the correlated randomness
    ref = duckdb.connect()
    for name, path in fed.data.items():
        ref.execute(f"CREATE TABLE {name.split('-')[0]} AS SELECT * FROM read_csv('{path}')")
    plan = plan_joint_job(contract, job)
    got = {r[0]: r for r in run.result["rows"]}
    for row in ref.execute(plan.canonical_sql).fetchall():
        mine = got[row[0]]
        if row[1] < 10:  # below the demo contract's min_group_size
            assert mine[1:] == [None, None, None]
        else:
            assert mine[1] == row[1] and abs(mine[2] - row[2]) < 1e-6 and abs(mine[3] - row[3]) < 1e-4
    missing = JobSpec.create(contract, env.digest, JointJob("phone_key", sql, "psi-2", OUTPUT_KEY))
    with pytest.raises(PolicyViolation, match="holds no alignment of PSI job 'psi-2'"):
        joint.admit(ProgramContext(0, 2, tuple(NAMES), missing, contract, data["bank-node"]))
    for d in data.values():
        d.held.dataset.close()


def test_the_demo_contract_sells_joint_statistics_and_refuses_them_under_privacy(tmp_path):
    fed = build_vertical_federation(tmp_path, bank_rows=60, telco_rows=60, shared=50, min_intersection=10)
    key = load_identity(fed.buyer_dir).exchange_key
    products = [tmp_path / "products" / "bank-node.json", tmp_path / "products" / "telco-node.json"]
    (tmp_path / "dp.toml").write_text(VERTICAL_RULES.format(min_intersection=10, max_keys=1000, max_jobs=5)
                                      + '[privacy]\nepsilon_total = "1"\ndelta = "1e-6"\nepsilon_per_query = "0.5"\n')
    issue_signed_contract(tmp_path, "bank-analyst", "coord", products, tmp_path / "dp.toml", tmp_path / "dp.json",
                          purpose="joint statistics")
    sql = "SELECT bank.segment, AVG(telco.arpu) FROM bank JOIN telco USING (phone_key) GROUP BY bank.segment"
    for path, refusal in ((fed.contract_path, None), (tmp_path / "dp.json", "has \\[privacy\\]: joint statistics")):
        env = Envelope.from_json(path.read_bytes())
        contract = verify_contract(env, key)
        job = JobSpec.create(contract, env.digest, JointJob("phone_key", sql, "psi-1", OUTPUT_KEY))
        if refusal is None:
            assert plan_joint_job(contract, job).group_by == (("bank", "segment"),)
            check_joint_job(contract, job)
            bad = JobSpec.create(contract, env.digest, JointJob("phone_key", sql.replace("AVG", "MAX"), "psi-1",
                                                                OUTPUT_KEY))
            with pytest.raises(VerificationError, match="joint job breaks the contract's rules: function MAX"):
                check_joint_job(contract, bad)
            continue
        with pytest.raises(PolicyViolation, match=refusal):
            plan_joint_job(contract, job)
        with pytest.raises(VerificationError, match=refusal):
            check_joint_job(contract, job)

"""A vertical federation on localhost: a bank (labels, its own node) and a telecom operator (features)
whose customers overlap, joined on a salted hash of the phone number. Used by the tests and benchmarks.

The bank is also the buyer's organisation in the story, but fedtrust keeps roles apart: the buyer
(`bank-analyst`) holds buyer credentials, the bank's node holds node credentials.
"""
from __future__ import annotations

import csv
import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedtrust.demo.federation import DEALER_NAME, Federation, enroll, issue_signed_contract
from fedtrust.exchange.issuer import init_exchange, list_product
from fedtrust.query.dataset import file_digest
from fedtrust.trust.schema import Schema

BANK_SCHEMA = """
[columns.phone_key]
type = "key"
[columns.segment]
type = "category"
values = ["retail", "sme", "private"]
[columns.income]
type = "float"
min = 0
max = 300000
[columns.defaulted]
type = "int"
min = 0
max = 1
"""
TELCO_SCHEMA = """
[columns.phone_key]
type = "key"
[columns.arpu]
type = "float"
min = 0
max = 500
[columns.tenure_months]
type = "int"
min = 0
max = 240
"""
VERTICAL_RULES = """
[vertical]
key = "phone_key"
kinds = ["psi", "joint", "vertical-lr"]
min_intersection = {min_intersection}
max_keys = {max_keys}
max_jobs = {max_jobs}
[vertical.columns]
bank = ["segment", "income", "defaulted"]
telco = ["arpu", "tenure_months"]
[vertical.lr]
max_epochs = 20
max_features = 8
[vertical.joint]
aggregates = ["COUNT", "SUM", "AVG"]
group_by = ["bank.segment"]
filters = ["bank.segment", "telco.tenure_months"]
min_group_size = 10
"""
#: the salt the two owners agreed on for hashing phone numbers (never given to the exchange or the buyer)
SALT = b"demo-shared-salt"


def phone_key(phone: str) -> str:
    return hashlib.sha256(SALT + phone.encode()).hexdigest()[:32]


def write_customers(root: Path, bank_rows: int, telco_rows: int, shared: int, seed: int) -> tuple[Path, Path]:
    """bank.csv and telco.csv; exactly `shared` phone numbers appear in both, in shuffled orders.

    A customer's default depends on attributes at both owners (low income, the sme segment, low ARPU, short
    tenure raise it), so a model over the joined rows beats one over either owner's columns alone."""
    rng = random.Random(seed)
    phones = [f"138{n:08d}" for n in rng.sample(range(10**8), bank_rows + telco_rows - shared)]
    bank_phones, telco_phones = phones[:bank_rows], phones[bank_rows - shared:]
    rng.shuffle(telco_phones)
    people = {}
    for p in phones:
        income = min(round(rng.lognormvariate(10.5, 0.5), 2), 300000)
        segment = rng.choice(["retail", "retail", "sme", "private"])
        arpu, tenure = round(rng.uniform(5, 300), 2), rng.randint(0, 240)
        z = (1.2 - 2.5 * min(income / 80000, 2) + (0.8 if segment == "sme" else -0.6 if segment == "private" else 0)
             - 3.0 * arpu / 300 - 2.0 * tenure / 240)
        people[p] = (segment, income, arpu, tenure, int(rng.random() < 1 / (1 + math.exp(-z))))
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    bank, telco = data / "bank.csv", data / "telco.csv"
    with bank.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone_key", "segment", "income", "defaulted"])
        for p in bank_phones:
            segment, income, _, _, defaulted = people[p]
            w.writerow([phone_key(p), segment, income, defaulted])
    with telco.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone_key", "arpu", "tenure_months"])
        for p in telco_phones:
            _, _, arpu, tenure, _ = people[p]
            w.writerow([phone_key(p), arpu, tenure])
    return bank, telco


def build_vertical_federation(root: Path, *, bank_rows: int = 300, telco_rows: int = 400, shared: int = 200,
                              min_intersection: int = 50, max_keys: int = 100_000, max_jobs: int = 20,
                              seed: int = 11, extra_rules: str = "", mpc: bool = False) -> Federation:
    """Issue a vertical contract between `bank-node` (dataset bank) and `telco-node` (dataset telco); with `mpc`
    the contract names an MPC dealer (`DEALER_NAME`), whom `Federation.start()` starts too (joint statistics)."""
    root = Path(root)
    ex = root / "exchange"
    init_exchange(ex)
    creds = root / "credentials"
    enroll(ex, "buyer", "bank-analyst", [], creds / "bank-analyst")
    enroll(ex, "coordinator", "coord", ["127.0.0.1:7000"], creds / "coord")
    bank, telco = write_customers(root, bank_rows, telco_rows, shared, seed)
    (root / "bank.toml").write_text(BANK_SCHEMA)
    (root / "telco.toml").write_text(TELCO_SCHEMA)
    (root / "rules.toml").write_text(VERTICAL_RULES.format(min_intersection=min_intersection, max_keys=max_keys,
                                                           max_jobs=max_jobs) + extra_rules)
    configs, products = {}, []
    for i, (node, dataset, path) in enumerate((("bank-node", "bank", bank), ("telco-node", "telco", telco))):
        enroll(ex, "node", node, [f"127.0.0.1:{7101 + i}"], creds / node)
        product = root / "products" / f"{node}.json"
        product.parent.mkdir(parents=True, exist_ok=True)
        list_product(ex, node, dataset, root / f"{dataset}.toml", file_digest(path), product)
        products.append(product)
        cfg = root / "config" / f"{node}.toml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(f'[node]\nname = "{node}"\nlisten = "127.0.0.1:0"\ncredentials = "../credentials/{node}"\n'
                       f'state = "../state/{node}"\n\n[[datasets]]\nproduct = "../products/{node}.json"\n'
                       f'path = "../data/{path.name}"\n')
        configs[node] = cfg
    dealer_cfg = None
    if mpc:
        enroll(ex, "dealer", DEALER_NAME, ["127.0.0.1:7050"], creds / DEALER_NAME)
        dealer_cfg = root / "config" / f"{DEALER_NAME}.toml"
        dealer_cfg.write_text(f'[dealer]\nname = "{DEALER_NAME}"\nlisten = "127.0.0.1:0"\n'
                              f'credentials = "../credentials/{DEALER_NAME}"\n')
    contract = root / "contract.json"
    issue_signed_contract(root, "bank-analyst", "coord", products, root / "rules.toml", contract,
                          purpose="joint credit-risk statistics of shared customers",
                          dealer=DEALER_NAME if mpc else None)
    coord_cfg = root / "config" / "coord.toml"
    coord_cfg.write_text('[coordinator]\nname = "coord"\nlisten = "127.0.0.1:0"\ncredentials = "../credentials/coord"\n'
                         'state = "../state/coord"\nnode_timeout_s = 120\n')
    return Federation(root, ex, creds / "bank-analyst", contract, {"bank-node": bank, "telco-node": telco}, configs,
                      coord_cfg, "coord", dealer_config=dealer_cfg)


def plaintext_alignment(files: dict[str, Path], schemas: dict[str, Schema], key: str = "phone_key") -> dict[str, list[int]]:
    """What a PSI job leaves at each node, computed in plaintext (tests and benchmarks only): each node's row ids
    of the shared keys, in one common order (by a hash of the key, as PSI orders by the blinded key)."""
    from fedtrust.query.dataset import Dataset

    rows = {}
    for node, path in files.items():
        with Dataset.open(path, schemas[node]) as ds:
            ids, keys = ds.join_keys(key)
        rows[node] = dict(zip(keys, ids))
    common = sorted(set.intersection(*(set(r) for r in rows.values())), key=lambda k: hashlib.sha256(k).digest())
    return {node: [r[k] for k in common] for node, r in rows.items()}


#: the demo's vertical-lr job (the PSI job's id is filled in)
DEMO_VERTICAL_JOB = """\
[job]
kind = "vertical-lr"
alignment = "{alignment}"
features = ["bank.income", "bank.segment", "telco.arpu", "telco.tenure_months"]
label = "bank.defaulted"
epochs = 4
learning_rate = 1.0
batch_size = 50
"""


def central_reference(fed: Federation, contract, spec, alignment: dict[str, list[int]] | None = None
                      ) -> tuple[Any, Any, Any, Any]:
    """(plan, x, y, usable) of the joined rows as a trusted party holding both files would have them, in the order
    of `alignment` (default: `plaintext_alignment`) — the demo's and the tests' comparison only; nothing in
    fedtrust's job path calls this."""
    from fedtrust.query.dataset import Dataset
    from fedtrust.training.vertical_lr import local_inputs, plan_for

    schemas = {h.credential.name: h.product.schema for h in contract.owners}
    alignment = alignment or plaintext_alignment(fed.data, schemas)
    plan = plan_for(contract, contract.owner_names, spec)
    inputs = {}
    for node in contract.owner_names:
        with Dataset.open(fed.data[node], schemas[node]) as ds:
            inputs[node] = local_inputs(plan, node, ds, alignment[node])
    x = np.concatenate([inputs[b.party]["x"].numpy() for b in plan.blocks], axis=1)
    label = inputs[plan.label_party]
    return plan, x, label["y"].numpy(), label["usable"].numpy()


@dataclass(frozen=True)
class VerticalDemo:
    intersection_size: int  # attested by both owners
    joined_rows: int  # the plaintext join of the two files (comparison only)
    job_toml: str
    auc_vertical: float  # the delivered model file, through `fedtrust predict`'s path, on the joined rows
    auc_central: float
    auc_bank_only: float
    #: the joint statistic through the daemons (MPC with the dealer) and the plaintext join's answer
    joint_sql: str = ""
    joint: tuple[tuple, ...] = ()
    joint_plain: tuple[tuple, ...] = ()
    job_id: str = ""  # the vertical-lr job
    result: dict | None = None  # the buyer's result.json: weight per input, bias, model digest
    model_path: Path | None = None


#: the demo's joint statistic over the aligned rows
DEMO_JOINT_SQL = ("SELECT bank.segment, COUNT(*) AS customers, AVG(telco.arpu) AS avg_arpu, "
                  "AVG(bank.defaulted) AS default_rate FROM bank JOIN telco USING (phone_key) GROUP BY bank.segment")


def joint_plaintext(fed: Federation, canonical_sql: str) -> list[tuple]:
    """The same query over the plaintext join of the two files (tests and the demo's comparison only)."""
    import duckdb

    con = duckdb.connect()
    for node, path in fed.data.items():
        con.execute(f"CREATE TABLE {node.split('-')[0]} AS SELECT * FROM read_csv('{path}')")
    return con.execute(canonical_sql).fetchall()


def run_vertical(root: Path) -> VerticalDemo:
    """The demo's vertical story through the daemons: a PSI job, a joint statistic over its alignment next to the
    plaintext join's answer, then a vertical-lr job on the alignment (MPC between the owners and the dealer,
    relayed by the coordinator, the model's shares sealed to the buyer) next to central training (AUC on the
    joined rows)."""
    from fedtrust.buyer.joint import submit_joint
    from fedtrust.buyer.vertical import submit_psi
    from fedtrust.buyer.vertical_lr import submit_vertical_lr
    from fedtrust.demo.central import auc_of
    from fedtrust.node.vertical_store import VerticalStore
    from fedtrust.query.joint_checks import plan_joint_job
    from fedtrust.training import vertical_lr as vlr
    from fedtrust.training.predict import predict_rows
    from fedtrust.trust.credentials import load_identity
    from fedtrust.trust.vertical_lr import load_vertical_lr_toml

    fed = build_vertical_federation(root, mpc=True)
    buyer = load_identity(fed.buyer_dir)
    with fed:
        psi = submit_psi(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address)
        contract = psi.verified.contract
        joint = submit_joint(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, DEMO_JOINT_SQL,
                             psi.job_id)
        joint_plain = joint_plaintext(fed, plan_joint_job(contract, joint.verified.job).canonical_sql)
        job = root / "vertical-job.toml"
        job.write_text(DEMO_VERTICAL_JOB.format(alignment=psi.job_id))
        spec = load_vertical_lr_toml(job)
        out = submit_vertical_lr(buyer, fed.buyer_dir, fed.contract_path, fed.coordinator_address, spec)
        # the central party joins the same rows in the same order (the owners' stored PSI alignment), so the two
        # models differ only by what MPC changes (fixed point, CrypTen's sigmoid)
        aligned = {n: VerticalStore(d.runtime.config.state).alignment(psi.verified.contract_digest, psi.job_id) or []
                   for n, d in fed.nodes.items()}
    model_path = root / "vertical-model.safetensors"
    model_path.write_bytes(out.model)
    plan, x, y, usable = central_reference(fed, contract, spec, aligned)
    seed = vlr.order_seed(out.mpc.verified.job.nonce)
    central = vlr.fit_plain(x, y, usable, spec, seed)
    width = plan.blocks[0].width
    bank = vlr.fit_plain(x[:, :width], y, usable, spec, seed)
    joined = root / "joined.csv"  # the rows as a buyer holding every feature would have them
    write_joined(fed, contract, joined, aligned)
    scores = predict_rows(out.model, joined).scores
    return VerticalDemo(psi.intersection_size, len(y), job.read_text(), auc_of(y, scores),
                        auc_of(y, vlr.predict_proba(central.weight, central.bias, x)),
                        auc_of(y, vlr.predict_proba(bank.weight, bank.bias, x[:, :width])),
                        DEMO_JOINT_SQL, tuple(tuple(r) for r in joint.result["rows"]),
                        tuple(sorted(joint_plain, key=lambda r: str(r[0]))), out.job_id, out.mpc.result, model_path)


def write_joined(fed: Federation, contract, out: Path, alignment: dict[str, list[int]]) -> None:
    """The joined rows of both files in `alignment`'s order as one CSV with product-qualified column names."""
    from fedtrust.query.dataset import Dataset

    schemas = {h.credential.name: h.product.schema for h in contract.owners}
    cols = {}
    for h in contract.owners:
        node = h.credential.name
        names = [c.name for c in h.product.schema.columns if c.type != "key"]
        with Dataset.open(fed.data[node], schemas[node]) as ds:
            got = ds.columns_at(names, alignment[node])
        cols.update({f"{h.product.dataset}.{n}": got[n] for n in names})
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(cols))
        w.writerows(zip(*[["" if np.ma.is_masked(v) else v for v in c] for c in cols.values()]))

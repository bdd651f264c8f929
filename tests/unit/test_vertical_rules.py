"""`[vertical]` rules and vertical contracts: products joined on a key column that is never released."""
from __future__ import annotations

from pathlib import Path

import pytest

from fedtrust.demo.federation import enroll
from fedtrust.demo.vertical import TELCO_SCHEMA as TELCO
from fedtrust.errors import ConfigError, PolicyViolation
from fedtrust.exchange import issuer
from fedtrust.query.sql import plan_query
from fedtrust.trust.canonical import sha256_hex
from fedtrust.trust.contracts import verify_contract
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.rules import QueryRules, load_rules_toml
from fedtrust.trust.schema import load_schema_toml

BANK = """
[columns.phone_key]
type = "key"
[columns.segment]
type = "category"
values = ["retail", "sme"]
[columns.defaulted]
type = "int"
min = 0
max = 1
"""
VERTICAL = """
[vertical]
key = "phone_key"
kinds = ["psi"]
min_intersection = 10
max_keys = 100000
max_jobs = 5
[vertical.columns]
bank = ["segment", "defaulted"]
telco = ["arpu"]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vworld")
    d = root / "exchange"
    issuer.init_exchange(d)
    enroll(d, "buyer", "bank-analyst", [], root / "buyer")
    enroll(d, "coordinator", "coord", ["127.0.0.1:7000"], root / "coord")
    enroll(d, "node", "bank-node", ["127.0.0.1:7101"], root / "bank-node")
    enroll(d, "node", "telco-node", ["127.0.0.1:7102"], root / "telco-node")
    (root / "bank.toml").write_text(BANK)
    (root / "telco.toml").write_text(TELCO)
    issuer.list_product(d, "bank-node", "bank", root / "bank.toml", sha256_hex(b"b"), root / "bank.json")
    issuer.list_product(d, "telco-node", "telco", root / "telco.toml", sha256_hex(b"t"), root / "telco.json")
    return root


def _issue(world: Path, tmp_path: Path, rules: str, products=("bank.json", "telco.json")):
    (tmp_path / "rules.toml").write_text(rules)
    return issuer.issue_contract(world / "exchange", buyer="bank-analyst", coordinator="coord",
                                 product_paths=[world / p for p in products], rules_path=tmp_path / "rules.toml",
                                 out_path=tmp_path / "contract.json", purpose="credit scoring")


def test_a_vertical_contract_joins_two_products_and_verifies(world, tmp_path):
    c = _issue(world, tmp_path, VERTICAL)
    env = Envelope.from_json((tmp_path / "contract.json").read_bytes())
    verified = verify_contract(env, issuer.load_exchange(world / "exchange").store.exchange_key)
    v = verified.rules.vertical
    assert verified == c and v.key == "phone_key" and v.kinds == ("psi",)
    assert (v.min_intersection, v.max_keys, v.max_jobs) == (10, 100000, 5)
    assert v.usable("bank") == ("segment", "defaulted") and v.usable("telco") == ("arpu",)
    assert {h.product.dataset for h in c.owners} == {"bank", "telco"}


def test_horizontal_rules_sign_no_vertical_key(tmp_path):
    (tmp_path / "r.toml").write_text('[query]\naggregates=["COUNT"]\nmax_queries=3\n')
    assert "vertical" not in load_rules_toml(tmp_path / "r.toml").to_dict()


@pytest.mark.parametrize("change, match", [
    ("[query]\naggregates=[\"COUNT\"]\nmax_queries=3\n" + VERTICAL, "mixes \\[vertical\\] with \\[query\\]"),
    (VERTICAL.replace('key = "phone_key"', 'key = "msisdn"'), "no column 'msisdn' of type \"key\""),
    (VERTICAL.replace('key = "phone_key"', 'key = "arpu"').replace('telco = ["arpu"]', 'telco = []'),
     "product 'bank' has no column 'arpu'"),
    (VERTICAL.replace('telco = ["arpu"]', 'telco = ["churn"]'), "column 'churn' is not in the schema of product 'telco'"),
    (VERTICAL.replace('telco = ["arpu"]', 'telco = ["arpu"]\ninsurer = ["x"]'), "names 'insurer', which is not a product"),
    (VERTICAL.replace('telco = ["arpu"]', 'telco = ["arpu", "phone_key"]'), "lists the join key"),
    (VERTICAL.replace("min_intersection = 10", "min_intersection = 1000000"), "exceeds `max_keys`"),
    (VERTICAL.replace('kinds = ["psi"]', 'kinds = ["gossip"]'), "kind 'gossip' is not offered"),
    (VERTICAL.replace("max_jobs = 5", "max_jobs = 0"), "`max_jobs` must be at least 1"),
    (VERTICAL.replace("max_jobs = 5", 'max_jobs = "5"'), "needs `max_jobs` as a whole number"),
    (VERTICAL.replace("max_jobs = 5", "max_jobs = 5\ncolour = 1"), "unknown setting `colour`"),
])
def test_vertical_rules_refusals(world, tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        _issue(world, tmp_path, change)


def test_a_vertical_contract_needs_two_distinct_datasets(world, tmp_path):
    d = world / "exchange"
    enroll(d, "node", "bank-node-2", ["127.0.0.1:7103"], tmp_path / "b2")
    issuer.list_product(d, "bank-node-2", "bank", world / "bank.toml", sha256_hex(b"b2"), tmp_path / "bank2.json")
    with pytest.raises(ConfigError, match="must name different datasets"):
        _issue(world, tmp_path, VERTICAL, products=("bank.json", str(tmp_path / "bank2.json")))


def test_the_key_column_is_never_aggregated_filtered_or_grouped(world, tmp_path):
    schema = load_schema_toml(world / "bank.toml")
    # rules a node holds that (wrongly) list the key: the SQL check still refuses it
    rules = QueryRules(("COUNT",), ("phone_key",), ("segment", "phone_key"), ("segment", "phone_key"), 1, 5)
    for sql in ("SELECT COUNT(*) FROM bank WHERE phone_key = 'abc'",
                "SELECT phone_key, COUNT(*) FROM bank GROUP BY phone_key",
                "SELECT COUNT(phone_key) FROM bank"):
        with pytest.raises(PolicyViolation, match="join key"):
            plan_query(sql, rules, schema, "bank")
    (tmp_path / "r.toml").write_text('[query]\naggregates=["COUNT"]\nfilters=["phone_key"]\nmax_queries=3\n')
    (tmp_path / "s.toml").write_text(BANK)
    issuer.list_product(world / "exchange", "telco-node", "bank", tmp_path / "s.toml", sha256_hex(b"x"),
                        tmp_path / "p.json")
    with pytest.raises(ConfigError, match="'phone_key' is a join key"):
        _issue(world, tmp_path, (tmp_path / "r.toml").read_text(), products=("bank.json", str(tmp_path / "p.json")))

"""Differential privacy of query releases: the sampler, the stated scales, and attacks on them.

These tests run the node's real release code (DuckDB over a real file, the
noise, the signed limb encoding) and the buyer's real decoding, without the
encryption, which changes nothing about what the buyer learns.
"""
from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtrust.privacy.dp import discrete_laplace, laplace_variance, noise_plan
from fedtrust.privacy.params import PLAIN_MODULUS
from fedtrust.query.dataset import Dataset
from fedtrust.query.layout import Layout
from fedtrust.query.noisy import NoisyStats, add_noise, decode_noisy, encode_signed
from fedtrust.query.sql import plan_query
from fedtrust.trust.rules import QueryRules
from fedtrust.trust.schema import Column, Schema

SCHEMA = Schema((
    Column("region", "category", values=("north", "south")),
    Column("age", "int", 18, 100),
    Column("income", "float", 0, 500000),
))
RULES = QueryRules(("COUNT", "SUM", "AVG", "VAR_SAMP", "STDDEV_SAMP"), ("age", "income"), ("region", "age"),
                   ("region",), 5, 1000)


@pytest.mark.parametrize("scale", [Fraction(1, 3), Fraction(2), Fraction(25, 2), Fraction(10**12)])
def test_discrete_laplace_matches_its_stated_variance(scale):
    xs = np.array([discrete_laplace(scale) for _ in range(6000)], dtype=float)
    var = laplace_variance(scale)
    assert abs(xs.mean()) < 5 * math.sqrt(var / len(xs))
    assert 0.85 < xs.var() / var < 1.15


def test_discrete_laplace_has_the_stated_shape():
    # P(Z = 0) = (1 − a)/(1 + a) with a = e^{−1/b}
    b = Fraction(3, 2)
    xs = [discrete_laplace(b) for _ in range(20000)]
    a = math.exp(-1 / float(b))
    p0 = (1 - a) / (1 + a)
    assert abs(xs.count(0) / len(xs) - p0) < 4 * math.sqrt(p0 * (1 - p0) / len(xs))
    assert abs(xs.count(1) / len(xs) - p0 * a) < 4 * math.sqrt(p0 * a / len(xs))


def _release_and_decode(layout, stats, noise, parties=1, min_group=5):
    vec = np.zeros(layout.length, dtype=np.uint64)
    for _ in range(parties):  # several nodes' releases summed slot by slot (masks would cancel)
        vec = (vec + encode_signed(layout, add_noise(layout, stats, noise, min_group))) % PLAIN_MODULUS
    return vec


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("dp") / "people.csv"
    n = 400
    lines = ["region,age,income"]
    for i in range(n):
        lines.append(f"{'north' if i % 3 else 'south'},{rng.integers(18, 90)},{rng.uniform(1e4, 2e5):.2f}")
    lines.append("north,99,499000.00")  # the one person of age 99
    path.write_text("\n".join(lines) + "\n")
    return Dataset.open(path, SCHEMA)


def test_stated_noise_scale_matches_the_empirical_noise_of_repeated_answers(people):
    sql = "SELECT region, COUNT(*) AS n, SUM(age) AS s FROM loans GROUP BY region"
    plan = plan_query(sql, RULES, SCHEMA, "loans")
    layout = Layout.from_plan(plan, SCHEMA)
    stats = people.aggregate(plan, layout)
    noise = noise_plan(layout, Decimal("1"), 5)
    counts, sums = [], []
    for _ in range(1500):
        res = decode_noisy(plan, layout, _release_and_decode(layout, stats, noise, parties=2), noise, 2)
        row = [r for r in res.table.rows if r[0] == "north"][0]
        counts.append(row[1])
        sums.append(row[2])
    true_n = 2 * stats[("north",)].rows  # two releases of the same rows, as two nodes holding them
    # count: the sum of two discrete Laplace draws at the stated scale
    expected_var = 2 * laplace_variance(noise.rows)
    assert abs(np.mean(counts) - true_n) < 5 * math.sqrt(expected_var / len(counts))
    assert 0.75 < np.var(counts) / expected_var < 1.25  # ±4σ of the variance estimate at 1500 draws
    # the buyer's stated standard error is that of the noise
    assert 0.8 < res.stderr[0][1] / math.sqrt(expected_var) < 1.2


def _attack(people, sql_with, sql_without, trials=2500):
    """Release COUNT under filters that differ by one person; return the two output samples."""
    outs = []
    for sql in (sql_with, sql_without):
        plan = plan_query(sql, RULES, SCHEMA, "loans")
        layout = Layout.from_plan(plan, SCHEMA)
        stats = people.aggregate(plan, layout)
        noise = noise_plan(layout, Decimal("1"), 5)
        outs.append(np.array([
            decode_noisy(plan, layout, _release_and_decode(layout, stats, noise), noise, 1,
                         rng=np.random.default_rng(0)).table.rows[0][0]
            for _ in range(trials)
        ]))
    return outs


def test_differencing_attack_learns_no_more_than_epsilon(people):
    """Two queries whose filters differ by exactly one person (the only one aged 99)."""
    with_p, without_p = _attack(
        people,
        "SELECT COUNT(*) AS n FROM loans WHERE age >= 60",
        "SELECT COUNT(*) AS n FROM loans WHERE age >= 60 AND age < 99",
    )
    eps = 1.0
    # the best single-release test an attacker has: guess "present" above the midpoint
    mid = (np.median(with_p) + np.median(without_p)) / 2
    accuracy = (np.mean(with_p > mid) + np.mean(without_p <= mid)) / 2
    assert accuracy <= math.exp(eps) / (1 + math.exp(eps)) + 0.03
    # likelihood ratios of well-populated outcomes stay within e^ε (with sampling slack)
    values, counts_with = np.unique(with_p, return_counts=True)
    counts_without = np.array([np.sum(without_p == v) for v in values])
    ok = (counts_with >= 80) & (counts_without >= 80)
    assert ok.sum() >= 3
    ratios = counts_with[ok] / counts_without[ok]
    assert np.all(ratios < math.exp(eps) * 1.35) and np.all(ratios > math.exp(-eps) / 1.35)


def test_derived_statistics_are_clamped_to_their_valid_range(people):
    sql = "SELECT region, AVG(age) AS a, VAR_SAMP(income) AS v, STDDEV_SAMP(age) AS sd, COUNT(*) AS n FROM loans " \
          "WHERE age > 95 GROUP BY region"  # tiny groups: noise dominates
    plan = plan_query(sql, RULES, SCHEMA, "loans")
    layout = Layout.from_plan(plan, SCHEMA)
    stats = people.aggregate(plan, layout)
    noise = noise_plan(layout, Decimal("0.1"), 5)
    for _ in range(200):
        res = decode_noisy(plan, layout, _release_and_decode(layout, stats, noise), noise, 1)
        for _, a, v, sd, n in res.table.rows:
            assert n >= 0
            assert a is None or 18 <= a <= 100
            assert v is None or v >= 0
            assert sd is None or sd >= 0


def test_every_slot_carries_noise_so_withheld_and_absent_groups_look_alike(people):
    """A node holding no `south` rows at all releases a south group as noisy as a populated one."""
    sql = "SELECT region, COUNT(*) AS n FROM loans WHERE region = 'north' GROUP BY region"
    plan = plan_query(sql, RULES, SCHEMA, "loans")
    layout = Layout.from_plan(plan, SCHEMA)
    stats = people.aggregate(plan, layout)
    assert ("south",) not in stats or stats[("south",)].rows == 0
    noise = noise_plan(layout, Decimal("1"), 1)  # min_group_size 1: no threshold share
    south = layout.group_index(("south",))
    zeros = 0
    for _ in range(300):
        zeros += add_noise(layout, stats, noise, 1).groups[("south",)].rows == 0
    p0 = (1 - math.exp(-1 / float(noise.rows))) / (1 + math.exp(-1 / float(noise.rows)))
    assert zeros / 300 < p0 + 0.1  # not always zero: the absent group is noised too
    assert south >= 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**68), 2**68), min_size=1, max_size=6))
def test_signed_limbs_sum_back_exactly(values):
    """Noisy counts (3 limbs of two's complement, |count| < 2^69 per node) sum back exactly."""
    plan = plan_query("SELECT COUNT(*) AS n FROM loans", RULES, SCHEMA, "loans")
    layout = Layout.from_plan(plan, SCHEMA)
    from fedtrust.query.encoding import GroupStats
    from fedtrust.query.layout import COUNT_LIMBS, join_limbs
    from fedtrust.query.noisy import _signed

    vec = np.zeros(layout.length, dtype=np.uint64)
    for v in values:
        vec = (vec + encode_signed(layout, NoisyStats({(): GroupStats(v, {})}, set(), set()))) % PLAIN_MODULUS
    assert _signed(join_limbs([int(x) for x in vec[1:1 + COUNT_LIMBS]]), COUNT_LIMBS) == sum(values)


def test_a_column_with_one_value_in_a_big_group_is_withheld_by_its_noisy_count(tmp_path):
    """Under [privacy] the per-column rule uses the column's noisy non-null count (no extra ε share)."""
    path = tmp_path / "sparse.csv"
    path.write_text("region,age,income\n" + "".join(f"north,{20 + i}," + ("123456.78" if i == 0 else "") + "\n"
                                                       for i in range(60)))
    plan = plan_query("SELECT region, COUNT(*) AS n, SUM(income) AS s FROM loans GROUP BY region", RULES, SCHEMA,
                      "loans")
    layout = Layout.from_plan(plan, SCHEMA)
    with Dataset.open(path, SCHEMA) as ds:
        stats = ds.aggregate(plan, layout)
    noise = noise_plan(layout, Decimal("1"), 5)
    assert noise.shares == 1 + 1 + 2  # threshold count, row count, income's count and Σq: unchanged by the rule
    trials = 300
    releases = [add_noise(layout, stats, noise, 5) for _ in range(trials)]
    flagged = sum((("north",), "income") in r.withheld_columns for r in releases)
    # P(1 + Lap(b=4) < 5) = 1 − ½·e^{−1} ≈ 0.82 for the discrete law; far from "never" (the old behaviour)
    assert flagged / trials > 0.7
    assert all(("north",) not in r.withheld for r in releases)  # 60 rows: the group itself is released
    res = decode_noisy(plan, layout, np.asarray(encode_signed(layout, releases[0])) % PLAIN_MODULUS, noise, 1)
    assert ((("north",), "income", 1) in res.table.withheld_columns) == ((("north",), "income") in
                                                                        releases[0].withheld_columns)
    # a column with plenty of values is (practically) never withheld
    full = {k: type(v)(v.rows, {"income": type(v.columns["income"])(60, 0, 0)}) for k, v in stats.items()}
    assert not any((("north",), "income") in add_noise(layout, full, noise, 5).withheld_columns for _ in range(100))

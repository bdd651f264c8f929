"""MIN / MAX / MEDIAN / QUANTILE_CONT as an MPC program (query.mpc_stats), in process with a dealer: exact extrema
and quantiles within one bin against DuckDB over the same files; withheld owners; refusals per rule."""
from __future__ import annotations

import types

import duckdb
import pytest

from fedtrust.demo.data import SCHEMA_TOML, write_loans
from fedtrust.demo.federation import MIXES
from fedtrust.errors import PolicyViolation
from fedtrust.privacy.mpc.program import run_in_process
from fedtrust.query import mpc_stats
from fedtrust.query.dataset import Dataset
from fedtrust.query.sql import plan_query
from fedtrust.trust.rules import PrivacyRules, QueryRules
from fedtrust.trust.schema import load_schema_toml

MPC_AGGS = ("MIN", "MAX", "MEDIAN", "QUANTILE")


def _contract(schema, aggregates=MPC_AGGS, privacy=None, dealer=True, min_group_size=10):
    rules = types.SimpleNamespace(query=QueryRules(aggregates, ("income", "age"), ("region", "age"), ("region",),
                                                   min_group_size, 100),
                                  privacy=privacy, vertical=None)
    owner = types.SimpleNamespace(product=types.SimpleNamespace(schema=schema))
    return types.SimpleNamespace(rules=rules, dealer=object() if dealer else None, owners=[owner], dataset="loans")


@pytest.fixture(scope="module")
def owners(tmp_path_factory):
    d = tmp_path_factory.mktemp("stats")
    (d / "s.toml").write_text(SCHEMA_TOML)
    schema = load_schema_toml(d / "s.toml")
    sizes = {"a": 300, "b": 200, "c": 8}  # c has fewer rows than min_group_size: it withholds
    paths = {n: write_loans(d / f"{n}.csv", rows, 7 + i, MIXES[i], 0) for i, (n, rows) in enumerate(sizes.items())}
    return schema, paths


def _run(owners, sql, **kw):
    schema, paths = owners
    contract = _contract(schema, **kw)
    job = types.SimpleNamespace(payload_as=lambda cls, where: mpc_stats.MpcStatsJob(sql, ""),
                                participants=tuple(sorted(paths)))
    data = {n: types.SimpleNamespace(held=types.SimpleNamespace(dataset=Dataset.open(p, schema)))
            for n, p in paths.items()}
    return run_in_process(mpc_stats.PROGRAM, {n: None for n in paths}, job=job, contract=contract,
                          data_by_party=data, timeout_s=120)


def _plain(paths, sql):
    files = ", ".join(f"'{p}'" for p in paths)
    return duckdb.connect().execute(sql.replace("FROM loans", f"FROM read_csv([{files}])")).fetchone()


def test_exact_extrema_and_quantiles_within_one_bin_and_a_small_owner_withholds(owners):
    schema, paths = owners
    sql = ("SELECT MIN(income), MAX(age), MEDIAN(income), QUANTILE_CONT(age, 0.9) FROM loans "
           "WHERE region <> 'south'")
    run = _run(owners, sql)
    got = run.result["rows"][0]
    want = _plain([paths["a"], paths["b"]], sql)  # owner c has under min_group_size values: withheld
    assert got[0] == pytest.approx(want[0], abs=1e-3) and got[1] == want[1]
    assert abs(got[2] - want[2]) <= 500000 / mpc_stats.BINS
    assert abs(got[3] - want[3]) <= 82 / mpc_stats.BINS
    assert run.dealt > 0


def test_no_rows_gives_null(owners):
    run = _run(owners, "SELECT MIN(age), MEDIAN(age) FROM loans WHERE age < 18")
    assert run.result["rows"] == [[None, None]]


@pytest.mark.parametrize("sql,kw,match", [
    ("SELECT MIN(income) FROM loans", {"dealer": False}, "names no MPC dealer"),
    ("SELECT MAX(income) FROM loans", {"privacy": PrivacyRules.from_dict({"epsilon_total": "2", "delta": "1e-6",
                                                                           "epsilon_per_query": "0.5"})},
     "MIN and MAX are refused"),
    ("SELECT MIN(income), COUNT(*) FROM loans", {"aggregates": MPC_AGGS + ("COUNT",)}, "as a separate query"),
    ("SELECT region, MIN(income) FROM loans GROUP BY region", {}, "GROUP BY is not supported"),
    ("SELECT QUANTILE_CONT(income, 1.5) FROM loans", {}, "strictly between 0 and 1"),
    ("SELECT QUANTILE_CONT(income, 0.12345) FROM loans", {}, "at most 4 decimal places"),
    ("SELECT QUANTILE_CONT(income, [0.1, 0.5]) FROM loans", {}, "one literal fraction"),
    ("SELECT MEDIAN(income) FROM loans", {"aggregates": ("MIN", "MAX")}, "aggregate MEDIAN is not allowed"),
    ("SELECT MIN(defaulted) FROM loans", {}, "may not be aggregated"),
])
def test_refusals_name_the_rule(owners, sql, kw, match):
    with pytest.raises(PolicyViolation, match=match):
        mpc_stats.stats_plan(sql, _contract(owners[0], **kw))


def test_an_he_query_refuses_mpc_aggregates_and_the_plan_says_mpc(owners):
    rules = QueryRules(MPC_AGGS + ("COUNT",), ("income",), (), (), 1, 10)
    assert plan_query("SELECT MEDIAN(income) FROM loans", rules, owners[0], "loans").is_mpc
    assert not plan_query("SELECT COUNT(*) FROM loans", rules, owners[0], "loans").is_mpc


def test_under_privacy_quantiles_are_noised_histograms_and_cost_epsilon(owners, monkeypatch):
    privacy = PrivacyRules.from_dict({"epsilon_total": "2", "delta": "1e-6", "epsilon_per_query": "1"})
    schema, paths = owners
    contract = _contract(schema, privacy=privacy)
    job = types.SimpleNamespace(payload_as=lambda cls, where: mpc_stats.MpcStatsJob("SELECT MEDIAN(age) FROM loans", ""))
    ctx = types.SimpleNamespace(job=job, contract=contract)
    charge = mpc_stats.PROGRAM.admit(ctx)
    assert (charge.counts_as, charge.mechanism, str(charge.epsilon)) == ("query", "discrete-laplace", "1")
    # every owner (the withholding one too) adds noise of scale 1/ε to every bin before it shares anything: with
    # the noise fixed at +2 per bin, the median is the one of the histogram with 2·3 = 6 extra rows in every bin
    scales = []
    monkeypatch.setattr(mpc_stats, "discrete_laplace", lambda scale: scales.append(scale) or 2)
    got = _run(owners, "SELECT MEDIAN(age) FROM loans", privacy=privacy).result["rows"][0][0]
    assert set(scales) == {1} and len(scales) == 3 * mpc_stats.BINS
    ages = [a for p in (paths["a"], paths["b"]) for (a,) in duckdb.connect().execute(
        f"SELECT age FROM read_csv('{p}') WHERE region IN ('north','south','east','west','central')").fetchall()]
    counts = [0] * mpc_stats.BINS
    for a in ages:
        counts[min(int((a - 18) / (82 / mpc_stats.BINS)), mpc_stats.BINS - 1)] += 1
    counts = [c + 6 for c in counts]
    half, cum = (sum(counts) - 1) * 0.5, 0
    for b, c in enumerate(counts):
        cum += c
        if cum > half:
            break
    assert got == pytest.approx(18 + (b + 0.5) * 82 / mpc_stats.BINS)


def test_an_mpc_stats_job_spec_round_trips_and_needs_a_valid_output_key():
    import base64
    import dataclasses

    from fedtrust.errors import InvalidInput
    from fedtrust.trust.jobs import JobSpec

    key = base64.b64encode(bytes(range(32))).decode()
    job = JobSpec(contract_digest="a" * 64, job_id="j1", nonce="b" * 64, coordinator="coord",
                  participants=("a", "b"), dataset="loans",
                  payload=mpc_stats.MpcStatsJob("SELECT MIN(age) FROM loans", key),
                  created_at="2026-01-01T00:00:00Z", expires_at="2026-01-01T01:00:00Z")
    assert JobSpec.from_dict(job.to_dict()) == job and job.is_mpc and job.output_key == key
    assert job.to_dict()["kind"] == "mpc-stats" and job.to_dict()["output_key"] == key
    with pytest.raises(InvalidInput, match="output_key must be a base64 raw 32-byte"):
        JobSpec.from_dict({**job.to_dict(), "output_key": "AAAA"})
    with pytest.raises(InvalidInput, match="sql must be a non-empty"):
        dataclasses.replace(job, payload=mpc_stats.MpcStatsJob(" ", key)).check_form()

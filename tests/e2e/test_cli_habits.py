"""The command line's habits: -h, --version, --json everywhere (errors too), exit status per error kind, environment
variables for repeated flags, listings, one contract identifier, summaries by default."""
from __future__ import annotations

import json

import pytest

from fedtrust.cli.main import EXIT_CODES, run
from fedtrust.demo.federation import build_federation
from fedtrust.trust.dsse import Envelope


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    return build_federation(tmp_path_factory.mktemp("habits"), {"bank-a": 120, "bank-b": 100})  # files only


def cli(capsys, *args: object, env: dict[str, str] | None = None, monkeypatch=None) -> tuple[int, str, str]:
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    code = run([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_and_version(capsys):
    code, out, _ = cli(capsys, "-h")
    assert code == 0 and "Usage: fedtrust" in out and "exchange" in out and "audit" in out
    code, out, _ = cli(capsys, "exchange", "settle", "-h")
    assert code == 0 and "--contract" in out and "FEDTRUST_CONTRACT" in out
    code, out, _ = cli(capsys, "--version")
    from importlib.metadata import version

    assert code == 0 and out.strip() == f"fedtrust {version('fedtrust')}"


def test_errors_under_json_are_json_and_each_kind_has_its_exit_status(capsys, tmp_path, fed):
    code, out, err = cli(capsys, "exchange", "settle", tmp_path / "nowhere", "--contract", "abcdef", "--json")
    assert code == EXIT_CODES["config"] == 3 and err == ""
    assert json.loads(out)["error"]["kind"] == "config" and "not an initialised exchange" in json.loads(out)["error"][
        "message"]
    code, out, _ = cli(capsys, "exchange", "settle", fed.exchange_dir, "--json")  # a missing option
    assert code == 2 and json.loads(out)["error"] == {"kind": "usage", "message": json.loads(out)["error"]["message"]}
    assert "--contract" in json.loads(out)["error"]["message"]
    code, out, _ = cli(capsys, "exchange", "settle", fed.exchange_dir, "--contract", "0" * 12, "--json")
    assert code == EXIT_CODES["not-found"] == 9 and json.loads(out)["error"]["kind"] == "not-found"
    code, out, _ = cli(capsys, "exchange", "settle", fed.exchange_dir, "--contract", "abc", "--json")
    assert code == EXIT_CODES["invalid-input"] == 4 and "at least 6 hex digits" in json.loads(out)["error"]["message"]
    code, _, err = cli(capsys, "exchange", "settle", fed.exchange_dir, "--contract", "abc")  # people get one line
    assert code == 4 and err.startswith("error (invalid-input):") and "Traceback" not in err
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES) and 0 not in EXIT_CODES.values()


def test_one_contract_identifier_listings_and_summaries(capsys, monkeypatch, fed):
    digest = Envelope.from_json(fed.contract_path.read_bytes()).digest
    code, out, _ = cli(capsys, "exchange", "contracts", fed.exchange_dir, "--json")
    assert code == 0 and [c["digest"] for c in json.loads(out)] == [digest]
    assert json.loads(out)[0]["owners"] == ["bank-a", "bank-b"] and "contract_id" not in json.loads(out)[0]
    code, out, _ = cli(capsys, "exchange", "subjects", fed.exchange_dir, "--json")
    assert {(s["role"], s["name"]) for s in json.loads(out)} == {
        ("buyer", "analyst"), ("coordinator", "coord"), ("node", "bank-a"), ("node", "bank-b")}
    code, out, _ = cli(capsys, "exchange", "products", fed.exchange_dir)
    assert code == 0 and "bank-a" in out and "loans" in out and "products (2)" in out
    # the digest, a unique prefix of it, or the contract file: the same contract; from FEDTRUST_CONTRACT too
    for ref in (digest, digest[:8], str(fed.contract_path)):
        code, out, _ = cli(capsys, "exchange", "settle", fed.exchange_dir, "--contract", ref, "--json")
        assert code == 0 and json.loads(Envelope.from_json(out).payload)["predicate"]["contract_digest"] == digest
    code, out, _ = cli(capsys, "exchange", "settle", fed.exchange_dir, env={"FEDTRUST_CONTRACT": digest[:10]},
                       monkeypatch=monkeypatch)
    # a summary by default: the price and each owner's amount, not an envelope
    assert code == 0 and f"settlement of contract {digest}" in out and "payload" not in out
    assert "pays 0 for 0 verified job(s)" in out and "bank-a" in out and "0.00" in out
    code, out, _ = cli(capsys, "exchange", "log", fed.exchange_dir)
    assert code == 0 and "0 entries" in out and "verifier key:" in out and "payload" not in out

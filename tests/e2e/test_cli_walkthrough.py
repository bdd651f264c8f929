"""The README's walkthrough, command by command, with the daemons as real processes."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedtrust.demo.data import RULES_TOML, SCHEMA_TOML, write_loans

CMD = [sys.executable, "-m", "fedtrust.cli.main"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")


def run(*args, ok=True):
    p = subprocess.run(CMD + [str(a) for a in args], capture_output=True, text=True, timeout=180, env=ENV)
    if ok:
        assert p.returncode == 0, f"{args}: {p.stderr}"
    return p


def serve(kind, config, procs):
    proc = subprocess.Popen(CMD + [kind, "serve", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    procs.append(proc)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"on port (\d+)", line)
        if m:
            return int(m.group(1))
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{kind} daemon did not start")


def test_readme_walkthrough(tmp_path: Path):
    ex = tmp_path / "exchange"
    run("exchange", "init", ex)
    again = run("exchange", "init", ex, ok=False)
    assert again.returncode == 3 and "already" in again.stderr  # 3: a configuration error
    def enroll(role, name, *address):
        """The party makes its keys; the exchange certifies its request and writes public files back."""
        keys = tmp_path / "creds" / name
        run("keygen", "--role", role, "--name", name, *[a for x in address for a in ("--address", x)], "--out", keys)
        run("exchange", "register", ex, "--request", keys / "request.json", "--out", keys)

    for name in ("bank-a", "bank-b"):
        enroll("node", name, "127.0.0.1:7101")
    enroll("buyer", "analyst")
    enroll("coordinator", "coord", "127.0.0.1:7000")
    assert not [p for p in ex.rglob("*") if p.name in ("tls.key", "kx.key")]
    assert oct((tmp_path / "creds" / "bank-a" / "signing.key").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "schema.toml").write_text(SCHEMA_TOML)
    (tmp_path / "rules.toml").write_text(RULES_TOML.format(min_group_size=5, max_queries=10))
    for i, name in enumerate(("bank-a", "bank-b")):
        data = write_loans(tmp_path / "data" / f"{name}.csv", 500 + 300 * i, seed=i)
        digest = run("node", "digest", data).stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        run("exchange", "list", ex, "--owner", name, "--dataset", "loans", "--schema", tmp_path / "schema.toml",
            "--commitment", digest, "--out", tmp_path / f"{name}.json")
        (tmp_path / f"{name}.toml").write_text(
            f'[node]\nname = "{name}"\nlisten = "127.0.0.1:0"\ncredentials = "creds/{name}"\nstate = "state/{name}"\n'
            f'[[datasets]]\nproduct = "{name}.json"\npath = "data/{name}.csv"\n')
    c = run("exchange", "contract", ex, "--buyer", "analyst", "--coordinator", "coord", "--product",
            tmp_path / "bank-a.json", "--product", tmp_path / "bank-b.json", "--rules", tmp_path / "rules.toml",
            "--out", tmp_path / "contract.json", "--purpose", "regional income statistics")
    warned = " ".join(c.stderr.split())  # the exchange warns about exact-answer contracts, in the contract's numbers
    assert "no [privacy] table" in warned
    assert ("two queries that differ in one filter (e.g. `age >= a` and `age >= a AND age < b`) can reveal one "
            "person's value exactly" in warned)
    assert "min_group_size 5 only limits single answers, and the buyer may ask 10 queries per owner" in warned
    base = ["exchange", "contract", ex, "--buyer", "analyst", "--coordinator", "coord", "--product",
            tmp_path / "bank-a.json", "--rules", tmp_path / "rules.toml", "--out", tmp_path / "c1.json"]
    one = run(*base, "--purpose", "x", ok=False)
    assert one.returncode == 3 and "two" in one.stderr  # 3: a configuration error
    base[7:7] = ["--product", tmp_path / "bank-b.json"]
    for bad, words in [(["--purpose", " "], "needs --purpose"),
                       (["--purpose", "x", "--valid-until", "next tuesday"], "--valid-until 'next tuesday' is not a date"),
                       (["--purpose", "x", "--valid-from", "2030-01-02", "--valid-until", "2030-01-01"], "before it starts")]:
        r = run(*base, *bad, ok=False)
        assert r.returncode == 3 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    show = json.loads(run("contract", "show", tmp_path / "contract.json", "--credentials", tmp_path / "creds" / "analyst",
                          "--json").stdout)
    assert show["purpose"] == "regional income statistics" and show["signatures"]["exchange"] is True
    assert show["missing"] == ["buyer analyst", "owner bank-a", "owner bank-b"]
    for name in ("analyst", "bank-a", "bank-b"):
        run("contract", "sign", tmp_path / "contract.json", "--credentials", tmp_path / "creds" / name)
    text = run("contract", "show", tmp_path / "contract.json", "--credentials", tmp_path / "creds" / "bank-a").stdout
    assert "regional income statistics" in text and "MISSING" not in text and "owner bank-b: signed" in text

    procs: list[subprocess.Popen] = []
    try:
        ports = {n: serve("node", tmp_path / f"{n}.toml", procs) for n in ("bank-a", "bank-b")}
        (tmp_path / "coord.toml").write_text(
            '[coordinator]\nname = "coord"\nlisten = "127.0.0.1:0"\ncredentials = "creds/coord"\n'
            'state = "state/coord"\n[addresses]\n' + "".join(f'{n} = "127.0.0.1:{p}"\n' for n, p in ports.items()))
        cport = serve("coordinator", tmp_path / "coord.toml", procs)
        q = run("query", "--credentials", tmp_path / "creds" / "analyst", "--contract", tmp_path / "contract.json",
                "--coordinator", f"127.0.0.1:{cport}", "--out", tmp_path / "result.json", "--receipt",
                tmp_path / "receipt.json", "SELECT region, COUNT(*) AS n, AVG(income) AS mean_income FROM loans GROUP BY region")
        assert "mean_income" in q.stdout and "withheld" in q.stdout
        result = json.loads((tmp_path / "result.json").read_text())
        assert result["columns"] == ["region", "n", "mean_income"]
        assert 1200 <= sum(r[1] for r in result["rows"]) <= 1300  # 500 + 800 rows, small groups withheld
        v = run("exchange", "verify", ex, tmp_path / "receipt.json", "--result", tmp_path / "result.json")
        assert v.stdout.startswith("VALID")
        # the receipt is in the exchange's signed Merkle log, and the settlement lists the job: an auditor
        # checks both from files and the exchange's public key alone
        key = tmp_path / "creds" / "analyst" / "exchange.pub"
        summary = run("exchange", "log", ex, "--job", result["job_id"], "--out", tmp_path / "proof.json",
                      "--note", tmp_path / "checkpoint.txt").stdout
        assert "1 entries" in summary and "is entry 0" in summary
        assert (tmp_path / "checkpoint.txt").read_text().splitlines()[1] == "1"  # C2SP: origin, size, root
        a = run("audit", "inclusion", tmp_path / "proof.json", "--key", key, "--receipt", tmp_path / "receipt.json",
                "--json")
        assert json.loads(a.stdout)["job_id"] == result["job_id"]
        digest = json.loads(run("exchange", "verify", ex, tmp_path / "receipt.json", "--json").stdout)["contract_digest"]
        s = run("exchange", "settle", ex, "--contract", digest[:10], "--out", tmp_path / "settlement.json").stdout
        assert digest in s and "bank-a" in s and "1 verified job" in s
        a = run("audit", "settlement", tmp_path / "settlement.json", "--key", key, "--checkpoint",
                tmp_path / "checkpoint.txt", "--json")
        settlement = json.loads(a.stdout)["settlement"]
        assert settlement["count"] == 1 and settlement["jobs"][0]["job_id"] == result["job_id"]
        forged = tmp_path / "forged.json"
        forged.write_text((tmp_path / "proof.json").read_text().replace('"index": 0', '"index": 1'))
        bad = run("audit", "inclusion", forged, "--key", key, "--receipt", tmp_path / "receipt.json", ok=False)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        bad = run("query", "--credentials", tmp_path / "creds" / "analyst", "--contract", tmp_path / "contract.json",
                  "--coordinator", f"127.0.0.1:{cport}", "SELECT COUNT(*) FROM loans LIMIT 1", ok=False)
        assert bad.returncode == 6 and "LIMIT" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                assert p.wait(timeout=30) == 0
            finally:
                p.kill()

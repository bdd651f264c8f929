"""The lifecycle, as operators run it: own keys, signed contracts, withdrawal, revocation, renewal, pinning.

Every daemon (exchange service, two nodes, coordinator) is a real process on
127.0.0.1; identities go through `keygen` → `exchange register`; the
contract is signed with `contract sign`; jobs are submitted by the buyer's
client (in-process where the test must send what the CLI would refuse).
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_cli_walkthrough import CMD, ENV, run, serve

from fedtrust.buyer.client import CoordinatorClient
from fedtrust.buyer.query import submit_query, tls_of
from fedtrust.coordinator.node_client import admit_on_node
from fedtrust.demo.data import RULES_TOML, SCHEMA_TOML, write_loans
from fedtrust.demo.federation import sign_by_parties
from fedtrust.errors import JobFailed, PolicyViolation, VerificationError
from fedtrust.exchange.issuer import issue_contract, list_product
from fedtrust.privacy import he
from fedtrust.query.dataset import file_digest
from fedtrust.query.payload import QueryPayload
from fedtrust.transport.server import create_server
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.jobs import JobSpec, sign_job

pytestmark = pytest.mark.timeout(300)

SQL = "SELECT region, COUNT(*) AS n FROM loans GROUP BY region"
NODES = ("bank-a", "bank-b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_exchange(ex: Path, procs: list) -> int:
    proc = subprocess.Popen(CMD + ["exchange", "serve", str(ex), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    procs.append(proc)
    line = proc.stdout.readline()
    assert "on port" in line, line
    return int(line.rsplit("on port", 1)[1].split()[0])


def until(fn, what: str, timeout: float = 20.0):
    """Poll `fn` until it returns a true value (the daemons refresh on their own schedule)."""
    deadline = time.time() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_lifecycle(tmp_path: Path):
    ex, creds = tmp_path / "exchange", tmp_path / "creds"
    run("exchange", "init", ex)
    ports = {n: free_port() for n in NODES}

    def enroll(role, name, *address, out=None):
        keys = out or creds / name
        run("keygen", "--role", role, "--name", name, *[a for x in address for a in ("--address", x)], "--out", keys)
        run("exchange", "register", ex, "--request", keys / "request.json", "--out", keys)

    for n in NODES:
        enroll("node", n, f"127.0.0.1:{ports[n]}")
    enroll("buyer", "analyst")
    enroll("coordinator", "coord", "127.0.0.1:7000")
    # the exchange holds its own keys and nobody else's
    party_keys = {p.read_bytes() for p in creds.rglob("*.key")}
    assert len(party_keys) == 2 * 3 + 2 * 2
    for p in ex.rglob("*"):
        assert p.is_dir() or not any(k in p.read_bytes() for k in party_keys), p
    assert sorted(p.name for p in ex.rglob("*.key")) == ["ca.key", "signing.key"]

    (tmp_path / "schema.toml").write_text(SCHEMA_TOML)
    (tmp_path / "rules.toml").write_text(RULES_TOML.format(min_group_size=5, max_queries=50))
    products = []
    for i, n in enumerate(NODES):
        data = write_loans(tmp_path / "data" / f"{n}.csv", 300 + 100 * i, seed=i)
        products.append(tmp_path / f"{n}.json")
        list_product(ex, n, "loans", tmp_path / "schema.toml", file_digest(data), products[-1])

    def contract(name, signers=("analyst", *NODES)) -> Path:
        path = tmp_path / f"{name}.json"
        issue_contract(ex, "analyst", "coord", products, tmp_path / "rules.toml", path, purpose=f"test {name}")
        sign_by_parties(path, creds, list(signers))
        return path

    main = tmp_path / "main.json"
    run("exchange", "contract", ex, "--buyer", "analyst", "--coordinator", "coord", "--product", products[0],
        "--product", products[1], "--rules", tmp_path / "rules.toml", "--out", main, "--purpose", "lifecycle test",
        "--revocation-max-age-h", "1")
    for who in ("analyst", *NODES):
        run("contract", "sign", main, "--credentials", creds / who)
    unsigned = contract("unsigned-b", signers=("analyst", "bank-a"))
    withdrawn, before_renewal = contract("withdrawn"), contract("before-renewal")
    digest = {p: Envelope.from_json(p.read_bytes()).digest for p in (main, unsigned, withdrawn, before_renewal)}

    procs: list[subprocess.Popen] = []
    impostor = None
    try:
        url = f"https://127.0.0.1:{serve_exchange(ex, procs)}"
        exchange_toml = f'[exchange]\nurl = "{url}"\nrefresh_s = 0.5\n'

        def node_config(n, cred_dir, port):
            cfg = tmp_path / f"{n}-{port}.toml"
            cfg.write_text(f'[node]\nname = "{n}"\nlisten = "127.0.0.1:{port}"\ncredentials = "{cred_dir}"\n'
                           f'state = "state/{n}"\n[[datasets]]\nproduct = "{n}.json"\npath = "data/{n}.csv"\n'
                           + exchange_toml)
            return cfg

        node_procs = {}
        for n in NODES:
            serve("node", node_config(n, creds / n, ports[n]), procs)
            node_procs[n] = procs[-1]
        (tmp_path / "coord.toml").write_text(
            '[coordinator]\nname = "coord"\nlisten = "127.0.0.1:0"\ncredentials = "creds/coord"\n'
            'state = "state/coord"\n' + exchange_toml)  # no [addresses]: it dials what the credentials say
        coordinator = f"127.0.0.1:{serve('coordinator', tmp_path / 'coord.toml', procs)}"
        buyer = load_identity(creds / "analyst")
        coord_tls = tls_of(load_identity(creds / "coord"))

        # a signed contract, and a list fresher than its --revocation-max-age-h: the query runs
        q = run("query", "--credentials", creds / "analyst", "--contract", main, "--coordinator", coordinator, SQL)
        assert "n" in q.stdout
        log = json.loads(run("node", "log", "--config", node_config("bank-a", creds / "bank-a", ports["bank-a"]),
                             "--json").stdout)
        assert [(r["request"], r["outcome"], r["buyer"]) for r in log] == [(SQL, "released", "analyst")]

        # bank-b never signed: the buyer's client refuses; sent anyway, bank-b refuses naming its missing signature
        with pytest.raises(VerificationError, match="lacks the signature of owner bank-b"):
            submit_query(buyer, creds / "analyst", unsigned, coordinator, SQL)
        raw = unsigned.read_bytes()
        c = Envelope.from_json(raw)
        from fedtrust.trust.contracts import verify_contract

        keys = he.BuyerKeys.generate()
        job = sign_job(JobSpec.create(verify_contract(c, buyer.exchange_key), c.digest, QueryPayload(SQL, keys.params)), buyer.signer)
        with pytest.raises(JobFailed, match=r"owner bank-b refused the job .*lacks the signature of owner bank-b"):
            CoordinatorClient(coordinator, tls_of(buyer), "coord").submit_query(job.to_json(), raw, keys.public_bytes)

        # the owner of bank-a withdraws from a contract it had signed: its node refuses from then on
        run("node", "withdraw", "--config", node_config("bank-a", creds / "bank-a", ports["bank-a"]),
            withdrawn, "--reason", "terms changed")  # the contract file names it as well as its digest
        with pytest.raises(JobFailed, match="owner of node bank-a withdrew from this contract"):
            submit_query(buyer, creds / "analyst", withdrawn, coordinator, SQL)

        # the exchange revokes the main contract: every node refuses it within a refresh, on its own list
        run("exchange", "revoke", ex, "--contract", digest[main], "--reason", "breach of the stated purpose")
        job = sign_job(JobSpec.create(verify_contract(Envelope.from_json(main.read_bytes()), buyer.exchange_key),
                                      digest[main], QueryPayload(SQL, keys.params)), buyer.signer).to_json()

        def refused_by(n):
            try:  # straight to the node, as the coordinator, forwarding no list: the node's own refresh decides
                admit_on_node(n, f"127.0.0.1:{ports[n]}", coord_tls, job, main.read_bytes(), 10)
            except PolicyViolation as e:
                return "revoked by the exchange" in str(e)
            return False

        for n in NODES:
            until(lambda: refused_by(n), f"{n} to refuse the revoked contract", timeout=10)
        with pytest.raises(Exception, match="contract was revoked by the exchange"):
            submit_query(buyer, creds / "analyst", main, coordinator, SQL)

        # bank-b renews with new keys and a new address; the old process stops, the new one serves
        new_port = free_port()
        enroll_dir = tmp_path / "creds-renewed" / "bank-b"
        run("keygen", "--role", "node", "--name", "bank-b", "--address", f"127.0.0.1:{new_port}", "--out", enroll_dir)
        assert (enroll_dir / "signing.key").read_bytes() != (creds / "bank-b" / "signing.key").read_bytes()
        run("exchange", "renew", ex, "--request", enroll_dir / "request.json", "--out", enroll_dir)
        node_procs["bank-b"].send_signal(signal.SIGTERM)
        node_procs["bank-b"].wait(timeout=30)
        serve("node", node_config("bank-b", enroll_dir, new_port), procs)
        renewed = tmp_path / "renewed.json"
        issue_contract(ex, "analyst", "coord", products, tmp_path / "rules.toml", renewed, purpose="after renewal")
        sign_by_parties(renewed, creds, ["analyst", "bank-a"])
        sign_by_parties(renewed, tmp_path / "creds-renewed", ["bank-b"])
        res = submit_query(buyer, creds / "analyst", renewed, coordinator, SQL)
        assert res.verified.job.participants == NODES

        # the exchange online: any party of the job posts its receipt (client certificate), anyone reads the log
        from fedtrust.errors import Error
        from fedtrust.transport.exchange_client import ExchangeClient

        (tmp_path / "receipt.json").write_bytes(res.receipt.to_json())
        verdict = json.loads(run("exchange", "submit", tmp_path / "receipt.json", "--url", url, "--credentials",
                                 creds / "analyst", "--json").stdout)
        assert verdict["valid"] and not verdict["already_recorded"] and verdict["job_id"] == res.job_id
        as_owner = ExchangeClient(url, buyer.ca_pem, coord_tls)
        assert as_owner.submit_receipt(res.receipt.to_json())["already_recorded"]
        anonymous = ExchangeClient(url, buyer.ca_pem)
        with pytest.raises(Error, match="writes need a client certificate"):
            anonymous.submit_receipt(res.receipt.to_json())
        assert anonymous.checkpoint()["size"] == 1
        with pytest.raises(VerificationError, match="is not this exchange"):  # the coordinator's TLS port
            ExchangeClient(f"https://{coordinator}", buyer.ca_pem).checkpoint()

        # a server holding another subject's valid certificate (the buyer's) at bank-b's old address is refused
        impostor, _ = create_server(f"127.0.0.1:{ports['bank-b']}", tls_of(buyer), lambda s: None, max_workers=2)
        with pytest.raises(JobFailed, match="bank-b answered with a certificate that does not name that subject"):
            submit_query(buyer, creds / "analyst", before_renewal, coordinator, SQL)
        with pytest.raises(VerificationError, match="does not name that subject"):
            admit_on_node("bank-b", f"127.0.0.1:{ports['bank-b']}", coord_tls, job, main.read_bytes(), 10)
    finally:
        if impostor is not None:
            impostor.stop(0)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            finally:
                p.kill()

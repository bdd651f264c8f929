"""The exchange: init, register, list products, issue contracts, its store, and mTLS with what it issues."""
from __future__ import annotations

import json
import sqlite3
import stat
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from fedtrust.demo.federation import enroll
from fedtrust.errors import ConfigError, InvalidInput, NotFound, ReplayError, VerificationError
from fedtrust.exchange import issuer
from fedtrust.trust import pki
from fedtrust.trust.canonical import canonical, sha256_hex
from fedtrust.trust.contracts import verify_contract
from fedtrust.trust.credentials import FILES, PUBLIC_FILES, load_identity, verify_credential
from fedtrust.trust.dsse import Envelope
from fedtrust.trust.keygen import keygen
from fedtrust.trust.products import verify_product

SCHEMA = """
[columns.region]
type = "category"
values = ["north", "south"]

[columns.amount]
type = "float"
min = 0
max = 1000
"""

RULES = """
[query]
aggregates = ["COUNT", "SUM", "AVG"]
columns = ["amount"]
filters = ["region", "amount"]
group_by = ["region"]
min_group_size = 5
max_queries = 10
valid_days = 7
"""

C1, C2 = sha256_hex(b"data-a"), sha256_hex(b"data-b")


@pytest.fixture(scope="module")
def ex(tmp_path_factory) -> Path:
    """An exchange with a buyer, a coordinator, two nodes and their products listed."""
    root = tmp_path_factory.mktemp("world")
    d = root / "exchange"
    issuer.init_exchange(d)
    enroll(d, "buyer", "buyer-1", [], root / "buyer-1")
    enroll(d, "coordinator", "coord-1", ["127.0.0.1:7000"], root / "coord-1")
    enroll(d, "node", "node-a", ["127.0.0.1:7101"], root / "node-a")
    enroll(d, "node", "node-b", ["node-b.example:7102", "10.9.8.7:7102"], root / "node-b")
    (root / "schema.toml").write_text(SCHEMA)
    (root / "rules.toml").write_text(RULES)
    issuer.list_product(d, "node-a", "claims", root / "schema.toml", C1, root / "a.product.json")
    issuer.list_product(d, "node-b", "claims", root / "schema.toml", C2.upper(), root / "b.product.json")
    return d


def root_of(ex: Path) -> Path:
    return ex.parent


def test_init_writes_keys_and_refuses_twice(ex, tmp_path):
    assert stat.S_IMODE((ex / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((ex / "signing.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((ex / "exchange.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(ex.stat().st_mode) == 0o700
    with pytest.raises(ConfigError, match="already holds an exchange"):
        issuer.init_exchange(ex)
    with pytest.raises(ConfigError, match="not an initialised exchange .*ca.key is missing"):
        issuer.load_exchange(tmp_path)


def test_register_writes_a_loadable_credential_directory(ex):
    d = root_of(ex) / "node-a"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert {p.name for p in d.iterdir()} == set(FILES) | {"request.json"}
    for secret in ("tls.key", "signing.key", "kx.key"):
        assert stat.S_IMODE((d / secret).stat().st_mode) == 0o600
    ident = load_identity(d)
    assert (ident.role, ident.name) == ("node", "node-a") and ident.kx_private is not None
    assert ident.credential.address == "127.0.0.1:7101"
    assert pki.verify_certificate(ident.tls_cert_pem, ident.ca_pem) == ("node", "node-a")
    buyer = load_identity(root_of(ex) / "buyer-1")
    assert buyer.kx_private is None and not (root_of(ex) / "buyer-1" / "kx.key").exists()
    stored, env = issuer.load_exchange(ex).store.get_subject("node", "node-a")
    assert stored == ident.credential and env == ident.credential_envelope
    assert verify_credential(env, ident.exchange_key) == stored


def test_the_exchange_sees_no_private_key(ex, tmp_path):
    """Register writes public files only, and nothing under the exchange's directory is a party's key."""
    keygen("buyer", "buyer-7", [], tmp_path / "keys")
    before = {p.name for p in (tmp_path / "keys").iterdir()}
    issuer.register(ex, tmp_path / "keys" / "request.json", tmp_path / "issued")
    assert {p.name for p in (tmp_path / "issued").iterdir()} == set(PUBLIC_FILES)
    assert {p.name for p in (tmp_path / "keys").iterdir()} == before  # keygen's keys are untouched
    party_keys = {(root_of(ex) / n / k).read_bytes() for n in ("node-a", "node-b", "coord-1", "buyer-1")
                  for k in ("tls.key", "signing.key", "kx.key") if (root_of(ex) / n / k).exists()}
    party_keys |= {(tmp_path / "keys" / k).read_bytes() for k in ("tls.key", "signing.key")}
    for p in ex.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert not any(k in data for k in party_keys)
            if p.name not in ("ca.key", "signing.key"):
                assert b"PRIVATE KEY" not in data


def test_register_puts_only_the_requested_addresses_in_the_certificate(ex):
    from cryptography import x509

    def sans(name):
        cert = x509.load_pem_x509_certificate((root_of(ex) / name / "tls.crt").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return san.get_values_for_type(x509.DNSName), [str(i) for i in san.get_values_for_type(x509.IPAddress)]

    assert sans("node-b") == (["node-b.node.fedtrust.invalid", "node-b.example"], ["10.9.8.7"])
    assert sans("node-a") == (["node-a.node.fedtrust.invalid"], ["127.0.0.1"])
    assert sans("buyer-1") == (["buyer-1.buyer.fedtrust.invalid"], [])


def _request(tmp_path, role, name, addresses=(), sub="r"):
    keygen(role, name, list(addresses), tmp_path / sub)
    return tmp_path / sub / "request.json"


def test_register_refusals(ex, tmp_path):
    with pytest.raises(ConfigError, match="fedtrust://node/node-a is already registered; renew it"):
        issuer.register(ex, _request(tmp_path, "node", "node-a", ["127.0.0.1:1"], "dup"), tmp_path / "dup-out")
    with pytest.raises(ConfigError, match="a node needs --address"):
        keygen("node", "node-c", [], tmp_path / "c")
    with pytest.raises(ConfigError, match="a buyer runs no server, so it has no address"):
        keygen("buyer", "buyer-c", ["127.0.0.1:1"], tmp_path / "bc")
    with pytest.raises(ConfigError, match="subject name 'Bad Name' is not allowed"):
        keygen("buyer", "Bad Name", [], tmp_path / "b")
    with pytest.raises(ConfigError, match="role 'admin' is unknown"):
        keygen("admin", "x", [], tmp_path / "x")
    with pytest.raises(ConfigError, match="already exists and is not an empty directory"):
        keygen("buyer", "buyer-9", [], root_of(ex) / "node-a")
    with pytest.raises(ConfigError, match="already holds a credential.json"):
        issuer.register(ex, _request(tmp_path, "buyer", "buyer-9", (), "b9"), root_of(ex) / "node-a")
    with pytest.raises(ConfigError, match="request file .* does not exist"):
        issuer.register(ex, tmp_path / "nope.json", tmp_path / "o")
    assert not issuer.load_exchange(ex).store.has_subject("buyer", "buyer-9")


@pytest.mark.parametrize("tamper, match", [
    # another subject's name in a request signed by this key: the signature no longer covers it
    (lambda p, s: p.update(name="buyer-x"), "not signed by the key it names"),
    # another signing key named: the signature is not by it (no proof of possession)
    (lambda p, s: p.update(signing_key=s), "not signed by the key it names"),
])
def test_register_requires_proof_of_possession(ex, tmp_path, tamper, match):
    import base64

    req = _request(tmp_path, "buyer", "buyer-8")
    env = json.loads(req.read_text())
    statement = json.loads(base64.b64decode(env["payload"]))
    other = json.loads(base64.b64decode(json.loads(_request(tmp_path, "buyer", "buyer-x", (), "o").read_text())["payload"]))
    tamper(statement["predicate"], other["predicate"]["signing_key"])
    env["payload"] = base64.b64encode(canonical(statement)).decode()
    req.write_text(json.dumps(env))
    with pytest.raises(ConfigError, match=match):
        issuer.register(ex, req, tmp_path / "out")


def test_register_refuses_a_csr_for_another_key_or_subject(ex, tmp_path):
    """A request re-signed by its own signing key but carrying someone else's CSR is refused."""
    import base64

    from cryptography.hazmat.primitives import serialization

    from fedtrust.trust.dsse import Signer
    from fedtrust.trust.keygen import REQUEST_TYPE

    req = _request(tmp_path, "coordinator", "coord-9", ["127.0.0.1:9"])
    theirs = json.loads(base64.b64decode(json.loads(_request(tmp_path, "coordinator", "coord-8", ["127.0.0.1:8"], "t")
                                                    .read_text())["payload"]))["predicate"]
    mine = json.loads(base64.b64decode(json.loads(req.read_text())["payload"]))["predicate"]
    mine["csr_pem"] = theirs["csr_pem"]
    signing = serialization.load_pem_private_key((tmp_path / "r" / "signing.key").read_bytes(), None)
    req.write_bytes(Signer(signing).sign_statement(REQUEST_TYPE, mine).to_json())
    with pytest.raises(ConfigError, match="the CSR names another subject"):
        issuer.register(ex, req, tmp_path / "out")


def test_load_identity_names_what_is_wrong(ex, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(root_of(ex) / "node-a", d)
    (d / "kx.key").unlink()
    with pytest.raises(ConfigError, match="has no kx.key"):
        load_identity(d)
    shutil.copy(root_of(ex) / "node-b" / "kx.key", d / "kx.key")
    with pytest.raises(ConfigError, match="kx.key does not match"):
        load_identity(d)
    shutil.copy(root_of(ex) / "node-b" / "signing.key", d / "signing.key")
    with pytest.raises(ConfigError, match="signing.key does not match"):
        load_identity(d)
    shutil.copy(root_of(ex) / "node-b" / "tls.key", d / "tls.key")
    with pytest.raises(ConfigError, match="tls.key does not match tls.crt"):
        load_identity(d)
    env = json.loads((d / "credential.json").read_bytes())
    env["payload"] = env["payload"][:-8] + "AAAAAAA="
    (d / "credential.json").write_text(json.dumps(env))
    with pytest.raises(ConfigError, match="credential.json does not verify"):
        load_identity(d)
    with pytest.raises(ConfigError, match="does not exist"):
        load_identity(tmp_path / "nope")


def test_list_product(ex, tmp_path):
    root = root_of(ex)
    key = issuer.load_exchange(ex).signer.public_key
    p = verify_product(Envelope.from_json((root / "b.product.json").read_bytes()), key)
    assert p.commitment == C2 and p.owner == "node-b" and p.schema.column("region").values == ("north", "south")
    with pytest.raises(NotFound, match="no node named 'node-z' is registered; register it"):
        issuer.list_product(ex, "node-z", "claims", root / "schema.toml", C1, tmp_path / "z.json")
    with pytest.raises(NotFound, match="no node named 'buyer-1'"):
        issuer.list_product(ex, "buyer-1", "claims", root / "schema.toml", C1, tmp_path / "z.json")
    with pytest.raises(ConfigError, match="commitment must be the 64-hex sha256"):
        issuer.list_product(ex, "node-a", "claims", root / "schema.toml", "abc", tmp_path / "z.json")
    with pytest.raises(ConfigError, match="dataset name 'my-claims' is not allowed"):
        issuer.list_product(ex, "node-a", "my-claims", root / "schema.toml", C1, tmp_path / "z.json")
    with pytest.raises(ConfigError, match="already exists"):
        issuer.list_product(ex, "node-a", "claims", root / "schema.toml", C1, root / "a.product.json")


def _contract(ex: Path, tmp_path: Path, **kw):
    root = root_of(ex)
    args = dict(buyer="buyer-1", coordinator="coord-1", product_paths=[root / "a.product.json", root / "b.product.json"],
                rules_path=root / "rules.toml", out_path=tmp_path / "contract.json", purpose="claims statistics")
    args.update(kw)
    return issuer.issue_contract(ex, **args)


def test_issue_contract(ex, tmp_path):
    c = _contract(ex, tmp_path, price="1200.50")
    env = Envelope.from_json((tmp_path / "contract.json").read_bytes())
    store = issuer.load_exchange(ex).store
    verified = verify_contract(env, store.exchange_key)
    assert verified == c and store.get_contract(env.digest) == (c, env)
    assert c.owner_names == ("node-a", "node-b") and c.dataset == "claims" and c.price == "1200.50"
    assert c.rules.query.group_by == ("region",) and c.rules.valid_days == 7
    assert c.holding("node-b").credential.address == "node-b.example:7102"
    assert len(c.contract_id) == 32


def test_issue_contract_refusals(ex, tmp_path):
    root = root_of(ex)
    with pytest.raises(ConfigError, match="buyer and coordinator must be different subjects"):
        _contract(ex, tmp_path, coordinator="buyer-1")
    with pytest.raises(ConfigError, match="at least two distinct owners"):
        _contract(ex, tmp_path, product_paths=[root / "a.product.json"])
    with pytest.raises(NotFound, match="no buyer named 'nobody'"):
        _contract(ex, tmp_path, buyer="nobody")
    with pytest.raises(NotFound, match="no coordinator named 'node-a'"):
        _contract(ex, tmp_path, coordinator="node-a")
    with pytest.raises(ConfigError, match="price 'cheap' must be a non-negative decimal"):
        _contract(ex, tmp_path, price="cheap")
    # a second product of the same owner
    issuer.list_product(ex, "node-a", "claims", root / "schema.toml", C2, tmp_path / "a2.json")
    with pytest.raises(ConfigError, match="two products of owner node-a"):
        _contract(ex, tmp_path, product_paths=[root / "a.product.json", tmp_path / "a2.json"])


def test_issue_contract_refuses_foreign_products(ex, tmp_path):
    other = tmp_path / "other-exchange"
    issuer.init_exchange(other)
    enroll(other, "node", "node-b", ["127.0.0.1:1"], tmp_path / "nb")
    # same owner, dataset, schema and commitment: the payload may even equal ours; the signature differs
    issuer.list_product(other, "node-b", "claims", root_of(ex) / "schema.toml", C2, tmp_path / "foreign.json")
    with pytest.raises(ConfigError, match="foreign.json was not issued by this exchange"):
        _contract(ex, tmp_path, product_paths=[root_of(ex) / "a.product.json", tmp_path / "foreign.json"])
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="junk.json is not a signed envelope"):
        _contract(ex, tmp_path, product_paths=[root_of(ex) / "a.product.json", tmp_path / "junk.json"])


@pytest.mark.parametrize("rules, match", [
    ('aggregates=["SUM"]\ncolumns=["premium"]', "aggregated column 'premium' is not in the product schema"),
    ('aggregates=["SUM"]\ncolumns=["region"]', "aggregated column 'region' is a category"),
    ('aggregates=["COUNT"]\nfilters=["age"]', "filter column 'age' is not in the product schema"),
    ('aggregates=["COUNT"]\ngroup_by=["amount"]', "group-by column 'amount' is numeric"),
    ('aggregates=["COUNT"]\nfilters=[]\ngroup_by=["zip"]', "group-by column 'zip' is not in the product schema"),
    ('aggregates=["SUM"]', "list no aggregated `columns`"),
])
def test_issue_contract_checks_rules_against_the_schema(ex, tmp_path, rules, match):
    (tmp_path / "r.toml").write_text(f"[query]\n{rules}\nmax_queries = 3\n")
    with pytest.raises(ConfigError, match=match):
        _contract(ex, tmp_path, rules_path=tmp_path / "r.toml")


def test_store_refuses_rows_altered_on_disk(ex, tmp_path):
    import shutil

    copy = tmp_path / "ex"
    shutil.copytree(ex, copy)
    con = sqlite3.connect(copy / "exchange.db")
    env = json.loads(con.execute("SELECT envelope FROM subjects WHERE name = 'node-a'").fetchone()[0])
    statement = json.loads(Envelope.from_dict(env).payload)
    statement["predicate"]["address"] = "6.6.6.6:1"
    import base64

    env["payload"] = base64.b64encode(canonical(statement)).decode()
    con.execute("UPDATE subjects SET envelope = ? WHERE name = 'node-a'", (json.dumps(env).encode(),))
    con.commit()
    con.close()
    with pytest.raises(VerificationError, match="does not verify"):
        issuer.load_exchange(copy).store.get_subject("node", "node-a")


def test_record_receipt_is_atomic_and_refuses_replays(ex, tmp_path):
    _contract(ex, tmp_path)
    digest = Envelope.from_json((tmp_path / "contract.json").read_bytes()).digest
    store = issuer.load_exchange(ex).store
    a1, a2, b1 = sha256_hex(b"a1"), sha256_hex(b"a2"), sha256_hex(b"b1")
    rows = [("node-a", digest, 1, a1, "0" * 64, "0.100000", "0.000001"),
            ("node-b", digest, 1, b1, "0" * 64, "0.100000", None)]
    rec = store.record_receipt("job-1", "n" * 64, digest, sha256_hex(b"bundle1"), b"{}", rows)
    assert store.receipt_for_job(digest, "job-1") == rec == store.receipt_for_nonce("n" * 64)
    assert store.receipt_for_job(digest, "job-x") is None
    with pytest.raises(ReplayError, match="this job id is already recorded"):
        store.record_receipt("job-1", "m" * 64, digest, sha256_hex(b"bundle2"), b"{}", [])
    with pytest.raises(ReplayError, match="this nonce is already recorded"):
        store.record_receipt("job-2", "n" * 64, digest, sha256_hex(b"bundle2"), b"{}", [])
    double = [("node-a", digest, 2, a2, a1, "0.200000", "0.000002"),
              ("node-b", digest, 1, sha256_hex(b"b1'"), "0" * 64, "0.1", None)]
    with pytest.raises(ReplayError, match="chain position 1 of node node-b .* already recorded"):
        store.record_receipt("job-2", "m" * 64, digest, sha256_hex(b"bundle2"), b"{}", double)
    assert store.receipt_for_job(digest, "job-2") is None  # rolled back as a whole
    assert [r.seq for r in store.chain_entries("node-a", digest)] == [1]
    with pytest.raises(NotFound, match="contract this exchange did not issue"):
        store.record_receipt("job-3", "o" * 64, "f" * 64, sha256_hex(b"bundle3"), b"{}", [])
    store.record_receipt("job-2", "m" * 64, digest, sha256_hex(b"bundle2"), b"{}", double[:1])
    entries = store.chain_entries("node-a", digest)
    assert [(e.seq, e.prev, e.cumulative_epsilon, e.job_id, e.cumulative_delta) for e in entries] == [
        (1, "0" * 64, "0.100000", "job-1", "0.000001"), (2, a1, "0.200000", "job-2", "0.000002")]
    # job ids are the buyer's and unique per contract: the same id under another contract is another job
    _contract(ex, tmp_path, out_path=tmp_path / "other.json")
    other = Envelope.from_json((tmp_path / "other.json").read_bytes()).digest
    rec2 = store.record_receipt("job-1", "p" * 64, other, sha256_hex(b"bundle4"), b"{}", [])
    assert store.receipt_for_job(other, "job-1") == rec2 != store.receipt_for_job(digest, "job-1")
    with pytest.raises(InvalidInput, match="under several contracts"):
        store.log.entry_for_job("job-1")
    assert store.log.entry_for_job("job-1", other).index == 2


# --------------------------------------------------------------------------
# registered credentials work for gRPC mutual TLS in both directions


def _echo_server(ident):
    def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b",".join(context.auth_context().get("peer_uri", []))

    handler = grpc.method_handlers_generic_handler(
        "t.T", {"Who": grpc.unary_unary_rpc_method_handler(whoami)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials([(ident.tls_key_pem, ident.tls_cert_pem)], root_certificates=ident.ca_pem,
                                        require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


def _call(ident, target: str) -> bytes:
    creds = grpc.ssl_channel_credentials(ident.ca_pem, ident.tls_key_pem, ident.tls_cert_pem)
    with grpc.secure_channel(target, creds) as ch:
        return ch.unary_unary("/t.T/Who")(b"", timeout=10)


def test_registered_credentials_do_mutual_tls_both_ways(ex, tmp_path):
    root = root_of(ex)
    node, coord = load_identity(root / "node-a"), load_identity(root / "coord-1")
    for server_ident, client_ident, expected in [(node, coord, b"fedtrust://coordinator/coord-1"),
                                                 (coord, node, b"fedtrust://node/node-a")]:
        server, port = _echo_server(server_ident)
        try:
            # plain gRPC hostname verification: the requested address is in the certificate, nothing else is
            assert _call(client_ident, f"127.0.0.1:{port}") == expected
            with pytest.raises(grpc.RpcError):
                _call(client_ident, f"localhost:{port}")
        finally:
            server.stop(0)
    # a client whose certificate comes from another exchange is refused
    other = tmp_path / "other"
    issuer.init_exchange(other)
    enroll(other, "coordinator", "coord-1", [], tmp_path / "intruder")
    intruder = load_identity(tmp_path / "intruder")
    server, port = _echo_server(node)
    try:
        creds = grpc.ssl_channel_credentials(node.ca_pem, intruder.tls_key_pem, intruder.tls_cert_pem)
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary("/t.T/Who")(b"", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
    with pytest.raises(VerificationError, match="does not chain to this exchange's CA"):
        pki.verify_certificate(intruder.tls_cert_pem, node.ca_pem)


def test_contract_purpose_and_term(ex, tmp_path):
    c = _contract(ex, tmp_path, purpose="  fraud statistics ", valid_from="2031-01-01", valid_until="2031-06-30T12:00:00Z",
                  revocation_max_age_h=24)
    assert (c.purpose, c.valid_from, c.valid_until, c.revocation_max_age_h) == (
        "fraud statistics", "2031-01-01T00:00:00Z", "2031-06-30T12:00:00Z", 24)
    for kw, match in [
        (dict(purpose=""), "needs --purpose"),
        (dict(valid_until="soon"), "--valid-until 'soon' is not a date"),
        (dict(valid_from="2031-13-01"), "--valid-from '2031-13-01' is not a date"),
        (dict(valid_from="2031-02-01", valid_until="2031-01-01"), "would end .* before it starts"),
        (dict(valid_until="2001-01-01"), "would have ended already"),
        (dict(revocation_max_age_h=0), "whole number of hours"),
    ]:
        with pytest.raises(ConfigError, match=match):
            _contract(ex, tmp_path, **{"purpose": "p", "out_path": tmp_path / "x.json", **kw})


def test_revoke_and_renew(tmp_path):
    d = tmp_path / "ex"
    issuer.init_exchange(d)
    for role, name, addr in [("buyer", "b", []), ("coordinator", "c", []), ("node", "n1", ["10.0.0.1:1"]),
                             ("node", "n2", ["10.0.0.2:1"])]:
        enroll(d, role, name, addr, tmp_path / name)
    (tmp_path / "schema.toml").write_text(SCHEMA)
    (tmp_path / "rules.toml").write_text(RULES)
    for n, c in (("n1", C1), ("n2", C2)):
        issuer.list_product(d, n, "claims", tmp_path / "schema.toml", c, tmp_path / f"{n}.json")
    args = dict(buyer="b", coordinator="c", product_paths=[tmp_path / "n1.json", tmp_path / "n2.json"],
                rules_path=tmp_path / "rules.toml", purpose="p")
    issuer.issue_contract(d, **args, out_path=tmp_path / "k.json")
    digest = Envelope.from_json((tmp_path / "k.json").read_bytes()).digest

    # renewal: same name, new keys and address; recorded; the old certificate is still valid
    old = load_identity(tmp_path / "n2")
    keygen("node", "n2", ["10.0.0.9:2"], tmp_path / "n2-new")
    issuer.renew(d, tmp_path / "n2-new" / "request.json", tmp_path / "n2-new")
    new = load_identity(tmp_path / "n2-new")
    assert new.credential.address == "10.0.0.9:2" and new.credential.signing_key != old.credential.signing_key
    store = issuer.load_exchange(d).store
    assert [c.address for c in store.issue_history("node", "n2")] == ["10.0.0.2:1", "10.0.0.9:2"]
    assert store.get_subject("node", "n2")[0] == new.credential
    assert pki.verify_certificate(old.tls_cert_pem, old.ca_pem) == ("node", "n2")
    # an address-only renewal keeps the keys
    keygen("node", "n2", ["10.0.0.10:3"], tmp_path / "n2-moved", reuse_keys=tmp_path / "n2-new")
    issuer.renew(d, tmp_path / "n2-moved" / "request.json", tmp_path / "n2-moved")
    moved = load_identity(tmp_path / "n2-moved")
    assert moved.credential.address == "10.0.0.10:3"
    assert (moved.credential.signing_key, moved.credential.kx_key) == (new.credential.signing_key, new.credential.kx_key)
    with pytest.raises(ConfigError, match="has no kx.key"):
        keygen("node", "b", ["10.0.0.1:1"], tmp_path / "bx", reuse_keys=tmp_path / "b")
    keygen("node", "n3", ["10.0.0.3:1"], tmp_path / "n3")
    with pytest.raises(ConfigError, match="fedtrust://node/n3 is not registered; register it"):
        issuer.renew(d, tmp_path / "n3" / "request.json", tmp_path / "n3")

    # revocation: a signed, sequence-numbered list; revoked subjects get no contract and no credential
    from fedtrust.trust.revocation import verify_revocation_list

    with pytest.raises(ConfigError, match="exactly one of --contract DIGEST or --subject URI"):
        issuer.revoke(d, reason="x")
    with pytest.raises(ConfigError, match="--reason must say why"):
        issuer.revoke(d, contract=digest, reason=" ")
    with pytest.raises(ConfigError, match="--subject: a revoked subject is named by its URI"):
        issuer.revoke(d, subject="n1", reason="x")
    with pytest.raises(NotFound, match="contract was not issued by this exchange"):
        issuer.revoke(d, contract="e" * 64, reason="x")
    issuer.revoke(d, contract=digest.upper(), reason="breach")
    with pytest.raises(ConfigError, match="already revoked"):
        issuer.revoke(d, contract=digest, reason="again")
    issuer.revoke(d, subject="fedtrust://node/n1", reason="key leaked")
    ex = issuer.load_exchange(d)
    rl = verify_revocation_list(ex.revocation_list(), ex.signer.public_key)
    assert rl.seq == 2 and [(e.kind, e.target) for e in rl.entries] == [
        ("contract", digest), ("subject", "fedtrust://node/n1")]
    with pytest.raises(ConfigError, match="fedtrust://node/n1 is revoked; the exchange issues no contract naming it"):
        issuer.issue_contract(d, **args, out_path=tmp_path / "k2.json")
    keygen("node", "n1", ["10.0.0.1:1"], tmp_path / "n1-new")
    with pytest.raises(ConfigError, match="fedtrust://node/n1 is revoked; the exchange issues it no credential"):
        issuer.renew(d, tmp_path / "n1-new" / "request.json", tmp_path / "n1-new")


def test_list_refuses_a_schema_whose_names_collide_when_case_is_folded(ex, tmp_path):
    """`Salary` (not sold) and `salary` (sold) are one column to SQL; the exchange lists no such schema."""
    twins = tmp_path / "twins.toml"
    twins.write_text(SCHEMA + '\n[columns.Salary]\ntype = "float"\nmin = 0\nmax = 1\n'
                              '\n[columns.salary]\ntype = "float"\nmin = 0\nmax = 1\n')
    with pytest.raises(ConfigError, match=r"columns `Salary` and `salary`, whose names differ only in case; SQL "
                                          r"folds case, so rename one"):
        issuer.list_product(ex, "node-a", "claims", twins, C1, tmp_path / "twins.product.json")
    assert not (tmp_path / "twins.product.json").exists()


def test_contracts_without_privacy_are_warned_about_in_their_own_numbers(ex, tmp_path):
    from dataclasses import replace
    from decimal import Decimal

    from fedtrust.cli.exchange import no_privacy_warning
    from fedtrust.trust.rules import PrivacyRules

    c = _contract(ex, tmp_path)
    warning = no_privacy_warning(c)
    # RULES: numeric filter `amount`, min_group_size 5, max_queries 10
    assert "two queries that differ in one filter (e.g. `amount >= a` and `amount >= a AND amount < b`)" in warning
    assert "min_group_size 5 only limits single answers, and the buyer may ask 10 queries per owner" in warning
    dp = replace(c, rules=replace(c.rules, privacy=PrivacyRules(Decimal(3), Decimal("1e-6"), Decimal("0.5"))))
    assert no_privacy_warning(dp) is None


def test_no_contract_embeds_an_expired_credential(ex, tmp_path, monkeypatch):
    from datetime import datetime, timedelta, timezone

    real = pki.certificate_not_after
    expired = load_identity(root_of(ex) / "node-b").credential.cert_pem

    def not_after(pem):  # node-b's certificate as if a year had passed
        return datetime.now(timezone.utc) - timedelta(days=1) if pem == expired else real(pem)

    monkeypatch.setattr(issuer.pki, "certificate_not_after", not_after)
    with pytest.raises(ConfigError, match="the credential of fedtrust://node/node-b has expired; renew it"):
        _contract(ex, tmp_path)

"""Trust objects: canonical JSON, DSSE, PKI, and every signed object's round trip and tamper refusal."""
from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtrust.errors import ConfigError, InvalidInput, PolicyViolation, VerificationError
from fedtrust.exchange.verify import JOB_KINDS
from fedtrust.privacy.params import HeParams
from fedtrust.query.payload import QueryPayload
from fedtrust.trust import pki
from fedtrust.trust.canonical import canonical, format_time, parse_time, sha256_hex, utc_now
from fedtrust.trust.contracts import Contract, verify_contract
from fedtrust.trust.credentials import (
    kx_public_key,
    sign_credential,
    signing_public_key,
    verify_credential,
)
from fedtrust.trust.dsse import Envelope, Signature, Signer, keyid_of, pae, verify_statement
from fedtrust.trust.jobs import JobSpec, new_nonce, sign_job, verify_job
from fedtrust.trust.products import Product, sign_product, verify_product
from fedtrust.trust.receipts import (
    GENESIS,
    ChainEntry,
    ReceiptBundle,
    RelayedOutputs,
    fmt_eps,
    next_chain_entry,
    parse_eps,
    result_digest,
    sign_acknowledgement,
    sign_attestation,
    sign_coordinator_statement,
    verify_acknowledgement,
    verify_attestation,
    verify_statement_of_coordinator,
)
from fedtrust.trust.rules import QueryRules, Rules
from fedtrust.trust.schema import Column, Schema
from fedtrust.trust.verify import check_relayed, verify_bundle

from trust_world import World, _tls_key

NOT_VERIFY = r"signature by ed25519:[0-9a-f]{64} does not verify"
D = "ab" * 32  # a well-formed digest
RESULT = {"columns": ["n"], "rows": [[3]], "salt": "salt", "withheld": 0}


# --------------------------------------------------------------------------
# the in-memory world (exchange, CA, four subjects, two products, a contract,
# a job and a full receipt) lives in tests/trust_world.py, shared with tests/e2e/test_audit.py


@pytest.fixture(scope="module")
def w() -> World:
    return World()


def retamper(env: Envelope, mutate: Callable[[dict[str, Any]], None]) -> Envelope:
    """Change the payload's predicate (and re-encode canonically); keep the old signatures."""
    statement = json.loads(env.payload)
    mutate(statement["predicate"])
    return Envelope(env.payload_type, canonical(statement), env.signatures)


def flip_sig(env: Envelope) -> Envelope:
    s = env.signatures[0]
    sig = bytes([s.sig[0] ^ 1]) + s.sig[1:]
    return Envelope(env.payload_type, env.payload, (Signature(s.keyid, sig),))


# --------------------------------------------------------------------------
# canonical JSON and time


def test_canonical_orders_keys_and_refuses_big_ints():
    assert canonical({"b": 1, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'
    with pytest.raises(InvalidInput, match="2\\^53"):
        canonical({"t": 2**60})
    with pytest.raises(InvalidInput, match="NaN"):
        canonical(float("nan"))


def test_times_round_trip():
    now = utc_now()
    assert now.endswith("Z") and len(now) == 20
    assert format_time(parse_time(now)) == now
    assert parse_time("2025-01-31T14:00:00+02:00") == datetime(2025, 1, 31, 12, tzinfo=timezone.utc)
    for bad in ["2025-01-31", "2025-01-31T12:00:00", "yesterday", 5]:
        with pytest.raises(InvalidInput):
            parse_time(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# DSSE


def test_pae_matches_the_dsse_spec():
    assert pae("http://example.com/HelloWorld", b"hello world") == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_sign_verify_round_trip_and_json():
    s = Signer.generate()
    env = s.sign_statement("https://x/T/v1", {"k": "v"}, [("thing", D)])
    assert s.keyid == keyid_of(s.public_key) and s.keyid.startswith("ed25519:") and len(s.keyid) == 72
    assert env.to_dict()["signatures"] == [{"keyid": s.keyid, "sig": base64.b64encode(env.signatures[0].sig).decode()}]
    back = Envelope.from_json(env.to_json())
    assert back == env and Envelope.from_dict(env.to_dict()) == env
    assert back.digest == sha256_hex(env.payload)
    assert verify_statement(back, s.public_key, "https://x/T/v1") == {"k": "v"}
    assert json.loads(env.payload)["subject"] == [{"name": "thing", "digest": {"sha256": D}}]


def test_verify_statement_refusals():
    s, other = Signer.generate(), Signer.generate()
    env = s.sign_statement("https://x/T/v1", {"k": "v"})
    with pytest.raises(VerificationError, match="expected predicate type https://x/U/v1, got 'https://x/T/v1'"):
        verify_statement(env, s.public_key, "https://x/U/v1")
    with pytest.raises(VerificationError, match=f"no signature by {other.keyid}"):
        verify_statement(env, other.public_key, "https://x/T/v1")
    with pytest.raises(VerificationError, match=NOT_VERIFY):
        verify_statement(flip_sig(env), s.public_key, "https://x/T/v1")
    with pytest.raises(VerificationError, match=NOT_VERIFY):  # payload type is covered by PAE
        verify_statement(replace(env, payload_type="text/plain"), s.public_key, "https://x/T/v1")
    with pytest.raises(InvalidInput, match="unsupported algorithm; only ed25519"):  # the legacy field, if present
        Envelope.from_dict({**env.to_dict(), "signatures": [{**env.to_dict()["signatures"][0], "alg": "sm2"}]})


# --------------------------------------------------------------------------
# DSSE against independent implementations: Sigstore's strict envelope model
# (protobuf-JSON rules: unknown fields are errors) and securesystemslib


def _every_signed_object(w: World) -> list[tuple[Envelope, Signer]]:
    return ([(e, w.exchange) for e in (*w.cred_envs.values(), *w.product_envs.values(), w.contract_env)]
            + [(w.job_env, w.signers["buyer-1"]), (w.statement_env, w.signers["coord-1"]),
               (w.ack_env, w.signers["buyer-1"])] + [(e, w.signers[n]) for n, e in w.att_envs.items()])


def _more_signed_objects(w: World, tmp_path) -> list[tuple[Envelope, list]]:
    """Settlements, revocation lists, admissions, registration requests and a contract signed by all its parties."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from fedtrust.exchange.receipt_log import ReceiptLog, sign_settlement
    from fedtrust.sqlite import Database
    from fedtrust.trust.admission import Admission, sign_admission
    from fedtrust.trust.contracts import sign_as
    from fedtrust.trust.keygen import REQUEST, keygen
    from fedtrust.trust.revocation import RevocationList, Revoked, sign_revocation_list

    now = utc_now()
    signed = w.contract_env
    for role, name in (("buyer", "buyer-1"), ("node", "node-a"), ("node", "node-b")):
        signed = sign_as(signed, w.contract, role, name, w.signers[name])
    log = ReceiptLog(Database(tmp_path / "log.sqlite", ""))
    with log.db.write() as con:
        log.append(con, w.job.job_id, w.contract_env.digest, D)
    request = keygen("node", "node-z", ["10.0.0.9:7101"], tmp_path / "keys")
    request_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(request.signing_key))
    rl = RevocationList(1, now, (Revoked("contract", D, "test", now),))
    return [
        (signed, [w.exchange, w.signers["buyer-1"], w.signers["node-a"], w.signers["node-b"]]),
        (sign_settlement(log, w.contract_env.digest, w.exchange, "x.example/log", price="1", owners=["a"]), [w.exchange]),
        (sign_revocation_list(rl, w.exchange), [w.exchange]),
        (sign_admission(Admission("node-a", w.job_env.digest, w.contract_env.digest, "query", now, now),
                        w.signers["node-a"]), [w.signers["node-a"]]),
        (Envelope.from_json((tmp_path / "keys" / REQUEST).read_bytes()), [request_key]),
    ]


def test_every_signed_object_parses_with_sigstore_models_and_verifies_with_securesystemslib(w, tmp_path):
    from securesystemslib.dsse import Envelope as SslibEnvelope
    from securesystemslib.signer import SSlibKey
    from sigstore_models.intoto import Envelope as SigstoreEnvelope

    objects = [(env, [signer]) for env, signer in _every_signed_object(w)] + _more_signed_objects(w, tmp_path)
    for env, signers in objects:
        parsed = SigstoreEnvelope.from_json(env.to_json())  # strict: an extra field such as `alg` is refused
        assert parsed.payload == env.payload and len(parsed.signatures) == len(signers)
        keys = [s.public_key if isinstance(s, Signer) else s for s in signers]
        sslib = [SSlibKey.from_crypto(k, keyid=keyid_of(k)) for k in keys]
        # every party's signature verifies with the independent implementation (threshold: all of them)
        assert set(SslibEnvelope.from_dict(json.loads(env.to_json())).verify(sslib, len(sslib))) == {
            keyid_of(k) for k in keys}


def test_fedtrust_verifies_envelopes_securesystemslib_produced():
    from securesystemslib.dsse import Envelope as SslibEnvelope
    from securesystemslib.signer import CryptoSigner

    s = Signer.generate()
    statement = {"_type": "https://in-toto.io/Statement/v1", "subject": [], "predicateType": "T", "predicate": {"k": 1}}
    sslib = SslibEnvelope(canonical(statement), "application/vnd.in-toto+json", {})
    sslib.sign(CryptoSigner(s.private_key))  # its own key id (a hash of its key format), not fedtrust's
    doc = sslib.to_dict()
    assert doc["signatures"][0]["keyid"] != s.keyid
    assert verify_statement(Envelope.from_dict(doc), s.public_key, "T") == {"k": 1}
    other = Signer.generate()
    with pytest.raises(VerificationError, match=f"no signature by {other.keyid}"):
        verify_statement(Envelope.from_dict(doc), other.public_key, "T")


def test_spec_valid_variants_verify_and_tampered_ones_do_not():
    s = Signer.generate()
    env = s.sign_statement("https://x/T/v1", {"k": "v"})
    d = env.to_dict()
    urlsafe = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")  # noqa: E731
    variants = [
        {**d, "signatures": [{"sig": d["signatures"][0]["sig"]}]},                          # no keyid
        {**d, "signatures": [{"keyid": "", "sig": d["signatures"][0]["sig"]}]},             # empty keyid
        {**d, "signatures": [{"keyid": "someone-else", "sig": d["signatures"][0]["sig"]}]},  # foreign hint
        {**d, "payload": urlsafe(env.payload), "signatures": [{"keyid": s.keyid, "sig": urlsafe(env.signatures[0].sig)}]},
        {**d, "payload": d["payload"].rstrip("=")},                                          # unpadded standard
        {**d, "signatures": [{**d["signatures"][0], "alg": "ed25519"}]},                     # older fedtrust output
    ]
    for v in variants:
        parsed = Envelope.from_json(json.dumps(v))
        assert verify_statement(parsed, s.public_key, "https://x/T/v1") == {"k": "v"}
        assert set(json.loads(parsed.to_json())["signatures"][0]) <= {"keyid", "sig"}
    flipped = bytearray(env.signatures[0].sig)
    flipped[5] ^= 1
    for keyid in ("", s.keyid, "someone-else"):
        bad = Envelope(env.payload_type, env.payload, (Signature(keyid, bytes(flipped)),))
        with pytest.raises(VerificationError, match=f"by {s.keyid}"):
            verify_statement(bad, s.public_key, "https://x/T/v1")


def test_multiple_signatures_each_verify_under_their_own_key():
    a, b, c = Signer.generate(), Signer.generate(), Signer.generate()
    env = a.sign_statement("https://x/T/v1", {"k": "v"})
    both = Envelope(env.payload_type, env.payload,
                    env.signatures + (Signature("", b.private_key.sign(pae(env.payload_type, env.payload))),))
    back = Envelope.from_json(both.to_json())
    assert verify_statement(back, a.public_key, "https://x/T/v1") == verify_statement(back, b.public_key, "https://x/T/v1")
    with pytest.raises(VerificationError, match=f"no signature by {c.keyid}"):
        verify_statement(back, c.public_key, "https://x/T/v1")


def _sign_raw(s: Signer, payload: bytes, payload_type: str = "application/vnd.in-toto+json") -> Envelope:
    return Envelope(payload_type, payload, (Signature(s.keyid, s.private_key.sign(pae(payload_type, payload))),))


def test_verify_parses_only_canonical_statements():
    s = Signer.generate()
    good = {"_type": "https://in-toto.io/Statement/v1", "subject": [], "predicateType": "T", "predicate": {}}
    with pytest.raises(VerificationError, match="not canonical JSON"):
        verify_statement(_sign_raw(s, json.dumps(good, indent=1).encode()), s.public_key, "T")
    with pytest.raises(VerificationError, match="not canonical JSON"):  # duplicate keys are ambiguous
        verify_statement(_sign_raw(s, canonical(good)[:-1] + b',"predicate":{"x":1}}'), s.public_key, "T")
    with pytest.raises(VerificationError, match="not JSON"):
        verify_statement(_sign_raw(s, b"\xff"), s.public_key, "T")
    with pytest.raises(VerificationError, match="not an in-toto statement"):
        verify_statement(_sign_raw(s, canonical({**good, "_type": "x"})), s.public_key, "T")
    with pytest.raises(VerificationError, match="expected payload type"):
        verify_statement(_sign_raw(s, canonical(good), "text/plain"), s.public_key, "T")
    assert verify_statement(_sign_raw(s, canonical(good)), s.public_key, "T") == {}


@pytest.mark.parametrize("data", [
    b"", b"null", b"[]", b"{}", b"\xff\xfe", b"[" * 100000,
    b'{"payloadType":"a","payload":"!!","signatures":[]}',
    b'{"payloadType":"a","payload":"aGk=","signatures":[]}',
    b'{"payloadType":1,"payload":"aGk=","signatures":[{"keyid":"k","alg":"ed25519","sig":"aGk="}]}',
    b'{"payloadType":"a","payload":"aGk=","signatures":[{"keyid":"k","sig":"aGk-+"}]}',  # two alphabets
    b'{"payloadType":"a","payload":"aGk=","signatures":[{"keyid":"k","sig":"aGk==="}]}',
    b'{"payloadType":"a","payload":"aGk=","signatures":[{"keyid":"k","sig":"a"}]}',
    b'{"payloadType":"a","payload":"aGk=","signatures":[{"keyid":"k","sig":"aGk=","extra":1}]}',
    b'{"payloadType":"a","payload":"aGk=","signatures":[{"keyid":"k","alg":"ed25519"}]}',
    b'{"payloadType":"a","payload":"aGk=","signatures":[{"keyid":"k","alg":"ed25519","sig":""}]}',
    b'{"payloadType":"a","payload":"aGk=","signatures":["x"],"extra":1}',
    b'{"payloadType":"a","payload":"' + b"1" * 5000 + b'"}',
    b'{"payloadType":"\\ud800","payload":"aGk=","signatures":[{"keyid":"k","alg":"ed25519","sig":"aGk="}]}',
    b'{"payloadType":"a","payload":"aGk=","signatures":[{"keyid":"\\udfff","alg":"ed25519","sig":"aGk="}]}',
    b'{"payloadType":"a","payload":' + b"1" * 5000 + b',"signatures":[]}',
])
def test_malformed_envelopes_are_invalid_input(data):
    with pytest.raises(InvalidInput):
        Envelope.from_json(data)


def _json_values():
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5),
                        max_leaves=20)


def _envelope_like():
    b64 = st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
    sig = st.fixed_dictionaries({"keyid": st.text(max_size=10) | st.integers(), "alg": st.text(max_size=5),
                                 "sig": b64 | st.text(max_size=8)})
    return st.fixed_dictionaries({
        "payloadType": st.text(max_size=10) | st.none(),
        "payload": b64 | st.text(max_size=8) | st.integers(),
        "signatures": st.lists(sig | _json_values(), max_size=3) | _json_values(),
    })


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | _json_values().map(lambda v: json.dumps(v).encode())
       | _envelope_like().map(lambda v: json.dumps(v).encode()))
def test_envelope_from_json_raises_only_invalid_input(data):
    try:
        env = Envelope.from_json(data)
    except InvalidInput:
        return
    assert Envelope.from_json(env.to_json()) == env


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | _json_values().map(lambda v: json.dumps(v).encode())
       | st.fixed_dictionaries({
           "contract": _envelope_like(), "job": _envelope_like() | _json_values(),
           "attestations": st.lists(_envelope_like(), max_size=2) | _json_values(),
           "statement": _envelope_like(), "acknowledgement": st.none() | _envelope_like(),
       }).map(lambda v: json.dumps(v).encode()))
def test_receipt_bundle_from_json_raises_only_invalid_input(data):
    try:
        bundle = ReceiptBundle.from_json(data)
    except InvalidInput:
        return
    assert ReceiptBundle.from_json(bundle.to_json()) == bundle


# --------------------------------------------------------------------------
# PKI


def test_certificates_verify_against_their_ca_only(w):
    cert = pki.issue_certificate(w.ca_key, w.ca_cert, "node", "node-x", ["10.0.0.5", "node-x.example", "::1"],
                                 _tls_key())
    ca_pem = pki.cert_pem(w.ca_cert)
    assert pki.verify_certificate(pki.cert_pem(cert), ca_pem) == ("node", "node-x")
    assert pki.verify_certificate(pki.cert_pem(cert).decode(), ca_pem) == ("node", "node-x")
    other_key, other_ca = pki.create_ca("another exchange")
    with pytest.raises(VerificationError, match="does not chain to this exchange's CA"):
        pki.verify_certificate(pki.cert_pem(cert), pki.cert_pem(other_ca))
    foreign = pki.issue_certificate(other_key, other_ca, "node", "node-x", [], _tls_key())
    with pytest.raises(VerificationError, match="does not chain to this exchange's CA"):
        pki.verify_certificate(pki.cert_pem(foreign), ca_pem)
    with pytest.raises(VerificationError, match="not valid now"):
        pki.verify_certificate(pki.cert_pem(cert), ca_pem, at=datetime.now(timezone.utc) + timedelta(days=400))
    with pytest.raises(VerificationError, match="not a PEM X.509 certificate"):
        pki.verify_certificate(b"garbage", ca_pem)


def test_certificate_sans(w):
    from cryptography import x509

    cert = pki.issue_certificate(w.ca_key, w.ca_cert, "coordinator", "c", ["10.0.0.5", "Coord.Example", "127.0.0.1"],
                                 _tls_key())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["fedtrust://coordinator/c"]
    # the identity host name every client pins, then exactly the requested addresses (no localhost for all)
    assert san.get_values_for_type(x509.DNSName) == ["c.coordinator.fedtrust.invalid", "coord.example"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "127.0.0.1"]
    buyer = pki.issue_certificate(w.ca_key, w.ca_cert, "buyer", "b", [], _tls_key())
    san = buyer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["b.buyer.fedtrust.invalid"]
    assert san.get_values_for_type(x509.IPAddress) == []
    with pytest.raises(ConfigError, match="a buyer runs no server"):
        pki.issue_certificate(w.ca_key, w.ca_cert, "buyer", "b", ["127.0.0.1"], _tls_key())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {o.dotted_string for o in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        pki.issue_certificate(w.ca_key, w.ca_cert, "node", "n", ["bad host!"], _tls_key())


def test_subject_names_and_uris():
    assert pki.parse_subject_uri(pki.subject_uri("node", "insurer-a.1")) == ("node", "insurer-a.1")
    for bad in ["fedtrust://exchange/x", "fedtrust://node/", "fedtrust://node/A", "https://node/x", "fedtrust://node/x/y"]:
        with pytest.raises(VerificationError, match="not a fedtrust subject URI"):
            pki.parse_subject_uri(bad)
    for bad in ["", "Upper", "-lead", "a" * 64, "sp ace", "ü"]:
        with pytest.raises(ConfigError, match="subject name .* is not allowed"):
            pki.subject_uri("node", bad)
    with pytest.raises(ConfigError, match="role 'admin' is unknown"):
        pki.subject_uri("admin", "x")
    assert pki.address_host("[::1]:7101") == "::1" and pki.address_host("node-a.example:7101") == "node-a.example"
    for bad in ["nohost", ":7101", "h:0", "h:99999", "h:x"]:
        with pytest.raises(ConfigError, match="must be HOST:PORT"):
            pki.address_host(bad)


# --------------------------------------------------------------------------
# round trips


def test_credential_round_trip(w):
    cred = verify_credential(w.cred_envs["node-a"], w.exchange.public_key)
    assert cred == w.creds["node-a"] and cred.uri == "fedtrust://node/node-a"
    assert signing_public_key(cred) == w.signers["node-a"].public_key
    kx_public_key(cred)
    with pytest.raises(InvalidInput, match="only nodes and dealers have one"):
        kx_public_key(w.creds["buyer-1"])


def test_credential_must_match_its_certificate(w):
    forged = replace(w.creds["node-a"], cert_pem=w.creds["node-b"].cert_pem)
    with pytest.raises(VerificationError, match="carries a certificate for another subject"):
        verify_credential(sign_credential(forged, w.exchange), w.exchange.public_key)
    with pytest.raises(VerificationError, match="a node credential needs a kx_key"):
        verify_credential(sign_credential(replace(w.creds["node-a"], kx_key=None), w.exchange), w.exchange.public_key)


def test_product_and_contract_round_trip(w):
    p = verify_product(w.product_envs["node-a"], w.exchange.public_key)
    assert p.schema == w.schema and p.owner == "node-a" and p.dataset == "claims"
    c = w.contract
    assert c.dataset == "claims" and c.owner_names == ("node-a", "node-b")
    assert c.holding("node-b").product_digest == w.product_envs["node-b"].digest
    assert Contract.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(PolicyViolation, match="holds no product"):
        c.holding("node-z")


def test_contract_validity_window(w):
    c = w.contract
    c.check_valid_at(datetime.now(timezone.utc))
    with pytest.raises(PolicyViolation, match=r"contract expired at .*Z; ask the exchange for a new contract"):
        c.check_valid_at(parse_time(c.valid_until))
    with pytest.raises(PolicyViolation, match="not valid before"):
        c.check_valid_at(parse_time(c.valid_from) - timedelta(seconds=1))


def test_job_and_receipt_round_trip(w):
    job = verify_job(w.job_env, w.contract, w.contract_env.digest)
    assert job == w.job and job.participants == ("node-a", "node-b") and job.kind == "query"
    att = verify_attestation(w.att_envs["node-b"], w.contract, contract_digest=w.contract_env.digest,
                             job_digest=w.job_env.digest)
    assert att.node == "node-b" and att.outputs == (D, D) and att.chain == ChainEntry(1, GENESIS, "0.000000")
    st_ = verify_statement_of_coordinator(w.statement_env, w.contract, job_digest=w.job_env.digest)
    assert st_.attestations == tuple(w.att_envs[n].digest for n in ("node-a", "node-b"))
    ack = verify_acknowledgement(w.ack_env, w.contract, job_digest=w.job_env.digest)
    assert ack.result_digest == result_digest(dict(RESULT, result_digest="ignored"))
    bundle = ReceiptBundle(w.contract_env, w.job_env, tuple(w.att_envs.values()), w.statement_env, w.ack_env)
    assert ReceiptBundle.from_json(bundle.to_json()) == bundle
    assert ReceiptBundle.from_json(replace(bundle, acknowledgement=None).to_json()).acknowledgement is None
    assert bundle.digest == sha256_hex(bundle.to_json())


def _bundle_with(w, **statement_changes) -> ReceiptBundle:
    st = sign_coordinator_statement(replace(w.statement, **statement_changes), w.signers["coord-1"])
    return ReceiptBundle(w.contract_env, w.job_env, tuple(w.att_envs.values()), st, w.ack_env)


def test_a_query_statement_names_exactly_the_attested_outputs(w):
    v = verify_bundle(_bundle_with(w), w.exchange.public_key, JOB_KINDS)
    assert [r.node for r in v.statement.relayed] == ["node-a", "node-b"]
    a, b = w.statement.relayed
    cases = [
        (dict(relayed=None), "does not name the outputs it relayed"),
        (dict(aggregate_outputs=(D,)), "names an aggregate of its own"),
        (dict(relayed=(a,)), "other than exactly the job's participants"),
        (dict(relayed=(b, a)), "other than exactly the job's participants, in order"),
        (dict(relayed=(a, a)), "other than exactly the job's participants, in order"),
        (dict(relayed=(a, replace(b, outputs=(D, "cd" * 32)))), "outputs for node node-b other than those the node signed"),
        (dict(relayed=(a, replace(b, outputs=(D,)))), "outputs for node node-b other than those the node signed"),
        (dict(relayed=(replace(a, attestation="cd" * 32), b)), "outputs for node node-a other than those"),
    ]
    for changes, message in cases:
        with pytest.raises(VerificationError, match=message):
            verify_bundle(_bundle_with(w, **changes), w.exchange.public_key, JOB_KINDS)


def test_check_relayed_ties_each_ciphertext_to_its_nodes_signature(w):
    # the World's attestations name D twice, which is no real ciphertext's digest: sign ones that are
    cts = {n: (n.encode() + b"-0", n.encode() + b"-1") for n in ("node-a", "node-b")}
    atts = {n: sign_attestation(replace(w.attestation(n), outputs=tuple(sha256_hex(c) for c in cts[n])), w.signers[n])
            for n in cts}
    relayed = tuple(RelayedOutputs(n, atts[n].digest, tuple(sha256_hex(c) for c in cts[n])) for n in cts)
    st = sign_coordinator_statement(replace(w.statement, attestations=tuple(e.digest for e in atts.values()),
                                            relayed=relayed), w.signers["coord-1"])
    v = verify_bundle(ReceiptBundle(w.contract_env, w.job_env, tuple(atts.values()), st, None), w.exchange.public_key, JOB_KINDS)
    assert check_relayed(v, [("node-b", cts["node-b"]), ("node-a", cts["node-a"])]) == [
        list(cts["node-a"]), list(cts["node-b"])]
    cases = [
        ([("node-a", cts["node-a"])], "relayed no outputs of participant node-b"),
        ([("node-a", cts["node-a"]), ("node-a", cts["node-a"]), ("node-b", cts["node-b"])], "node-a twice"),
        ([("node-a", cts["node-a"]), ("node-b", cts["node-b"]), ("node-c", cts["node-b"])], "not a participant"),
        ([("node-a", cts["node-b"]), ("node-b", cts["node-a"])], "relayed for node node-a do not match"),
        ([("node-a", cts["node-a"][::-1]), ("node-b", cts["node-b"])], "relayed for node node-a do not match"),
        ([("node-a", cts["node-a"][:1]), ("node-b", cts["node-b"])], "relayed for node node-a do not match"),
        ([("node-a", cts["node-a"]), ("node-b", (b"forged",) + cts["node-b"][1:])], "relayed for node node-b"),
    ]
    for received, message in cases:
        with pytest.raises(VerificationError, match=message):
            check_relayed(v, received)


# --------------------------------------------------------------------------
# one-field tamper test for every signed object


TAMPER_CASES = {
    "credential": (lambda w: w.cred_envs["node-a"], lambda w, e: verify_credential(e, w.exchange.public_key),
                   lambda p: p.update(address="6.6.6.6:1")),
    "product": (lambda w: w.product_envs["node-a"], lambda w, e: verify_product(e, w.exchange.public_key),
                lambda p: p.update(commitment="0" * 64)),
    "contract": (lambda w: w.contract_env, lambda w, e: verify_contract(e, w.exchange.public_key),
                 lambda p: p.update(price="0")),
    "job": (lambda w: w.job_env, lambda w, e: verify_job(e, w.contract, w.contract_env.digest),
            lambda p: p.update(sql="SELECT SUM(amount) FROM claims")),
    "attestation": (lambda w: w.att_envs["node-a"], lambda w, e: verify_attestation(e, w.contract),
                    lambda p: p["chain"].update(cumulative_epsilon="0.500000")),
    "statement": (lambda w: w.statement_env, lambda w, e: verify_statement_of_coordinator(e, w.contract),
                  lambda p: p.update(aggregate_outputs=["cd" * 32])),
    "acknowledgement": (lambda w: w.ack_env, lambda w, e: verify_acknowledgement(e, w.contract),
                        lambda p: p.update(result_digest="cd" * 32)),
}


@pytest.mark.parametrize("kind", TAMPER_CASES)
def test_one_changed_field_is_refused(w, kind):
    get, verify, mutate = TAMPER_CASES[kind]
    env = get(w)
    verify(w, env)  # the untouched envelope verifies
    with pytest.raises(VerificationError, match=NOT_VERIFY):
        verify(w, retamper(env, mutate))


@pytest.mark.parametrize("kind", TAMPER_CASES)
def test_one_flipped_signature_byte_is_refused(w, kind):
    get, verify, _ = TAMPER_CASES[kind]
    with pytest.raises(VerificationError, match=NOT_VERIFY):
        verify(w, flip_sig(get(w)))


def test_wrong_keys_are_refused(w):
    stranger = Signer.generate()
    with pytest.raises(VerificationError, match="no signature by"):
        verify_contract(w.contract_env, stranger.public_key)
    with pytest.raises(VerificationError, match="no signature by"):
        verify_product(w.product_envs["node-a"], w.signers["buyer-1"].public_key)
    forged = sign_job(w.job, w.signers["coord-1"])  # signed by someone other than the buyer
    with pytest.raises(VerificationError, match="no signature by ed25519:"):
        verify_job(forged, w.contract, w.contract_env.digest)
    with pytest.raises(VerificationError, match="no signature by an owner of the contract"):
        verify_attestation(sign_attestation(w.attestation("node-a"), stranger), w.contract)
    with pytest.raises(VerificationError, match="names node node-a but is signed by node node-b"):
        verify_attestation(sign_attestation(w.attestation("node-a"), w.signers["node-b"]), w.contract)
    with pytest.raises(VerificationError, match="no signature by"):
        verify_statement_of_coordinator(sign_coordinator_statement(
            verify_statement_of_coordinator(w.statement_env, w.contract), w.signers["buyer-1"]), w.contract)
    with pytest.raises(VerificationError, match="no signature by"):
        verify_acknowledgement(sign_acknowledgement(
            verify_acknowledgement(w.ack_env, w.contract), w.signers["coord-1"]), w.contract)


def test_wrong_predicate_types_are_refused(w):
    with pytest.raises(VerificationError, match="expected predicate type https://fedtrust.dev/Contract/v1, got "
                                               "'https://fedtrust.dev/Product/v1'"):
        verify_contract(w.product_envs["node-a"], w.exchange.public_key)
    with pytest.raises(VerificationError, match="expected predicate type https://fedtrust.dev/Acknowledgement/v1"):
        verify_acknowledgement(w.job_env, w.contract)


def test_attestation_digest_bindings(w):
    with pytest.raises(VerificationError, match="job digest does not match"):
        verify_attestation(w.att_envs["node-a"], w.contract, job_digest=D)
    other_product = replace(w.attestation("node-a"), product_digest=w.product_envs["node-b"].digest)
    with pytest.raises(VerificationError, match="names a product other than its contract holding"):
        verify_attestation(sign_attestation(other_product, w.signers["node-a"]), w.contract)
    bad_chain = sign_attestation(replace(w.attestation("node-a"), chain=ChainEntry(2, GENESIS, "0.000000")),
                                 w.signers["node-a"])
    with pytest.raises(VerificationError, match="signed attestation is malformed.*seq 1"):
        verify_attestation(bad_chain, w.contract)


# --------------------------------------------------------------------------
# contract refusals


def _refused(w, match: str, **kw):
    with pytest.raises(VerificationError, match=match):
        verify_contract(w.make_contract(**kw), w.exchange.public_key)


def test_contract_refusals(w):
    _refused(w, "fewer than two distinct owners", owners=("node-a",))
    _refused(w, "lists an owner twice", owners=("node-a", "node-a"))
    _refused(w, "buyer credential has role coordinator", buyer="coord-1")
    _refused(w, "coordinator credential has role buyer", coordinator="buyer-1")
    _refused(w, "owner buyer-1 has role buyer; owners must be nodes", owners=("node-a", "buyer-1"))
    _refused(w, "product digest of owner node-a does not match", owners=("node-a", "node-b"), product_digest=D)
    w.creds["buyer-2"] = replace(w.creds["buyer-1"], role="coordinator")  # same name as the buyer, other role
    try:
        _refused(w, "same subject as buyer and coordinator", coordinator="buyer-2")
    finally:
        del w.creds["buyer-2"]


def test_contract_refuses_mismatched_products(w):
    other_schema = Schema((Column("amount", "float", 0.0, 10.0),))
    bad = sign_product(Product("node-b", "claims", other_schema, D, utc_now()), w.exchange)
    good_b = w.product_envs["node-b"]
    w.product_envs["node-b"] = bad
    try:
        _refused(w, "different schemas")
        w.product_envs["node-b"] = sign_product(Product("node-b", "other", w.schema, D, utc_now()), w.exchange)
        _refused(w, "different datasets")
        w.product_envs["node-b"] = sign_product(Product("node-a", "claims", w.schema, D, utc_now()), w.exchange)
        _refused(w, "holding of node-b embeds a product owned by node-a")
        w.product_envs["node-b"] = Signer.generate().sign_statement(
            "https://fedtrust.dev/Product/v1", Product("node-b", "claims", w.schema, D, utc_now()).to_dict())
        _refused(w, "product embedded for owner node-b does not verify")
    finally:
        w.product_envs["node-b"] = good_b


# --------------------------------------------------------------------------
# job refusals


def _job(w, **changes) -> Envelope:
    return sign_job(replace(w.job, **changes), w.signers["buyer-1"])


def test_job_refusals(w):
    digest = w.contract_env.digest
    with pytest.raises(PolicyViolation, match=r"participants must be exactly the contract's owners: node-a, node-b"):
        verify_job(_job(w, participants=("node-a",)), w.contract, digest)
    with pytest.raises(PolicyViolation, match="participants must be exactly"):
        verify_job(_job(w, participants=("node-b", "node-a")), w.contract, digest)
    with pytest.raises(PolicyViolation, match="job names coordinator coord-2 but the contract names coord-1"):
        verify_job(_job(w, coordinator="coord-2"), w.contract, digest)
    past = datetime.now(timezone.utc) - timedelta(hours=2)
    with pytest.raises(PolicyViolation, match="job spec expired at .*; the buyer must submit a new job"):
        verify_job(_job(w, created_at=format_time(past), expires_at=format_time(past + timedelta(minutes=5))),
                   w.contract, digest)
    with pytest.raises(PolicyViolation, match="job spec expired"):
        verify_job(w.job_env, w.contract, digest, now=datetime.now(timezone.utc) + timedelta(hours=2))
    with pytest.raises(VerificationError, match="job spec names another contract"):
        verify_job(w.job_env, w.contract, D)
    with pytest.raises(PolicyViolation, match="job asks for dataset other"):
        verify_job(_job(w, dataset="other"), w.contract, digest)
    with pytest.raises(PolicyViolation, match="contract expired"):
        long = _job(w, expires_at=format_time(parse_time(w.contract.valid_until) + timedelta(days=1)))
        verify_job(long, w.contract, digest, now=parse_time(w.contract.valid_until))
    with pytest.raises(InvalidInput, match="nonce must be 32 random bytes"):
        _job(w, nonce="00")
    assert len(new_nonce()) == 64


# --------------------------------------------------------------------------
# privacy numbers and the budget chain


def test_fmt_eps():
    assert fmt_eps(0) == "0.000000" and fmt_eps(0.1) == "0.100000" and fmt_eps("1.5") == "1.500000"
    assert fmt_eps(Decimal("0.1234565")) == "0.123456" and fmt_eps(0.1 + 0.2) == "0.300000"
    for bad in [-1, "x", float("inf"), True]:
        with pytest.raises(InvalidInput):
            fmt_eps(bad)  # type: ignore[arg-type]
    assert parse_eps("0.500000") == Decimal("0.5")
    for bad in ["0.5", "-0.500000", "1e-6", "00.500000"]:
        with pytest.raises(InvalidInput, match="six places"):
            parse_eps(bad)


def test_chain_entries():
    first = next_chain_entry(None, None, "0.250000")
    assert first == ChainEntry(1, GENESIS, "0.250000", "0.000000")  # a query's δ is 0; the entry states Σδ
    second = next_chain_entry(first, D, "0.500000")
    assert second == ChainEntry(2, D, "0.750000", "0.000000")
    with pytest.raises(InvalidInput):
        next_chain_entry(first, None, "0.100000")


def test_result_digest_covers_the_whole_delivered_document():
    doc = {"columns": ["g", "n"], "rows": [["north", 3], ["south", 2**60]], "salt": "s", "withheld": 1,
           "epsilon": {"a": "0.5"}, "dp": {"stderr": [[None, 1.5]]}}
    a = result_digest(doc)
    assert a == result_digest(json.loads(json.dumps(dict(doc, result_digest=a))))  # as read back from the file
    assert a == result_digest(dict(doc, rows=[["north", 3], ["south", str(2**60)]]))
    for change in [dict(salt="t"), dict(withheld=0), dict(dp={"stderr": [[None, 1.25]]}), dict(extra=1)]:
        assert result_digest(dict(doc, **change)) != a  # not only the rows: every delivered field counts
    with pytest.raises(InvalidInput, match="salt"):
        result_digest({"rows": []})


def test_parties_sign_the_same_contract_envelope(w):
    from fedtrust.trust.contracts import contract_signatures, require_signatures, sign_as

    env = w.contract_env
    assert contract_signatures(env, w.contract, w.exchange.public_key) == {
        "exchange": True, "buyer buyer-1": False, "owner node-a": False, "owner node-b": False,
        "coordinator coord-1": False}
    with pytest.raises(VerificationError, match=r"lacks the signature of owner node-a \(fedtrust://node/node-a\)"):
        require_signatures(env, w.contract, [("node", "node-a")])
    signed = sign_as(env, w.contract, "node", "node-a", w.signers["node-a"])
    signed = sign_as(signed, w.contract, "buyer", "buyer-1", w.signers["buyer-1"])
    assert sign_as(signed, w.contract, "buyer", "buyer-1", w.signers["buyer-1"]) == signed  # signing twice: no-op
    assert signed.digest == env.digest and len(signed.signatures) == 3
    assert verify_contract(Envelope.from_json(signed.to_json()), w.exchange.public_key) == w.contract
    require_signatures(signed, w.contract, [("buyer", "buyer-1"), ("node", "node-a")])
    with pytest.raises(VerificationError, match="lacks the signature of owner node-b"):
        require_signatures(signed, w.contract, [("buyer", "buyer-1"), ("node", "node-b")])
    # a signature moved from another payload does not count
    other = sign_as(w.make_contract(), w.contract, "node", "node-b", w.signers["node-b"])
    forged = Envelope(signed.payload_type, signed.payload, signed.signatures + other.signatures[-1:])
    with pytest.raises(VerificationError, match="lacks the signature of owner node-b"):
        require_signatures(forged, w.contract, [("node", "node-b")])
    with pytest.raises(ConfigError, match="not a party to this contract"):
        sign_as(env, w.contract, "node", "node-z", w.signers["node-a"])


def test_revocation_holder_moves_forward_only_and_enforces_freshness(w, tmp_path):
    from fedtrust.trust.revocation import RevocationHolder, RevocationList, Revoked, sign_revocation_list

    def signed(entries, issued, signer=None):
        return sign_revocation_list(RevocationList(len(entries), format_time(issued), tuple(entries)),
                                    signer or w.exchange).to_json()

    now = datetime.now(timezone.utc)
    holder = RevocationHolder(tmp_path, w.exchange.public_key)
    fresh = replace(w.contract, revocation_max_age_h=2)
    with pytest.raises(PolicyViolation, match="at most 2 h old, and the newest this daemon holds is none at all"):
        holder.check(w.contract_env.digest, fresh)
    holder.check(w.contract_env.digest, w.contract)  # no freshness rule: an offline deployment
    hit = Revoked("contract", w.contract_env.digest, "breach", utc_now())
    assert holder.offer(signed([], now - timedelta(hours=3)))
    with pytest.raises(PolicyViolation, match="newest this daemon holds is from"):
        holder.check(w.contract_env.digest, fresh)
    assert holder.offer(signed([hit], now))
    with pytest.raises(PolicyViolation, match="this contract was revoked by the exchange"):
        holder.check(w.contract_env.digest, w.contract)
    # an older list (a coordinator replaying one from before the revocation) is not adopted
    assert not holder.offer(signed([], now + timedelta(minutes=1)))
    with pytest.raises(VerificationError):
        holder.offer(signed([hit, Revoked("subject", "fedtrust://node/node-a", "x", utc_now())], now, Signer.generate()))
    # it survives a restart; a revoked party revokes every contract naming it
    again = RevocationHolder(tmp_path, w.exchange.public_key)
    assert again.current == holder.current
    assert again.offer(signed([hit, Revoked("subject", "fedtrust://node/node-b", "key leaked", utc_now())], now))
    other = verify_contract(w.make_contract(), w.exchange.public_key)
    with pytest.raises(PolicyViolation, match="party fedtrust://node/node-b of this contract was revoked"):
        again.check("0" * 64, other)


def _bundle_under(w, rules, **att_changes) -> ReceiptBundle:
    """A full receipt under a contract with `rules`; every attestation with `att_changes`."""
    cenv = w.make_contract(rules=rules)
    contract = verify_contract(cenv, w.exchange.public_key)
    jenv = sign_job(JobSpec.create(contract, cenv.digest, QueryPayload("SELECT COUNT(*) FROM claims", HeParams(context_digest=D))),
                    w.signers["buyer-1"])
    atts = {n: sign_attestation(replace(w.attestation(n), job_digest=jenv.digest, contract_digest=cenv.digest,
                                        **att_changes), w.signers[n]) for n in ("node-a", "node-b")}
    st = sign_coordinator_statement(replace(
        w.statement, job_digest=jenv.digest, contract_digest=cenv.digest,
        attestations=tuple(atts[n].digest for n in ("node-a", "node-b")),
        relayed=tuple(RelayedOutputs(n, atts[n].digest, (D, D)) for n in ("node-a", "node-b"))), w.signers["coord-1"])
    return ReceiptBundle(cenv, jenv, tuple(atts.values()), st, None)


def test_verification_checks_each_spend_against_the_contracts_privacy_rules(w):
    from fedtrust.trust.rules import PrivacyRules

    q = QueryRules(("COUNT",), (), (), (), 1, 10)
    dp = Rules(q, 30, privacy=PrivacyRules(Decimal("1"), Decimal("1e-6"), Decimal("0.4")))
    ok = dict(dp=True, epsilon="0.400000", chain=ChainEntry(2, D, "0.800000"))
    verify_bundle(_bundle_under(w, dp, **ok), w.exchange.public_key, JOB_KINDS)
    verify_bundle(_bundle_under(w, dp, **dict(ok, chain=ChainEntry(2, D, "0.800000", "0.000001"),
                                              accountant="basic-composition")), w.exchange.public_key, JOB_KINDS)
    cases = [
        (dp, dict(ok, epsilon="0.100000"), r"states ε=0.100000, δ=0.000000 for a query; .* set ε=0.400000"),
        (dp, dict(ok, dp=False), "differential privacy was off"),
        (dp, dict(ok, delta="0.000100"), "δ=0 per query"),
        (dp, dict(ok, chain=ChainEntry(3, D, "1.200000")), "cumulative ε to 1.200000, over the contract's total"),
        (dp, dict(ok, chain=ChainEntry(2, D, "0.800000", "0.000002")),
         r"cumulative δ to 0.000002, over the contract's total δ=0.000001"),
        (dp, dict(ok, chain=ChainEntry(2, D, "0.800000", "0.000000"), delta="0.000001"), "impossible privacy spend"),
        (dp, dict(ok, accountant="basic-composition"), "names its accountant but not its cumulative δ"),
        (Rules(q, 30), dict(dp=True), "differential-privacy spend under a contract without"),
        (Rules(q, 30), dict(epsilon="0.100000", chain=ChainEntry(1, GENESIS, "0.100000")), "without \\[privacy\\]"),
    ]
    for rules, changes, message in cases:
        with pytest.raises(VerificationError, match=message):
            verify_bundle(_bundle_under(w, rules, **changes), w.exchange.public_key, JOB_KINDS)


def test_a_product_whose_schema_names_collide_when_folded_is_refused_where_it_is_read(w):
    """An old exchange's listing with `Salary` and `salary`: a node (or anyone) verifying it refuses it."""
    from fedtrust.trust.products import PRODUCT_TYPE

    payload = Product("node-a", "claims", w.schema, sha256_hex(b"x"), utc_now()).to_dict()
    payload["schema"]["columns"] += [{"name": "Salary", "type": "float", "min": "0", "max": "1"},
                                     {"name": "salary", "type": "float", "min": "0", "max": "1"}]
    env = w.exchange.sign_statement(PRODUCT_TYPE, payload, [("product", "0" * 64)])
    with pytest.raises(VerificationError, match=r"columns `Salary` and `salary`, whose names differ only in case"):
        verify_product(env, w.exchange.public_key)

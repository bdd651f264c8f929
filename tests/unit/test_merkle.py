"""The exchange's Merkle receipt log: RFC 6962/9162 hashing, proofs, signed checkpoints, settlements.

Expected values are independent of fedtrust: the roots, audit paths and
consistency proofs of the Certificate Transparency test suite (the 8 leaves
of the C++/Go CT tests, as pinned in transparency-dev/merkle
testonly/constants.go, proof/verify_test.go and testonly/reference_test.go),
and a naive recursive MTH written here straight from RFC 9162 §2.1.1.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtrust.errors import InvalidInput, NotFound, ReplayError, VerificationError
from fedtrust.exchange import merkle
from fedtrust.exchange.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from fedtrust.exchange.receipt_log import (
    ConsistencyProof,
    InclusionProof,
    ReceiptLog,
    check_consistency,
    check_inclusion,
    receipt_leaf_hash,
    sign_settlement,
    verify_checkpoint,
    verify_settlement,
)
from fedtrust.sqlite import Database
from fedtrust.trust.dsse import Signer

H = bytes.fromhex

# -- CT test vectors (transparency-dev/merkle testonly/constants.go, proof/verify_test.go) --
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
             b"\x50\x51\x52\x53\x54\x55\x56\x57",
             b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f"]
CT_ROOTS = [  # MTH of the first n leaves, n = 0..8
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (index (0-based), size) -> audit path; testonly/reference_test.go TestRefInclusionProof
CT_INCLUSION = {
    (0, 1): [],
    (0, 2): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
    (1, 2): ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
    (2, 3): ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    (1, 5): ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
    (0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}
# (old, new) -> consistency proof; proof/verify_test.go consistencyProofs
CT_CONSISTENCY = {
    (1, 1): [],
    (1, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
    (6, 7): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}
CT_HASHES = [leaf_hash(d) for d in CT_LEAVES]


def naive_mth(data: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over leaf *data*, written independently of fedtrust.exchange.merkle."""
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(data[:k]) + naive_mth(data[k:])).digest()


# -- (a) known answers ---------------------------------------------------------------
def test_hasher_vectors():
    # transparency-dev/merkle rfc6962/rfc6962_test.go
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert leaf_hash(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert node_hash(b"N123", b"N456").hex() == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"


@pytest.mark.parametrize("n", range(9))
def test_ct_roots(n):
    assert root_hash(CT_HASHES[:n]).hex() == CT_ROOTS[n]
    assert naive_mth(CT_LEAVES[:n]).hex() == CT_ROOTS[n]


@pytest.mark.parametrize(("index", "size"), sorted(CT_INCLUSION))
def test_ct_inclusion(index, size):
    want = [H(x) for x in CT_INCLUSION[(index, size)]]
    assert inclusion_proof(index, size, CT_HASHES) == want
    root = H(CT_ROOTS[size])
    assert verify_inclusion(CT_HASHES[index], index, size, want, root)
    # the corruptions of transparency-dev's corruptInclusionProof
    some = H("abacaba000000000000000000000000000000000000000000060061e00123456")
    bad = [
        (CT_HASHES[index], index + 1, size, want, root),
        (CT_HASHES[index], index ^ 2, size, want, root),
        (CT_HASHES[index], index, size * 2, want, root),
        (leaf_hash(b"WrongLeaf"), index, size, want, root),
        (CT_HASHES[index], index, size, want, EMPTY_ROOT),
        (CT_HASHES[index], index, size, want, some),
        (CT_HASHES[index], index, size, want + [root], root),
        (CT_HASHES[index], index, size, [root] + want, root),
        (CT_HASHES[index], index, size, want + [b""], root),
    ]
    if index:
        bad.append((CT_HASHES[index], index - 1, size, want, root))
    if size > 1:
        bad.append((CT_HASHES[index], index, size // 2, want, root))
    for i in range(len(want)):
        flipped = list(want)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        bad.append((CT_HASHES[index], index, size, flipped, root))
    if want:
        bad.append((CT_HASHES[index], index, size, want[:-1], root))
    if len(want) > 1:
        bad.append((CT_HASHES[index], index, size, [want[0], some] + want[1:], root))
    for args in bad:
        assert not verify_inclusion(*args), args[1:3]


def test_ct_inclusion_every_leaf():
    # every audit path of the CT trees of sizes 1..8 leads to the pinned root
    for size in range(1, 9):
        for index in range(size):
            proof = inclusion_proof(index, size, CT_HASHES)
            assert verify_inclusion(CT_HASHES[index], index, size, proof, H(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new"), sorted(CT_CONSISTENCY))
def test_ct_consistency(old, new):
    want = [H(x) for x in CT_CONSISTENCY[(old, new)]]
    assert consistency_proof(old, new, CT_HASHES) == want
    old_root, new_root = H(CT_ROOTS[old]), H(CT_ROOTS[new])
    assert verify_consistency(old, new, old_root, new_root, want)
    assert not verify_consistency(old, new, leaf_hash(b"x"), new_root, want)
    assert not verify_consistency(old, new, old_root, leaf_hash(b"x"), want)
    if want:
        assert not verify_consistency(old, new, old_root, new_root, want[:-1])
        assert not verify_consistency(old, new, old_root, new_root, want + [want[0]])
        flipped = [bytes([want[0][0] ^ 1]) + want[0][1:]] + want[1:]
        assert not verify_consistency(old, new, old_root, new_root, flipped)
    if old != new:
        assert not verify_consistency(new, old, new_root, old_root, want)


def test_edge_cases():
    assert root_hash([]) == EMPTY_ROOT
    assert consistency_proof(0, 5, CT_HASHES) == []
    assert verify_consistency(0, 5, EMPTY_ROOT, H(CT_ROOTS[5]), [])
    assert not verify_consistency(0, 5, H(CT_ROOTS[1]), H(CT_ROOTS[5]), [])
    assert not verify_consistency(0, 5, EMPTY_ROOT, H(CT_ROOTS[5]), [CT_HASHES[0]])
    assert not verify_consistency(3, 5, H(CT_ROOTS[3]), H(CT_ROOTS[5]), [])
    for index, size in [(0, 0), (0, 1), (1, 0), (2, 1)]:  # verify_test.go TestVerifyInclusion probes
        assert not verify_inclusion(leaf_hash(b"x"), index, size, [], EMPTY_ROOT)
    assert not verify_inclusion(b"short", 0, 1, [], b"short")
    h0, h1, h2 = CT_HASHES[:3]
    # a path longer than the tree is high (RFC 9162 §2.1.3.2 step 4a, 5: sn must reach 0 exactly there)
    assert not verify_inclusion(h0, 0, 1, [h1], node_hash(h1, h0))
    assert not verify_inclusion(h0, 0, 1, [h1], node_hash(h0, h1))
    assert not verify_consistency(1, 2, h0, node_hash(h1, node_hash(h0, h1)), [h1, h1])
    # a proof for 1 -> 2 does not show 1 -> 3 against the size-2 root (§2.1.4.2 step 7: sn == 0)
    assert not verify_consistency(1, 3, h0, H(CT_ROOTS[2]), consistency_proof(1, 2, CT_HASHES))
    assert verify_consistency(1, 3, h0, H(CT_ROOTS[3]), [h1, h2])
    with pytest.raises(InvalidInput):
        inclusion_proof(3, 3, CT_HASHES)
    with pytest.raises(InvalidInput):
        inclusion_proof(0, 9, CT_HASHES)
    with pytest.raises(InvalidInput):
        consistency_proof(4, 3, CT_HASHES)
    with pytest.raises(InvalidInput):
        root_hash([b"not a hash"])


# -- (b) properties -----------------------------------------------------------------
def _leaves(n: int) -> tuple[list[bytes], list[bytes]]:
    data = [b"leaf-%d" % i for i in range(n)]
    return data, [leaf_hash(d) for d in data]


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, n - 1))))
def test_inclusion_property(args):
    size, index, other = args
    data, hashes = _leaves(size)
    root = root_hash(hashes)
    assert root == naive_mth(data)
    proof = inclusion_proof(index, size, hashes)
    assert verify_inclusion(hashes[index], index, size, proof, root)
    assert not verify_inclusion(leaf_hash(b"changed"), index, size, proof, root)
    if other != index:
        assert not verify_inclusion(hashes[index], other, size, proof, root)
        assert not verify_inclusion(hashes[other], index, size, proof, root)
    assert not verify_inclusion(hashes[index], index, size, proof, node_hash(root, root))
    if size > 1:
        assert not verify_inclusion(hashes[index], index, size, proof, root_hash(hashes[:-1]))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 64).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_consistency_property(args):
    old, new = args
    data, hashes = _leaves(new)
    old_root, new_root = root_hash(hashes[:old]), root_hash(hashes)
    assert old_root == naive_mth(data[:old]) and new_root == naive_mth(data)
    proof = consistency_proof(old, new, hashes)
    assert verify_consistency(old, new, old_root, new_root, proof)
    assert not verify_consistency(old, new, leaf_hash(b"wrong old root"), new_root, proof)
    if old < new:
        # a rewritten old log (one leaf changed) has no consistency proof to the new one
        forged = list(hashes[:old])
        if forged:
            forged[-1] = leaf_hash(b"rewritten")
            assert not verify_consistency(old, new, root_hash(forged), new_root, proof)


# -- (c) the receipt log on SQLite ------------------------------------------------
def _digest(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


C1, C2 = _digest("contract-1"), _digest("contract-2")


@pytest.fixture()
def log(tmp_path):
    return ReceiptLog(Database(tmp_path / "exchange.sqlite", ""))


def _append(log: ReceiptLog, job: str, contract: str) -> int:
    with log.db.write() as con:
        return log.append(con, job, contract, _digest("bundle-" + job))


ORIGIN = "exchange.example.org/log"


def test_receipt_log_checkpoints_and_proofs(log):
    exchange = Signer.generate()
    assert log.size() == 0 and log.root() == EMPTY_ROOT
    cp0 = verify_checkpoint(log.checkpoint(exchange, ORIGIN), exchange.public_key, ORIGIN)
    assert (cp0.size, cp0.root) == (0, EMPTY_ROOT)

    for i in range(5):
        assert _append(log, f"job-{i}", C1 if i % 2 == 0 else C2) == i
    note1 = log.checkpoint(exchange, ORIGIN)
    size1, root1 = cp1 = verify_checkpoint(note1, exchange.public_key)  # origin taken from the note
    assert size1 == 5 and root1 == log.root()
    # the log's root is the RFC MTH of the canonical leaf JSON
    leaves = [b'{"bundle_digest":"%s","contract_digest":"%s","job_id":"job-%d"}'
              % (_digest(f"bundle-job-{i}").encode(), (C1 if i % 2 == 0 else C2).encode(), i) for i in range(5)]
    assert root1 == naive_mth(leaves)

    for i in range(5, 11):
        _append(log, f"job-{i}", C1)
    cp2 = verify_checkpoint(log.checkpoint(exchange, ORIGIN), exchange.public_key, ORIGIN)
    assert cp2.size == 11 and verify_checkpoint(log.checkpoint(exchange, ORIGIN, 5), exchange.public_key) == cp1

    # inclusion of a receipt under a signed checkpoint, also after a JSON round trip
    proof = log.inclusion_for_job("job-3", size=cp1.size)
    check_inclusion(proof, cp1, receipt_leaf_hash("job-3", C2, _digest("bundle-job-3")))
    check_inclusion(InclusionProof.from_dict(proof.to_dict()), cp1)
    with pytest.raises(VerificationError):
        check_inclusion(proof, cp2)
    with pytest.raises(VerificationError):
        check_inclusion(proof, cp1, receipt_leaf_hash("job-3", C1, _digest("bundle-job-3")))
    with pytest.raises(VerificationError):
        dataclasses.replace(proof, index=2).verify()

    # the log between two checkpoints only grew
    cons = log.consistency(cp1.size, cp2.size)
    check_consistency(cp1, cp2, cons)
    check_consistency(cp1, cp2, ConsistencyProof.from_dict(cons.to_dict()))
    check_consistency(cp0, cp2, log.consistency(0))
    forged = dataclasses.replace(cp1, root=leaf_hash(b"another history"))
    with pytest.raises(VerificationError):
        check_consistency(forged, cp2, dataclasses.replace(cons, old_root=forged.root))

    # one flipped bit anywhere in the signed checkpoint is refused
    raw = note1.encode()
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(VerificationError):
            verify_checkpoint(bytes(bad), exchange.public_key)
    with pytest.raises(VerificationError, match="no signature by key"):
        verify_checkpoint(note1, Signer.generate().public_key)
    with pytest.raises(VerificationError, match="no signature by key"):  # another exchange's log origin
        verify_checkpoint(note1, exchange.public_key, "other.example.org/log")


def test_receipt_log_is_append_only(log):
    for i in range(3):
        _append(log, f"job-{i}", C1)
    with pytest.raises(ReplayError):
        _append(log, "job-1", C1)
    _append(log, "job-1", C2)  # job ids are unique per contract: under another contract it is another job
    assert log.size() == 4
    con = log.db.read()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE log_leaves SET job_id = 'x' WHERE idx = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM log_leaves WHERE idx = 2")
    # a row rewritten behind the triggers' back is refused when read
    con.execute("DROP TRIGGER log_leaves_no_update")
    con.execute("UPDATE log_leaves SET bundle_digest = ? WHERE idx = 1", (_digest("forged"),))
    with pytest.raises(VerificationError):
        log.root()
    with pytest.raises(InvalidInput):  # appending outside a transaction
        log.append(con, "job-9", C1, _digest("b"))
    with pytest.raises(NotFound):
        log.entry_for_job("no-such-job")


def test_settlement(log):
    exchange = Signer.generate()
    for i in range(6):
        _append(log, f"job-{i}", C1 if i in (0, 2, 5) else C2)
    s = log.settlement(C1, ORIGIN)
    assert s["count"] == 3
    assert [(j["job_id"], j["index"]) for j in s["jobs"]] == [("job-0", 0), ("job-2", 2), ("job-5", 5)]
    assert s["jobs"][1]["bundle_digest"] == _digest("bundle-job-2")
    assert (s["log_size"], s["log_root"]) == (6, log.root().hex())
    assert log.settlement(C1, ORIGIN, size=3)["count"] == 2
    assert log.settlement(_digest("unknown"), ORIGIN)["count"] == 0

    env = sign_settlement(log, C1, exchange, ORIGIN)
    p = verify_settlement(env, exchange.public_key, ORIGIN)
    assert {k: v for k, v in p.items() if k != "issued_at"} == s
    priced = verify_settlement(sign_settlement(log, C1, exchange, ORIGIN, price="100", owners=["b", "a", "c"]),
                               exchange.public_key)
    assert priced["price"] == "100" and priced["amounts"] == [
        {"owner": "a", "amount": "33.34"}, {"owner": "b", "amount": "33.33"}, {"owner": "c", "amount": "33.33"}]
    with pytest.raises(VerificationError, match="origin"):
        verify_settlement(env, exchange.public_key, "other.example.org/log")
    # every job listed is included under the root the settlement names
    cp = verify_checkpoint(log.checkpoint(exchange, ORIGIN), exchange.public_key, ORIGIN)
    assert cp.root.hex() == p["log_root"]
    for j in p["jobs"]:
        check_inclusion(log.inclusion_for_job(j["job_id"], size=p["log_size"]), cp,
                        receipt_leaf_hash(j["job_id"], C1, j["bundle_digest"]))
    with pytest.raises(VerificationError):
        verify_settlement(env, Signer.generate().public_key)
    with pytest.raises(VerificationError):
        verify_settlement(exchange.sign_statement("https://fedtrust.dev/LogCheckpoint/v1", p), exchange.public_key)


def test_module_exports():
    assert set(merkle.__all__) >= {"leaf_hash", "node_hash", "root_hash", "inclusion_proof", "verify_inclusion",
                                   "consistency_proof", "verify_consistency"}

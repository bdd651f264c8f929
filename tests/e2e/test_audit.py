"""C2SP signed-note checkpoints and `fedtrust audit …`: independent verifiers, and one flipped bit refused per input.

The note verifier below is written here from the C2SP signed-note and
tlog-checkpoint specs (https://c2sp.org/signed-note, /tlog-checkpoint) and
shares no code with fedtrust; the Go reference implementation's published
example (golang.org/x/mod/sumdb/note, note_test.go) pins the byte format.
"""
from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from typer.testing import CliRunner

from fedtrust.cli.main import app
from fedtrust.errors import Error, VerificationError
from fedtrust.exchange import audit
from fedtrust.exchange.receipt_log import ReceiptLog, sign_settlement
from fedtrust.sqlite import Database
from fedtrust.trust.credentials import public_key_pem
from fedtrust.trust.note import open_note, parse_verifier_key, sign_note, verifier_key
from fedtrust.trust.receipts import ReceiptBundle

from trust_world import World

ORIGIN = "exchange.example.org/log"

# golang.org/x/mod/sumdb/note note_test.go
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def spec_open_checkpoint(note: str, vkey: str) -> tuple[str, int, bytes]:
    """An independent C2SP verifier: the note must carry a valid signature by `vkey`; returns (origin, size, root)."""
    name, khash, key = vkey.split("+", 2)
    key = base64.b64decode(key)
    assert key[0] == 1 and len(key) == 33  # Ed25519
    assert hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex() == khash
    text, sigs = note[: note.rindex("\n\n") + 1], note[note.rindex("\n\n") + 2:]
    ok = False
    for line in sigs.splitlines():
        assert line.startswith("\u2014 ")
        sig_name, blob = line[2:].split(" ")
        blob = base64.b64decode(blob)
        if sig_name == name and blob[:4].hex() == khash:
            Ed25519PublicKey.from_public_bytes(key[1:]).verify(blob[4:], text.encode())  # raises if invalid
            ok = True
    assert ok, "no signature by the verifier key"
    origin, size, root = text.split("\n")[:3]
    return origin, int(size), base64.b64decode(root)


def test_sign_note_reproduces_the_go_reference_note_byte_for_byte():
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])  # PRIVATE+KEY+name+hash+base64(0x01 || seed)
    key = Ed25519PrivateKey.from_private_bytes(seed[1:])
    assert sign_note(GO_TEXT, "PeterNeumann", key) == GO_NOTE
    name, pub = parse_verifier_key(GO_VKEY)
    assert name == "PeterNeumann" and verifier_key(name, pub) == GO_VKEY
    assert open_note(GO_NOTE, name, pub) == GO_TEXT
    with pytest.raises(VerificationError, match="does not verify"):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), name, pub)


class Log:
    """An exchange's log with one receipt (World's, signed by real keys) and the files an auditor receives."""

    def __init__(self, root: Path) -> None:
        self.w = World()
        self.bundle = ReceiptBundle(self.w.contract_env, self.w.job_env, tuple(self.w.att_envs.values()),
                                    self.w.statement_env, self.w.ack_env)
        self.log = ReceiptLog(Database(root / "log.sqlite", ""))
        digest = self.w.contract_env.digest
        with self.log.db.write() as con:
            self.log.append(con, "earlier-job", digest, hashlib.sha256(b"earlier").hexdigest())
        self.old = self.log.checkpoint(self.w.exchange, ORIGIN)
        with self.log.db.write() as con:
            self.log.append(con, self.w.job.job_id, digest, self.bundle.digest)
            for i in range(3):
                self.log.append(con, f"later-{i}", digest, hashlib.sha256(b"later%d" % i).hexdigest())
        self.files = {
            "key": root / "exchange.pub", "old": root / "old.note", "new": root / "new.note",
            "inclusion": root / "inclusion.json", "consistency": root / "consistency.json",
            "receipt": root / "receipt.json", "settlement": root / "settlement.json",
        }
        self.files["key"].write_bytes(public_key_pem(self.w.exchange.public_key))
        self.files["old"].write_text(self.old)
        self.files["new"].write_text(self.log.checkpoint(self.w.exchange, ORIGIN))
        self.files["inclusion"].write_text(json.dumps(self.log.inclusion_for_job(self.w.job.job_id).to_dict()))
        self.files["consistency"].write_text(json.dumps(self.log.consistency(1).to_dict()))
        self.files["receipt"].write_bytes(self.bundle.to_json())
        self.files["settlement"].write_bytes(sign_settlement(
            self.log, digest, self.w.exchange, ORIGIN, price="100.50", owners=["node-a", "node-b"]).to_json())
        self.vkey = verifier_key(ORIGIN, self.w.exchange.public_key)


@pytest.fixture(scope="module")
def lg(tmp_path_factory) -> Log:
    return Log(tmp_path_factory.mktemp("audit"))


def test_checkpoint_opens_with_an_independent_c2sp_verifier(lg):
    origin, size, root = spec_open_checkpoint(lg.files["new"].read_text(), lg.vkey)
    assert (origin, size, root) == (ORIGIN, 5, lg.log.root())
    assert lg.files["new"].read_text().splitlines()[:3] == [ORIGIN, "5", base64.b64encode(lg.log.root()).decode()]


def _audits(f: dict[str, Path]) -> list:
    """The four audits over the files `f`; each loads the key itself, so a bad key file fails every one."""
    key = lambda: audit.load_key(str(f["key"]))  # noqa: E731
    return [
        lambda: audit.audit_checkpoint(f["new"], key()),
        lambda: audit.audit_inclusion(f["new"], key(), proof_file=f["inclusion"], receipt_file=f["receipt"]),
        lambda: audit.audit_consistency(f["old"], f["new"], key(), proof_file=f["consistency"]),
        lambda: audit.audit_settlement(f["settlement"], key(), checkpoint_file=f["new"]),
    ]


def test_audits_verify_the_genuine_files(lg):
    key = audit.load_key(str(lg.files["key"]))
    assert audit.audit_checkpoint(lg.files["new"], key)["checkpoint"]["size"] == 5
    inc = audit.audit_inclusion(lg.files["new"], key, proof_file=lg.files["inclusion"], receipt_file=lg.files["receipt"])
    assert inc["receipt_checked"] and inc["job_id"] == lg.w.job.job_id and inc["index"] == 1
    assert audit.audit_consistency(lg.files["old"], lg.files["new"], key, proof_file=lg.files["consistency"])["old"][
        "size"] == 1
    s = audit.audit_settlement(lg.files["settlement"], key, checkpoint_file=lg.files["new"])
    assert s["log_checked"] and s["settlement"]["count"] == 5 and s["settlement"]["price"] == "100.50"
    # a settlement against an older checkpoint needs the consistency proof between the two sizes
    with pytest.raises(Error, match="no consistency proof given"):
        audit.audit_settlement(lg.files["settlement"], key, checkpoint_file=lg.files["old"])
    # the verifier key works in place of exchange.pub, and carries the origin
    assert audit.audit_checkpoint(lg.files["new"], audit.load_key(lg.vkey))["valid"]
    with pytest.raises(VerificationError, match="no signature by key"):
        other = verifier_key("other.example.org/log", lg.w.exchange.public_key)
        audit.audit_checkpoint(lg.files["new"], audit.load_key(other))


def _flipped(data: bytes, positions: list[int]):
    for i in positions:
        bad = bytearray(data)
        bad[i] ^= 1 << (i * 7 % 8)
        yield i, bytes(bad)


@pytest.mark.parametrize("name", ["key", "old", "new", "inclusion", "consistency", "receipt", "settlement"])
def test_one_flipped_bit_in_any_input_is_refused(lg, tmp_path, name):
    data = lg.files[name].read_bytes()
    positions = list(range(len(data)))
    if name == "settlement":  # DSSE makes keyid an unauthenticated hint: a changed hint still names the same key
        env = json.loads(data)
        kid = data.index(env["signatures"][0]["keyid"].encode())
        positions = [i for i in positions if not kid <= i < kid + len(env["signatures"][0]["keyid"])]
    if len(positions) > 400:
        positions = sorted(random.Random(12).sample(positions, 400))
    files = dict(lg.files)
    target = files[name] = tmp_path / lg.files[name].name
    uses = {"key": [0, 1, 2, 3], "old": [2], "new": [0, 1, 2, 3], "inclusion": [1], "consistency": [2],
            "receipt": [1], "settlement": [3]}[name]
    target.write_bytes(data)
    for j in uses:
        _audits(files)[j]()  # the untouched copy verifies
    for i, bad in _flipped(data, positions):
        target.write_bytes(bad)
        for j in uses:  # a fedtrust error (one line at the CLI), whatever the bit hit
            with pytest.raises(Error):
                _audits(files)[j]()


def test_audit_cli_prints_json_and_one_line_errors(lg, tmp_path):
    runner = CliRunner()
    f = lg.files
    r = runner.invoke(app, ["audit", "inclusion", str(f["new"]), "--key", str(f["key"]), "--proof", str(f["inclusion"]),
                            "--receipt", str(f["receipt"]), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["job_id"] == lg.w.job.job_id
    r = runner.invoke(app, ["audit", "settlement", str(f["settlement"]), "--key", lg.vkey])
    assert r.exit_code == 0 and "price 100.50: node-a 50.25, node-b 50.25" in r.stdout
    r = runner.invoke(app, ["audit", "consistency", str(f["old"]), str(f["new"]), "--key", str(f["key"]),
                            "--proof", str(f["consistency"]), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["new"]["size"] == 5

"""Remembered contract verifications never accept an envelope that would fail verification."""
from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedtrust.demo.federation import build_federation
from fedtrust.errors import VerificationError
from fedtrust.trust.contracts import verify_contract
from fedtrust.trust.credentials import load_identity
from fedtrust.trust.dsse import Envelope


def test_a_verified_contract_is_remembered_only_for_the_same_envelope_and_key(tmp_path):
    fed = build_federation(tmp_path, {"a": 100, "b": 100})
    env = Envelope.from_json(fed.contract_path.read_bytes())
    key = load_identity(fed.buyer_dir).exchange_key
    first = verify_contract(env, key)
    assert verify_contract(env, key) is first  # remembered
    # the same payload with every signature forged: not served from memory
    forged = dataclasses.replace(env, signatures=tuple(dataclasses.replace(s, sig=bytes(64)) for s in env.signatures))
    with pytest.raises(VerificationError, match="does not verify|no signature"):
        verify_contract(forged, key)
    # another exchange key: not served from memory either
    with pytest.raises(VerificationError):
        verify_contract(env, Ed25519PrivateKey.generate().public_key())
    # a changed payload under the original signatures
    altered = dataclasses.replace(env, payload=env.payload.replace(b'"a"', b'"z"', 1))
    with pytest.raises(VerificationError):
        verify_contract(altered, key)

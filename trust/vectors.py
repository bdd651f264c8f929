"""Signed round vectors: what lets every node add a training round's masked vectors itself.

Each node signs, with its Ed25519 key, the claim (node, job digest, phase,
round, sha256 of the masked vector) of every vector it releases. The
coordinator forwards all participants' vectors of a phase, with these
signatures, to every node; `verify_round_vectors` is what a node checks
before it adds them: one vector from each participant of the job — none
missing, none extra, none twice — each signed by that participant (key from
the exchange-signed contract) for exactly this job, phase and round. So a
coordinator can neither forge, alter, swap, drop, duplicate nor replay a
vector from another job or round without the node refusing.

The signature covers the DSSE pre-authentication encoding of the claim's
canonical JSON under its own payload type, so it can never be mistaken for a
signature over any other fedtrust object.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

from cryptography.exceptions import InvalidSignature

from fedtrust.errors import VerificationError
from fedtrust.trust.canonical import canonical
from fedtrust.trust.contracts import Contract
from fedtrust.trust.credentials import signing_public_key
from fedtrust.trust.dsse import Signer, pae

__all__ = ["VECTOR_PAYLOAD_TYPE", "VectorClaim", "SignedVector", "sign_vector", "check_participant_set", "verify_round_vectors"]

VECTOR_PAYLOAD_TYPE = "application/vnd.fedtrust.round-vector.v1+json"


@dataclass(frozen=True)
class VectorClaim:
    node: str
    job_digest: str
    phase: str
    round: int
    vector_digest: str

    def message(self) -> bytes:
        return pae(VECTOR_PAYLOAD_TYPE, canonical({"node": self.node, "job_digest": self.job_digest,
                                                   "phase": self.phase, "round": self.round,
                                                   "vector_digest": self.vector_digest}))


@dataclass(frozen=True)
class SignedVector:
    """One participant's vector as relayed: the claim's fields as sent, the signature, the bytes."""

    node: str
    job_digest: str
    phase: str
    round: int
    signature: bytes
    vector: bytes

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the vector bytes, computed once (a model-sized vector is hashed on every check)."""
        return hashlib.sha256(self.vector).hexdigest()


def sign_vector(signer: Signer, node: str, job_digest: str, phase: str, rnd: int, vector: bytes,
                digest: str | None = None) -> bytes:
    """The node's signature over the claim of `vector` (`digest`: its sha256 hex, when the caller has it)."""
    claim = VectorClaim(node, job_digest, phase, rnd, digest or hashlib.sha256(vector).hexdigest())
    return signer.private_key.sign(claim.message())


def check_participant_set(nodes: Sequence[str], participants: Sequence[str], phase: str, rnd: int) -> None:
    """Exactly one relayed vector from each participant of the job; VerificationError otherwise."""
    seen: set[str] = set()
    for node in nodes:
        if node in seen:
            raise VerificationError(f"the relayed vectors of {phase} round {rnd} hold node {node}'s vector twice; "
                                    "each participant's vector is added exactly once")
        if node not in participants:
            raise VerificationError(f"the relayed vectors of {phase} round {rnd} hold one from {node}, who is not "
                                    "a participant of the job")
        seen.add(node)
    missing = [n for n in participants if n not in seen]
    if missing:
        raise VerificationError(f"the relayed vectors of {phase} round {rnd} lack node {missing[0]}'s; masks cancel "
                                "only in the sum over every participant")


def verify_round_vectors(contract: Contract, job_digest: str, participants: Sequence[str], phase: str, rnd: int,
                         items: Sequence[SignedVector]) -> dict[str, bytes]:
    """node -> vector for exactly the job's participants; VerificationError naming the first broken rule."""
    check_participant_set([it.node for it in items], participants, phase, rnd)
    for it in items:
        if it.job_digest != job_digest:
            raise VerificationError(f"node {it.node}'s relayed vector was signed for another job; only this job's "
                                    "vectors are added")
        if it.phase != phase or it.round != rnd:
            raise VerificationError(f"node {it.node}'s relayed vector was signed for {it.phase} round {it.round}, not "
                                    f"{phase} round {rnd}; vectors of other rounds are never added")
        claim = VectorClaim(it.node, job_digest, phase, rnd, it.digest)
        try:
            signing_public_key(contract.holding(it.node).credential).verify(it.signature, claim.message())
        except InvalidSignature:
            raise VerificationError(f"node {it.node}'s signature does not cover the relayed vector of {phase} round "
                                    f"{rnd}; it was forged or altered") from None
    return {it.node: it.vector for it in sorted(items, key=lambda it: participants.index(it.node))}

"""Protobuf ↔ frozen dataclasses at the wire edge: one `x_to_proto` / `x_from_proto` pair per shared shape.

Servicers and clients convert here and nowhere else, so both ends of a message agree by construction and the
code behind them sees only dataclasses (`fedtrust.progress`, `fedtrust.trust.vectors`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedtrust.errors import InvalidInput
from fedtrust.progress import JobState, Progress
from fedtrust.trust.vectors import SignedVector
from fedtrust.v1 import common_pb2, coordinator_pb2, node_pb2

__all__ = [
    "progress_to_proto",
    "progress_from_proto",
    "job_state_to_proto",
    "job_state_from_proto",
    "vectors_to_proto",
    "vectors_from_proto",
]


def progress_to_proto(p: Progress) -> common_pb2.Progress:
    has = p.has_metrics
    return common_pb2.Progress(stage=p.stage, done=p.done, total=p.total, message=p.message, round=p.round,
                               rounds=p.rounds, phase=p.phase, has_metrics=has,
                               loss=p.loss if has else 0.0, accuracy=p.accuracy if has else 0.0)


def progress_from_proto(m: Any) -> Progress:
    return Progress(m.stage, m.done, m.total, m.message, m.round, m.rounds, m.phase,
                    m.loss if m.has_metrics else None, m.accuracy if m.has_metrics else None)


def job_state_to_proto(s: Any) -> coordinator_pb2.JobStatus:
    """A `JobState` (or the coordinator's `JobRecord`, which has its fields) as a `JobStatus`."""
    return coordinator_pb2.JobStatus(
        job_id=s.job_id, state=s.state, error=s.error, contract_digest=s.contract_digest,
        participants=list(s.participants), created_at=s.created_at, updated_at=s.updated_at, kind=s.kind,
        stage=s.stage, round=s.round, rounds=s.rounds, answered=s.answered, heartbeat_at=s.heartbeat_at)


def job_state_from_proto(m: Any) -> JobState:
    return JobState(m.job_id, m.state, m.error, m.contract_digest, tuple(m.participants), m.created_at,
                    m.updated_at, m.kind or "query", m.stage, m.round, m.rounds, m.answered, m.heartbeat_at)


def vectors_to_proto(vectors: Sequence[SignedVector]) -> tuple[list[node_pb2.SignedVector], list[bytes]]:
    """(the vectors' claims for a `ForwardHeader`, their bytes in the same order)."""
    return ([node_pb2.SignedVector(node=v.node, job_digest=v.job_digest, phase=v.phase, round=v.round,
                                   signature=v.signature, vector_size=len(v.vector)) for v in vectors],
            [v.vector for v in vectors])


def vectors_from_proto(claims: Sequence[Any], data: bytes) -> list[SignedVector]:
    """The forwarded vectors: each claim with its `vector_size` bytes of `data`, which they must use up exactly."""
    if sum(c.vector_size for c in claims) != len(data):
        raise InvalidInput("the forwarded vectors' sizes do not add up to their data; the sender is broken")
    out, pos = [], 0
    for c in claims:
        out.append(SignedVector(c.node, c.job_digest, c.phase, c.round, c.signature, data[pos:pos + c.vector_size]))
        pos += c.vector_size
    return out

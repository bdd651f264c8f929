"""A job's progress: the one shape a stage or round takes from the worker to the coordinator to the buyer's CLI.

Query and vertical jobs fill `stage`, `done`, `total` and `message`; training jobs add the round, the phase and
the round's aggregate `loss`/`accuracy` (example-weighted means over every participant, never one node's; None
when not yet known). `fedtrust.transport.serde` carries it over gRPC (`common.proto`'s `Progress`); the
coordinator's training worker sends it over its local pipe as `to_dict()`. `JobState` is a job's status as the
coordinator reports it (`fedtrust job status`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["Progress", "JobState"]


@dataclass(frozen=True)
class Progress:
    stage: str  # "admitting", "dispatched", "node-released", "node-answered", "aggregated", "succeeded", …
    done: int = 0  # participants that have answered (this phase, for training)
    total: int = 0  # participants in the job
    message: str = ""  # human-readable, never a data value
    round: int = 0  # training: the round (1-based; 0 before the first)
    rounds: int = 0  # training: rounds in the job
    phase: str = ""  # training: "train" or "evaluate"
    loss: float | None = None  # training, stage "aggregated": the round's aggregate loss
    accuracy: float | None = None

    @property
    def has_metrics(self) -> bool:
        return self.loss is not None and self.accuracy is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Progress":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str  # "running", "succeeded", "failed", "cancelled"
    error: str
    contract_digest: str
    participants: tuple[str, ...]
    created_at: str
    updated_at: str
    kind: str = "query"
    stage: str = ""
    round: int = 0
    rounds: int = 0
    answered: int = 0
    heartbeat_at: str = ""

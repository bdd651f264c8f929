"""The job kinds this coordinator dispatches: one handler per kind, registered by name.

A handler is constructed with the coordinator's core (`CoordinatorRuntime`:
identity, job store, contract and job checks, the admission phase, node
channels) and runs its kind's jobs from its own submit RPC (`SubmitQuery`,
`SubmitTraining`, `SubmitVertical`), which looks its handler up here; each
refuses a job of another kind (`JobSpec.payload_as`). Adding a kind: its
payload module (registered with `fedtrust.trust.kinds`), its handler module
here, and one line in `HANDLERS`.
"""
from __future__ import annotations

from typing import ClassVar, Protocol, TypeVar

from fedtrust.coordinator.mpc_job import JointJobs, MpcStatsJobs, VerticalLRJobs
from fedtrust.coordinator.query_job import QueryJobs
from fedtrust.coordinator.runtime import CoordinatorRuntime
from fedtrust.coordinator.training_job import TrainingJobs
from fedtrust.coordinator.vertical_job import VerticalJobs
from fedtrust.errors import PolicyViolation

__all__ = ["HANDLERS", "CoordinatorKinds", "KindHandler"]


class KindHandler(Protocol):
    kind: ClassVar[str]

    def __init__(self, runtime: CoordinatorRuntime) -> None: ...


#: the coordinator's job kinds, one handler class each
HANDLERS: tuple[type[KindHandler], ...] = (QueryJobs, TrainingJobs, VerticalJobs, MpcStatsJobs, JointJobs,
                                          VerticalLRJobs)

H = TypeVar("H", bound=KindHandler)


class CoordinatorKinds:
    """One handler instance per kind, built from the coordinator's core."""

    def __init__(self, runtime: CoordinatorRuntime, handlers: tuple[type[KindHandler], ...] = HANDLERS) -> None:
        self.runtime = runtime
        self.by_kind: dict[str, KindHandler] = {cls.kind: cls(runtime) for cls in handlers}

    def get(self, cls: type[H]) -> H:
        found = self.by_kind.get(cls.kind)
        if not isinstance(found, cls):
            raise PolicyViolation(f"this coordinator does not run {cls.kind} jobs")
        return found

"""The job kinds this node serves: one handler per kind, registered by name.

A handler is constructed with the node's core (`NodeRuntime`: identity,
ledger, contract and job checks) and implements `admit` (phase one: every
check of its kind, nothing spent), which `NodeService.AdmitJob` dispatches by
the signed job's kind; its run phase is the kind's own RPC (`RunQuery`,
`TrainRound`/`ForwardRound`/`FinishTraining`, `PsiStep`), which looks its
handler up here too. Adding a kind: its payload module (registered with
`fedtrust.trust.kinds`), its handler module here, and one line in `HANDLERS`.
"""
from __future__ import annotations

from typing import ClassVar, Protocol, TypeVar

from fedtrust.errors import PolicyViolation
from fedtrust.node.mpc_runtime import JointRuntime, MpcStatsRuntime, VerticalLRRuntime
from fedtrust.node.query_runtime import QueryRuntime
from fedtrust.node.runtime import CheckedJob, NodeRuntime
from fedtrust.node.training_runtime import TrainingRuntime
from fedtrust.node.vertical_runtime import PsiRuntime

__all__ = ["HANDLERS", "KindHandler", "NodeKinds"]


class KindHandler(Protocol):
    kind: ClassVar[str]

    def __init__(self, node: NodeRuntime) -> None: ...

    def admit(self, checked: CheckedJob) -> object:
        """Every check of this kind before anything runs; spends nothing (an Error names the rule broken). What it
        returns (a kind's planned charge, or None) is the handler's own."""
        ...


#: the node's job kinds, one handler class each
HANDLERS: tuple[type[KindHandler], ...] = (QueryRuntime, TrainingRuntime, PsiRuntime, MpcStatsRuntime, JointRuntime,
                                          VerticalLRRuntime)

H = TypeVar("H", bound=KindHandler)


class NodeKinds:
    """One handler instance per kind, built from the node's core."""

    def __init__(self, node: NodeRuntime, handlers: tuple[type[KindHandler], ...] = HANDLERS) -> None:
        self.node = node
        self.by_kind: dict[str, KindHandler] = {cls.kind: cls(node) for cls in handlers}

    def handler(self, kind: str) -> KindHandler:
        found = self.by_kind.get(kind)
        if found is None:
            raise PolicyViolation(f"this node does not serve {kind} jobs (it serves: {', '.join(sorted(self.by_kind))})")
        return found

    def get(self, cls: type[H]) -> H:
        """The handler of class `cls` (for the kind's own RPCs)."""
        found = self.by_kind.get(cls.kind)
        if not isinstance(found, cls):
            raise PolicyViolation(f"this node does not serve {cls.kind} jobs")
        return found

    def admit(self, checked: CheckedJob) -> None:
        self.handler(checked.job.kind).admit(checked)

"""A client call is bounded by its own clock too: `cancel_late` cancels a call gRPC's deadline failed to end."""
from __future__ import annotations

import threading

import grpc
import pytest

from fedtrust.errors import NodeUnreachable
from fedtrust.transport import status


class _StuckCall(grpc.RpcError):
    """A response stream whose deadline never fires: waiting ends only when the call is cancelled."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> bool:
        self.cancelled.set()
        return True

    def wait(self) -> None:
        if not self.cancelled.wait(30):
            raise AssertionError("the call was never cancelled")
        raise self  # what gRPC raises from a cancelled call's iterator


def test_a_call_that_outlives_its_deadline_is_cancelled_and_names_the_peer(monkeypatch):
    monkeypatch.setattr(status, "LOCAL_GRACE_S", 0.05)
    call = _StuckCall()
    with pytest.raises(NodeUnreachable, match=r"node bank-b did not answer in time \(0.1 s; the call was cancelled\)"):
        with status.cancel_late(call, 0.1, "node bank-b"):
            call.wait()
    assert call.cancelled.is_set()


def test_a_call_that_ends_in_time_is_left_alone(monkeypatch):
    monkeypatch.setattr(status, "LOCAL_GRACE_S", 0.05)
    call = _StuckCall()
    with status.cancel_late(call, 0.1, "node bank-b"):
        pass
    with pytest.raises(grpc.RpcError):  # a failure of the call itself passes through unchanged
        with status.cancel_late(call, 10, "node bank-b"):
            raise call
    threading.Event().wait(0.3)
    assert not call.cancelled.is_set()

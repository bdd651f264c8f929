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


# -- every streaming call goes through `calling(peer, timeout)`, which applies `cancel_late` by itself -------------
class _StuckStream(_StuckCall):
    """A response iterator that yields nothing until it is cancelled."""

    def __iter__(self):
        return self

    def __next__(self):
        self.wait()


class _StuckFuture(_StuckCall):
    def result(self):
        if not self.cancelled.wait(30):
            raise AssertionError("the call was never cancelled")
        raise grpc.FutureCancelledError()


class _Method:
    """A stub's method: records the timeout it was called with and returns `call`."""

    def __init__(self, call) -> None:
        self.call, self.timeouts = call, []

    def __call__(self, request, timeout=None):
        self.timeouts.append(timeout)
        return self.call

    def future(self, request, timeout=None):
        return self(request, timeout)


LATE = r"node bank-b did not answer in time \(0.1 s; the call was cancelled\)"


def test_a_stream_past_its_deadline_is_cancelled_and_names_the_peer(monkeypatch):
    monkeypatch.setattr(status, "LOCAL_GRACE_S", 0.05)
    method = _Method(_StuckStream())
    with pytest.raises(NodeUnreachable, match=LATE):
        with status.calling("node bank-b", 0.1) as calls:
            for _ in calls.stream(method, object()):
                pass
    assert method.call.cancelled.is_set() and method.timeouts == [0.1]  # gRPC's own deadline is set too


def test_a_future_past_its_deadline_is_cancelled_and_names_the_peer(monkeypatch):
    monkeypatch.setattr(status, "LOCAL_GRACE_S", 0.05)
    method = _Method(_StuckFuture())
    with pytest.raises(NodeUnreachable, match=LATE):
        with status.calling("node bank-b", 0.1) as calls:
            calls.future(method, object()).result()
    assert method.call.cancelled.is_set() and method.timeouts == [0.1]


def test_a_call_that_ends_in_time_leaves_no_timer(monkeypatch):
    monkeypatch.setattr(status, "LOCAL_GRACE_S", 0.05)
    call = _StuckStream()
    with status.calling("node bank-b", 0.1) as calls:
        calls.stream(_Method(call), object())
    threading.Event().wait(0.3)
    assert not call.cancelled.is_set()


def test_a_call_without_a_timeout_is_not_started():
    method = _Method(_StuckStream())
    with pytest.raises(TypeError, match=r"use calling\(peer, timeout\)"):
        with status.calling("node bank-b") as calls:
            calls.stream(method, object())
    assert method.timeouts == []


def _streaming_and_future_rpcs() -> set[str]:
    """The name of every RPC of fedtrust's protos that streams requests or replies."""
    import importlib
    import pkgutil

    import fedtrust.v1

    names = set()
    for mod in pkgutil.iter_modules(fedtrust.v1.__path__):
        if mod.name.endswith("_pb2"):
            for service in importlib.import_module(f"fedtrust.v1.{mod.name}").DESCRIPTOR.services_by_name.values():
                names |= {m.name for m in service.methods if m.client_streaming or m.server_streaming}
    return names


def test_no_client_starts_a_streaming_call_or_a_future_outside_calling():
    """A streaming RPC called directly (`stub.RunQuery(...)`) or a `.future(...)` would have no local bound: every
    one in the package goes through `calling(peer, timeout).stream/.future`, which cancels it past its deadline."""
    import ast
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    streaming = _streaming_and_future_rpcs()
    assert {"RunQuery", "TrainRound", "PsiStep", "Session", "SubmitQuery", "SubmitMpc"} <= streaming
    dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    direct = []
    for folder in {root / d for d in dirs}:
        for f in folder.rglob("*.py"):
            if "_pb2" in f.name or f == root / "transport" / "status.py":  # (where `Calls` starts them)
                continue
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                # `stub.RunQuery(...)`, or `stub.ForwardRound.future(...)` (not `calls.future(stub.ForwardRound, …)`)
                if node.func.attr in streaming or (node.func.attr == "future"
                                                   and isinstance(node.func.value, ast.Attribute)):
                    direct.append(f"{f.relative_to(root)}:{node.lineno} {ast.unparse(node.func)}")
    assert not direct, f"start these with calling(peer, timeout).stream / .future: {direct}"

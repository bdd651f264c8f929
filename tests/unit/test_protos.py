"""The committed protobuf stubs match the .proto sources and import cleanly.

Regenerates every stub into a temporary directory with `protos/generate.py`
and compares it byte for byte with the committed file next to the .proto.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIX = "python protos/generate.py"


def _load_generate():
    spec = importlib.util.spec_from_file_location("fedtrust_protos_generate", ROOT / "protos" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_current(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to regenerate the stubs")
    gen = _load_generate()
    written = gen.generate(tmp_path)
    assert written, "no .proto files found under protos/fedtrust/v1"
    stale = []
    for rel in written:
        fresh = (tmp_path / rel).read_bytes()
        committed = ROOT / "protos" / rel
        if not committed.exists():
            stale.append(f"{committed.relative_to(ROOT)} is missing")
        elif committed.read_bytes() != fresh:
            stale.append(f"{committed.relative_to(ROOT)} differs from its .proto")
    assert not stale, (
        "generated protobuf stubs are out of date: "
        + "; ".join(stale)
        + f". Regenerate them with `{FIX}` (from the repository root) and commit the result."
    )


@pytest.mark.parametrize("name", ["common", "node", "coordinator"])
def test_stubs_import(name):
    pb2 = importlib.import_module(f"fedtrust.v1.{name}_pb2")
    importlib.import_module(f"fedtrust.v1.{name}_pb2_grpc")
    assert pb2.DESCRIPTOR.package == "fedtrust.v1"


def test_messages_round_trip():
    from fedtrust.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc, node_pb2, node_pb2_grpc

    event = coordinator_pb2.JobEvent(progress=common_pb2.Progress(stage="accepted", done=0, total=3))
    again = coordinator_pb2.JobEvent.FromString(event.SerializeToString())
    assert again.WhichOneof("part") == "progress" and again.progress.total == 3
    req = node_pb2.QueryRequest(header=node_pb2.QueryHeader(he_context_size=2**40))
    assert node_pb2.QueryRequest.FromString(req.SerializeToString()).header.he_context_size == 2**40
    assert hasattr(node_pb2_grpc, "add_NodeServiceServicer_to_server")
    assert hasattr(coordinator_pb2_grpc, "CoordinatorServiceStub")

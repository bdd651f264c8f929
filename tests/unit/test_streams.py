"""The one wire edge: chunked streams within limits and deadlines, and the protobuf ↔ dataclass pairs (serde)."""
from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedtrust.errors import InvalidInput, NodeUnreachable
from fedtrust.progress import JobState, Progress
from fedtrust.transport import limits
from fedtrust.transport.serde import (
    job_state_from_proto,
    job_state_to_proto,
    progress_from_proto,
    progress_to_proto,
    vectors_from_proto,
    vectors_to_proto,
)
from fedtrust.transport.streams import (
    deadline_after,
    read_chunks_then,
    read_header_first,
    read_parts,
    send_chunks_then,
    send_header_first,
)
from fedtrust.trust.vectors import SignedVector
from fedtrust.v1 import coordinator_pb2, node_pb2


def _psi_like(payload: bytes, declared: int | None = None):
    header = node_pb2.TrainHeader(job_envelope=b"j", contract_envelope=b"c",
                                  message_size=len(payload) if declared is None else declared)
    return send_header_first(node_pb2.TrainRequest, "header", header, "message_chunk", payload)


def _read(requests, limit=10 * limits.CHUNK_BYTES, deadline=None):
    return read_header_first(iter(requests), size="message_size", chunk_field="message_chunk", limit=limit,
                             what="the round's Flower message", deadline=deadline)


def test_header_first_round_trip_in_chunks():
    payload = bytes(range(256)) * (limits.CHUNK_BYTES // 128 + 3)  # three chunks, the last one short
    msgs = list(_psi_like(payload))
    assert [m.WhichOneof("part") for m in msgs] == ["header"] + ["message_chunk"] * 3
    assert all(len(m.message_chunk) <= limits.CHUNK_BYTES for m in msgs[1:])
    header, data = _read(msgs)
    assert data == payload and header.message_size == len(payload)


def test_a_declared_size_over_the_limit_is_refused_before_any_chunk_is_read():
    def requests():
        yield from list(_psi_like(b"", declared=1000))[:1]
        raise AssertionError("read a chunk after the header declared too much")

    with pytest.raises(InvalidInput, match="exceeds the limit of 100 bytes"):
        _read(requests(), limit=100)


@pytest.mark.parametrize("declared, sent, rule", [(10, 11, "longer than its declared size"),
                                                  (10, 9, "ended after 9 of its declared 10")])
def test_a_payload_must_be_exactly_its_declared_size(declared, sent, rule):
    with pytest.raises(InvalidInput, match=rule):
        _read(_psi_like(b"x" * sent, declared=declared))


def test_only_chunks_follow_the_header_and_the_stream_starts_with_one():
    msgs = list(_psi_like(b"abc"))
    with pytest.raises(InvalidInput, match="only message_chunk messages may follow the header"):
        _read(msgs + [msgs[0]])
    with pytest.raises(InvalidInput, match="must start with a header message"):
        _read(msgs[1:])
    with pytest.raises(InvalidInput, match="must start with a header message"):
        _read([])


def test_oversized_envelopes_in_the_header_are_refused():
    header = node_pb2.TrainHeader(job_envelope=b"j" * (limits.MAX_ENVELOPE_BYTES + 1), contract_envelope=b"c")
    with pytest.raises(InvalidInput, match="job spec or contract exceeds"):
        _read([node_pb2.TrainRequest(header=header)])


def test_a_stream_still_arriving_after_its_deadline_is_refused():
    with pytest.raises(NodeUnreachable, match="still arriving after its deadline"):
        _read(_psi_like(b"abc"), deadline=time.monotonic() - 1)
    assert deadline_after(None) <= time.monotonic() + limits.STREAM_SECONDS
    assert deadline_after(10 ** 9) <= time.monotonic() + limits.STREAM_SECONDS  # never longer than the cap


def test_chunks_then_close_round_trip_and_size_check():
    release = node_pb2.RoundRelease(phase="train", round=1, vector_size=5)
    msgs = list(send_chunks_then(node_pb2.TrainReply, "vector_chunk", b"12345", "release", release))
    got, data = read_chunks_then(msgs, chunk_field="vector_chunk", last_field="release", size_field="vector_size",
                                 limit=5, what="node a's vector")
    assert data == b"12345" and got.round == 1
    with pytest.raises(InvalidInput, match="exceeds 4 bytes"):
        read_chunks_then(msgs, chunk_field="vector_chunk", last_field="release", limit=4, what="node a's vector")
    lying = list(send_chunks_then(node_pb2.TrainReply, "vector_chunk", b"1234", "release", release))
    with pytest.raises(InvalidInput, match="does not match the size its release states"):
        read_chunks_then(lying, chunk_field="vector_chunk", last_field="release", size_field="vector_size",
                         limit=5, what="node a's vector")
    with pytest.raises(InvalidInput, match="chunks that no message claims"):
        read_chunks_then(msgs[:-1], chunk_field="vector_chunk", last_field="release", limit=5, what="node a's vector")
    with pytest.raises(InvalidInput, match="ended without its release"):
        read_chunks_then([], chunk_field="vector_chunk", last_field="release", limit=5, what="node a's vector")


def test_read_parts_splits_a_stream_of_several_payloads_and_refuses_unclaimed_chunks():
    def relayed(node, cts):
        return send_chunks_then(coordinator_pb2.JobEvent, "ciphertext_chunk", cts, "relayed",
                                coordinator_pb2.RelayedRelease(node=node, ciphertext_sizes=[len(c) for c in cts]))

    msgs = [coordinator_pb2.JobEvent(progress=progress_to_proto(Progress("dispatched", 0, 2)))]
    msgs += list(relayed("a", [b"aa", b"aaa"])) + list(relayed("b", [b"b"]))
    got = [(part, data) for part, _, data in read_parts(msgs, "ciphertext_chunk", 10, "relayed ciphertexts")]
    assert got == [("progress", b""), ("relayed", b"aaaaa"), ("relayed", b"b")]
    with pytest.raises(InvalidInput, match="chunks that no message claims"):
        list(read_parts(msgs + [coordinator_pb2.JobEvent(ciphertext_chunk=b"x")], "ciphertext_chunk", 10, "x"))
    with pytest.raises(InvalidInput, match="exceeds 4 bytes"):  # the limit holds per payload, while it arrives
        list(read_parts(msgs, "ciphertext_chunk", 4, "relayed ciphertexts"))


def test_several_blobs_travel_as_one_chunk_stream():
    blobs = [b"x" * (limits.CHUNK_BYTES + 1), b"", b"y" * 3]
    msgs = list(send_chunks_then(coordinator_pb2.TrainingEvent, "model_chunk", blobs, "outcome",
                                 coordinator_pb2.TrainingOutcome(model_size=sum(map(len, blobs)))))
    _, data = read_chunks_then(msgs, chunk_field="model_chunk", last_field="outcome", size_field="model_size",
                               limit=2 * limits.CHUNK_BYTES, what="the model")
    assert data == b"".join(blobs)


@given(st.builds(Progress, st.text(max_size=20), st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1),
                 st.text(max_size=40), st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1),
                 st.sampled_from(["", "train", "evaluate"]),
                 st.one_of(st.none(), st.floats(allow_nan=False)), st.one_of(st.none(), st.floats(allow_nan=False))))
def test_progress_round_trips_through_its_one_proto(p):
    back = progress_from_proto(progress_to_proto(p))
    if p.has_metrics:
        assert back == p
    else:  # metrics travel only as a pair
        assert back.loss is None and back.accuracy is None and back.stage == p.stage and back.round == p.round
    assert Progress.from_dict(p.to_dict()) == p


def test_job_state_and_signed_vectors_round_trip():
    s = JobState("j1", "running", "", "c" * 64, ("a", "b"), "t0", "t1", "train", "aggregated", 2, 5, 1, "t2")
    assert job_state_from_proto(job_state_to_proto(s)) == s
    vs = [SignedVector("a", "d", "train", 1, b"sa", b"12"), SignedVector("b", "d", "train", 1, b"sb", b"345")]
    claims, blobs = vectors_to_proto(vs)
    assert vectors_from_proto(claims, b"".join(blobs)) == vs
    with pytest.raises(InvalidInput, match="do not add up"):
        vectors_from_proto(claims, b"1234")

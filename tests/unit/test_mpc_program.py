"""The MPC program interface (privacy.mpc.program) and the dealer (privacy.mpc.dealer), in process: exact results
from shares the buyer adds, every tuple dealt by a party that computes nothing, and what the relay and the dealer
see (sealed frames; requests with shapes only)."""

import json

import pytest
import torch

from fedtrust.errors import VerificationError
from fedtrust.privacy import crypten_shim
from fedtrust.privacy.mpc import dealer as dealer_mod
from fedtrust.privacy.mpc.program import (
    MpcProgram,
    MpcProgramError,
    combine_shares,
    program,
    register,
    run_in_process,
    share_input,
    share_of,
)

X = {"a": torch.tensor([1.5, -2.0, 3.0, 100.0]), "b": torch.tensor([2.0, -3.5, 1.0, -100.0]),
     "c": torch.tensor([0.25, 7.0, -1.0, 5.0])}
seen_providers = []


def _compute(ctx, inputs):
    seen_providers.append(type(crypten_shim.load().mpc.get_default_provider()).__name__)
    xs = [share_input(ctx, inputs["x"] if r == ctx.rank else None, r, (4,)) for r in range(ctx.world_size)]
    total, top = xs[0], xs[0]
    for x in xs[1:]:
        total = total + x
        gt = top > x
        top = gt * top + (1 - gt) * x
    return {"sum": share_of(total), "max": share_of(top), "prod": share_of(xs[0] * xs[1]),
            "gt": share_of(xs[0] > xs[1])}


PROGRAM = MpcProgram("test-three", lambda ctx: {"x": X[ctx.name]}, _compute, lambda job, out: out)


class Relay:
    """Sits where the coordinator sits: records every sealed frame, may tamper with one."""

    def __init__(self, tamper_at=None):
        self.frames, self.tamper_at, self.count = [], tamper_at, 0

    def __call__(self, rank, link):
        relay = self

        class _L:
            def send(self, dst, frame):
                relay.frames.append((rank, dst, frame))
                relay.count += 1
                if relay.tamper_at is not None and relay.count == relay.tamper_at:
                    frame = frame[:-1] + bytes([frame[-1] ^ 1])
                link.send(dst, frame)

            def recv(self, src):
                return link.recv(src)
        return _L()


def test_three_owners_and_a_dealer_compute_exactly_and_the_relay_reads_nothing():
    relay = Relay()
    seen_providers.clear()
    run = run_in_process(PROGRAM, {"a": None, "b": None, "c": None}, relay=relay, timeout_s=60)
    out = run.result
    assert torch.allclose(out["sum"], (X["a"] + X["b"] + X["c"]).double(), atol=1e-4)
    assert out["max"].tolist() == [2.0, 7.0, 3.0, 100.0]
    assert torch.allclose(out["prod"], (X["a"] * X["b"]).double(), atol=1e-2)
    assert out["gt"].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert seen_providers == ["LinkTupleProvider"] * 3  # never CrypTen's trusted-first-party
    assert run.dealt > 0
    encoded = [int(v * 2 ** 16).to_bytes(8, "little", signed=True) for t in X.values() for v in t.tolist()]
    for _, _, frame in relay.frames:
        assert b'"dtype"' not in frame and b'"fn"' not in frame
        assert not any(e in frame for e in encoded)
    # the dealer (rank 3) only ever heard from party 0, and sent each party one seed plus answers to party 0
    assert {src for src, dst, _ in relay.frames if dst == 3} == {0}
    assert sum(1 for src, dst, _ in relay.frames if src == 3 and dst in (1, 2)) == 2


def test_one_party_share_alone_is_noise_and_only_the_sum_decodes():
    run = run_in_process(PROGRAM, {"a": None, "b": None, "c": None}, timeout_s=60)
    one = run.shares[0]["sum"]
    assert not torch.equal(one, combine_shares(run.shares)["sum"])
    assert one.abs().min() > 2 ** 40  # uniform ring elements, not values near the answer


def test_a_relay_that_flips_a_dealer_or_party_frame_fails_the_session():
    with pytest.raises(VerificationError, match="does not open"):
        run_in_process(PROGRAM, {"a": None, "b": None, "c": None}, relay=Relay(tamper_at=7), timeout_s=20)


def test_what_the_dealer_receives_is_requests_with_shapes_only():
    heard = []

    class Spy:
        def __init__(self, link):
            self.link = link

        def send(self, dst, frame):
            self.link.send(dst, frame)

        def recv(self, src):
            frame = self.link.recv(src)
            heard.append(frame)
            return frame

    orig = dealer_mod.serve_dealer

    def spying(link, parties, **kw):
        return orig(Spy(link), parties, **kw)

    import fedtrust.privacy.mpc.program as prog
    prog.serve_dealer, saved = spying, prog.serve_dealer
    try:
        run_in_process(PROGRAM, {"a": None, "b": None, "c": None}, timeout_s=60)
    finally:
        prog.serve_dealer = saved
    reqs = [json.loads(f) for f in heard]
    assert reqs[-1] == {"fn": "done"}
    for r in reqs[:-1]:
        assert set(r) <= {"fn", "sizes", "op", "kwargs"} and r["fn"] in {"additive", "binary", "B2A", "wraps",
                                                                          "square"}


@pytest.mark.parametrize("frame,match", [
    (b"not json", "malformed"),
    (b'{"fn":"exec"}', "unknown function"),
    (b'{"fn":"additive","sizes":[[2],[2]],"op":"__import__"}', "does not deal for"),
    (b'{"fn":"square","sizes":[[-1]]}', "malformed sizes"),
    (b'{"fn":"binary","sizes":[[2]]}', "malformed sizes"),
])
def test_the_dealer_refuses_malformed_requests(frame, match):
    with pytest.raises(dealer_mod.DealerError, match=match):
        dealer_mod._parse(frame)


def test_the_dealer_caps_what_a_session_may_ask_for():
    class OneRequest:
        def __init__(self):
            self.sent = []

        def send(self, dst, frame):
            self.sent.append(dst)

        def recv(self, src):
            return b'{"fn":"square","sizes":[[4096,4096]]}'

    with pytest.raises(dealer_mod.DealerError, match="more correlated randomness"):
        dealer_mod.serve_dealer(OneRequest(), 2, max_request=1 << 20)


def test_registry_refuses_a_second_program_for_a_kind_and_names_unknown_kinds():
    register(PROGRAM)
    assert program("test-three") is PROGRAM
    with pytest.raises(MpcProgramError, match="registered twice"):
        register(MpcProgram("test-three", PROGRAM.local_inputs, PROGRAM.compute, PROGRAM.finish))
    with pytest.raises(MpcProgramError, match="no MPC program for job kind 'nope'"):
        program("nope")


def test_outputs_must_be_shares():
    bad = MpcProgram("test-bad", lambda ctx: {}, lambda ctx, i: {"x": torch.ones(2)}, lambda j, o: o)
    with pytest.raises(MpcProgramError, match="int64 share tensors"):
        run_in_process(bad, {"a": {}, "b": {}}, timeout_s=20)

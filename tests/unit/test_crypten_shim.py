"""CrypTen through fedtrust's shim: it imports with the pinned torch, computes on secret
shares between two in-process parties on CPU, and decodes negative fixed-point values exactly."""

import sys
import threading

import pytest
import torch

from fedtrust.privacy import crypten_shim
from fedtrust.privacy.mpc.communicator import QueueLinks


def _parties(fn, n=2):
    """Run fn(crypten, rank) as n parties, one thread each, over in-process links."""
    crypten = crypten_shim.load()
    links = QueueLinks(n, timeout_s=30)
    results, errors = [None] * n, []

    def run(rank):
        try:
            with crypten_shim.party(rank, n, links.link(rank)):
                results[rank] = fn(crypten, rank)
        except BaseException as e:  # surfaced below, with the party's rank
            errors.append((rank, repr(e)))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, f"party failed: {errors}"
    return results


def test_crypten_imports_without_torchvision_or_the_onnx_registry():
    crypten = crypten_shim.load()
    assert crypten.__version__ == "0.4.1"
    assert torch.__version__.startswith("2.13.0")
    assert sys.modules["torch.onnx._internal.registration"].registry is None
    assert "torchvision" not in sys.modules, "fedtrust must never import torchvision"


def test_two_parties_sum_and_compare_on_shares():
    a, b = torch.tensor([3.5, -2.0, 10.0]), torch.tensor([1.25, -7.5, 10.0])

    def job(crypten, rank):
        # each party secret-shares its own vector; neither sees the other's
        x = crypten.cryptensor(a if rank == 0 else torch.zeros(3), src=0)
        y = crypten.cryptensor(b if rank == 1 else torch.zeros(3), src=1)
        return (x + y).get_plain_text(), (x > y).get_plain_text(), (x == y).get_plain_text()

    for total, greater, equal in _parties(job):
        assert torch.allclose(total, a + b, atol=1e-4)
        assert greater.tolist() == [1.0, 1.0, 0.0]
        assert equal.tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("value", [-1.99998, -1.5, -1.0, -0.5, -0.00002, 0.0, 0.75, 2.00002, -1000.25])
def test_decode_is_exact_just_above_negative_integers(value):
    crypten = crypten_shim.load()
    encoder = crypten.encoder.FixedPointEncoder(16)
    encoded = encoder.encode(torch.tensor([value], dtype=torch.float64))
    assert encoder.decode(encoded).item() == pytest.approx(value, abs=2 ** -16)


def test_decode_of_the_raw_integer_below_a_negative_integer():
    # -2 * 2^16 + 1 is -1.99998...; CrypTen 0.4.1 alone decodes it as -2.99998
    crypten = crypten_shim.load()
    scale = 2 ** 16
    got = crypten.encoder.FixedPointEncoder(16).decode(torch.tensor([-2 * scale + 1, -scale - 1, -1]))
    assert got.tolist() == pytest.approx([-2 + 1 / scale, -1 - 1 / scale, -1 / scale])


def test_three_parties_each_share_a_private_vector():
    values = [torch.tensor([1.0, -4.5]), torch.tensor([2.25, 0.5]), torch.tensor([-0.75, 8.0])]

    def job(crypten, rank):
        shares = [crypten.cryptensor(values[r] if r == rank else torch.zeros(2), src=r) for r in range(3)]
        total = shares[0] + shares[1] + shares[2]
        return total.get_plain_text(), shares[0].max().get_plain_text()

    for total, top in _parties(job, n=3):
        assert torch.allclose(total, sum(values), atol=1e-4)
        assert top.item() == pytest.approx(1.0, abs=1e-4)


def test_crypten_outside_a_party_session_names_the_fix():
    crypten = crypten_shim.load()
    with pytest.raises(RuntimeError, match="inside crypten_shim.party"):
        crypten.cryptensor(torch.zeros(1), src=0)


def test_mpc_frames_round_trip_and_refuse_malformed_or_pickled_input():
    from fedtrust.privacy.mpc import wire

    t = torch.tensor([[1, -2], [3, 2**62]], dtype=torch.int64)
    assert torch.equal(wire.decode_tensor(wire.encode_tensor(t)), t)
    assert wire.decode_value(wire.encode_value(torch.Size([3, 4]))) == torch.Size([3, 4])
    frame = wire.encode_tensor(t)
    for bad in (frame[:-1], b"\x00\x00\x00\x05hello", b"\x80\x04\x95" + frame, b""):
        with pytest.raises(wire.WireError):
            wire.decode_tensor(bad)
    with pytest.raises(wire.WireError, match="sizes or numbers"):
        wire.encode_value(object())
    with pytest.raises(wire.WireError):
        wire.decode_value(b'{"size": ["x"]}')

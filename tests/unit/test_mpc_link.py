"""MPC frames between organisations: sealed end to end (privacy.mpc.sealed_link), batched collectives in one
frame, and CrypTen computing over them; a relay that alters, reorders, replays or redirects a frame is refused."""

import threading

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedtrust.errors import VerificationError
from fedtrust.privacy import crypten_shim
from fedtrust.privacy.mpc import wire
from fedtrust.privacy.mpc.communicator import QueueLinks
from fedtrust.privacy.mpc.sealed_link import SealedLink

NAMES = ["bank-node", "telco-node"]


class Recording:
    """A relay that records every frame and may tamper with them."""

    def __init__(self, inner, log, tamper=None):
        self.inner, self.log, self.tamper = inner, log, tamper

    def send(self, dst, frame):
        self.log.append(frame)
        self.inner.send(dst, self.tamper(frame) if self.tamper else frame)

    def recv(self, src):
        return self.inner.recv(src)


def _sealed_pair(session="job-1", tamper=None, log=None):
    keys = [X25519PrivateKey.generate() for _ in NAMES]
    peers = {n: k.public_key() for n, k in zip(NAMES, keys)}
    q = QueueLinks(2, timeout_s=10)
    log = [] if log is None else log
    return [SealedLink(Recording(q.link(r), log, tamper), session=session, names=NAMES, rank=r, own=keys[r],
                       peers=peers) for r in range(2)], log


def test_crypten_over_sealed_links_and_the_relay_sees_no_share():
    links, log = _sealed_pair()
    secret = torch.tensor([123.25, -7.5, 0.125])
    results, errors = [None, None], []

    def run(rank):
        try:
            crypten = crypten_shim.load()
            with crypten_shim.party(rank, 2, links[rank]):
                x = crypten.cryptensor(secret if rank == 0 else torch.zeros(3), src=0)
                y = crypten.cryptensor(torch.ones(3) if rank == 1 else torch.zeros(3), src=1)
                results[rank] = ((x + y).get_plain_text(), (x > y).get_plain_text())
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not errors, errors
    for total, gt in results:
        assert torch.allclose(total, secret + 1, atol=1e-4) and gt.tolist() == [1.0, 0.0, 0.0]
    # the relay saw frames it cannot parse: no MPC frame header, no fixed-point encoding of the secret
    encoded = [int(v * 2 ** 16).to_bytes(8, "little", signed=True) for v in secret.tolist()]
    for frame in log:
        assert b'"dtype"' not in frame
        assert not any(e in frame for e in encoded)


@pytest.mark.parametrize("attack", ["flip", "replay", "reorder", "redirect"])
def test_a_relay_that_tampers_is_refused(attack):
    links, log = _sealed_pair()
    a, b = links
    a.send(1, b"first")
    a.send(1, b"second")
    if attack == "flip":
        inner = b.inner.inner
        frame = inner.recv(0)
        b.inner.inner = _Fixed([frame[:-1] + bytes([frame[-1] ^ 1])])
    elif attack == "replay":
        assert b.recv(0) == b"first"
        b.inner.inner = _Fixed([log[0]])  # the first frame again
    elif attack == "reorder":
        b.inner.inner = _Fixed([log[1], log[0]])
    else:  # a frame bank sent to telco, delivered back to bank as if from telco
        a.inner.inner = _Fixed([log[0]])
        with pytest.raises(VerificationError, match="does not open"):
            a.recv(1)
        return
    with pytest.raises(VerificationError, match="does not open"):
        b.recv(0)


def test_sessions_do_not_open_each_others_frames():
    keys = [X25519PrivateKey.generate() for _ in NAMES]
    peers = {n: k.public_key() for n, k in zip(NAMES, keys)}
    q = QueueLinks(2, timeout_s=5)
    a = SealedLink(q.link(0), session="job-1", names=NAMES, rank=0, own=keys[0], peers=peers)
    b = SealedLink(q.link(1), session="job-2", names=NAMES, rank=1, own=keys[1], peers=peers)
    a.send(1, b"share")
    with pytest.raises(VerificationError, match="does not open"):
        b.recv(0)


def test_batched_frames_round_trip_and_refuse_a_wrong_count():
    ts = [torch.arange(3), torch.tensor([[1.5]]), torch.zeros(0, dtype=torch.int64)]
    frame = wire.encode_tensors(ts)
    assert all(torch.equal(x, y) for x, y in zip(wire.decode_tensors(frame, 3), ts))
    for bad, count in ((frame, 2), (frame[:-3], 3), (frame + b"x", 3)):
        with pytest.raises(wire.WireError):
            wire.decode_tensors(bad, count)


class _Fixed:
    def __init__(self, frames):
        self.frames = list(frames)

    def send(self, dst, frame):
        pass

    def recv(self, src):
        return self.frames.pop(0)

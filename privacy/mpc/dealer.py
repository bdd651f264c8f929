"""Correlated randomness for CrypTen from a dealer over sealed links (a `TupleProvider` without torch.distributed).

CrypTen multiplies and compares secret shares with Beaver triples, binary
triples, wrap counts and B2A bits that someone must deal. Its built-in
providers do not fit fedtrust: the trusted *first* party (TFP) makes party 0
know every triple, so party 0 could open every other party's input; the
trusted *third* party (TTP) talks over torch.distributed (plaintext TCP). The
dealer here is CrypTen's TTP protocol over a fedtrust `Link`: a separate party
(rank `world_size` on the link, never a compute party, neither the buyer nor
the coordinator) that

1. sends each compute party a fresh 64-bit seed, sealed to it;
2. answers party 0's requests: every party derives its share of a, b (and of
   c for parties other than 0) from its seed, and the dealer, regenerating all
   of them, sends party 0 the one share that makes c = a·b (or the wraps, or
   the B2A bit) come out right.

Why this is safe: the dealer learns the tuples and the *shapes* party 0 asks
for, never an input, an opened value (those travel between the compute parties
on links sealed to them alone) or an output. The coordinator relays the
dealer's frames sealed, so a coordinator and buyer who collude learn nothing
from them. The assumption (stated in the README): the dealer does not collude
with a compute party — a dealer that also saw a party's openings could remove
the masks. A dishonest dealer can make the result wrong (it is not checked),
not reveal inputs. Requests are JSON with a fixed set of functions, sizes and
integer arguments, capped in elements per request and per session; nothing is
unpickled. Seeds seed torch's generator, as CrypTen's own TTP and PRZS do.
"""
from __future__ import annotations

import json
import math
import os
from collections import deque

import torch

from .. import crypten_shim
from . import wire

__all__ = ["LinkTupleProvider", "serve_dealer", "DealerError", "MAX_REQUEST_ELEMENTS", "MAX_SESSION_ELEMENTS"]

crypten = crypten_shim.load()
from crypten.common.rng import generate_kbit_random_tensor, generate_random_ring_element  # noqa: E402
from crypten.common.util import count_wraps  # noqa: E402
from crypten.encoder import FixedPointEncoder  # noqa: E402
from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor  # noqa: E402
from crypten.mpc.primitives.arithmetic import SENTINEL  # noqa: E402
from crypten.mpc.provider.provider import TupleProvider  # noqa: E402

#: most ring elements one request may ask the dealer for (sizes are public; this caps a hostile party 0)
MAX_REQUEST_ELEMENTS = 1 << 24
#: most ring elements one session may ask for in all
MAX_SESSION_ELEMENTS = 1 << 28
_OPS = {"mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"}
_FUNCTIONS = {"additive", "square", "binary", "wraps", "B2A", "done"}


class DealerError(ValueError):
    """A malformed or oversized request to the dealer."""


def _seed_frame() -> bytes:
    return os.urandom(8)


def _generator(seed: bytes) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(seed, "little"))
    return g


class _Replies:
    """Party 0's outstanding requests to the dealer, answered in request order. A reply is read only when its
    tuple's share is first used, so a request's round trip through the relay overlaps the parties' own opening
    round (CrypTen uses c, the wraps and the B2A bit only after the values they mask are opened)."""

    def __init__(self, link, dealer: int):
        self.link, self.dealer = link, dealer
        self.pending: deque = deque()  # (slot, expected size), in request order

    def ask(self, fn: str, size, **args) -> dict:
        self.link.send(self.dealer, json.dumps({"fn": fn, **args}, separators=(",", ":")).encode())
        slot: dict = {}
        self.pending.append((slot, torch.Size(size)))
        return slot

    def wait(self, slot: dict) -> torch.Tensor:
        while "t" not in slot:
            first, size = self.pending.popleft()
            out = wire.decode_tensor(self.link.recv(self.dealer))
            if out.dtype != torch.int64 or out.size() != size:
                raise DealerError("the dealer answered with a tensor of the wrong type or shape")
            first["t"] = out
        return slot["t"]

    def drain(self) -> None:
        if self.pending:
            self.wait(self.pending[-1][0])


def _deferred(base):
    """`base` (CrypTen's Arithmetic/BinarySharedTensor) whose share is the dealer's reply, read on first use."""

    class Deferred(base):
        _slot: dict | None = None
        _replies: _Replies | None = None
        _device = None

        @property
        def _tensor(self):
            if self._slot is not None:
                t = self._replies.wait(self._slot)
                self._slot = None
                t = t.to(self._device) if self._device is not None else t
                if t.is_cuda:
                    from crypten.cuda import CUDALongTensor

                    t = CUDALongTensor(t)
                self.__dict__["_value"] = t
            return self.__dict__["_value"]

        @_tensor.setter
        def _tensor(self, value):
            self._slot = None
            self.__dict__["_value"] = value

    Deferred.__name__ = Deferred.__qualname__ = f"Deferred{base.__name__}"
    return Deferred


_DeferredArithmetic = _deferred(ArithmeticSharedTensor)
_DeferredBinary = _deferred(BinarySharedTensor)


class LinkTupleProvider(TupleProvider):
    """One compute party's tuples: its shares from the seed the dealer sent it; party 0 also asks the dealer."""

    NAME = "fedtrust-dealer"

    def __init__(self, link, dealer_rank: int, rank: int):
        super().__init__()
        self.link, self.dealer, self.rank_ = link, dealer_rank, rank
        seed = link.recv(dealer_rank)
        if len(seed) != 8:
            raise DealerError("the dealer's seed frame is malformed")
        self.generator = _generator(seed)
        self.replies = _Replies(link, dealer_rank)

    def _dealt(self, binary: bool, fn: str, size, device, **args):
        """Party 0's share of a tuple element: asked of the dealer now, read from it when first used."""
        cls = _DeferredBinary if binary else _DeferredArithmetic
        t = cls(src=SENTINEL)
        t.encoder = FixedPointEncoder(precision_bits=None if binary else 0)
        t._replies, t._slot, t._device = self.replies, self.replies.ask(fn, size, **args), device
        return t

    def _mine(self, binary: bool, t: torch.Tensor, device):
        if binary:
            return BinarySharedTensor.from_shares(t, device=device)
        return ArithmeticSharedTensor.from_shares(t, precision=0, device=device)

    # shares are drawn on the CPU (the dealer draws the same there) and moved to the party's device
    def _ring(self, size, device=None):
        return generate_random_ring_element(size, generator=self.generator)

    def _bits(self, size, device=None, bitlength=None):
        return generate_kbit_random_tensor(size, bitlength=bitlength, generator=self.generator)

    def finish(self) -> None:
        """Party 0 reads any reply not used yet and tells the dealer the session is over."""
        if self.rank_ == 0:
            self.replies.drain()
            self.link.send(self.dealer, b'{"fn":"done"}')

    def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
        if args:
            raise DealerError("fedtrust's dealer takes keyword arguments for triple operations only")
        a, b = self._ring(size0, device), self._ring(size1, device)
        size2 = getattr(torch, op)(a, b, **kwargs).size()  # as CrypTen's TTP: shapes by computing on the shares
        if self.rank_ == 0:
            c = self._dealt(False, "additive", size2, device, sizes=[list(size0), list(size1)], op=op,
                            kwargs=kwargs)
        else:
            c = self._mine(False, self._ring(size2), device)
        return self._mine(False, a, device), self._mine(False, b, device), c

    def square(self, size, device=None):
        r = self._mine(False, self._ring(size), device)
        if self.rank_ == 0:
            return r, self._dealt(False, "square", size, device, sizes=[list(size)])
        return r, self._mine(False, self._ring(size), device)

    def generate_binary_triple(self, size0, size1, device=None):
        a, b = self._bits(size0), self._bits(size1)
        size2 = torch.broadcast_tensors(a, b)[0].size()
        if self.rank_ == 0:
            c = self._dealt(True, "binary", size2, device, sizes=[list(size0), list(size1)])
        else:
            c = self._mine(True, self._bits(size2), device)
        return self._mine(True, a, device), self._mine(True, b, device), c

    def wrap_rng(self, size, device=None):
        r = self._mine(False, self._ring(size), device)
        if self.rank_ == 0:
            return r, self._dealt(False, "wraps", size, device, sizes=[list(size)])
        return r, self._mine(False, self._ring(size), device)

    def B2A_rng(self, size, device=None):
        rB = self._mine(True, self._bits(size, bitlength=1), device)
        if self.rank_ == 0:
            return self._dealt(False, "B2A", size, device, sizes=[list(size)]), rB
        return self._mine(False, self._ring(size), device), rB


# -- the dealer's side -----------------------------------------------------------------------------------------


def _parse(frame: bytes) -> dict:
    try:
        req = json.loads(frame)
        fn = req["fn"]
    except (ValueError, KeyError, TypeError):
        raise DealerError("request to the dealer is malformed") from None
    if fn not in _FUNCTIONS:
        raise DealerError("request to the dealer names an unknown function")
    if fn == "done":
        return req
    sizes = req.get("sizes")
    want = 2 if fn in ("additive", "binary") else 1
    if (not isinstance(sizes, list) or len(sizes) != want
            or not all(isinstance(s, list) and len(s) <= 8 and all(isinstance(d, int) and 0 <= d for d in s)
                       for s in sizes)):
        raise DealerError("request to the dealer has malformed sizes")
    if fn == "additive":
        kwargs = req.get("kwargs", {})
        if req.get("op") not in _OPS or not isinstance(kwargs, dict) or not all(
                isinstance(k, str) and (isinstance(v, int) or (isinstance(v, list) and all(isinstance(x, int)
                                                                                            for x in v)))
                for k, v in kwargs.items()):
            raise DealerError("request to the dealer names an operation it does not deal for")
        req["kwargs"] = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return req


class _Dealing:
    def __init__(self, generators: list[torch.Generator]):
        self.gens = generators

    def _ring_sum(self, size, skip_first=False):
        out = None
        for g in self.gens[1:] if skip_first else self.gens:
            e = generate_random_ring_element(size, generator=g)
            out = e if out is None else out + e
        return out if out is not None else torch.zeros(size, dtype=torch.long)

    def _bits_xor(self, size, bitlength=None, skip_first=False):
        out = None
        for g in self.gens[1:] if skip_first else self.gens:
            e = generate_kbit_random_tensor(size, bitlength=bitlength, generator=g)
            out = e if out is None else out ^ e
        return out if out is not None else torch.zeros(size, dtype=torch.long)

    def answer(self, req: dict) -> torch.Tensor:
        fn, sizes = req["fn"], [torch.Size(s) for s in req["sizes"]]
        if fn == "additive":
            a, b = self._ring_sum(sizes[0]), self._ring_sum(sizes[1])
            try:
                c = getattr(torch, req["op"])(a, b, **req["kwargs"])
            except (RuntimeError, TypeError, ValueError):
                raise DealerError("request to the dealer has sizes its operation does not accept") from None
            return c - self._ring_sum(c.size(), skip_first=True)
        if fn == "square":
            r = self._ring_sum(sizes[0])
            return r * r - self._ring_sum(sizes[0], skip_first=True)
        if fn == "binary":
            a, b = self._bits_xor(sizes[0]), self._bits_xor(sizes[1])
            c = a & b
            return c ^ self._bits_xor(c.size(), skip_first=True)
        if fn == "wraps":
            r = [generate_random_ring_element(sizes[0], generator=g) for g in self.gens]
            return count_wraps(r) - self._ring_sum(sizes[0], skip_first=True)
        rB = self._bits_xor(sizes[0], bitlength=1)  # B2A
        return rB - self._ring_sum(sizes[0], skip_first=True)


def _elements(req: dict) -> int:
    return sum(math.prod(s) for s in req["sizes"]) * (2 if req["fn"] in ("additive", "binary") else 1)


def serve_dealer(link, parties: int, *, max_request: int = MAX_REQUEST_ELEMENTS,
                 max_session: int = MAX_SESSION_ELEMENTS) -> int:
    """Deal one session to compute parties 0..parties-1 over `link`; returns the ring elements dealt.

    Ends when party 0 says "done"; DealerError on a malformed or oversized request."""
    seeds = [_seed_frame() for _ in range(parties)]
    for r, seed in enumerate(seeds):
        link.send(r, seed)
    dealing = _Dealing([_generator(s) for s in seeds])
    dealt = 0
    while True:
        req = _parse(link.recv(0))
        if req["fn"] == "done":
            return dealt
        n = _elements(req)
        if n > max_request or dealt + n > max_session:
            raise DealerError(f"party 0 asked the dealer for more correlated randomness than a session may use "
                              f"({max_request} elements per request, {max_session} per session)")
        dealt += n
        link.send(0, wire.encode_tensor(dealing.answer(req)))

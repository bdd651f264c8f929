"""A CrypTen communicator over fedtrust links instead of torch.distributed's plaintext TCP.

CrypTen's own communicator opens torch.distributed (gloo) sockets between the parties:
plaintext TCP, which fedtrust never uses between organisations. `LinkCommunicator`
implements CrypTen's collectives (broadcast, gather, scatter, reduce, all-gather …) with
point-to-point messages over a `Link`: an object with `send(dst, frame)` and
`recv(src) -> frame`, delivering frames in order per (sender, receiver). The daemons'
link carries frames over fedtrust's mutual-TLS gRPC channels; `QueueLinks` connects
parties inside one process (tests, benchmarks). Frames are tensors as bytes
(`wire`), never pickles.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

import torch
from torch.distributed import ReduceOp

from .. import crypten_shim
from . import wire

#: CrypTen's communicator base class, loaded through the shim (CrypTen publishes no types)
Communicator: Any = crypten_shim.load().communicator.Communicator


class Link(Protocol):
    def send(self, dst: int, frame: bytes) -> None: ...

    def recv(self, src: int) -> bytes: ...


class LinkTimeout(RuntimeError):
    """A peer sent nothing within the link's timeout."""


class QueueLinks:
    """In-process links between `world_size` parties (one queue per ordered pair)."""

    def __init__(self, world_size: int, timeout_s: float = 60.0):
        self._queues: dict[tuple[int, int], queue.Queue[bytes]] = {(s, d): queue.Queue() for s in range(world_size) for d in range(world_size) if s != d}
        self._timeout = timeout_s
        self.bytes_sent = 0
        self._lock = threading.Lock()

    def link(self, rank: int) -> Link:
        outer = self

        class _Link:
            def send(self, dst: int, frame: bytes) -> None:
                with outer._lock:
                    outer.bytes_sent += len(frame)
                outer._queues[(rank, dst)].put(frame)

            def recv(self, src: int) -> bytes:
                try:
                    return outer._queues[(src, rank)].get(timeout=outer._timeout)
                except queue.Empty:
                    raise LinkTimeout(f"MPC party {src} sent nothing for {outer._timeout:g} s") from None

        return _Link()


class _Done:
    def is_completed(self):
        return True

    def wait(self):
        return None


class LinkCommunicator(Communicator):
    """One party's CrypTen communicator; installed per thread by `crypten_shim.party`."""

    BYTES_PER_ELEMENT = 8

    def __init__(self, rank: int, world_size: int, link: Link, name: str | None = None):
        if world_size < 2 or not 0 <= rank < world_size:
            raise ValueError("an MPC session needs at least two parties and a rank among them")
        self.rank, self.world_size, self.link = rank, world_size, link
        self._name = name or f"party{rank}"
        self.reset_communication_stats()

    # -- point to point ------------------------------------------------------------------
    def _send(self, tensor: torch.Tensor, dst: int) -> None:
        frame = wire.encode_tensor(tensor)
        self.comm_bytes += len(frame)
        self.comm_rounds += 1
        self.link.send(dst, frame)

    def _recv(self, src: int) -> torch.Tensor:
        return wire.decode_tensor(self.link.recv(src))

    def _send_many(self, tensors, dst: int) -> None:
        frame = wire.encode_tensors(tensors)
        self.comm_bytes += len(frame)
        self.comm_rounds += 1
        self.link.send(dst, frame)

    def _recv_many(self, src: int, count: int, like) -> list[torch.Tensor]:
        return [t.to(x.device) for t, x in zip(wire.decode_tensors(self.link.recv(src), count), like)]

    def _all_gather_many(self, tensors) -> list[list[torch.Tensor]]:
        """One round: every party sends all its tensors in one frame to every other party."""
        for r in self._others():
            self._send_many(tensors, r)
        return [list(tensors) if r == self.rank else self._recv_many(r, len(tensors), tensors)
                for r in range(self.world_size)]

    def send(self, tensor, dst):
        self._send(tensor, dst)

    def recv(self, tensor, src=None):
        if src is None:
            raise ValueError("fedtrust MPC receives from a named party only")
        result = self._recv(src)
        if tensor is not None:
            if tensor.numel() != result.numel():
                raise wire.WireError("MPC frame from a peer has the wrong number of elements")
            tensor.copy_(result.reshape(tensor.shape))
        return result

    def isend(self, tensor, dst):
        self._send(tensor, dst)
        return _Done()

    def irecv(self, tensor, src=None):
        self.recv(tensor, src)
        return _Done()

    # -- collectives ---------------------------------------------------------------------
    def _others(self):
        return [r for r in range(self.world_size) if r != self.rank]

    def broadcast(self, input, src, group=None, batched=False, async_op=False):
        if batched:
            if self.rank == src:
                for r in self._others():
                    self._send_many(input, r)
                return list(input)
            return self._recv_many(src, len(input), input)
        if self.rank == src:
            for r in self._others():
                self._send(input, r)
            return input
        return self._recv(src).to(input.device) if torch.is_tensor(input) else self._recv(src)

    def gather(self, tensor, dst, async_op=False):
        if self.rank != dst:
            self._send(tensor, dst)
            return None
        return [tensor if r == dst else self._recv(r).to(tensor.device) for r in range(self.world_size)]

    def all_gather(self, tensor, async_op=False):
        for r in self._others():
            self._send(tensor, r)
        return [tensor if r == self.rank else self._recv(r).to(tensor.device) for r in range(self.world_size)]

    def scatter(self, scatter_list, src, size=None, async_op=False, device=None):
        if self.rank == src:
            for r in self._others():
                self._send(scatter_list[r], r)
            return scatter_list[src]
        out = self._recv(src)
        return out.to(device) if device is not None else out

    @staticmethod
    def _combine(parts, op):
        if op is None or op == ReduceOp.SUM:
            return torch.stack(parts).sum(dim=0)
        if op == ReduceOp.BXOR:
            out = parts[0].clone()
            for p in parts[1:]:
                out ^= p
            return out
        raise ValueError(f"fedtrust MPC reduces with SUM or BXOR, not {op}")

    def reduce(self, input, dst, op=None, batched=False, async_op=False):
        if batched:
            if self.rank != dst:
                self._send_many(input, dst)
                return None
            parts = [list(input) if r == dst else self._recv_many(r, len(input), input)
                     for r in range(self.world_size)]
            return [self._combine([p[i] for p in parts], op) for i in range(len(input))]
        parts = self.gather(input, dst)
        return None if parts is None else self._combine(parts, op)

    def all_reduce(self, input, op=None, batched=False, async_op=False):
        if batched:
            parts = self._all_gather_many(input)
            return [self._combine([p[i] for p in parts], op) for i in range(len(input))]
        return self._combine(self.all_gather(input), op)

    def barrier(self):
        self.all_gather(torch.zeros(1, dtype=torch.int64))

    def broadcast_obj(self, obj, src, group=None):
        if self.rank == src:
            frame = wire.encode_value(obj)
            for r in self._others():
                self.link.send(r, frame)
            return obj
        return wire.decode_value(self.link.recv(src))

    def send_obj(self, obj, dst, group=None):
        self.link.send(dst, wire.encode_value(obj))

    def recv_obj(self, src, group=None):
        return wire.decode_value(self.link.recv(src))

    # -- identity ------------------------------------------------------------------------
    def get_world_size(self):
        return self.world_size

    def get_rank(self):
        return self.rank

    def set_name(self, name):
        self._name = name

    def get_name(self):
        return self._name

    def get_distributed_backend(self):
        return "fedtrust-link"

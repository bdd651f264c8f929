"""MPC programs: one registry of job kinds computed on secret shares, and how one party runs one.

A job kind that needs MPC (horizontal MIN/MAX/quantiles, joint statistics, vertical
logistic regression …) is an `MpcProgram` registered here under its kind. The
daemons run any registered program the same way:

* at each owner's node, outside MPC: `local_inputs(ctx)` reads the node's own data
  (never leaves the node in clear);
* at each owner's node, inside `crypten_shim.party(...)` with the dealer's
  `LinkTupleProvider`: `compute(ctx, inputs)`, identical on every party, secret-shares
  the inputs (shapes are public), computes, and returns this party's SHARE of each
  output (`share_of(x)`: int64 ring elements at the standard fixed-point scale) — a
  program never reveals anything inside MPC;
* at the buyer: the shares of all parties are added (`combine_shares`), decoded, and
  `finish(ctx, outputs)` makes the result the buyer sees (`buyer_context(job, contract)`).

Ranks: compute parties are the job's participants in their (sorted) order, 0..n-1; the
dealer is rank n on the link and never a compute party (see `dealer`). Programs live
in the package of their domain and register on import; `program(kind)` imports the
modules named in `PROGRAM_MODULES` first, so adding a kind is one program module and
one line there.

`run_in_process` runs a program with every party and the dealer as threads of this
process, over `QueueLinks` wrapped in `SealedLink` (the frames sealed exactly as
between organisations) — for tests and benchmarks; `relay` lets a test sit where the
coordinator sits and record or tamper with every sealed frame.
"""
from __future__ import annotations

import importlib
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import crypten_shim
from . import wire
from .communicator import QueueLinks
from .dealer import LinkTupleProvider, serve_dealer
from .sealed_link import SealedLink

__all__ = [
    "MpcProgram", "ProgramContext", "Charge", "buyer_context", "OUTPUT_STEP", "SCALE", "PROGRAM_MODULES", "register", "program", "kinds", "share_of",
    "share_input", "run_party", "encode_shares", "decode_shares", "combine_shares", "decode_outputs", "run_in_process", "InProcessRun",
    "MpcProgramError",
]

#: the fixed-point scale of every output share (CrypTen's default: 16 fractional bits)
SCALE = 2 ** 16
#: modules that define (and register) programs; `program(kind)` imports them first
PROGRAM_MODULES: tuple[str, ...] = ("fedtrust.query.mpc_stats", "fedtrust.query.joint_mpc",
                                   "fedtrust.training.vertical_lr_program")
#: the dealer's name on an in-process link
DEALER = "dealer"
#: the sealed-message step (privacy.sealed) of an owner's output shares to the buyer's per-job key
OUTPUT_STEP = "mpc-output"


class MpcProgramError(ValueError):
    """A program broke the MPC contract (unknown kind, outputs not shares, shapes that differ)."""


@dataclass(frozen=True)
class ProgramContext:
    """What a program sees at one party. `job` is the signed JobSpec (trust.jobs), `contract` the verified
    Contract; `data` is the node's access to its own data (at a node; None in tests that pass inputs)."""

    rank: int
    world_size: int
    parties: tuple[str, ...]
    job: Any = None
    contract: Any = None
    data: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def name(self) -> str:
        return self.parties[self.rank]


def buyer_context(job: Any, contract: Any) -> ProgramContext:
    """What `finish` sees at the buyer: the verified job and contract; rank -1 (the buyer is no compute party)."""
    parties = tuple(job.participants) if job is not None else ()
    return ProgramContext(-1, len(parties), parties, job, contract)


@dataclass(frozen=True)
class Charge:
    """What one job of a program costs at a node, decided at admission (before anything is computed or spent):
    it counts against the ledger cap of kind `counts_as` (`max_jobs`; None: uncapped) and spends ε, δ."""

    counts_as: str
    max_jobs: int | None
    mechanism: str = "exact"
    epsilon: Decimal = Decimal(0)
    delta: Decimal = Decimal(0)


@dataclass(frozen=True)
class MpcProgram:
    kind: str
    #: node side, outside MPC: this node's private inputs (never leave the node in clear)
    local_inputs: Callable[[ProgramContext], dict[str, torch.Tensor]]
    #: inside crypten_shim.party, the same on every party: this party's share (int64) of each output
    compute: Callable[[ProgramContext, dict[str, torch.Tensor] | None], dict[str, torch.Tensor]]
    #: buyer side: the result from the decoded sums of the shares; `ctx` has the job and the contract (rank -1:
    #: the buyer computes nothing)
    finish: Callable[[ProgramContext, dict[str, torch.Tensor]], Any]
    #: node side, at admission: every rules check of the job (PolicyViolation naming the rule) and its `Charge`;
    #: nothing is read or spent. The daemons refuse a kind without one.
    admit: Callable[[ProgramContext], Charge] | None = None


_REGISTRY: dict[str, MpcProgram] = {}
_lock = threading.Lock()


def register(p: MpcProgram) -> MpcProgram:
    """Register `p` under its kind (idempotent for the same program; another program under a taken kind fails)."""
    with _lock:
        old = _REGISTRY.get(p.kind)
        if old is not None and old is not p:
            raise MpcProgramError(f"MPC job kind {p.kind!r} is registered twice")
        _REGISTRY[p.kind] = p
    return p


def _load_modules() -> None:
    for m in PROGRAM_MODULES:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            if e.name != m:
                raise


def program(kind: str) -> MpcProgram:
    _load_modules()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise MpcProgramError(f"no MPC program for job kind {kind!r}; known: {', '.join(kinds()) or 'none'}") from None


def kinds() -> list[str]:
    _load_modules()
    return sorted(_REGISTRY)


# -- helpers for programs ------------------------------------------------------------------------------------------


def share_input(ctx: ProgramContext, tensor: torch.Tensor | None, src: int, shape) -> Any:
    """Secret-share party `src`'s input (its `tensor`; other parties pass None) of public `shape`."""
    crypten = crypten_shim.load()
    mine = ctx.rank == src
    if mine and (tensor is None or tuple(tensor.shape) != tuple(shape)):
        raise MpcProgramError(f"party {ctx.name}'s input does not have the public shape {tuple(shape)}")
    data = tensor.to(ctx.device, torch.float64) if tensor is not None and mine else \
        torch.zeros(tuple(shape), device=ctx.device)
    return crypten.cryptensor(data, src=src, device=ctx.device)


def share_of(x) -> torch.Tensor:
    """This party's arithmetic share (int64 ring elements at `SCALE`) of a CrypTen tensor, revealing nothing."""
    crypten = crypten_shim.load()
    if isinstance(x, crypten.mpc.MPCTensor):
        if x.ptype != crypten.mpc.arithmetic:
            x = x.to(crypten.mpc.arithmetic)
        x = x._tensor
    scale = int(x.encoder.scale)
    if scale <= 0 or SCALE % scale:
        raise MpcProgramError(f"an output share has fixed-point scale {scale}, which does not divide {SCALE}")
    share = x.share
    share = (share.tensor() if hasattr(share, "tensor") else share).to("cpu", torch.int64)
    return share * (SCALE // scale)  # rescaling a share is local and exact (comparisons come at scale 1)


def _check_shares(shares: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not isinstance(shares, Mapping) or not shares:
        raise MpcProgramError("an MPC program must return a non-empty dict of output shares")
    out = {}
    for k, v in shares.items():
        if not isinstance(k, str) or not torch.is_tensor(v) or v.dtype != torch.int64:
            raise MpcProgramError("an MPC program's outputs are int64 share tensors (use share_of)")
        out[k] = v.detach().to("cpu").contiguous()
    return out


def run_party(p: MpcProgram, ctx: ProgramContext, inputs: dict[str, torch.Tensor] | None, link) -> dict[str, torch.Tensor]:
    """Run `p.compute` as compute party `ctx.rank` over `link` (the dealer is rank `ctx.world_size` on it)."""
    provider = {}

    def make():
        provider["p"] = LinkTupleProvider(link, ctx.world_size, ctx.rank)
        return provider["p"]

    with crypten_shim.party(ctx.rank, ctx.world_size, link, ctx.name, provider=make):
        shares = _check_shares(p.compute(ctx, inputs))
        provider["p"].finish()
    return shares


def encode_shares(shares: Mapping[str, torch.Tensor]) -> bytes:
    """One party's output shares as bytes (names as JSON, tensors as `wire` frames; never a pickle)."""
    names = sorted(shares)
    head = json.dumps(names).encode()
    return struct.pack(">I", len(head)) + head + wire.encode_tensors([shares[n] for n in names])


def decode_shares(data: bytes) -> dict[str, torch.Tensor]:
    """The inverse of `encode_shares`; WireError / MpcProgramError for anything malformed."""
    if len(data) < 4:
        raise MpcProgramError("output shares are malformed")
    (n,) = struct.unpack(">I", data[:4])
    try:
        names = json.loads(data[4:4 + n])
    except ValueError:
        raise MpcProgramError("output shares are malformed") from None
    if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names) \
            or len(set(names)) != len(names) or len(names) > wire.MAX_BATCH:
        raise MpcProgramError("output shares are malformed")
    tensors = wire.decode_tensors(data[4 + n:], len(names))
    if any(t.dtype != torch.int64 for t in tensors):
        raise MpcProgramError("output shares are not ring elements")
    return dict(zip(names, tensors))


def combine_shares(per_party: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Add every party's shares (mod 2^64): the fixed-point outputs, still encoded."""
    if not per_party:
        raise MpcProgramError("no shares to combine")
    names = set(per_party[0])
    out = {}
    for shares in per_party:
        if set(shares) != names:
            raise MpcProgramError("the parties returned shares of different outputs")
    for k in sorted(names):
        parts = [s[k] for s in per_party]
        if any(t.dtype != torch.int64 or t.shape != parts[0].shape for t in parts):
            raise MpcProgramError(f"the parties' shares of output {k!r} differ in type or shape")
        total = parts[0].clone()
        for t in parts[1:]:
            total += t  # int64 wraps: addition mod 2^64
        out[k] = total
    return out


def decode_outputs(summed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fixed point to float64 (floor division plus non-negative remainder, as the shim's decode, in double)."""
    return {k: torch.div(v, SCALE, rounding_mode="floor").double() + torch.remainder(v, SCALE).double() / SCALE
            for k, v in summed.items()}


# -- in process ----------------------------------------------------------------------------------------------------


@dataclass
class InProcessRun:
    result: Any
    shares: list[dict[str, torch.Tensor]]
    outputs: dict[str, torch.Tensor]
    dealt: int


def run_in_process(p: MpcProgram, inputs_by_party: Mapping[str, dict[str, torch.Tensor] | None], *, job: Any = None,
                   contract: Any = None, data_by_party: Mapping[str, Any] | None = None,
                   session: str = "in-process", relay: Callable[[int, Any], Any] | None = None,
                   timeout_s: float = 120.0) -> InProcessRun:
    """Run `p` with every party (sorted by name) and a dealer as threads, over sealed in-process links.

    `inputs_by_party[name]` is that party's inputs (None: call `p.local_inputs` with `data_by_party[name]`).
    `relay(rank, link)` may wrap each party's raw link (what a coordinator would carry)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    parties = tuple(sorted(inputs_by_party))
    n = len(parties)
    names = [*parties, DEALER]
    keys = [X25519PrivateKey.generate() for _ in names]
    peers = {nm: k.public_key() for nm, k in zip(names, keys)}
    queues = QueueLinks(n + 1, timeout_s=timeout_s)

    def link(r: int):
        raw = queues.link(r)
        raw = relay(r, raw) if relay is not None else raw
        return SealedLink(raw, session=session, names=names, rank=r, own=keys[r], peers=peers)

    shares: list[dict | None] = [None] * n
    errors: list[BaseException] = []
    dealt = [0]

    def party_main(r: int) -> None:
        try:
            ctx = ProgramContext(r, n, parties, job, contract, (data_by_party or {}).get(parties[r]))
            inputs = inputs_by_party[parties[r]]
            if inputs is None:
                inputs = p.local_inputs(ctx)
            shares[r] = run_party(p, ctx, inputs, link(r))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def dealer_main() -> None:
        try:
            dealt[0] = serve_dealer(link(n), n)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=party_main, args=(r,), name=f"mpc-{parties[r]}", daemon=True)
               for r in range(n)]
    threads.append(threading.Thread(target=dealer_main, name="mpc-dealer", daemon=True))
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    while not errors and time.monotonic() < deadline:
        alive = [t for t in threads if t.is_alive()]
        if not alive:
            break
        alive[0].join(0.05)
    if errors:  # the first failure fails the run (the others are left waiting on their daemon threads)
        raise errors[0]
    if any(t.is_alive() for t in threads) or any(s is None for s in shares):
        raise MpcProgramError(f"the in-process MPC run did not finish within {timeout_s:g} s")
    done: list[dict[str, torch.Tensor]] = [s for s in shares if s is not None]
    outputs = decode_outputs(combine_shares(done))
    return InProcessRun(p.finish(ProgramContext(-1, n, parties, job, contract), outputs), done, outputs, dealt[0])

"""The one place fedtrust imports CrypTen (0.4.1, its only release) from.

Import `crypten` through `load()` and never directly: this module holds the
workarounds CrypTen needs with the pinned torch, in one place.

1. Installing: CrypTen's metadata requires the deprecated PyPI name
   `sklearn`, whose package refuses to build unless the environment sets
   `SKLEARN_ALLOW_DEPRECATED_SKLEARN_PACKAGE_INSTALL=True` (`.ci/run` and the
   README's set-up command export it). Nothing here needs scikit-learn.
2. Importing: `crypten.nn.onnx_converter` falls back to
   `from torch.onnx._internal.registration import registry`, a module torch
   2.13 no longer has. fedtrust never converts ONNX models, so a stub module
   with `registry = None` is placed in `sys.modules` before the import (only
   when torch lacks the real one).
3. Decoding: `FixedPointEncoder.decode` divides negative values by
   `scale - 1` instead of `scale`, so a value just above a negative integer
   decodes one too low (-1.99998 decodes as -2.99998). `decode` is replaced
   by a floor division by the scale plus the non-negative remainder.

4. Parties: CrypTen keeps its communicator and its random generators in
   process globals, and its communicators are torch.distributed (plaintext
   TCP) or an in-process one that lacks batched collectives. `load()` makes
   both per thread, and `party()` installs a `LinkCommunicator` (fedtrust's
   links) for the calling thread, so several parties, or several jobs of one
   daemon, each run in their own thread. CrypTen's tuple provider is a
   process global too (`crypten.mpc.get_default_provider`): `party(...,
   provider=...)` installs one per thread (fedtrust's dealer,
   `privacy.mpc.dealer`); without one a thread gets CrypTen's configured default.

CrypTen pulls `torchvision` in as a dependency; fedtrust never imports it
(CrypTen itself only does in `crypten.models`, which nothing here touches).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
import types
from typing import Any

_REGISTRATION = "torch.onnx._internal.registration"
_loaded = None


def _stub_onnx_registration() -> None:
    if _REGISTRATION in sys.modules:
        return
    try:
        if importlib.util.find_spec(_REGISTRATION) is not None:
            return
    except ModuleNotFoundError:
        pass
    stub: Any = types.ModuleType(_REGISTRATION)
    stub.registry = None  # CrypTen only imports the name; ONNX conversion is never used
    sys.modules[_REGISTRATION] = stub


def fixed_point_decode(tensor, scale: int):
    """Decode CrypTen's fixed-point integers: floor(t / scale) + (t mod scale) / scale."""
    import torch

    if tensor is None:
        return None
    if scale == 1:
        return tensor.data
    whole = torch.div(tensor, scale, rounding_mode="floor")
    frac = torch.remainder(tensor, scale)
    return (whole.float() + frac.float() / scale).data


def _patched_decode(self, tensor):
    return fixed_point_decode(tensor, self._scale)


_local = threading.local()


class _ThreadGenerators(dict):
    """`crypten.generators`, one set per thread (each MPC party is a thread)."""

    def _mine(self) -> dict:
        if not hasattr(_local, "generators"):
            _local.generators = {"prev": {}, "next": {}, "local": {}, "global": {}}
        return _local.generators

    def __getitem__(self, key):
        return self._mine()[key]

    def keys(self):
        return self._mine().keys()

    def __iter__(self):
        return iter(self._mine())


def _get_communicator():
    comm = getattr(_local, "communicator", None)
    if comm is None:
        raise RuntimeError("no MPC session on this thread: run CrypTen code inside crypten_shim.party()")
    return comm


@contextlib.contextmanager
def party(rank: int, world_size: int, link, name: str | None = None, provider=None):
    """Run CrypTen on this thread as party `rank` of `world_size`, talking over `link`.

    Seeds are exchanged with the other parties on entry (each party draws its own from
    os.urandom), so every party must enter its session. `provider` (a CrypTen TupleProvider,
    or a callable making one once the session is set up) deals this thread's correlated randomness."""
    crypten = load()
    from .mpc.communicator import LinkCommunicator

    _local.communicator = LinkCommunicator(rank, world_size, link, name)
    try:
        crypten._setup_prng()
        _local.provider = provider() if callable(provider) else provider
        yield _local.communicator
    finally:
        _local.communicator = None
        _local.provider = None
        _local.__dict__.pop("generators", None)


def _thread_provider(default):
    def get_default_provider():
        mine = getattr(_local, "provider", None)
        return mine if mine is not None else default()
    return get_default_provider


def load():
    """Import CrypTen with the workarounds applied; returns the `crypten` module."""
    global _loaded
    if _loaded is not None:
        return _loaded
    _stub_onnx_registration()
    import crypten
    import crypten.communicator as comm
    import crypten.encoder

    crypten.encoder.FixedPointEncoder.decode = _patched_decode
    crypten.generators = _ThreadGenerators()
    comm.get = _get_communicator
    comm.is_initialized = lambda: getattr(_local, "communicator", None) is not None
    crypten.mpc.get_default_provider = _thread_provider(crypten.mpc.get_default_provider)
    _loaded = crypten
    return crypten

"""Tensors and small values as bytes for MPC links: a JSON header and raw little-endian data.

Nothing arriving over a link is ever unpickled: a frame holds a dtype from a fixed list, a
shape, and exactly that many bytes; anything else is refused.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import torch

_DTYPES = {
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "float32": torch.float32,
    "float64": torch.float64,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 4096


class WireError(ValueError):
    """A malformed MPC frame from a peer."""


def encode_tensor(tensor: torch.Tensor) -> bytes:
    name = _NAMES.get(tensor.dtype)
    if name is None:
        raise WireError(f"MPC frames carry {sorted(_DTYPES)} tensors, not {tensor.dtype}")
    array = tensor.detach().cpu().contiguous().numpy()
    header = json.dumps({"dtype": name, "shape": list(array.shape)}, separators=(",", ":")).encode()
    return struct.pack(">I", len(header)) + header + array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def decode_tensor(frame: bytes) -> torch.Tensor:
    if len(frame) < 4:
        raise WireError("MPC frame is shorter than its header length")
    (n,) = struct.unpack(">I", frame[:4])
    if n > _MAX_HEADER or len(frame) < 4 + n:
        raise WireError("MPC frame header is malformed")
    try:
        header = json.loads(frame[4 : 4 + n])
        dtype = _DTYPES[header["dtype"]]
        shape = [int(d) for d in header["shape"]]
    except (ValueError, KeyError, TypeError) as e:
        raise WireError("MPC frame header is malformed") from e
    if any(d < 0 for d in shape):
        raise WireError("MPC frame header is malformed")
    np_dtype = np.dtype(str(torch.empty(0, dtype=dtype).numpy().dtype)).newbyteorder("<")
    body = frame[4 + n :]
    if len(body) != int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize:
        raise WireError("MPC frame size does not match its header")
    array = np.frombuffer(body, dtype=np_dtype).astype(np_dtype.newbyteorder("="))
    return torch.from_numpy(array.reshape(shape).copy())


#: most tensors one batched frame may carry (CrypTen batches a few dozen at most)
MAX_BATCH = 4096


def encode_tensors(tensors) -> bytes:
    """Several tensors in one frame (CrypTen's batched collectives: one round trip, not one per tensor)."""
    parts = [encode_tensor(t) for t in tensors]
    return struct.pack(">I", len(parts)) + b"".join(struct.pack(">Q", len(p)) + p for p in parts)


def decode_tensors(frame: bytes, count: int) -> list[torch.Tensor]:
    """Exactly `count` tensors from a batched frame; WireError for anything else."""
    if len(frame) < 4 or struct.unpack(">I", frame[:4])[0] != count or count > MAX_BATCH:
        raise WireError("batched MPC frame does not hold the expected number of tensors")
    out, pos = [], 4
    for _ in range(count):
        if pos + 8 > len(frame):
            raise WireError("batched MPC frame is truncated")
        (n,) = struct.unpack(">Q", frame[pos:pos + 8])
        pos += 8
        if pos + n > len(frame):
            raise WireError("batched MPC frame is truncated")
        out.append(decode_tensor(frame[pos:pos + n]))
        pos += n
    if pos != len(frame):
        raise WireError("batched MPC frame has trailing bytes")
    return out


def encode_value(value) -> bytes:
    """Small control values (sizes, ints, None) CrypTen broadcasts: JSON, never pickle."""
    if isinstance(value, torch.Size):
        value = {"size": list(value)}
    elif value is not None and not isinstance(value, (int, float, list)):
        raise WireError(f"MPC control values are sizes or numbers, not {type(value).__name__}")
    return json.dumps(value).encode()


def decode_value(frame: bytes):
    try:
        value = json.loads(frame)
    except ValueError as e:
        raise WireError("MPC control value is malformed") from e
    if isinstance(value, dict):
        if set(value) != {"size"} or not all(isinstance(d, int) for d in value["size"]):
            raise WireError("MPC control value is malformed")
        return torch.Size(value["size"])
    return value

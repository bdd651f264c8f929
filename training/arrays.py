"""Model arrays: digests, checks against the expected model, Flower records, and the safetensors file.

* `arrays_digest` names a global model: sha256 over (name, dtype, shape,
  bytes) of every array in name order. Nodes key "never train twice from
  the same global model" on it, and mix it into the round's mask seed, so a
  coordinator that sends different globals to different nodes gets sums in
  which the masks do not cancel.
* `global_by_digest` is a round's content with the global model named by its
  digest instead of carried: every node derives each global itself and
  trains only from its own copy, so the coordinator need not send the
  model-sized arrays to every node every round (the node refuses a digest
  other than the one it derived, exactly as it refuses other arrays).
* `check_arrays` refuses arrays whose names, shapes or dtypes differ from the
  job's model, or that hold NaN/infinity.
* The delivered model is a safetensors file (never pickle) whose metadata
  carries the training spec and the public preprocessing, so `fedtrust
  predict` can rebuild the model and its input pipeline exactly.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping

import numpy as np

from fedtrust.errors import InvalidInput

__all__ = [
    "arrays_digest", "global_by_digest", "named_global", "GLOBAL_RECORD", "check_arrays", "to_array_record", "from_array_record", "write_model", "read_model",
    "MODEL_FORMAT",
]

MODEL_FORMAT = "fedtrust-model/v1"
#: the ConfigRecord of a round's content that names its global model by digest (`global_by_digest`)
GLOBAL_RECORD = "fedtrust.global"
_DIGEST = re.compile(r"[0-9a-f]{64}")


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + b"\0" + a.dtype.str.encode() + b"\0" + repr(tuple(a.shape)).encode() + b"\0")
        h.update(a.reshape(-1).view(np.uint8).data)  # its bytes in place (a.tobytes() would copy them)
    return h.hexdigest()


def global_by_digest(content: Any, digest: str) -> Any:
    """A round's RecordDict with its one ArrayRecord (the global model) replaced by a record naming its digest."""
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    kept = {k: r for k, r in content.items() if not isinstance(r, ArrayRecord)}
    return RecordDict({**kept, GLOBAL_RECORD: ConfigRecord({"digest": digest})})


def named_global(content: Any) -> str | None:
    """The digest a round's content names its global model by (`global_by_digest`), None when it names none."""
    from flwr.app import ConfigRecord

    record = content.get(GLOBAL_RECORD) if GLOBAL_RECORD in content else None
    if record is None:
        return None
    digest = record.get("digest") if isinstance(record, ConfigRecord) else None
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidInput(f"the round's `{GLOBAL_RECORD}` record must name the global model by its sha256 digest")
    return digest


def check_arrays(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Names, shapes and dtype (float32) as the job's model has them, and finite values."""
    if set(arrays) != set(expected):
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise InvalidInput(f"{what} does not match the job's model ({detail})")
    for name, shape in expected.items():
        a = arrays[name]
        if a.dtype != np.float32 or tuple(a.shape) != tuple(shape):
            raise InvalidInput(f"{what}: array {name} has the wrong shape or dtype for the job's model")
        if not np.isfinite(a).all():
            raise InvalidInput(f"{what} contains NaN or infinite values")


def to_array_record(arrays: Mapping[str, np.ndarray]) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


#: the header numpy's `np.save` writes (format 1.0-3.0), matched instead of evaluated
_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|=]?[a-zA-Z][0-9]*)', 'fortran_order': (True|False), 'shape': \(((?:[0-9]+, ?)*[0-9]*)\), \} *\n"
)


def array_numpy(arr: Any) -> np.ndarray:
    """A Flower `Array` as an ndarray, decoded without `np.load`.

    `Array.numpy()` calls `np.load`, which parses the .npy header with
    `ast.literal_eval`; CPython 3.11.7's AST constructor is not thread-safe
    ("SystemError: AST constructor recursion depth mismatch", seen in this
    project's CI), and nodes and the coordinator decode arrays on many
    threads at once. The header is matched against the exact form `np.save`
    writes, object dtypes are refused (no pickle), and the body must have
    exactly the size the header declares.
    """
    if arr.stype != "numpy.ndarray":
        raise InvalidInput("array is not numpy-encoded")
    data = bytes(arr.data)
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise InvalidInput("array is not in .npy format")
    if data[6] == 1:
        start, hlen = 10, int.from_bytes(data[8:10], "little")
    elif data[6] in (2, 3):
        start, hlen = 12, int.from_bytes(data[8:12], "little")
    else:
        raise InvalidInput("array uses an unknown .npy format version")
    m = _NPY_HEADER.fullmatch(data[start:start + hlen].decode("latin1"))
    if m is None:
        raise InvalidInput("array has a malformed .npy header")
    descr, fortran, dims = m.groups()
    try:
        dtype = np.dtype(descr)
    except TypeError:
        raise InvalidInput("array has an unknown dtype") from None
    if dtype.hasobject:
        raise InvalidInput("array holds Python objects; only numeric arrays are accepted")
    shape = tuple(int(x) for x in dims.replace(" ", "").split(",") if x)
    count = int(np.prod(shape, dtype=np.int64))
    body = data[start + hlen:]
    if len(body) != count * dtype.itemsize:
        raise InvalidInput("array data does not have the size its header declares")
    flat = np.frombuffer(body, dtype=dtype, count=count)
    return flat.reshape(shape, order="F" if fortran == "True" else "C").copy()


def from_array_record(record: Any, expected: Mapping[str, tuple[int, ...]], what: str) -> dict[str, np.ndarray]:
    """NumPy arrays from a Flower ArrayRecord, checking each array's declared shape before decoding it."""
    from flwr.app import ArrayRecord

    if not isinstance(record, ArrayRecord):
        raise InvalidInput(f"{what} is not an ArrayRecord")
    out: dict[str, np.ndarray] = {}
    for name, arr in record.items():
        shape = expected.get(name)
        if shape is None:
            raise InvalidInput(f"{what} does not match the job's model (unexpected {name})")
        if arr.stype != "numpy.ndarray" or tuple(arr.shape) != tuple(shape) or arr.dtype != "float32":
            raise InvalidInput(f"{what}: array {name} has the wrong shape, dtype or encoding for the job's model")
        if len(arr.data) > 4 * int(np.prod(shape, dtype=np.int64)) + 4096:
            raise InvalidInput(f"{what}: array {name} is larger than its shape needs")
        try:
            a = array_numpy(arr)
        except Exception:  # noqa: BLE001 - any decoding failure is bad input
            raise InvalidInput(f"{what}: array {name} cannot be decoded") from None
        out[name] = a
    check_arrays(out, expected, what)
    return out


def write_model(arrays: Mapping[str, np.ndarray], spec: dict[str, Any], preprocessing: dict[str, Any],
                job_id: str) -> bytes:
    """safetensors bytes with the spec and preprocessing as JSON metadata (deterministic)."""
    from safetensors.numpy import save

    # one metadata entry: safetensors writes several in hash-map order, which would change the file's digest
    meta = {"fedtrust": json.dumps({"format": MODEL_FORMAT, "job_id": job_id, "training": spec,
                                    "preprocessing": preprocessing}, sort_keys=True, separators=(",", ":"))}
    return save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(arrays.items())}, metadata=meta)


def read_model(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any], str]:
    """(arrays, training spec dict, preprocessing dict, job id) from safetensors bytes; InvalidInput otherwise."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        arrays = load(data)
        meta = _metadata(data)
    except (SafetensorError, ValueError, KeyError, TypeError):
        raise InvalidInput("the model file is not a safetensors file written by fedtrust") from None
    try:
        info = json.loads(meta["fedtrust"])
        spec, pre, job_id = info["training"], info["preprocessing"], str(info["job_id"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise InvalidInput("the model file has no fedtrust metadata; use a model file `fedtrust train` wrote") from None
    if info.get("format") != MODEL_FORMAT:
        raise InvalidInput("the model file is not a fedtrust model (its metadata names another format)")
    return {k: np.asarray(v) for k, v in arrays.items()}, spec, pre, job_id


def _metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise ValueError("short")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or n > 100 << 20:
        raise ValueError("header")
    header = json.loads(data[8:8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("metadata")
    return {str(k): str(v) for k, v in meta.items()}

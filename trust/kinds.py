"""The job kind seam: the payload protocol every kind implements and the registry of their parsers.

A job spec (`fedtrust.trust.jobs.JobSpec`) carries the fields every job has
plus one payload of its kind. Each kind's module defines its payload (a frozen
dataclass implementing `JobPayload`) and registers its parser here by name,
so trust/ parses every kind without importing any package above it. No module
here imports the contract or job code (the vertical rules, which the contract
imports, register the PSI payload).
"""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Callable, ClassVar, Protocol

from fedtrust.errors import InvalidInput
from fedtrust.trust.canonical import Fields

__all__ = ["JOB_ID", "MAX_SQL_CHARS", "JobPayload", "check_output_key", "PayloadParser", "job_kinds", "payload_parser", "register_payload"]

#: a job id (and so a reference to another job, as a joint job's PSI alignment)
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: the longest SQL a job may carry
MAX_SQL_CHARS = 65536


class JobPayload(Protocol):
    """The kind-specific part of a job spec: a frozen dataclass, signed as part of the job."""

    #: the kind's name on the wire ("query", "train", "psi", ...)
    kind: ClassVar[str]
    #: how long a fresh job of this kind stays valid by default
    ttl: ClassVar[timedelta]

    def to_fields(self) -> dict[str, Any]:
        """The keys this kind adds to the signed JSON (named for the kind; never a key every job has)."""
        ...

    def check_payload(self, dataset: str) -> None:
        """Field formats of the payload in a job for `dataset`; InvalidInput naming the field."""
        ...

    def describe(self) -> str:
        """The request as the owner's job log shows it (the SQL, the spec as JSON ...)."""
        ...


def check_output_key(key: str) -> None:
    """An MPC job's `output_key`: the buyer's per-job X25519 public key, base64 of its 32 raw bytes (the owners seal
    their output shares to it); InvalidInput otherwise."""
    import base64

    try:
        raw = base64.b64decode(key, validate=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise InvalidInput("job spec: output_key must be a base64 raw 32-byte X25519 public key")


#: reads a kind's payload from the job spec's fields (InvalidInput naming the field)
PayloadParser = Callable[[Fields], JobPayload]
_PARSERS: dict[str, PayloadParser] = {}


def register_payload(kind: str, parse: PayloadParser) -> None:
    """Register the parser of job kind `kind`; registering another parser under a taken name is a bug."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,15}", kind):
        raise ValueError(f"job kind {kind!r} must be 1-16 characters a-z 0-9 -, starting with a letter")
    if _PARSERS.get(kind, parse) != parse:
        raise ValueError(f"job kind {kind!r} is registered twice")
    _PARSERS[kind] = parse


def job_kinds() -> tuple[str, ...]:
    """The job kinds this process can parse (the payload modules it imported), sorted."""
    return tuple(sorted(_PARSERS))


def payload_parser(kind: str) -> PayloadParser | None:
    return _PARSERS.get(kind)

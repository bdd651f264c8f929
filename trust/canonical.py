"""Canonical JSON (RFC 8785), digests and timestamps shared by every signed object.

Signed payloads are the canonical bytes of a JSON value, so two parties that
agree on an object agree on its digest. Timestamps are RFC 3339 UTC strings
with whole seconds and a `Z` suffix.

`rfc8785` (pure Python) is the definition of the canonical form. For the
values fedtrust signs — objects with ASCII keys, strings, integers within
±(2^53 − 1), booleans and null, never a float — `orjson` with sorted keys
writes exactly the same bytes, about 20× faster: RFC 8785 sorts keys by
UTF-16 code units, which for ASCII keys is the byte order orjson sorts by;
it writes numbers the ECMAScript way, which differs from orjson only for
floats; and both escape exactly `"`, `\\` and the control characters below
U+0020 (as `\\b \\t \\n \\f \\r` or lowercase `\\u00xx`) and write every
other character as UTF-8. `canonical` and `is_canonical` take that path only
for such values (`_plain` checks the types, the key alphabet and the integer
range first) and ask `rfc8785` for anything else, so both give exactly
`rfc8785`'s answer for every value; `tests/unit/test_canonical_fast.py` checks
the equivalence on every code point and on generated values.
"""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Any

import orjson
import rfc8785

from fedtrust.errors import InvalidInput

__all__ = ["canonical", "is_canonical", "sha256_hex", "utc_now", "format_time", "parse_time", "is_sha256_hex",
           "Fields"]

_INT_MAX = 2**53 - 1  # rfc8785 refuses integers beyond ±(2^53 − 1)
#: orjson refuses nesting deeper than 255; rfc8785 is asked about anything deeper than this
_MAX_DEPTH = 200


def _plain(obj: Any, depth: int = 0) -> bool:
    """Whether `obj` holds only what orjson writes exactly as RFC 8785 does (module docstring): dicts with ASCII
    string keys, lists, tuples, strings, integers within ±(2^53 − 1), booleans and None (exact types only)."""
    t = type(obj)
    if t is str or t is bool or obj is None:
        return True
    if t is int:
        return -_INT_MAX <= obj <= _INT_MAX
    if depth >= _MAX_DEPTH:
        return False
    if t is dict:
        for k, v in obj.items():
            if type(k) is not str or not k.isascii():
                return False
            tv = type(v)
            if tv is not str and tv is not bool and not _plain(v, depth + 1):
                return False
        return True
    if t is list or t is tuple:
        for v in obj:
            tv = type(v)
            if tv is not str and tv is not bool and not _plain(v, depth + 1):
                return False
        return True
    return False


def _fast(obj: Any) -> bytes | None:
    """orjson's bytes for a `_plain` value, else None (then rfc8785 decides)."""
    if not _plain(obj):
        return None
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):  # e.g. a lone surrogate: rfc8785 words the refusal
        return None


def is_canonical(obj: Any, data: bytes) -> bool:
    """Whether `data` is exactly the RFC 8785 canonical JSON of `obj` (a verifier's check of a parsed payload)."""
    fast = _fast(obj)
    if fast is not None:
        return fast == data
    try:
        return canonical(obj) == data
    except InvalidInput:
        return False


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON of `obj`; InvalidInput for values JSON cannot carry exactly.

    Integers beyond ±2^53 and non-finite floats are refused: encode such
    numbers as decimal strings.
    """
    fast = _fast(obj)
    if fast is not None:
        return fast
    try:
        return rfc8785.dumps(obj)
    except rfc8785.IntegerDomainError:
        raise InvalidInput("an integer beyond ±2^53 cannot be signed as a JSON number; encode it as a decimal string") from None
    except rfc8785.FloatDomainError:
        raise InvalidInput("NaN or infinity cannot be signed as JSON; use finite numbers") from None
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as e:
        raise InvalidInput(f"value cannot be encoded as canonical JSON ({type(e).__name__}); use dicts, lists, strings, ints and bools") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_sha256_hex(value: object) -> bool:
    """True for a lowercase 64-character hex string (how every digest is written)."""
    return isinstance(value, str) and len(value) == 64 and _SHA256_HEX.fullmatch(value) is not None


def format_time(when: datetime) -> str:
    """RFC 3339 UTC with whole seconds: `2025-01-31T12:00:00Z`."""
    if when.tzinfo is None:
        raise InvalidInput("timestamps must carry a time zone; use datetime.now(timezone.utc)")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> str:
    return format_time(datetime.now(timezone.utc))


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 timestamp with a zone (`Z` or `±hh:mm`) into an aware UTC datetime."""
    if not isinstance(value, str) or "T" not in value or len(value) > 40:
        raise InvalidInput("timestamp is not RFC 3339; write it like 2025-01-31T12:00:00Z")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput("timestamp is not RFC 3339; write it like 2025-01-31T12:00:00Z") from None
    if when.tzinfo is None:
        raise InvalidInput("timestamp has no time zone; end it with Z (UTC)")
    return when.astimezone(timezone.utc)


class Fields:
    """Typed reads from a decoded JSON object; InvalidInput naming the field that is wrong.

    `what` names the object in messages ("attestation", "job spec").
    """

    def __init__(self, d: object, what: str) -> None:
        if not isinstance(d, dict):
            raise InvalidInput(f"{what} must be a JSON object")
        self.d: dict[str, Any] = d
        self.what = what

    def _bad(self, key: str, kind: str) -> InvalidInput:
        return InvalidInput(f"{self.what}: field `{key}` must be {kind}")

    def raw(self, key: str) -> Any:
        if key not in self.d:
            raise InvalidInput(f"{self.what}: field `{key}` is missing")
        return self.d[key]

    def text(self, key: str) -> str:
        v = self.raw(key)
        if not isinstance(v, str):
            raise self._bad(key, "a string")
        return v

    def opt_text(self, key: str) -> str | None:
        v = self.d.get(key)
        if v is not None and not isinstance(v, str):
            raise self._bad(key, "a string or null")
        return v

    def integer(self, key: str) -> int:
        v = self.raw(key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise self._bad(key, "an integer")
        return v

    def flag(self, key: str) -> bool:
        v = self.raw(key)
        if not isinstance(v, bool):
            raise self._bad(key, "true or false")
        return v

    def digest(self, key: str) -> str:
        v = self.raw(key)
        if not is_sha256_hex(v):
            raise self._bad(key, "a lowercase sha256 hex digest")
        return v

    def time(self, key: str) -> str:
        v = self.text(key)
        try:
            parse_time(v)
        except InvalidInput:
            raise self._bad(key, "an RFC 3339 UTC timestamp") from None
        return v

    def texts(self, key: str) -> tuple[str, ...]:
        v = self.raw(key)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._bad(key, "a list of strings")
        return tuple(v)

    def digests(self, key: str) -> tuple[str, ...]:
        v = self.texts(key)
        if not all(is_sha256_hex(x) for x in v):
            raise self._bad(key, "a list of lowercase sha256 hex digests")
        return v

    def obj(self, key: str) -> dict[str, Any]:
        v = self.raw(key)
        if not isinstance(v, dict):
            raise self._bad(key, "an object")
        return v

    def items(self, key: str) -> list[Any]:
        v = self.raw(key)
        if not isinstance(v, list):
            raise self._bad(key, "a list")
        return v

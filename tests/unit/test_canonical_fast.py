"""The fast canonical-JSON path (orjson) gives exactly rfc8785's bytes and verdicts (fedtrust.trust.canonical)."""
from __future__ import annotations

import json

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtrust.errors import InvalidInput
from fedtrust.trust import canonical as c


def reference(obj: object) -> bytes | None:
    """rfc8785, the definition; None where it refuses the value."""
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError):
        return None


def test_every_code_point_is_written_as_rfc8785_writes_it() -> None:
    # escaping is per character, so every string the fast path writes agrees once every character does
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    for ch in chars:
        text = f"a{ch}b"
        assert c.canonical({"k": text}) == reference({"k": text}), hex(ord(ch))


def test_lone_surrogates_are_refused_as_rfc8785_refuses_them() -> None:
    with pytest.raises(InvalidInput, match="canonical JSON"):
        c.canonical({"k": "\ud800"})
    assert not c.is_canonical({"k": "\ud800"}, b'{"k":"\\ud800"}')


INT_EDGES = [2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 2**63, -(2**64)]


@pytest.mark.parametrize("n", INT_EDGES)
def test_integer_range_is_rfc8785s(n: int) -> None:
    ref = reference({"n": n})
    if ref is None:
        with pytest.raises(InvalidInput, match="beyond"):
            c.canonical({"n": n})
        assert not c.is_canonical({"n": n}, json.dumps({"n": n}, separators=(",", ":")).encode())
    else:
        assert c.canonical({"n": n}) == ref


def test_values_outside_the_fast_path_go_to_rfc8785() -> None:
    # floats (ECMAScript number form), non-ASCII keys (UTF-16 order), subclasses: rfc8785 decides
    for obj in ({"x": 1.5, "y": 1e21, "z": -0.0}, {"é": 1, "z": 2, "\U0001f600": 3, "\uff61": 4}, {"t": (1, 2)}):
        assert c.canonical(obj) == reference(obj)
        assert c.is_canonical(obj, reference(obj))
    deep: object = "leaf"
    for _ in range(300):  # deeper than orjson allows
        deep = [deep]
    assert c.canonical(deep) == reference(deep)


def test_a_payload_that_is_not_canonical_is_refused() -> None:
    obj = {"b": 1, "a": "x"}
    assert c.is_canonical(obj, b'{"a":"x","b":1}')
    for other in (b'{"b":1,"a":"x"}', b'{"a": "x","b":1}', b'{"a":"\\u0078","b":1}', b'{"a":"x","b":1}\n'):
        assert not c.is_canonical(obj, other)


json_leaf = st.one_of(
    st.none(), st.booleans(), st.text(), st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_generated_values_agree_with_rfc8785(obj: object) -> None:
    ref = reference(obj)
    if ref is None:
        with pytest.raises(InvalidInput):
            c.canonical(obj)
        return
    assert c.canonical(obj) == ref
    assert c.is_canonical(obj, ref)
    parsed = json.loads(ref)  # what a verifier does: parse the signed bytes, check them (a float 2.0**53 parses
    assert c.is_canonical(parsed, ref) == (reference(parsed) == ref)  # back as an int that rfc8785 refuses)
    loose = json.dumps(obj, ensure_ascii=True).encode()  # Python's own JSON: spaces, \\u escapes
    assert c.is_canonical(obj, loose) == (loose == ref)

"""Hypothesis strategies and one budget for the parser fuzz tests (tests/unit/test_fuzz_*.py).

Every fuzz test is derandomized (a fixed seed: CI sees the same examples every run), keeps no
example database on disk, and has no per-example deadline (the machine is noisy). ``budget(n)``
caps the examples per test; the whole fuzz suite is kept well under 20 s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = [
    "budget",
    "json_values",
    "json_fields",
    "json_bytes",
    "any_bytes",
    "any_text",
    "is_strict_json",
]

F = TypeVar("F", bound=Callable[..., Any])


def budget(examples: int) -> Callable[[F], F]:
    """The fuzz settings: fixed seed, no database, no deadline, at most ``examples`` examples."""
    return settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=examples,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


any_text = st.one_of(
    st.text(),
    # What os.environ and file names really hold: undecodable bytes as lone surrogates.
    st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.text(st.characters(codec=None, categories=["Cs", "Cc", "Zs", "Nd", "Lu"]), max_size=20),
)
"""Any string, including lone surrogates, control characters and non-ASCII digits."""

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)

json_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=10,
)
"""JSON of any shape (NaN, infinities, huge integers and lone surrogates included)."""

json_fields: st.SearchStrategy[Any] = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=2),
    st.dictionaries(st.text(max_size=4), _scalars, max_size=2),
)
"""One field's value of any JSON type, shallow: cheap enough to fill every field of a record."""


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


json_bytes = json_values.map(_dump)
"""The bytes of a JSON document of any shape (what a JSON file could hold)."""

any_bytes = st.one_of(
    st.binary(max_size=300),
    json_bytes,
    # JSON with a few bytes flipped: valid-looking files torn or corrupted in place.
    st.tuples(json_bytes, st.binary(min_size=1, max_size=3), st.integers(min_value=0)).map(
        lambda t: t[0][: t[2] % (len(t[0]) + 1)] + t[1] + t[0][t[2] % (len(t[0]) + 1) :]
    ),
    st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b"\xef\xbb\xbf{}", b"\x00" * 64, b"1" * 5000]),
)
"""Any bytes a file on the volume could hold: garbage, JSON of any shape, corrupted JSON, bombs."""


def is_strict_json(value: Any) -> bool:
    """Whether ``value`` serialises as strict JSON (no NaN/Infinity) that ``jq`` would read."""
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError):
        return False
    return True

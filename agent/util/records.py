"""Read the JSON records other processes write (claim marker, published state, fleet entries and
lease holders in the broker): any bytes give a typed record or None.

The marker sits in a volume anything may write into, and the state file in a directory anyone may
point ``AGENT_STATE_DIR`` at. Their readers must not trust a field's type: a marker whose heartbeat
is a string, or infinite, would fail (or never go stale) far from where it was read. Here every
field is checked once, at the boundary, against the JSON types it may hold.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["FieldTypes", "field_types", "field_defaults", "typed_fields", "parse_record", "read_record"]

FieldTypes = Mapping[str, tuple[type, ...]]
"""Each field's accepted Python types after ``json.loads`` (``type(None)`` for null)."""


_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    bool: (bool,),
    list: (list,),
    dict: (dict,),
    type(None): (type(None),),
}
"""A field's Python type -> what ``json.loads`` may give for it (a float may be written as 1)."""


def _json_types(hint: Any) -> tuple[type, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for arm in typing.get_args(hint) for t in _json_types(arm))
    base = typing.get_origin(hint) or hint
    if base not in _JSON_TYPES:
        raise TypeError(f"no JSON type for {hint!r}")
    return _JSON_TYPES[base]


def field_types(record: type) -> FieldTypes:
    """The :data:`FieldTypes` of a dataclass, from its own annotations: declared once, in the class."""
    hints = typing.get_type_hints(record)
    return {f.name: _json_types(hints[f.name]) for f in dataclasses.fields(record)}


def field_defaults(record: type) -> dict[str, Any]:
    """The defaults a dataclass declares, for records written by an older agent that lack a field."""
    found: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return found


def _accepts(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:  # JSON true is not a number here
        return False
    if not isinstance(value, types):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def typed_fields(data: Any, types: FieldTypes, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fields of ``data`` named in ``types``, each checked.

    ``defaults`` stand in for fields a record may lack (written by an older agent); a field that is
    present must still have its type.

    Raises:
        ValueError: ``data`` is not an object, or a field is missing, of the wrong type or not finite.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a JSON object was expected, not a {type(data).__name__}")
    data = {**(defaults or {}), **data}
    for name, accepted in types.items():
        if not _accepts(data.get(name), accepted):
            raise ValueError(f"field {name!r} is missing or of the wrong type")
    return {name: data[name] for name in types}


def parse_record(raw: bytes | str, types: FieldTypes, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parse and check one record (``defaults`` as in :func:`typed_fields`).

    Raises:
        ValueError: not UTF-8, not JSON, nested too deeply, or fields as in :func:`typed_fields`.
    """
    try:
        data = json.loads(raw)
    except RecursionError as e:
        raise ValueError("nested too deeply") from e
    return typed_fields(data, types, defaults)


def read_record(path: Path, types: FieldTypes, defaults: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The checked record in ``path``; None when it is absent, unreadable or malformed."""
    try:
        return parse_record(path.read_bytes(), types, defaults)
    except (OSError, ValueError):
        return None

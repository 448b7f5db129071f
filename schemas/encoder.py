"""An Avro binary encoder compiled from a schema once, for the audit events written per decision.

Why not fastavro's writer: it interprets the schema for every record (type dispatch, logical
type lookups per field) and spent ~100 us on one decision event even with every value already
primitive, a tenth of the worker's whole CPU per task. This module turns the schema into
closures once; encoding is then plain Python per field (``python -m benchmarks.decision`` and
``dispatch bench`` measure both). Output is byte-identical to fastavro's (tested on every
outcome and settlement kind, and by property), and reading stays with fastavro and avro.

It is as strict as ``fastavro.schemaless_writer(..., strict=True)``: a missing or extra field,
a value of the wrong type, an unknown enum symbol, an out-of-range int or a decimal with more
places than its scale raises ``ValueError``/``TypeError``/``KeyError``. Schemas with a union
other than ``[null, X]`` are refused at compile time (``NotImplementedError``): ours have none.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

Write = Callable[[bytearray, Any], None]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_DOUBLE = struct.Struct("<d").pack
_FLOAT = struct.Struct("<f").pack
_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)


def _varint(n: int) -> bytes:
    """Zig-zag varint of a (64-bit range) integer, as Avro writes int and long."""
    z = (n << 1) if n >= 0 else ((-n) << 1) - 1
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SMALL = [_varint(n) for n in range(-512, 4096)]  # lengths, counts, indexes and small numbers: a lookup


def _long(out: bytearray, n: int, bounds: tuple[int, int] = _LONG_RANGE) -> None:
    if n.__class__ is not int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"expected an integer, got {n!r}")
    if -512 <= n < 4096:
        out += _SMALL[n + 512]
    elif bounds[0] <= n <= bounds[1]:
        out += _varint(n)
    else:
        raise ValueError(f"{n} is out of range")


def _int(out: bytearray, n: int) -> None:
    _long(out, n, _INT_RANGE)


def _string(out: bytearray, v: str) -> None:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    b = v.encode()
    n = len(b)
    out += _SMALL[n + 512] if n < 4096 else _varint(n)
    out += b


def _bytes(out: bytearray, v: bytes) -> None:
    if not isinstance(v, (bytes, bytearray)):
        raise TypeError(f"expected bytes, got {v!r}")
    _long(out, len(v))
    out += v


def _boolean(out: bytearray, v: bool) -> None:
    if not isinstance(v, bool):
        raise TypeError(f"expected a boolean, got {v!r}")
    out.append(1 if v else 0)


def _number(pack: Callable[[float], bytes]) -> Write:
    def write(out: bytearray, v: float) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"expected a number, got {v!r}")
        out += pack(v)
    return write


def _null(out: bytearray, v: None) -> None:
    if v is not None:
        raise TypeError(f"expected null, got {v!r}")


def _decimal(scale: int) -> Write:
    """Bytes-backed decimal: the unscaled value in minimal two's complement, big-endian."""
    unit = 10**scale

    def write(out: bytearray, v: Decimal | bytes) -> None:
        if not isinstance(v, Decimal):  # already its bytes (fastavro takes those too)
            _bytes(out, v)
            return
        try:
            num, den = v.as_integer_ratio()  # exact, and much cheaper than as_tuple()
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"{v} is not a finite decimal") from exc
        if unit % den:
            raise ValueError(f"{v} does not fit a decimal of scale {scale}")
        n = num * (unit // den)
        b = n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)
        out += _SMALL[len(b) + 512]
        out += b
    return write


def _timestamp_micros(out: bytearray, v: datetime | int) -> None:
    if isinstance(v, datetime):
        d = v - (_EPOCH if v.tzinfo is not None else _EPOCH_NAIVE)
        v = (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    _long(out, v)


_PRIMITIVES: dict[str, Write] = {
    "null": _null, "boolean": _boolean, "int": _int, "long": _long, "float": _number(_FLOAT),
    "double": _number(_DOUBLE), "bytes": _bytes, "string": _string,
}


def _enum(symbols: list[str]) -> Write:
    index = {s: _SMALL[i + 512] for i, s in enumerate(symbols)}

    def write(out: bytearray, v: Any) -> None:
        at = index.get(v.value if isinstance(v, Enum) else v)
        if at is None:
            raise ValueError(f"{v!r} is not one of {symbols}")
        out += at
    return write


def _array(item: Write) -> Write:
    def write(out: bytearray, v: list[Any]) -> None:
        if not isinstance(v, (list, tuple)):
            raise TypeError(f"expected a list, got {v!r}")
        if v:
            _long(out, len(v))
            for x in v:
                item(out, x)
        out.append(0)
    return write


def _map(value: Write) -> Write:
    def write(out: bytearray, v: Mapping[str, Any]) -> None:
        if not isinstance(v, Mapping):
            raise TypeError(f"expected a mapping, got {v!r}")
        if v:
            _long(out, len(v))
            for k, x in v.items():
                _string(out, k)
                value(out, x)
        out.append(0)
    return write


def _nullable(null_at: int, other: Write) -> Write:
    null, branch = _SMALL[null_at + 512], _SMALL[(1 - null_at) + 512]

    def write(out: bytearray, v: Any) -> None:
        if v is None:
            out += null
        else:
            out += branch
            other(out, v)
    return write


def _record(name: str, fields: list[tuple[str, Write]], names: set[str]) -> Write:
    """``fields`` and ``names`` are filled by the caller after registering it (for recursive types)."""

    def write(out: bytearray, v: Mapping[str, Any]) -> None:
        if len(v) != len(names):
            extra = set(v) - names
            if extra:
                raise ValueError(f"{name} has no field(s) {sorted(extra)}")
        for n, w in fields:
            w(out, v[n])
    return write


def _compile(schema: Any, named: dict[str, Write]) -> Write:
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        return lambda out, v: named[schema](out, v)  # a named type, possibly still being compiled
    if isinstance(schema, list):
        if len(schema) != 2 or "null" not in schema:
            raise NotImplementedError(f"only [null, X] unions are supported, not {schema}")
        at = schema.index("null")
        return _nullable(at, _compile(schema[1 - at], named))
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "decimal" and kind == "bytes":
        return _decimal(int(schema.get("scale", 0)))
    if logical == "timestamp-micros" and kind == "long":
        return _timestamp_micros
    if isinstance(kind, (dict, list)):
        return _compile(kind, named)
    if kind == "record":
        fields: list[tuple[str, Write]] = []
        names: set[str] = set()
        named[schema["name"]] = write = _record(schema["name"], fields, names)  # recursive references resolve late
        fields += [(f["name"], _compile(f["type"], named)) for f in schema["fields"]]
        names.update(n for n, _ in fields)
        return write
    if kind == "enum":
        named[schema["name"]] = write = _enum(list(schema["symbols"]))
        return write
    if kind == "array":
        return _array(_compile(schema["items"], named))
    if kind == "map":
        return _map(_compile(schema["values"], named))
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    raise NotImplementedError(f"Avro type {kind!r} is not supported")


def compile_encoder(parsed: Any) -> Callable[[Mapping[str, Any]], bytes]:
    """``encode(record) -> bytes`` for a schema as ``fastavro.parse_schema`` returns it (full names)."""
    write = _compile(parsed, {})

    def encode(record: Mapping[str, Any]) -> bytes:
        out = bytearray()
        write(out, record)
        return bytes(out)
    return encode

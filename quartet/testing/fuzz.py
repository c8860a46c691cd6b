"""Hypothesis strategies that build arbitrary messages of any protobuf type from its
descriptor, and raw byte strings that are not (or are truncated) messages — for fuzzing
every RPC of every role through a generic channel.

Field values lean towards what breaks servers: zero, negative and huge integers (shapes,
offsets, versions, sizes), NaN/inf floats, unknown enum numbers (dtypes), empty and
path-like strings (run ids, output directories), empty and odd-length byte payloads.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor as _d
from google.protobuf import message_factory
from hypothesis import strategies as st

INTS = st.sampled_from([0, 0, 1, 2, 3, 7, -1, -2, 255, 4096, 2**31 - 1, -(2**31), 2**40,
                        2**62, -(2**62)]) | st.integers(-5, 70)
FLOATS = st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e-9, 1e30, -1e30, float("nan"),
                          float("inf"), float("-inf")])
STRINGS = st.sampled_from(["", "x", "run-1", "ppo", "../../etc/passwd", "/tmp/../..", "k1",
                           "gloo", "float32", "token_mean", "a" * 300, "\u00e9\u4e2d",
                           "model.embed_tokens.weight"]) | st.text(max_size=12)
BYTES = st.binary(max_size=64) | st.sampled_from([b"", b"\x00" * 4, b"\x00" * 3,
                                                   b"\x00\x00\x80\x7f" * 2])

_SCALARS = {
    _d.FieldDescriptor.TYPE_DOUBLE: FLOATS, _d.FieldDescriptor.TYPE_FLOAT: FLOATS,
    _d.FieldDescriptor.TYPE_STRING: STRINGS, _d.FieldDescriptor.TYPE_BYTES: BYTES,
    _d.FieldDescriptor.TYPE_BOOL: st.booleans(),
}
_RANGES = {
    _d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    _d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    _d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    _d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    _d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: _d.FieldDescriptor) -> st.SearchStrategy:
    if field.type == _d.FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.sampled_from(numbers) | st.integers(-3, 40)
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    lo, hi = _RANGES.get(field.type, (-(2**63), 2**63 - 1))
    return INTS.filter(lambda v: lo <= v <= hi)


def message_of(descriptor: _d.Descriptor, depth: int = 3) -> st.SearchStrategy:
    """Messages of `descriptor`'s type with a random subset of fields set."""
    cls = message_factory.GetMessageClass(descriptor)
    fields = []
    for f in descriptor.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            continue  # maps: left empty
        if f.message_type is not None:
            if depth <= 0:
                continue
            value = message_of(f.message_type, depth - 1)
        else:
            value = _scalar(f)
        if f.is_repeated:
            value = st.lists(value, max_size=5 if f.message_type is not None else 8)
        fields.append((f, st.none() | value))

    @st.composite
    def build(draw) -> Any:
        msg = cls()
        for f, strategy in fields:
            value = draw(strategy)
            if value is None:
                continue
            if f.is_repeated:
                getattr(msg, f.name).extend(value)
            elif f.message_type is not None:
                getattr(msg, f.name).CopyFrom(value)
            else:
                setattr(msg, f.name, value)
        return msg

    return build()


def request_bytes(descriptor: _d.Descriptor) -> st.SearchStrategy[bytes]:
    """Serialized requests: arbitrary messages, the same truncated, or random bytes."""
    whole = message_of(descriptor).map(lambda m: m.SerializeToString())

    @st.composite
    def truncated(draw) -> bytes:
        data = draw(whole)
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]

    return st.one_of(whole, whole, truncated(), st.binary(max_size=48))

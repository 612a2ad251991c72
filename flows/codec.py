"""JSON for everything stored: msgspec encodes and decodes, psycopg moves bytes.

One module-level encoder; one cached decoder per target type. JSONB columns
are read back as JSON text (cast in the query) and decoded straight into the
type the annotation names (Struct, dataclass or plain JSON value).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec
from psycopg import adapt, postgres

from flows.errors import InvalidInput

_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    """Serialise ``value`` to JSON bytes, or raise InvalidInput naming why."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"value is not JSON-serialisable: {exc}") from None


@lru_cache(maxsize=256)
def _decoder(target: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(target)


def decode(data: bytes | str | None, target: Any = Any) -> Any:
    """Decode JSON ``data`` into ``target``; raise InvalidInput if it does not fit."""
    if data is None:
        return None
    try:
        return _decoder(target).decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidInput(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


def to_builtins(value: Any) -> Any:
    """Plain dicts/lists/str for values that are Structs or dataclasses."""
    return msgspec.to_builtins(value)


class Json(bytes):
    """Already-encoded JSON bytes, sent to a jsonb parameter as they are."""


class JsonbDumper(adapt.Dumper):
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: bytes) -> bytes:
        return obj

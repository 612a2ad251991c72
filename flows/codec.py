"""JSON for everything stored: msgspec encodes and decodes, psycopg moves bytes.

One module-level encoder; one cached decoder per target type. JSONB columns
are read back as JSON text (cast in the query) and decoded straight into the
type the annotation names (Struct, dataclass or plain JSON value).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any

import msgspec
from psycopg import adapt, postgres

from flows.errors import InvalidInput

# The largest JSON document (input, output, signal payload, activity result)
# stored for one value. PostgreSQL takes up to 255 MB per jsonb value, but a
# workflow's values are read back on replays: keep them small and put bulk
# data elsewhere, passing a reference.
MAX_PAYLOAD_BYTES = int(os.environ.get("FLOWS_MAX_PAYLOAD_BYTES", str(2 * 1024 * 1024)))

_encoder = msgspec.json.Encoder()
# "\u0000" in the JSON text is a NUL in a string (jsonb refuses it) unless
# its backslash is itself escaped ("\\u0000" is the six characters \u0000).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def encode(value: Any, what: str = "value", *, limit: int | None = None) -> bytes:
    """Serialise ``value`` to JSON bytes that PostgreSQL's jsonb accepts, or
    raise InvalidInput naming ``what`` (and the path inside it) and why: not
    JSON-serialisable, a NUL character in a string, or over ``limit`` bytes
    (``MAX_PAYLOAD_BYTES`` by default)."""
    try:
        data = _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}", path=what) from None
    if b"\\u0000" in data and _NUL_ESCAPE.search(data):
        path = what + (_nul_path(msgspec.to_builtins(value)) or "")
        raise InvalidInput(f"{path} contains a NUL character (\\u0000), which PostgreSQL cannot store", path=path)
    limit = MAX_PAYLOAD_BYTES if limit is None else limit
    if len(data) > limit:
        raise InvalidInput(
            f"{what} is {len(data)} bytes as JSON, over the limit of {limit} (FLOWS_MAX_PAYLOAD_BYTES)", path=what
        )
    return data


def _nul_path(value: Any) -> str | None:
    """Where in ``value`` (plain JSON types) the first string or key holding
    a NUL is: ``.a.b[2]``, "" for ``value`` itself, None if nowhere."""
    if isinstance(value, str):
        return "" if "\0" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        step = f"[{key}]" if isinstance(key, int) else f".{key!r}" if "\0" in key else f".{key}"
        inner = "" if isinstance(key, str) and "\0" in key else _nul_path(item)
        if inner is not None:
            return step + inner
    return None


def text(value: str) -> str:
    """``value`` fit for a text column: PostgreSQL refuses NUL characters,
    which exception messages may carry; they are shown as ``\\x00``."""
    return value.replace("\0", "\\x00") if "\0" in value else value


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

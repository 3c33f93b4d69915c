"""`--record-endpoint`: the endpoint that answered, in the output line where readers of Batch API
output do not look. The line keeps every Batch API field as it was; one top-level field,
`"endpoint": NAME`, is added after them (JSON readers ignore keys they do not know; the
OpenAI Batch API's own lines never carry it)."""

from __future__ import annotations

import orjson

FIELD = "endpoint"


def with_endpoint(line: bytes, name: str) -> bytes:
    """`line` (one JSON object and its newline) with `"endpoint": name` as its last field.
    Byte work on the line's end, so the answer's own bytes stay exactly as they came."""
    if not name:
        return line
    assert line.endswith(b"}\n")
    return line[:-2] + b',"' + FIELD.encode() + b'":' + orjson.dumps(name) + b"}\n"

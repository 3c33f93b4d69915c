"""The validator and the token counter agree: every line the reader accepts can be counted,
charged and serialised; every line they cannot handle is a bad line with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun.errors import BadLine
from batchrun.files.jobs import MAX_DEPTH, read_jobs
from batchrun.policy.request import Request
from batchrun.policy.tokens import char_estimate, max_output_tokens, prompt_tokens

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.text(max_size=12))
json_any = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(
                                ["type", "text", "url", "detail", "image_url", "refusal",
                                 "function", "name", "arguments", "id"]), inner, max_size=3)),
    max_leaves=8,
)
part = st.one_of(
    json_any,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "refusal", "input_audio"])},
        optional={"text": json_any, "image_url": json_any, "refusal": json_any}),
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "robot"])},
    optional={
        "content": st.one_of(st.none(), st.text(max_size=20), st.lists(part, max_size=3),
                             json_any),
        "name": json_any,
        "tool_calls": st.one_of(json_any, st.lists(st.one_of(
            json_any, st.fixed_dictionaries({}, optional={"function": json_any, "id": json_any})),
            max_size=3)),
        "function_call": json_any,
        "refusal": json_any,
        "tool_call_id": json_any,
    },
)
chat_line = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=8), "messages": st.lists(message, max_size=3)},
    optional={"max_tokens": json_any, "max_completion_tokens": json_any, "n": json_any,
              "model": st.sampled_from(["gpt-4o-mini", "gpt-4", "some-local-model"])},
)
embedding_line = st.fixed_dictionaries(
    {"custom_id": st.text(min_size=1, max_size=8), "url": st.just("/v1/embeddings"),
     "body": st.fixed_dictionaries(
         {"model": st.just("text-embedding-3-small"), "input": json_any},
         optional={"max_tokens": json_any, "n": json_any, "dimensions": json_any})},
)


def _dumps(value: Any) -> bytes:
    """orjson refuses to write what is nested this deep; a user's file can still hold it."""
    if isinstance(value, _Deep):
        return b"[" * value.depth + b'"deep"' + b"]" * value.depth
    if isinstance(value, dict):
        return b"{" + b",".join(orjson.dumps(k) + b":" + _dumps(v)
                                for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(_dumps(v) for v in value) + b"]"
    return orjson.dumps(value)


class _Deep:
    def __init__(self, depth: int) -> None:
        self.depth = depth


def _accepted(path: Path, rows: list[Any]) -> list[Request | BadLine]:
    path.write_bytes(b"".join(_dumps(r) + b"\n" for r in rows))
    return list(read_jobs(path, "gpt-4o-mini"))


def _count(request: Request) -> None:
    """What the engine does with every accepted line before and while sending it."""
    assert prompt_tokens(request.url, request.body) >= 0
    assert char_estimate(request.body) >= 0
    out = max_output_tokens(request.body)
    assert out is None or out > 0
    orjson.dumps(request.body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(chat_line, embedding_line), min_size=1, max_size=4))
def test_every_line_the_validator_accepts_can_be_counted(tmp_path: Path,
                                                         rows: list[dict[str, Any]]) -> None:
    for item in _accepted(tmp_path / "jobs.jsonl", rows):
        if isinstance(item, Request):
            _count(item)


@pytest.mark.parametrize(("row", "reason"), [
    ({"id": "x", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": "https://example.com/a.png"}]}]}, "image_url"),
    ({"id": "x", "messages": [{"role": "assistant", "content": None, "tool_calls": [1]}]},
     "tool_calls"),
    ({"id": "x", "messages": [{"role": "assistant", "content": None, "tool_calls": 5}]},
     "tool_calls"),
    ({"id": "x", "messages": [{"role": "assistant", "content": None, "tool_calls": ["abc"]}]},
     "tool_calls"),
    ({"id": "x", "messages": [{"role": "assistant", "content": None,
                               "tool_calls": [{"function": "f"}]}]}, "function"),
    ({"id": "x", "messages": [{"role": "user", "content": "hi", "name": 5}]}, "name"),
    ({"id": "x", "messages": [{"role": "assistant", "content": [
        {"type": "refusal", "refusal": 7}]}]}, "refusal"),
    ({"custom_id": "x", "url": "/v1/embeddings",
      "body": {"model": "text-embedding-3-small", "input": "hi", "max_tokens": "lots"}},
     "max_tokens"),
    ({"id": "x", "messages": [{"role": "user", "content": "hi", "extra": _Deep(300)}]},
     f"nested more than {MAX_DEPTH}"),
    ({"id": "x", "messages": _Deep(990)}, f"nested more than {MAX_DEPTH}"),
])
def test_lines_the_token_counter_cannot_handle_are_bad_lines_with_a_reason(
    tmp_path: Path, row: dict[str, Any], reason: str,
) -> None:
    """Each of these passed validation, then crashed the token counter (or orjson in the
    client) and the job was recorded as done."""
    (item,) = _accepted(tmp_path / "jobs.jsonl", [row])
    assert isinstance(item, BadLine), item
    assert reason in item.reason
    assert item.custom_id == row.get("id", row.get("custom_id"))

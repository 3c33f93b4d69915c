"""The input reader: three line shapes, every kind of bad line, and whole-file problems."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun.errors import BadLine, InputError
from batchrun.files.jobs import MAX_LINE_BYTES, read_jobs
from batchrun.policy.request import EMBEDDINGS_URL, Request


def read(path: Path, content: bytes, model: str = "gpt-4o-mini") -> list[Request | BadLine]:
    path.write_bytes(content)
    return list(read_jobs(path, model))


def test_three_shapes_become_the_same_kind_of_request(tmp_path: Path) -> None:
    lines = [
        {"custom_id": "b1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}},
        {"id": "c1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        {"id": "p1", "prompt": "hi", "temperature": 0},
        {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": ["a", "b"]}},
    ]
    items = read(tmp_path / "j.jsonl", b"".join(orjson.dumps(x) + b"\n" for x in lines))
    assert all(isinstance(i, Request) for i in items)
    b1, c1, p1, e1 = items
    assert isinstance(b1, Request) and b1.model == "gpt-4o" and b1.custom_id == "b1"
    assert isinstance(c1, Request) and c1.body == {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "model": "gpt-4o-mini"}
    assert isinstance(p1, Request) and p1.body["messages"] == [{"role": "user", "content": "hi"}]
    assert p1.body["temperature"] == 0 and "prompt" not in p1.body and "id" not in p1.body
    assert isinstance(e1, Request) and e1.url == "/v1/embeddings"


def test_missing_id_becomes_line_number(tmp_path: Path) -> None:
    items = read(tmp_path / "j.jsonl", b'\n\n{"prompt": "x"}\n')
    assert isinstance(items[0], Request) and items[0].custom_id == "line-3"


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    items = read(tmp_path / "j.jsonl", b'\xef\xbb\xbf{"id": "a", "prompt": "x"}\r\n{"id": "b", '
                 b'"prompt": "y"}\r\n')
    assert [i.custom_id for i in items if isinstance(i, Request)] == ["a", "b"]


BAD_LINES = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'"text"', "expected a JSON object, got str"),
    (b'{"hello": 1}', "unrecognised line"),
    (b'{"id": 5, "prompt": "x"}', "id must be a non-empty string"),
    (b'{"id": "", "prompt": "x"}', "id must be a non-empty string"),
    (b'{"id": "a", "prompt": ""}', "prompt must be a non-empty string"),
    (b'{"id": "a", "prompt": 3}', "prompt must be a non-empty string"),
    (b'{"id": "a", "prompt": "x", "messages": []}', "either prompt or messages"),
    (b'{"id": "a", "messages": []}', "messages must be a non-empty list"),
    (b'{"id": "a", "messages": "hi"}', "messages must be a non-empty list"),
    (b'{"id": "a", "messages": ["hi"]}', "messages[0] must be an object"),
    (b'{"id": "a", "messages": [{"role": "bot", "content": "x"}]}', "messages[0].role"),
    (b'{"id": "a", "messages": [{"role": "user"}]}', "messages[0] has no content"),
    (b'{"id": "a", "messages": [{"role": "user", "content": 5}]}', "content must be a string"),
    (b'{"id": "a", "messages": [{"role": "user", "content": [{"text": "x"}]}]}',
     "content[0] must be an object with a type"),
    (b'{"id": "a", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
     "content[0].text must be a string"),
    (b'{"id": "a", "prompt": "x", "max_tokens": 0}', "max_tokens must be a positive integer"),
    (b'{"id": "a", "prompt": "x", "max_tokens": "9"}', "max_tokens must be a positive integer"),
    (b'{"id": "a", "prompt": "x", "max_tokens": true}', "max_tokens must be a positive integer"),
    (b'{"id": "a", "prompt": "x", "max_completion_tokens": -1}', "max_completion_tokens must"),
    (b'{"id": "a", "prompt": "x", "n": 1.5}', "n must be a positive integer"),
    (b'{"id": "a", "prompt": "x", "model": ""}', "model must be a non-empty string"),
    (b'{"id": "a", "prompt": "x", "stream": true}', "stream: true is not supported"),
    (b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}',
     "method must be POST"),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}',
     "url must be one of"),
    (b'{"custom_id": "a", "url": "https://evil.example/v1/chat/completions", "body": {}}',
     "url must be one of"),
    (b'{"custom_id": "a", "url": "/v1/chat/completions", "body": []}',
     "body must be a JSON object"),
    (b'{"custom_id": "a", "url": "/v1/embeddings", "body": {"model": "m"}}', "needs input"),
    (b'{"custom_id": "a", "url": "/v1/embeddings", "body": {"model": "m", "input": [1, "a"]}}',
     "input must be a string"),
    (b'{"custom_id": "a", "url": "/v1/embeddings", "body": {"model": "m", "input": ""}}',
     "input must not be empty"),
    (b'{"id": "a", "prompt": "x\\u0000y"}', None),  # NUL inside a JSON string is just text
    (b'{"id": "\xff", "prompt": "x"}', "not valid UTF-8"),
    (b'{"id": "a", "prompt": "\\ud800"}', "not valid JSON"),  # lone surrogate
    (b"{\"id\": \"a\", \"prompt\": \"x\"}\x00", "NUL byte"),
    (b"[" * 2000 + b"]" * 2000, "not valid JSON"),  # deeper than any JSON parser allows
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES, ids=[r or "ok" for _, r in BAD_LINES])
def test_each_bad_line_kind_has_its_reason(
    tmp_path: Path, line: bytes, reason: str | None
) -> None:
    items = read(tmp_path / "j.jsonl", b'{"id": "first", "prompt": "ok"}\n' + line + b"\n")
    assert isinstance(items[0], Request)
    if reason is None:
        assert isinstance(items[1], Request)
        return
    bad = items[1]
    assert isinstance(bad, BadLine), bad
    assert bad.line_no == 2
    assert reason in bad.reason


def test_duplicate_id_is_reported_on_the_second_line(tmp_path: Path) -> None:
    items = read(tmp_path / "j.jsonl", b'{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    bad = items[1]
    assert isinstance(bad, BadLine)
    assert bad.line_no == 2 and "duplicate id 'a'" in bad.reason
    assert bad.output_id == "line-2"  # the failed line must not reuse the id of line 1


def test_a_bad_line_keeps_its_id_so_a_later_line_cannot_reuse_it(tmp_path: Path) -> None:
    items = read(tmp_path / "j.jsonl",
                 b'{"id": "a", "prompt": ""}\n{"id": "a", "prompt": "y"}\n')
    assert all(isinstance(i, BadLine) for i in items)
    assert [i.output_id for i in items if isinstance(i, BadLine)] == ["a", "line-2"]


def test_oversized_line_is_a_bad_line_not_a_crash(tmp_path: Path) -> None:
    big = b'{"id": "big", "prompt": "' + b"x" * (50 * 1024 * 1024) + b'"}\n'
    items = read(tmp_path / "j.jsonl", big + b'{"id": "small", "prompt": "y"}\n')
    assert isinstance(items[0], BadLine) and "52.4 MB" in items[0].reason
    assert f"{MAX_LINE_BYTES // (1024 * 1024)} MB" in items[0].reason
    assert isinstance(items[1], Request)


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n"])
def test_file_with_no_requests(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(InputError, match="has no requests"):
        read(tmp_path / "j.jsonl", content)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        list(read_jobs(tmp_path / "nope.jsonl", "m"))


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        list(read_jobs(tmp_path, "m"))


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        list(read_jobs(fifo, "m"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False) | st.text(),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["id", "custom_id", "prompt", "messages", "role",
                                           "content", "url", "body", "model", "max_tokens",
                                           "input", "method", "n", "type", "text"]),
                          children, max_size=5),
        max_leaves=12,
    ).map(orjson.dumps),
), min_size=1, max_size=8))
def test_reader_never_raises_anything_but_input_error(tmp_path: Path, lines: list[bytes]) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    try:
        items = list(read_jobs(path, "gpt-4o-mini"))
    except InputError:
        return
    for item in items:
        assert isinstance(item, Request | BadLine)


def test_the_sending_pass_replays_the_checking_pass_without_holding_ids(tmp_path: Path) -> None:
    from batchrun.files.jobs import IdTracker

    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": ""}\n'
                     b'{"id": "a", "prompt": "y"}\n{"id": "b", "prompt": "z"}\n'
                     b'{"id": "a", "prompt": 1}\n{"id": "c", "prompt": "w"}\n')
    first = IdTracker()
    checked = list(read_jobs(path, "m", first))
    first.release()
    replay = first.replay()
    assert list(read_jobs(path, "m", replay)) == checked
    assert replay._seen is None  # nothing held
    assert [getattr(i, "output_id", None) or i.custom_id for i in checked] == [  # type: ignore[union-attr]
        "a", "b", "line-3", "line-4", "line-5", "c"]


def test_embeddings_lines_in_the_short_shape(tmp_path: Path) -> None:
    path = tmp_path / "emb.jsonl"
    path.write_text(
        '{"id": "e1", "input": "hello"}\n'
        '{"id": "e2", "input": ["a", "b"], "model": "text-embedding-3-large"}\n'
    )
    first, second = list(read_jobs(path, "text-embedding-3-small"))
    assert isinstance(first, Request) and first.url == EMBEDDINGS_URL
    assert first.body == {"input": "hello", "model": "text-embedding-3-small"}
    assert isinstance(second, Request) and second.body["model"] == "text-embedding-3-large"
    # With the default chat model, the line says exactly what to add.
    [bad] = list(read_jobs(path, "gpt-4o-mini"))[:1]
    assert isinstance(bad, BadLine)
    assert '"model": "text-embedding-3-small"' in bad.reason and "-m text-embedding-3-small" in (
        bad.reason)

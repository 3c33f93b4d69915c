"""Whatever a server answers, and whatever body a request holds, the client returns an Outcome:
it never raises, and what it reports as usage is a count the ledger can trust."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from batchrun.http.client import (
    MAX_REPORTED_TOKENS,
    ApiClient,
    Endpoint,
    Kind,
    Outcome,
    classify,
    parse_duration,
    retry_hint,
    server_state,
)
from batchrun.policy.request import CHAT_URL, EMBEDDINGS_URL, Request
from tests.helpers.threaded_server import KEY, REQ, Recorder, endpoint_for, serve


def nested(depth: int, leaf: Any) -> bytes:
    """A JSON object `depth` levels deep, built as text (orjson cannot write it)."""
    return b'{"a":' * depth + orjson.dumps(leaf) + b"}" * depth


def chat(usage: Any) -> bytes:
    return orjson.dumps({"choices": [{"message": {"content": "x"}}], "usage": usage})


# -- 10.3 bodies nested too deep to record ----------------------------------------------------


@pytest.mark.parametrize("depth", [300, 990, 2000])
@pytest.mark.parametrize("status", [200, 400, 500])
def test_a_body_nested_too_deep_is_treated_as_unreadable(depth: int, status: int) -> None:
    raw = b'{"choices": [' + nested(depth, "x") + b"]}" if status == 200 else (
        b'{"error": {"message": "bad", "detail": ' + nested(depth, KEY) + b"}}")
    out = classify(status, {}, raw, CHAT_URL, KEY)
    assert out.body is None  # nothing the output file could not hold, nothing unscrubbed
    assert out.kind is (Kind.RETRY if status in (200, 500) else Kind.FAIL)
    assert KEY not in out.message
    assert out.code == ("invalid_response" if status == 200 else f"http_{status}")


def test_a_body_as_deep_as_can_be_recorded_is_kept_and_scrubbed() -> None:
    raw = b'{"error": {"message": "bad", "detail": ' + nested(200, KEY) + b"}}"
    out = classify(400, {}, raw, CHAT_URL, KEY)
    written = orjson.dumps(out.body)
    assert KEY not in written.decode() and written.count(b"[redacted]") == 1


# -- 10.3 / 10.4 usage the ledger can trust ---------------------------------------------------


@pytest.mark.parametrize(("usage", "expected"), [
    ({"prompt_tokens": 5, "completion_tokens": 2}, (5, 2)),
    ({"prompt_tokens": 5.0, "completion_tokens": 2}, (5, 2)),
    ({"prompt_tokens": 3, "total_tokens": 3}, (3, 0)),  # embeddings
    # no completion_tokens but a total: the rest of the total is the completion, billed
    ({"prompt_tokens": 100, "total_tokens": 150}, (100, 50)),
    ({"prompt_tokens": 100, "completion_tokens": None, "total_tokens": 150}, (100, 50)),
    ({"prompt_tokens": 10**12, "completion_tokens": 1}, (MAX_REPORTED_TOKENS, 1)),
    ({"prompt_tokens": 1.8e19, "completion_tokens": 1}, (MAX_REPORTED_TOKENS, 1)),
    ({"prompt_tokens": "n/a", "completion_tokens": 2}, None),
    ({"prompt_tokens": "12", "completion_tokens": 2}, None),
    ({"prompt_tokens": -3_000_000, "completion_tokens": 2}, None),
    ({"prompt_tokens": True, "completion_tokens": 2}, None),
    ({"prompt_tokens": [5], "completion_tokens": 2}, None),
    ({}, None),
    ("lots", None),
    (None, None),
])
def test_reported_usage_is_clamped_and_nonsense_is_unknown(
    usage: Any, expected: tuple[int, int] | None
) -> None:
    out = classify(200, {}, chat(usage), CHAT_URL, KEY)
    assert out.kind is Kind.OK
    assert out.usage_known is (expected is not None)
    assert out.usage == (expected or (0, 0))


def test_usage_is_unknown_when_the_server_may_have_billed_without_saying() -> None:
    unknown = [
        Outcome(Kind.RETRY, code="timeout"),
        Outcome(Kind.RETRY, code="connection_error"),
        Outcome(Kind.RETRY, code="truncated_response"),
        classify(200, {}, b'{"choices": [{"mess', CHAT_URL, KEY),  # truncated 200
        classify(200, {}, b"<html>", CHAT_URL, KEY),
        classify(502, {}, b"Bad Gateway", CHAT_URL, KEY),  # the backend may have run it
        classify(408, {}, b"", CHAT_URL, KEY),
    ]
    assert [o.usage_known for o in unknown] == [False] * len(unknown)
    known_zero = [
        classify(400, {}, b'{"error": {"message": "bad"}}', CHAT_URL, KEY),
        classify(429, {}, b'{"error": {"message": "slow down"}}', CHAT_URL, KEY),
        classify(307, {"location": "https://elsewhere/"}, b"", CHAT_URL, KEY),
        classify(401, {}, b"", CHAT_URL, KEY),
    ]
    assert all(o.usage_known and o.usage == (0, 0) for o in known_zero)
    # A 200 missing what we asked for still says what it billed.
    no_data = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    reported = classify(200, {}, no_data, EMBEDDINGS_URL, KEY)
    assert reported.kind is Kind.RETRY and reported.usage_known and reported.usage == (5, 2)


def test_an_error_body_cannot_claim_usage() -> None:
    raw = orjson.dumps({"error": {"message": "no"}, "usage": {"prompt_tokens": 9_000_000}})
    out = classify(400, {}, raw, CHAT_URL, KEY)
    assert out.usage == (0, 0) and out.usage_known


# -- 10.3 rate-limit headers and hints ------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "9" * 5000, "-5", "", "x"])
def test_unusable_rate_limit_headers_are_ignored(value: str) -> None:
    headers = {f"x-ratelimit-{k}": value for k in (
        "limit-requests", "limit-tokens", "remaining-requests", "remaining-tokens")}
    assert server_state(headers) is None
    out = classify(200, headers, chat({"prompt_tokens": 1}), CHAT_URL, KEY)
    assert out.kind is Kind.OK and out.server is None


def test_huge_but_finite_limits_are_kept() -> None:
    state = server_state({"x-ratelimit-limit-tokens": "1e300", "x-ratelimit-limit-requests": "5"})
    assert state is not None and state.limit_tokens == int(1e300) and state.limit_requests == 5


@pytest.mark.parametrize("value", ["inf", "nan", "-3", "1e400"])
def test_unusable_retry_hints_are_ignored(value: str) -> None:
    for name in ("retry-after-ms", "retry-after", "x-ratelimit-reset-requests"):
        assert retry_hint({name: value}, "") is None
    assert parse_duration(value) is None
    out = classify(429, {"retry-after": value}, b'{"error": {"message": "wait"}}', CHAT_URL, KEY)
    assert out.kind is Kind.RATE_MINUTE and out.hint_s is None


# -- 10.8 a request larger than the server's per-minute limit -------------------------------


REQUEST_TOO_LARGE = orjson.dumps({"error": {
    "message": "Request too large for gpt-4o in organization org-abc on tokens per min (TPM): "
    "Limit 30000, Requested 36278. The input or output tokens must be reduced in order to run "
    "successfully. Visit https://platform.openai.com/account/rate-limits to learn more.",
    "type": "tokens", "param": None, "code": "rate_limit_exceeded"}})


def test_request_too_large_for_the_tpm_is_a_final_failure_naming_the_limit() -> None:
    out = classify(429, {"retry-after": "1"}, REQUEST_TOO_LARGE, CHAT_URL, KEY)
    assert out.kind is Kind.FAIL and out.code == "request_too_large"
    assert out.server_limit_tokens == 30000
    assert "Requested 36278" in out.message


def test_request_too_large_in_the_older_wording_and_per_day() -> None:
    old = orjson.dumps({"error": {"message": "Request too large for gpt-4 in organization org-x "
                                  "on tokens per min. Limit: 10,000 / min. Current: 1 / min.",
                                  "type": "tokens", "code": None}})
    out = classify(429, {}, old, CHAT_URL, KEY)
    assert out.kind is Kind.FAIL and out.code == "request_too_large"
    assert out.server_limit_tokens == 10000
    per_day = REQUEST_TOO_LARGE.replace(b"tokens per min (TPM)", b"tokens per day (TPD)")
    day = classify(429, {}, per_day, CHAT_URL, KEY)
    # Final too (it can never fit in a day), but its limit is not a per-minute one.
    assert day.kind is Kind.FAIL and day.code == "request_too_large"
    assert day.server_limit_tokens is None


def test_an_ordinary_per_minute_429_names_no_limit() -> None:
    tpm = orjson.dumps({"error": {"message": "Rate limit reached for gpt-4o-mini on tokens per "
                                  "min (TPM): Limit 200000, Used 162960, Requested 42288."}})
    out = classify(429, {}, tpm, CHAT_URL, KEY)
    assert out.kind is Kind.RATE_MINUTE and out.server_limit_tokens is None


# -- 10.3 classify never raises ------------------------------------------------------------


HEADER_NAMES = st.sampled_from([
    "retry-after", "retry-after-ms", "x-request-id", "apim-request-id", "location",
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
])
TEXT = st.text(st.characters(exclude_categories=["Cs"]))  # JSON text holds no lone surrogates
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["error", "message", "code", "type", "usage", "prompt_tokens",
                         "completion_tokens", "choices", "data"]) | TEXT, inner, max_size=4),
    max_leaves=30,
)
NASTY = st.sampled_from([
    b'{"choices": [], "usage": {"prompt_tokens": 1e308, "completion_tokens": -1e308}}',
    b'{"choices": [], "usage": {"prompt_tokens": 123456789012345678901234567890}}',
    b'{"error": {"message": {"nested": [1, 2]}, "code": ["x"], "type": 5}}',
    b'{"error": "just a string"}', b"[]", b"null", b'"text"', b"\xff\xfe",
    nested(300, "x"), nested(990, KEY), b'{"error": {"message": ' + nested(400, 1) + b"}}",
])
BODIES = st.binary(max_size=300) | NASTY | JSON.map(orjson.dumps) | st.builds(
    lambda message, code, etype: orjson.dumps({"error": {"message": message, "code": code,
                                                         "type": etype}}),
    TEXT | st.sampled_from(["Request too large for m on tokens per min (TPM): Limit x",
                            "Request too large: Limit: 99999999999999999999999", "per day",
                            "try again in 1e999s"]),
    JSON, JSON,
)


@settings(max_examples=300, deadline=None)
@given(
    status=st.integers(100, 599),
    headers=st.dictionaries(HEADER_NAMES, st.text(max_size=30) | st.sampled_from(
        ["inf", "nan", "-1", "1e400", "1h2m3s", "0.5"]), max_size=6),
    raw=BODIES,
    url=st.sampled_from([CHAT_URL, EMBEDDINGS_URL]),
    secret=st.sampled_from([KEY, "a", "EMPTY", ""]),
)
def test_classify_never_raises_and_its_outcome_can_be_recorded(
    status: int, headers: dict[str, str], raw: bytes, url: str, secret: str
) -> None:
    out = classify(status, CIMultiDict(headers), raw, url, secret)
    orjson.dumps(out.body)  # the output writer can hold it
    prompt, completion = out.usage
    assert 0 <= prompt <= MAX_REPORTED_TOKENS and 0 <= completion <= MAX_REPORTED_TOKENS
    assert out.hint_s is None or (math.isfinite(out.hint_s) and out.hint_s >= 0)
    if secret == KEY:
        assert KEY not in out.message


# -- 10.3 request bodies that cannot be sent --------------------------------------------------


@pytest.mark.parametrize("body", [
    {"model": "m", "messages": [orjson.loads(nested(300, "deep"))]},
    {"model": "m", "messages": [], "seed": 2**70},
])
async def test_a_body_json_cannot_write_fails_clearly_and_sends_nothing(body: Any) -> None:
    server = Recorder()
    async with serve(server.handle) as origin, ApiClient(
        endpoint_for(origin, azure=False), KEY, 5.0, 10
    ) as client:
        out = await client.send(Request(1, "a", CHAT_URL, body))
    assert server.got == []
    assert out.kind is Kind.FAIL and out.code == "invalid_request_body"
    assert "nothing was sent" in out.message
    assert out.usage_known and out.usage == (0, 0)


async def test_a_response_too_large_has_unknown_usage() -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=chat({"prompt_tokens": 1}) + b" " * 2000)

    async with serve(big) as origin, ApiClient(
        endpoint_for(origin, azure=False), KEY, 5.0, 10, max_response_bytes=1000
    ) as client:
        out = await client.send(REQ)
    assert out.code == "response_too_large" and not out.usage_known


# -- 10.3 broken HTTP on the wire --------------------------------------------------------------


@pytest.mark.parametrize(("reply", "code"), [
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "connection_error"),  # not HTTP at all
    (b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n\r\n",
     "connection_error"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 7\r\n\r\nnotgzip",
     "truncated_response"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
     "connection_error"),  # an encoding we cannot decode
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", "truncated_response"),
])
async def test_broken_http_is_a_retryable_outcome_not_an_exception(reply: bytes, code: str) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, ApiClient(endpoint_for(f"http://127.0.0.1:{port}", azure=False), KEY,
                                 5.0, 10) as client:
        out = await client.send(REQ)
    assert out.kind is Kind.RETRY and out.code == code and not out.usage_known


async def test_a_refused_connection_is_known_to_cost_nothing() -> None:
    """Nothing reached the API, so the daily ledger must not count the attempt (a reset on an
    open connection, by contrast, may have been billed)."""
    import socket

    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = Endpoint.make(f"http://127.0.0.1:{port}/v1", None, None)
    async with ApiClient(endpoint, KEY, 5.0, 4) as client:
        out = await client.send(Request(1, "a", CHAT_URL, {"model": "m", "messages": []}))
    assert out.kind is Kind.RETRY and out.code == "connection_error"
    assert out.usage_known and out.usage == (0, 0)

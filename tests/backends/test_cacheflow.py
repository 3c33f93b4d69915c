"""The response cache as a job uses it: what a line is filed under, and a stored entry that is
not an answer to it (damaged, or of another kind of request) is a miss, never a line."""

from __future__ import annotations

import orjson
import pytest

from batchrun.backends.cacheflow import ON, Asker, CacheFlow, cached_line, saved_usd, server_name
from batchrun.files.cache import MemoryCache
from batchrun.http.endpoint import Endpoint
from batchrun.policy.cachekey import key_digest
from batchrun.policy.prices import Via
from batchrun.policy.request import CHAT_URL, EMBEDDINGS_URL, Request

ANSWER = (b'{"choices":[{"message":{"content":"hi"}}],"seed":18446744073709551616,'
          b'"usage":{"prompt_tokens":1000,"completion_tokens":100}}')


def flow(*askers: Asker) -> tuple[CacheFlow, MemoryCache]:
    cache = MemoryCache()
    f = CacheFlow(cache, ON)
    f.serve(list(askers) or [Asker("api.openai.com", key_digest("sk-a"))])
    return f, cache


def chat(cid: str = "a", text: str = "hi", **more: object) -> Request:
    return Request(1, cid, CHAT_URL, {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": text}], **more})


@pytest.mark.parametrize("stored", [b"{not json", b'{"error": "x"}', b"[1, 2]",
                                    b'{"data": [{"embedding": [0.1]}]}',
                                    b'{"choices": []\n}'])
async def test_a_stored_entry_that_is_not_an_answer_to_the_line_is_a_miss(
        stored: bytes) -> None:
    f, cache = flow()
    request = chat()
    cache.answers[f.key(request)] = stored
    assert await f.lookup(request) is None


async def test_an_embedding_answer_is_found_for_an_embeddings_line() -> None:
    f, cache = flow()
    request = Request(1, "e", EMBEDDINGS_URL, {"model": "text-embedding-3-small", "input": "x"})
    cache.answers[f.key(request)] = b'{"object":"list","data":[{"embedding":[0.5]}]}'
    assert await f.lookup(request) is not None


async def test_the_line_of_a_hit_carries_the_stored_bytes_under_its_own_id() -> None:
    f, _ = flow()
    await f.store(chat("first"), f.primary, ANSWER)
    hit = await f.lookup(chat("second"))
    assert hit is not None
    line = cached_line("second", hit)
    assert b'"seed":18446744073709551616' in line  # the answer's bytes, not re-encoded
    parsed = orjson.loads(line)
    assert parsed["custom_id"] == "second" and parsed["cached"] is True
    assert parsed["response"]["status_code"] == 200 and parsed["error"] is None


async def test_lines_differing_in_field_order_are_one_request_another_field_another() -> None:
    f, _ = flow()
    assert f.key(chat(temperature=0.2, max_tokens=5)) == f.key(chat(max_tokens=5,
                                                                    temperature=0.2))
    assert f.key(chat(temperature=0.2)) != f.key(chat(temperature=0.3))
    assert f.key(chat("x")) == f.key(chat("y"))  # the id is not what was asked


async def test_each_endpoint_of_the_job_is_asked_and_no_other_key() -> None:
    a, b = Asker("a.example", key_digest("sk-a")), Asker("b.example", key_digest("sk-b"))
    f, _ = flow(a, b)
    await f.store(chat(), b, ANSWER)
    assert await f.lookup(chat()) is not None
    other, cache = flow(Asker("b.example", key_digest("sk-other")))
    cache.answers.update(f.cache.answers)  # type: ignore[attr-defined]
    assert await other.lookup(chat()) is None


def test_saved_is_the_stored_usage_at_the_jobs_rate() -> None:
    answer = orjson.loads(ANSWER)
    sync = saved_usd("gpt-4o-mini", answer, Via.SYNC)
    assert sync > 0
    assert saved_usd("gpt-4o-mini", answer, Via.BATCH) == pytest.approx(sync / 2)
    assert saved_usd("no-such-model", answer, Via.SYNC) == 0.0


@pytest.mark.parametrize("typed", ["https://api.openai.com/v1", "https://API.OpenAI.com/v1/",
                                   "https://api.openai.com:443/v1", " https://api.openai.com/v1"])
def test_one_server_however_its_url_is_typed(typed: str) -> None:
    assert server_name(Endpoint.make(typed, None, None)) == "api.openai.com/v1"


@pytest.mark.parametrize("other", ["https://api.openai.com:8443/v1",
                                   "https://api.openai.com/proxy/v1",
                                   "https://gateway.example/openai/v1"])
def test_another_port_or_path_is_another_server(other: str) -> None:
    assert server_name(Endpoint.make(other, None, None)) != "api.openai.com/v1"

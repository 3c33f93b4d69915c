"""The split rules: count, bytes, one url+model per part, the enqueued-token limit."""

from __future__ import annotations

from batchrun.backends.batch.plan import Item, PartLimits, QueueGate, split


def items(n: int, model: str = "m", url: str = "/v1/chat/completions", size: int = 10,
          tokens: int = 5, start: int = 1) -> list[Item]:
    return [Item(start + i, f"{model}-{start + i}", url, model, size, tokens) for i in range(n)]


def shape(drafts: list[object]) -> list[tuple[str, str, int]]:
    return [(d.url, d.model, len(d.items)) for d in drafts]  # type: ignore[attr-defined]


def test_at_most_max_requests_per_part() -> None:
    parts = list(split(items(7), PartLimits(max_requests=3)))
    assert [len(p.items) for p in parts] == [3, 3, 1]
    assert [i.line_no for p in parts for i in p.items] == list(range(1, 8))


def test_at_most_max_bytes_per_part() -> None:
    parts = list(split(items(5, size=40), PartLimits(max_bytes=100)))
    assert [len(p.items) for p in parts] == [2, 2, 1]
    assert all(p.size <= 100 for p in parts)


def test_a_part_never_holds_more_prompt_tokens_than_the_queue_limit() -> None:
    parts = list(split(items(10, tokens=30), PartLimits(queue_tokens=100)))
    assert [p.tokens for p in parts] == [90, 90, 90, 30]


def test_one_request_over_a_limit_still_goes_alone() -> None:
    parts = list(split(items(2, tokens=500), PartLimits(queue_tokens=100)))
    assert [len(p.items) for p in parts] == [1, 1]


def test_one_url_and_one_model_per_part_with_limits_per_model() -> None:
    mixed = (items(2, "a") + items(2, "b", start=3)
             + items(1, "a", url="/v1/embeddings", start=5) + items(2, "a", start=6))
    parts = list(split(mixed, {"a": PartLimits(max_requests=3), "b": PartLimits()}))
    assert sorted(shape(parts)) == [
        ("/v1/chat/completions", "a", 1), ("/v1/chat/completions", "a", 3),
        ("/v1/chat/completions", "b", 2), ("/v1/embeddings", "a", 1)]


def test_parts_beyond_the_queue_limit_wait_for_earlier_ones() -> None:
    gate = QueueGate(limit=100)
    assert gate.admits(in_progress=0, tokens=100)
    assert gate.admits(in_progress=60, tokens=40)
    assert not gate.admits(in_progress=60, tokens=41)
    assert gate.admits(in_progress=0, tokens=500)  # alone it was planned to fit: it goes
    assert QueueGate(limit=0).admits(in_progress=10**9, tokens=10**9)

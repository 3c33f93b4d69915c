"""The spend cap's arithmetic (policy.spend) and the job's spend record (files.spend)."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.files.spend import SpendJournal, read_spent
from batchrun.policy.prices import Price, Via
from batchrun.policy.request import CHAT_URL
from batchrun.policy.spend import answer_usd, body_worst_usd, fits, worst_case_usd, worst_prompt

MINI = Price(0.15, 0.075, 0.60)


def test_the_worst_case_is_the_whole_prompt_uncached_and_every_allowed_output_token() -> None:
    assert worst_prompt(1000, 900) == 1132  # 10 % over the larger count, plus 32
    assert worst_case_usd(MINI, 1000, 900, 2 * 50, Via.SYNC) == pytest.approx(
        (1132 * 0.15 + 100 * 0.60) / 1e6)
    assert worst_case_usd(MINI, 1000, 900, 100, Via.BATCH) == pytest.approx(
        worst_case_usd(MINI, 1000, 900, 100, Via.SYNC) / 2)


def test_a_request_fits_only_if_spent_held_and_its_worst_stay_within_the_cap() -> None:
    assert fits(1.0, 0.5, 0.25, 0.25)
    assert not fits(1.0, 0.5, 0.25, 0.2500001)


def test_an_answer_settles_at_its_usage_with_cached_input_at_the_cached_price() -> None:
    body = {"usage": {"prompt_tokens": 1500, "completion_tokens": 20, "total_tokens": 1520,
                      "prompt_tokens_details": {"cached_tokens": 1024}}}
    assert answer_usd(MINI, (1500, 20), body, 200, 9.0, Via.SYNC) == pytest.approx(
        (476 * 0.15 + 1024 * 0.075 + 20 * 0.60) / 1e6)


@pytest.mark.parametrize(("status", "expected"), [(400, 0.0), (429, 0.0), (500, 9.0),
                                                  (None, 9.0), (200, 9.0)])
def test_an_attempt_without_usage_keeps_its_worst_case_unless_the_server_refused_it(
        status: int | None, expected: float) -> None:
    # 200 without usage: answered, but what it billed is not known
    assert answer_usd(MINI, None, {}, status, 9.0, Via.SYNC) == expected


def test_a_reservation_never_settled_counts_at_its_worst_and_a_torn_line_is_skipped(
        tmp_path: Path) -> None:
    path = tmp_path / "job.spend"
    journal = SpendJournal(path)
    done = journal.reserve(0.5)
    journal.settle(done, 0.125)
    lost = journal.reserve(0.25)  # sent, then the process died while settling it
    journal.close()
    with path.open("ab") as f:
        f.write(f"S {lost} 0.01".encode())  # torn: "0.0123" cut short, no newline
    assert read_spent(path) == pytest.approx(0.125 + 0.25)

    again = SpendJournal(path)  # a new run starts from the whole sum, in one line
    assert again.spent == pytest.approx(0.375)
    again.close()
    assert path.read_bytes().count(b"\n") == 1


def test_tool_definitions_and_a_response_schema_raise_the_worst_case_on_every_path() -> None:
    # The Batch API plans its parts from bodies: the same definitions count there.
    body: dict[str, object] = {"model": "gpt-4o-mini", "max_tokens": 10,
                               "messages": [{"role": "user", "content": "hi"}]}
    plain = body_worst_usd(MINI, CHAT_URL, body, 10, Via.BATCH)
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    tools = [{"type": "function", "function": {"name": "f", "description": "d" * 4000}}]
    with_schema = body_worst_usd(MINI, CHAT_URL, {**body, "response_format": schema}, 10,
                                 Via.BATCH)
    with_tools = body_worst_usd(MINI, CHAT_URL, {**body, "tools": tools}, 10, Via.BATCH)
    assert plain < with_schema < with_tools
    # 4,000 bytes of description hold at least the 1,000 tokens it tokenizes to, at batch rates.
    assert with_tools - plain >= MINI.cost(1000, 0, 0, Via.BATCH)


def image_body(model: str, detail: str) -> dict[str, object]:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/a.png",
                                               "detail": detail}}
    return {"model": model, "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is it?"}, part]}]}


@pytest.mark.parametrize("detail", ["low", "high", "auto"])
def test_an_image_is_held_at_the_most_its_model_bills_for_one(detail: str) -> None:
    # gpt-4o-mini bills an image at 2,833 tokens plus 5,667 a 512px tile, up to 8 tiles: a
    # 128x64 picture alone bills 8,512. batchrun's prompt count takes 765 (85 at low detail),
    # so a job of images passed its cap many times over.
    body = image_body("gpt-4o-mini", detail)
    assert body_worst_usd(MINI, CHAT_URL, body, 800, Via.SYNC) >= MINI.cost(2_833 + 8 * 5_667,
                                                                             10)
    # The other models bill an image at most 1,536 patches x 2.46 (the nano models).
    nano = Price(0.10, 0.025, 0.40)
    assert body_worst_usd(nano, CHAT_URL, image_body("gpt-4.1-nano", detail), 800,
                          Via.SYNC) >= nano.cost(3_779, 10)

"""The printed cost matches the bill: prompt tokens the server served from its prompt cache
(`usage.prompt_tokens_details.cached_tokens`) are billed at the cached price, the Batch API at
half, every cost names the date of its list prices, and a model without a price is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun.backends.batch import entry as batch_entry
from tests import batch_fake
from tests.batch_fake import FakeBatchApi
from tests.conftest import FAKE_KEY, run_cli, write_jsonl
from tests.test_billing import UNLIMITED, ServedApp, submit

AS_OF = "2026-11-01"  # the price table's date, as the user reads it


def cached_answer(body: dict[str, Any], prompt: int, cached: int | None,
                  completion: int) -> web.Response:
    details = {} if cached is None else {"prompt_tokens_details": {"cached_tokens": cached}}
    return web.json_response({
        "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion, **details},
    })


def bill(prompt: int, cached: int, completion: int, half: bool = False) -> float:
    """gpt-4o-mini at OpenAI's list prices: $0.15 input, $0.075 cached input, $0.60 output."""
    usd = ((prompt - cached) * 0.15 + cached * 0.075 + completion * 0.60) / 1e6
    return usd / 2 if half else usd


def test_cached_prompt_tokens_are_billed_at_the_cached_price(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first request fills the cache; the others are served 1,408 of their 1,500 tokens
    # from it; a server without the field (None) bills no cached tokens.
    async def handler(body: dict[str, Any], n: int) -> web.Response:
        first = body["messages"][0]["content"] == "Question number 0"
        return cached_answer(body, 1_500, None if first else 1_408, 20)

    jobs = write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"q{i}", "prompt": f"Question number {i}"} for i in range(4)])
    with ServedApp(handler) as app:
        run = submit(capsys, monkeypatch, app.base_url, jobs, *UNLIMITED, "--json")
    assert run.code == 0, run.stderr
    summary = orjson.loads(run.stdout)
    assert summary["tokens"] == {"input": 6_000, "cached_input": 3 * 1_408, "output": 80}
    assert summary["cost_usd"] == pytest.approx(bill(1_500, 0, 20) + 3 * bill(1_500, 1_408, 20),
                                                 abs=1e-6)
    assert summary["prices_as_of"] == AS_OF
    assert summary["via"]["sync"]["tokens"]["cached_input"] == 3 * 1_408


def test_the_summary_says_what_was_cached_and_the_prices_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def handler(body: dict[str, Any], n: int) -> web.Response:
        return cached_answer(body, 1_500, 1_408, 20)

    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "q0", "prompt": "hello"}])
    with ServedApp(handler) as app:
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        run = run_cli("submit", str(jobs), "--base-url", app.base_url, *UNLIMITED)
    assert run.code == 0, run.stderr
    assert "tokens: 1,500 in (1,408 cached), 20 out" in run.stdout
    assert f"${bill(1_500, 1_408, 20):,.4f} at list prices of {AS_OF}" in run.stdout


def test_a_model_without_a_price_is_named_not_counted_free(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def handler(body: dict[str, Any], n: int) -> web.Response:
        return cached_answer(body, 100, None, 10)

    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"id": "a", "prompt": "hi", "model": "gpt-4o-mini"},
        {"id": "b", "prompt": "hi", "model": "llama-3-70b"}])
    with ServedApp(handler) as app:
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        run = run_cli("submit", str(jobs), "--base-url", app.base_url, *UNLIMITED)
    assert run.code == 0, run.stderr
    assert (f"${bill(100, 0, 10):,.4f} at list prices of {AS_OF}, plus llama-3-70b, which has "
            "no list price") in run.stdout


def test_batch_api_answers_bill_their_cached_tokens_at_half_the_cached_price(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeBatchApi(steps=1)
    monkeypatch.setattr(batch_entry, "BatchClient", lambda *a, **k: api)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setattr(batch_fake, "answer", lambda cid: {
        "id": f"chatcmpl-{cid}", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
        "usage": {"prompt_tokens": 1_500, "completion_tokens": 5, "total_tokens": 1_505,
                  "prompt_tokens_details": {"cached_tokens": 1_280}}})
    path = write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"r{i}", "prompt": f"q {i}", "max_tokens": 5} for i in range(3)])
    run = run_cli("submit", str(path), "--via", "batch", "--base-url",
                  "https://api.example.test/v1", "--json")
    assert run.code == 0, run.stderr
    summary = orjson.loads(run.stdout)
    assert summary["tokens"]["cached_input"] == 3 * 1_280
    assert summary["cost_usd"] == pytest.approx(3 * bill(1_500, 1_280, 5, half=True), abs=1e-6)
    assert summary["via"]["batch"]["tokens"]["cached_input"] == 3 * 1_280
    [row] = orjson.loads(run_cli("status", "--json").stdout)["jobs"]
    assert row["cost_usd"] == summary["cost_usd"]


def shared_prompt_jobs(path: Path, system_words: int, n: int = 10) -> Path:
    system = {"role": "system", "content": "word " * system_words}
    return write_jsonl(path, [
        {"id": f"q{i}", "max_tokens": 10,
         "messages": [system, {"role": "user", "content": f"Question {i}?"}]}
        for i in range(n)])


def test_estimate_predicts_the_cache_share_of_a_shared_system_prompt(tmp_path: Path) -> None:
    # A 1,500-token system message (3 + role 1 + 1,496 of text): after the first request, each
    # of the other 9 is predicted to be served 1,408 tokens (11 steps of 128) from the cache.
    jobs = shared_prompt_jobs(tmp_path / "jobs.jsonl", 1_495)
    run = run_cli("estimate", str(jobs), "--json")
    assert run.code == 0, run.stderr
    [m] = orjson.loads(run.stdout)["models"]
    assert m["predicted_cached_input_tokens"] == 9 * 1_408
    cached, fresh = 9 * 1_408, m["prompt_tokens"] - 9 * 1_408
    assert m["cost_usd"]["input"] == pytest.approx((fresh * 0.15 + cached * 0.075) / 1e6,
                                                   abs=1e-6)
    text = run_cli("estimate", str(jobs))
    assert f"predicted cached input {cached:,} of {m['prompt_tokens']:,}" in text.stdout


def test_estimate_predicts_no_cache_under_1024_shared_tokens(tmp_path: Path) -> None:
    jobs = shared_prompt_jobs(tmp_path / "jobs.jsonl", 900)
    run = run_cli("estimate", str(jobs), "--json")
    assert run.code == 0, run.stderr
    [m] = orjson.loads(run.stdout)["models"]
    assert m["predicted_cached_input_tokens"] == 0
    assert "predicted cached input" not in run_cli("estimate", str(jobs)).stdout


def test_status_shows_the_whole_jobs_cost_across_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first run answers q0 and fails q1 for good; resume --retry-failed answers q1. Each
    # answer: 1,500 prompt tokens, 1,408 of them from the cache, 20 out.
    failing = {"q1": True}

    async def handler(body: dict[str, Any], n: int) -> web.Response:
        if "Question number 1" in body["messages"][0]["content"] and failing["q1"]:
            return web.json_response({"error": {"message": "bad", "type": "invalid_request_error",
                                                "code": None}}, status=400)
        return cached_answer(body, 1_500, 1_408, 20)

    jobs = write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"q{i}", "prompt": f"Question number {i}"} for i in range(2)])
    with ServedApp(handler) as app:
        first = submit(capsys, monkeypatch, app.base_url, jobs, *UNLIMITED, "--json")
        assert first.code == 1, first.stderr
        job = orjson.loads(first.stdout)["job"]
        failing["q1"] = False
        again = run_cli("resume", job, "--retry-failed", "--json")
    assert again.code == 0, again.stderr
    one = bill(1_500, 1_408, 20)
    assert orjson.loads(again.stdout)["cost_usd"] == pytest.approx(one, abs=1e-6)  # this run
    [row] = orjson.loads(run_cli("status", "--json").stdout)["jobs"]
    assert row["cost_usd"] == pytest.approx(2 * one, abs=1e-6)  # the whole job
    assert row["tokens"] == {"input": 3_000, "cached_input": 2_816, "output": 40}
    assert row["prices_as_of"] == AS_OF
    shown = run_cli("status", job).stdout
    assert (f"cost    ${2 * one:,.4f} at list prices of {AS_OF} (3,000 tokens in, 2,816 "
            "cached, 40 out)") in shown


def test_a_flex_jobs_cost_is_at_flex_rates_in_the_summary_and_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def handler(body: dict[str, Any], n: int) -> web.Response:
        return cached_answer(body, 1_500, 1_408, 20)

    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "q0", "prompt": "hello"}])
    with ServedApp(handler) as app:
        run = submit(capsys, monkeypatch, app.base_url, jobs, *UNLIMITED, "--json", "-m",
                     "gpt-5-mini", "--service-tier", "flex")
    assert run.code == 0, run.stderr
    # gpt-5-mini: $0.25 input, $0.025 cached, $2.00 output; flex at half of each.
    flex = (92 * 0.25 + 1_408 * 0.025 + 20 * 2.00) / 2e6
    assert orjson.loads(run.stdout)["cost_usd"] == pytest.approx(flex, abs=1e-6)
    [row] = orjson.loads(run_cli("status", "--json").stdout)["jobs"]
    assert row["cost_usd"] == pytest.approx(flex, abs=1e-6)

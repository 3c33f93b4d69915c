"""Presets say what the server enforces: the published per-minute limits and RPD, never the
Batch API's queue figure as a daily token cap on the sync path (issue 22, item 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import estimate, run_cli, submit
from tests.helpers.jsonl import write_jsonl
from tests.helpers.sim import RunningSim

# 1,027 characters of English prose: a charge of 257 tokens (characters/4 > tiktoken's count).
PROSE = ("The quick brown fox jumps over the lazy dog while the farmer counts his sheep. "
         * 13)


def job(tmp_path: Path, model: str, requests: int, max_tokens: int) -> Path:
    rows = [{"id": f"r{i}", "model": model, "prompt": PROSE, "max_tokens": max_tokens}
            for i in range(requests)]
    return write_jsonl(tmp_path / f"{model}.jsonl", rows)


def one(tmp_path: Path, model: str, max_tokens: int, *args: str) -> dict[str, Any]:
    m: dict[str, Any] = estimate(str(job(tmp_path, model, 2_000, max_tokens)), *args)[
        "models"][0]
    return m


def test_tier1_gpt4o_job_of_1_2m_tokens_finishes_in_one_day(tmp_path: Path) -> None:
    # 2,000 requests of ~600 tokens: 1.2M tokens, about 40 minutes at 30K TPM. The batch queue
    # figure of 90,000 is no daily cap: it once made this 14 days.
    m = one(tmp_path, "gpt-4o", 343)
    assert m["limit_tokens"] == 2_000 * (257 + 343) == 1_200_000
    assert m["binding"] == "tpm" and m["minutes_to_finish"] == 40
    assert m["days"] == 1
    assert m["limits"]["tpd"] == 0 and m["daily"] == {
        "binds": None, "limit": 0, "source": "none published",
        "days_by_tokens": 1, "days_by_requests": 1,
        "sources": {"tpd": "none published", "rpd": "none published"}}


def test_tier1_gpt4o_mini_job_of_2_4m_tokens_finishes_in_one_day(tmp_path: Path) -> None:
    # 2,000 requests of ~1,200 tokens: 2.4M tokens, 12 minutes at 200K TPM, 2,000 of the
    # 10,000 requests a day the server allows. The "2M TPD" of the guides once made this 2 days.
    m = one(tmp_path, "gpt-4o-mini", 943)
    assert m["limit_tokens"] == 2_000 * (257 + 943) == 2_400_000
    assert m["binding"] == "tpm" and m["minutes_to_finish"] == 12
    assert m["days"] == 1
    assert m["daily"]["binds"] == "rpd" and m["daily"]["limit"] == 10_000
    assert m["daily"]["source"] == "published RPD"


def test_the_text_says_which_daily_limit_binds_and_where_it_comes_from(tmp_path: Path) -> None:
    jobs = job(tmp_path, "gpt-4o-mini", 20, 1_000)
    text = " ".join(run_cli("estimate", str(jobs)).stdout.split())
    assert "1 UTC day" in text
    assert "10,000 requests a day (published RPD)" in text
    assert "no daily token limit (give --tpd to keep a budget)" in text
    budget = " ".join(run_cli("estimate", str(jobs), "--tpd", "2000000").stdout.split())
    assert "2,000,000 tokens a day (--tpd)" in budget


@pytest.mark.parametrize(("args", "binds", "source", "days"), [
    # 2,000 requests of ~1,200 tokens: 2.4M tokens, 2.4 days under a 1M budget
    (("--tpd", "1000000"), "tpd", "--tpd", 3),
    (("--rpd", "500"), "rpd", "--rpd", 4),
])
def test_a_users_own_daily_limit_binds_and_says_so(tmp_path: Path, args: tuple[str, ...],
                                                  binds: str, source: str, days: int) -> None:
    m = one(tmp_path, "gpt-4o-mini", 943, *args)
    assert m["daily"]["binds"] == binds and m["daily"]["source"] == source
    assert m["days"] == days


def test_the_batch_queue_limit_plans_the_batch_api_not_the_day(tmp_path: Path) -> None:
    m = one(tmp_path, "gpt-4o", 343, "--via", "batch")
    # 2,000 x ~200 prompt tokens (tiktoken) = ~400K enqueued tokens in rounds of 90,000
    assert m["batch"]["queue_tokens"] == 90_000 and m["batch"]["rounds"] == 5
    assert m["days"] == 1


def test_the_submit_header_says_what_ends_the_day(sim: RunningSim, tmp_path: Path) -> None:
    jobs = job(tmp_path, "gpt-4o-mini", 2, 5)
    run = submit(sim, jobs)
    assert run.code == 0, run.stderr
    assert ("gpt-4o-mini: the day ends at 10K requests (published RPD) or the server's per-day "
            "429 · no daily token budget (--tpd N keeps one)") in run.stderr
    run = submit(sim, jobs, "-o", str(tmp_path / "two.jsonl"), "--tpd", "2000000")
    assert run.code == 0, run.stderr
    assert ("gpt-4o-mini: the day ends at 10K requests (published RPD) or 2M tokens (--tpd) or "
            "the server's per-day 429") in run.stderr


def test_a_request_over_the_batch_queue_can_never_run_via_batch(tmp_path: Path) -> None:
    rows = [{"id": "ok", "model": "gpt-4o", "prompt": "x", "max_tokens": 10},
            {"id": "big", "model": "gpt-4o", "prompt": PROSE * 480, "max_tokens": 10}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    e = estimate(str(jobs), "--via", "batch")
    assert [n["id"] for n in e["never_run"]] == ["big"]
    assert "Batch API's enqueued-token limit of 90,000 for gpt-4o" in e["never_run"][0]["reason"]
    # on the per-minute path the same request is too big for the 30,000 TPM, not for a day
    sync = estimate(str(jobs))
    assert "30,000 tokens/min limit" in sync["never_run"][0]["reason"]

"""batchrun estimate: exact tokens, honest output figures, cost, time, days. Sends nothing."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from batchrun.files.ledger import DailyBudget, Ledger, Scope, key_fingerprint
from tests.helpers.cli import FAKE_KEY, estimate, run_cli
from tests.helpers.jsonl import prompts, write_jsonl


def test_prompt_tokens_are_exact(tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]
    rows = [{"id": "a", "prompt": "Hello world", "max_tokens": 5},
            {"id": "b", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "name": "ann", "content": "Hi <|endoftext|>"}]},
            {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "max_completion_tokens": 7, "n": 2,
                      "messages": [{"role": "user", "content": parts}]}}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    e = estimate(str(jobs), "--assume-output-tokens", "100")
    [m] = e["models"]
    # Counted by hand in o200k_base (3 per message, 1 per name, 3 priming the reply):
    # a: 3 + user 1 + "Hello"," world" 2 + 3                                        =  9
    # b: 3 + system 1 + "Be"," brief","." 3 + 3 + user 1 + ann 1 + 1
    #    + "Hi"," <","|","end","of","text","|",">" 8 (special tokens are text here)  = 24
    # c: 3 + user 1 + "part"," one" 2 + "two" 1 + 3                                 = 10
    assert m["prompt_tokens"] == 9 + 24 + 10
    assert m["max_output_tokens"] == 5 + 7 * 2
    assert m["requests_without_max"] == 1 and m["output_tokens"] == 5 + 14 + 100


def test_cost_arithmetic_and_batch_price(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(100))
    e = estimate(str(jobs), "-m", "gpt-4o-mini-2024-07-18")
    [m] = e["models"]
    cost = m["cost_usd"]
    assert cost["input"] == pytest.approx(m["prompt_tokens"] * 0.15 / 1e6, abs=1e-6)
    assert cost["output"] == pytest.approx(1000 * 0.60 / 1e6, abs=1e-6)  # 100 x max_tokens 10
    assert cost["batch_api_total"] == pytest.approx(cost["total"] / 2, abs=1e-6)
    assert e["prices_as_of"] == "2026-11-01"


def test_unknown_model_gets_no_invented_price(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    e = estimate(str(jobs), "-m", "llama-3-70b")
    assert e["models"][0]["cost_usd"] is None and e["cost_usd"] is None
    text = run_cli("estimate", str(jobs), "-m", "llama-3-70b").stdout
    assert "no list price for llama-3-70b" in text


def test_time_by_each_limit_and_which_binds(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "prompt": "x", "max_tokens": 990} for i in range(600)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    m = estimate(str(jobs), "--tpd", "0")["models"][0]
    assert m["minutes"]["by_rpm"] == pytest.approx(600 / 500)
    assert m["minutes"]["by_tpm"] == pytest.approx(m["limit_tokens"] / 200_000, abs=0.01)
    assert m["binding"] == "tpm" and m["minutes_to_finish"] == m["minutes"]["by_tpm"]
    m = estimate(str(jobs), "--tpd", "0", "--concurrency", "2", "--latency", "3")["models"][0]
    assert m["minutes"]["by_concurrency"] == pytest.approx(600 * 3 / 2 / 60)
    assert m["binding"] == "concurrency"


def test_days_count_what_the_ledger_already_used_today(tmp_path: Path,
                                                       isolated_env: dict[str, str]) -> None:
    rows = [{"id": f"r{i}", "prompt": "x", "max_tokens": 990} for i in range(1000)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    # ~1M tokens under a 2M daily budget of the user's own (no tier publishes one)
    fresh = estimate(str(jobs), "--tpd", "2000000")["models"][0]
    assert fresh["days"] == 1 and fresh["used_today"]["known"] is False
    ledger = Ledger(Path(isolated_env["BATCHRUN_HOME"]) / "ledger.sqlite3")
    scope = Scope("api.openai.com", key_fingerprint(FAKE_KEY), "gpt-4o-mini")
    budget = DailyBudget(ledger, scope, tpd=2_000_000, rpd=0)
    assert budget.reserve(1_500_000) == dt.datetime.now(dt.UTC).date()
    ledger.close()
    used = estimate(str(jobs), "--tpd", "2000000", env={"OPENAI_API_KEY": FAKE_KEY})["models"][0]
    assert used["used_today"] == {"tokens": 1_500_000, "requests": 1, "known": True}
    assert used["days"] == 2  # 0.5M fit today, the rest tomorrow
    small = estimate(str(jobs), "--tpd", "300000")["models"][0]
    total = small["prompt_tokens"] + small["output_tokens"]  # ~1.01M: 300K a day
    assert small["days"] == 1 + -(-(total - 300_000) // 300_000) == 4


def test_requests_that_can_never_run_are_listed(tmp_path: Path) -> None:
    rows = [{"id": "ok", "prompt": "x", "max_tokens": 10},
            {"id": "too-big", "prompt": "x", "max_tokens": 300_000},
            {"id": "ctx", "prompt": "x", "max_tokens": 20_000, "model": "gpt-3.5-turbo"}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    e = estimate(str(jobs))
    assert e["never_run_total"] == 2
    by_id = {n["id"]: n for n in e["never_run"]}
    assert by_id["too-big"]["line"] == 2
    assert "200,000 tokens/min limit" in by_id["too-big"]["reason"]
    assert by_id["ctx"]["line"] == 3 and "16,385-token context window" in by_id["ctx"]["reason"]
    text = run_cli("estimate", str(jobs)).stdout
    assert "2 requests can never run" in text and "line 2 (id 'too-big')" in text


def test_bad_lines_get_the_same_report_as_submit(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id": "a", "prompt": "x"}\n{oops\n{"id": "b", "prompt": ""}\n')
    run = run_cli("estimate", str(jobs))
    assert run.code == 2
    assert "2 bad lines; nothing was sent" in run.stderr and "line 2: not valid JSON" in run.stderr
    skipped = estimate(str(jobs), "--on-bad-line", "skip")
    assert skipped["bad_lines"] == 2 and skipped["requests"] == 1


def test_json_schema_is_stable(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    e = estimate(str(jobs))
    assert set(e) == {"input", "tier", "prices_as_of", "requests", "bad_lines", "models",
                      "cost_usd", "batch_api_cost_usd", "minutes_to_finish", "days",
                      "never_run", "never_run_total", "via", "cache"}
    assert set(e["models"][0]) == {
        "model", "known_model", "requests", "prompt_tokens", "predicted_cached_input_tokens",
        "max_output_tokens",
        "requests_without_max", "assumed_output_tokens_per_request", "output_tokens",
        "limit_tokens", "cost_usd", "limits", "minutes", "binding", "minutes_to_finish",
        "used_today", "days", "batch", "daily", "accounting"}


def test_estimate_works_with_the_network_blocked(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    script = textwrap.dedent(f"""
        import socket, sys
        def refuse(*a, **k):
            raise OSError("network blocked by test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from batchrun.cli.commands import run
        sys.exit(run(["estimate", {str(jobs)!r}, "--json"]))
    """)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"),
           "BATCHRUN_HOME": str(tmp_path / "state")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["models"][0]["prompt_tokens"] > 0


def test_an_unknown_model_says_how_to_give_its_limits(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    text = run_cli("estimate", str(jobs), "-m", "gpt-9-ultra").stdout
    assert "no preset limits for gpt-9-ultra: give --rpm/--tpm/--tpd" in " ".join(text.split())


def test_a_key_with_no_usage_yet_is_known_to_have_used_nothing(tmp_path: Path) -> None:
    # Before the first job wrote a ledger, estimate told a user whose key was set to "set the
    # key's variable (--api-key-env) to count its usage".
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "x", "max_tokens": 9}])
    m = estimate(str(jobs), env={"OPENAI_API_KEY": FAKE_KEY})["models"][0]
    assert m["used_today"] == {"tokens": 0, "requests": 0, "known": True}
    run = run_cli("estimate", str(jobs), env={"OPENAI_API_KEY": FAKE_KEY})
    text = " ".join(run.stdout.split())
    assert run.code == 0 and "0 tokens already used today" in text
    assert "set the key's variable" not in text


def test_a_job_no_limit_binds_says_so_without_a_pace(tmp_path: Path) -> None:
    # The row read "time  → no limit binds (…) (at the steady rate; a full bucket at the start
    # can save up to a minute)": an arrow from nothing, and a pace and bucket there are not.
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    text = " ".join(run_cli("estimate", str(jobs), "-m", "gpt-9-ultra").stdout.split())
    assert "time no limit binds: as fast as the server answers (no preset limits" in text
    assert "steady rate" not in text and "→" not in text

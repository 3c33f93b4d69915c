"""`--simulate --endpoints FILE`: the README's endpoints section tried offline, one simulator per
endpoint with that endpoint's limits (issue 21, item 19)."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import orjson

from tests.helpers.cli import REPO, run_cli
from tests.helpers.jsonl import count_lines, prompts, read_results, write_jsonl


def test_the_sample_endpoints_file_runs_offline_with_no_keys(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(30))
    run = run_cli("submit", str(jobs), "--simulate", "--endpoints",
                  str(REPO / "samples" / "endpoints.toml"), "--record-endpoint")
    assert run.code == 0, run.stderr
    # One simulator per endpoint, each on a port of its own.
    sent_to = re.search(r"sending to openai-main \((127\.0\.0\.1:\d+)\), azure-east "
                        r"\((127\.0\.0\.1:\d+)\), spare-key \((127\.0\.0\.1:\d+)\)",
                        run.stderr)
    assert sent_to is not None, run.stderr
    assert len(set(sent_to.groups())) == 3
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert len(results) == 30 and all(r["error"] is None for r in results.values())
    used = collections.Counter(r["endpoint"] for r in results.values())
    assert set(used) <= {"openai-main", "azure-east"}  # spare-key is priority 2: not needed
    assert sum(used.values()) == 30


def test_each_simulated_endpoint_keeps_its_own_limits_and_its_stop_holds_on_resume(
        tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(
        '[[endpoint]]\nname = "small"\nbase_url = "https://api.openai.com/v1"\n'
        'api_key_env = "SMALL_KEY"\n[endpoint.limits."gpt-4o-mini"]\ntpd = 300\n\n'
        '[[endpoint]]\nname = "tiny"\nbase_url = "https://api.example.com/v1"\n'
        'api_key_env = "TINY_KEY"\n[endpoint.limits."gpt-4o-mini"]\ntpd = 100\n')
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    run = run_cli("submit", str(jobs), "--simulate", "--endpoints", str(endpoints),
                  "--record-endpoint", "-q")
    assert run.code == 3, run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    used = collections.Counter(r["endpoint"] for r in results.values())
    assert set(used) == {"small", "tiny"} and used["small"] > used["tiny"]
    assert 0 < len(results) < 40
    [job] = orjson.loads(run_cli("status", "--json").stdout)["jobs"]
    again = run_cli("resume", job["job_id"], "-q")
    assert again.code == 3, again.stderr  # the day is spent for this job, on every endpoint
    assert count_lines(tmp_path / "jobs.results.jsonl") == len(results)

"""Whose answers (#25): one server is one cache however its URL is typed (case, a default port,
a trailing slash), and `estimate` names it as the engine does; another base URL on the same
host is another server (a gateway's paths are different services) and finds nothing; with
--endpoints every key of the file is the user's own, in `estimate` as in the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import FAKE_KEY, UNLIMITED, estimate, run_cli
from tests.helpers.endpoints import KEY_A, openai, toml_file, two_keyed_endpoints
from tests.helpers.jsonl import prompts, write_jsonl
from tests.helpers.sim import RunningSim

ENV = {"OPENAI_API_KEY": FAKE_KEY}


def send(base_url: str, jobs: Path, out: Path) -> None:
    run = run_cli("submit", str(jobs), "--base-url", base_url, "-o", str(out), "-q",
                  *UNLIMITED, env=ENV)
    assert run.code == 0, run.stderr


def test_the_same_server_typed_another_way_is_answered_from_the_cache(
        sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    send(sim.base_url, jobs, tmp_path / "one.jsonl")
    assert sim.stats.received == 10
    port = sim.base_url.split(":")[2].split("/")[0]
    other_spelling = f"http://LOCALHOST:{port}/v1/"
    # estimate and the job agree: all 10 from the cache, none sent
    assert estimate(str(jobs), "--base-url", other_spelling, env=ENV)["cache"]["answered"] == 10
    send(other_spelling, jobs, tmp_path / "two.jsonl")
    assert sim.stats.received == 10


def test_another_base_url_on_the_same_host_finds_nothing(
        sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    send(sim.base_url, jobs, tmp_path / "one.jsonl")
    elsewhere = sim.base_url.removesuffix("/v1") + "/gateway/other/v1"
    assert estimate(str(jobs), "--base-url", elsewhere, env=ENV)["cache"]["answered"] == 0
    # the job does not take the first path's answers either: it sends (and the simulator,
    # which serves only /v1, refuses every one)
    run = run_cli("submit", str(jobs), "--base-url", elsewhere, "-o",
                  str(tmp_path / "two.jsonl"), "-q", *UNLIMITED, env=ENV)
    assert "cached" not in (tmp_path / "two.jsonl").read_text()
    assert run.code != 0


def test_with_endpoints_estimate_counts_what_every_endpoint_paid_for_as_the_job_does(
        tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, conf = two_keyed_endpoints(tmp_path, sim_factory, monkeypatch)
    # 20 lines answered by endpoint a alone, with its own key
    known = write_jsonl(tmp_path / "known.jsonl", prompts(20))
    run = run_cli("submit", str(known), "--base-url", a.base_url, "--api-key-env", "KEY_A",
                  "-o", str(tmp_path / "one.jsonl"), "-q", *UNLIMITED)
    assert run.code == 0, run.stderr
    # the same 20 questions under new ids, and 10 new ones
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(20, "n") + [
        {"id": f"new{i}", "prompt": f"Another question {i}", "max_tokens": 10}
        for i in range(10)])
    cache = estimate(str(jobs), "--endpoints", str(conf))["cache"]
    assert (cache["answered"], cache["requests_sent"]) == (20, 10)
    sent = a.stats.received + b.stats.received
    run = run_cli("submit", str(jobs), "--endpoints", str(conf), "-o",
                  str(tmp_path / "two.jsonl"), "-q")
    assert run.code == 0, run.stderr
    assert a.stats.received + b.stats.received == sent + 10


def test_with_endpoints_an_unset_key_is_named_with_where_it_is_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY_A", KEY_A)
    monkeypatch.delenv("KEY_B", raising=False)
    conf = toml_file(tmp_path / "endpoints.toml",
                     openai("a", "https://a.example/v1", "KEY_A", 1200),
                     openai("b", "https://b.example/v1", "KEY_B", 1200))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    cache = estimate(str(jobs), "--endpoints", str(conf))["cache"]
    # the variable is the endpoints file's api_key_env: --api-key-env does not name it here
    assert cache == {"looked_up": False, "why": "$KEY_B is not set, and answers are kept per "
                                                "API key: set it to count them"}

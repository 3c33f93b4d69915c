"""--endpoints end to end: the CLI in process against two or three simulators on loopback,
each with its own limits and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.simulator import SimConfig, SimLimits
from tests.helpers.cli import run_cli
from tests.helpers.endpoints import KEY_A, KEY_B, openai, prompts, toml_file
from tests.helpers.jsonl import read_results, write_jsonl


def test_two_endpoints_share_a_job_one_line_per_id_and_the_manifest_counts_each(
    tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = sim_factory(SimConfig(SimLimits(rpm=1200, window_s=1.0), latency_s=0.02,
                              api_key=KEY_A))
    b = sim_factory(SimConfig(SimLimits(rpm=2400, window_s=1.0), latency_s=0.02,
                              api_key=KEY_B))
    monkeypatch.setenv("KEY_A", KEY_A)
    monkeypatch.setenv("KEY_B", KEY_B)
    conf = toml_file(tmp_path / "endpoints.toml", openai("a", a.base_url, "KEY_A", 1200),
                     openai("b", b.base_url, "KEY_B", 2400))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    out = tmp_path / "out.jsonl"
    run = run_cli("submit", str(jobs), "-o", str(out), "--endpoints", str(conf),
                  "--record-endpoint", "--json")
    assert run.code == 0, run.stderr
    results = read_results(out)
    assert len(results) == 40 and all(r["error"] is None for r in results.values())
    by = {name: sum(r["endpoint"] == name for r in results.values()) for name in "ab"}
    assert by["a"] == a.stats.ok and by["b"] == b.stats.ok
    assert by["a"] > 0 and by["b"] > 0
    summary = orjson.loads(run.stdout)
    assert {n: e["requests"] for n, e in summary["endpoints"].items()} == by
    status = orjson.loads(run_cli("status", summary["job"], "--json").stdout)
    assert status["jobs"][0]["endpoints"] == {n: {"done": by[n], "failed": 0} for n in "ab"}


def test_endpoints_beside_a_single_endpoint_flag_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEY_A", KEY_A)
    conf = toml_file(tmp_path / "e.toml", openai("a", "https://api.openai.com/v1", "KEY_A", 5))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), "--endpoints", str(conf), "--rpm", "10",
                  "--base-url", "http://127.0.0.1:9/v1")
    assert run.code == 2
    assert "--endpoints and --base-url, --rpm cannot go together" in run.stderr
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_azure_and_openai_in_one_file_the_refusing_one_is_taken_out_and_the_job_finishes(
    tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    azure = sim_factory(SimConfig(api_key=KEY_A))
    openai_sim = sim_factory(SimConfig(api_key=KEY_B))
    monkeypatch.setenv("AZ_KEY", KEY_A)
    monkeypatch.setenv("OA_KEY", "sk-test-not-the-right-key-000000")
    conf = toml_file(
        tmp_path / "endpoints.toml",
        openai("openai", openai_sim.base_url, "OA_KEY", 6000),
        f'[[endpoint]]\nname = "east"\nazure_endpoint = "{azure.azure_endpoint}"\n'
        'api_key_env = "AZ_KEY"\n[endpoint.models]\n"gpt-4o-mini" = "mini-east"\n')
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(20))
    out = tmp_path / "out.jsonl"
    run = run_cli("submit", str(jobs), "-o", str(out), "--endpoints", str(conf), "--json")
    assert run.code == 0, run.stderr
    results = read_results(out)
    assert len(results) == 20 and all(r["error"] is None for r in results.values())
    # The Azure deployment answered every one, under its deployment name.
    assert {r["response"]["body"]["model"] for r in results.values()} == {"mini-east"}
    assert "endpoint" not in next(iter(results.values()))  # no --record-endpoint
    summary = orjson.loads(run.stdout)["endpoints"]
    assert summary["east"]["requests"] == 20 and summary["openai"]["requests"] == 0
    assert summary["openai"]["out"] == {"gpt-4o-mini": "refused the key"}
    assert openai_sim.stats.statuses[401] >= 1
    # The deployment's daily ledger is its own, as with --azure-endpoint and that deployment.
    usage = orjson.loads(run_cli("status", "--json").stdout)["usage"]
    assert [(u["host"], u["model"]) for u in usage if u["tokens"]] == [
        (azure.azure_endpoint.split("//")[1].replace("127.0.0.1", "localhost"), "mini-east")]


def test_resume_of_an_endpoints_job_takes_its_limits_from_the_file_only(
    tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = sim_factory(SimConfig(api_key=KEY_A))
    monkeypatch.setenv("KEY_A", KEY_A)
    conf = toml_file(tmp_path / "e.toml", openai("a", a.base_url, "KEY_A", 6000, tpd=150))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(20))
    first = run_cli("submit", str(jobs), "--endpoints", str(conf))
    assert first.code == 3, first.stderr  # its one endpoint is spent for the day
    assert "Daily token budget reached for gpt-4o-mini" in first.stderr
    refused = run_cli("resume", "--rpm", "5")
    assert refused.code == 2
    assert f"runs over the endpoints of {conf}" in refused.stderr and "--rpm" in refused.stderr


def test_record_endpoint_needs_endpoints(tmp_path: Path) -> None:
    # --simulate with --endpoints runs a simulator per endpoint:
    # tests/routing/test_simulated_endpoints.py
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    alone = run_cli("submit", str(jobs), "--simulate", "--record-endpoint")
    assert alone.code == 2 and "give --endpoints FILE.toml too" in alone.stderr


def test_one_key_in_two_variables_for_one_host_is_refused_before_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEY_A", KEY_A)
    monkeypatch.setenv("SAME_AS_A", KEY_A)
    conf = toml_file(tmp_path / "e.toml", openai("a", "http://127.0.0.1:9/v1", "KEY_A", 5),
                     openai("b", "http://127.0.0.1:9/v1", "SAME_AS_A", 5))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), "--endpoints", str(conf))
    assert run.code == 2
    assert "endpoints 'a' and 'b' send to 127.0.0.1:9 with the same key" in run.stderr
    assert KEY_A not in run.stderr


def test_every_endpoint_refusing_its_key_stops_with_exit_4_naming_each_variable(
    tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = sim_factory(SimConfig(api_key=KEY_A))
    b = sim_factory(SimConfig(api_key=KEY_B))
    monkeypatch.setenv("KEY_A", "sk-test-wrong-key-for-a-0000000")
    monkeypatch.setenv("KEY_B", "sk-test-wrong-key-for-b-0000000")
    conf = toml_file(tmp_path / "e.toml", openai("a", a.base_url, "KEY_A", 600),
                     openai("b", b.base_url, "KEY_B", 600))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    run = run_cli("submit", str(jobs), "--endpoints", str(conf))
    assert run.code == 4, run.stderr
    assert "The API refused the request: Incorrect API key provided" in run.stderr
    assert "Check $KEY_A, $KEY_B" in run.stderr
    assert "wrong-key" not in run.stderr
    assert (tmp_path / "jobs.results.jsonl").read_bytes() == b""  # nothing recorded as failed

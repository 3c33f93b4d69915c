"""The simulator's flex processing from its command line: what docs/flex.md offers for trying
flex offline, without writing Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchrun.simulator import config_from_argv
from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.jsonl import prompts, read_results, write_jsonl


def test_the_command_line_sets_flex_faults_status_and_models() -> None:
    config, _port = config_from_argv(["--flex-unavailable", "0.3", "--flex-status", "498",
                                      "--flex-models", "gpt-5-mini, o3"])
    assert config.faults.flex_unavailable == 0.3
    assert config.flex_status == 498
    assert config.flex_models == frozenset({"gpt-5-mini", "o3"})


def test_by_default_every_model_takes_flex_and_capacity_never_runs_out() -> None:
    config, _port = config_from_argv([])
    assert config.faults.flex_unavailable == 0.0
    assert config.flex_status == 429 and config.flex_models is None


def test_a_status_that_is_no_flex_refusal_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        config_from_argv(["--flex-status", "503"])
    assert stop.value.code == 2
    assert "--flex-status" in capsys.readouterr().err


def test_a_simulator_started_so_refuses_flex_as_a_server_without_capacity(
    sim_factory: Any, tmp_path: Path,
) -> None:
    config, _port = config_from_argv(["--flex-unavailable", "1"])
    sim = sim_factory(config)
    rows = [{**row, "model": "gpt-5-mini"} for row in prompts(2)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--service-tier", "flex",
                  "--flex-wait", "0", env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 1, run.stderr
    codes = {line["error"]["code"] for line in read_results(tmp_path / "jobs.results.jsonl")
             .values()}
    assert codes == {"flex_unavailable"}

"""The endpoints file as the input is treated: an edit between runs is named on resume, and a
file batchrun cannot read sensibly (nested without end, a FIFO) is a one-line refusal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from batchrun.simulator import SimConfig
from tests.helpers.cli import run_cli
from tests.helpers.endpoints import KEY_A, prompts
from tests.helpers.jsonl import read_results, write_jsonl


def _file(path: Path, url: str, rpd: int) -> Path:
    path.write_text(f'[[endpoint]]\nname = "a"\nbase_url = "{url}"\napi_key_env = "KEY_A"\n'
                    f'[endpoint.limits."gpt-4o-mini"]\nrpd = {rpd}\n')
    return path


def test_an_endpoints_file_edited_since_the_job_started_is_named_and_needs_force(
    tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim_factory(SimConfig(api_key=KEY_A))
    monkeypatch.setenv("KEY_A", KEY_A)
    conf = _file(tmp_path / "endpoints.toml", sim.base_url, rpd=3)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    out = tmp_path / "out.jsonl"
    first = run_cli("submit", str(jobs), "-o", str(out), "--endpoints", str(conf))
    assert first.code == 3, first.stderr  # the day's 3 requests are spent
    _file(conf, sim.base_url, rpd=6)
    refused = run_cli("resume", str(out))
    assert refused.code == 2, refused.stderr
    assert str(conf) in refused.stderr and "changed since job" in refused.stderr
    assert "--force" in refused.stderr
    assert sim.stats.received == 3  # nothing sent over the edited file
    forced = run_cli("resume", str(out), "--force")
    assert forced.code == 3, forced.stderr  # on, to the new limit of 6
    assert len(read_results(out)) == 6
    # Accepted once with --force, the file as it is now is the job's: not refused again.
    _file(conf, sim.base_url, rpd=6)
    resumed = run_cli("resume", str(out))
    assert resumed.code == 3 and "changed since" not in resumed.stderr, resumed.stderr


def test_an_unchanged_endpoints_file_resumes_without_force(
    tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim_factory(SimConfig(api_key=KEY_A))
    monkeypatch.setenv("KEY_A", KEY_A)
    conf = _file(tmp_path / "endpoints.toml", sim.base_url, rpd=3)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    out = tmp_path / "out.jsonl"
    assert run_cli("submit", str(jobs), "-o", str(out), "--endpoints", str(conf)).code == 3
    conf.write_text(conf.read_text())  # same bytes, a new modification time
    resumed = run_cli("resume", str(out))
    assert resumed.code == 3, resumed.stderr  # on, to the same day's limit: not refused
    assert "changed since" not in resumed.stderr


def test_a_deeply_nested_endpoints_file_is_a_one_line_error(tmp_path: Path) -> None:
    conf = tmp_path / "endpoints.toml"
    conf.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), "--endpoints", str(conf))
    assert run.code == 2, run.stderr
    assert str(conf) in run.stderr and "nested" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_a_fifo_given_as_the_endpoints_file_is_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "endpoints.toml"
    os.mkfifo(fifo)  # no writer: reading it would wait for ever
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), "--endpoints", str(fifo))
    assert run.code == 2, run.stderr
    assert str(fifo) in run.stderr and "not a regular file" in run.stderr

"""One output belongs to one input, and one process writes it at a time, whatever path or
$BATCHRUN_HOME a second process comes by."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchrun.cli import commands as cli
from batchrun.simulator import SimConfig, reply_text
from tests.helpers.cli import (
    FAKE_KEY,
    REPO,
    UNLIMITED,
    nameless,
    simulate,
    submit_in_process,
    wait_for,
)
from tests.helpers.jsonl import body_as_sent, count_lines, read_results, write_jsonl


def start_writing(base_url: str, jobs: Path, out: Path) -> subprocess.Popen[bytes]:
    """A real batchrun process that submits `jobs` to `out`, one request at a time."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "-o", str(out), "--base-url",
         base_url, "--concurrency", "1", "-q", *UNLIMITED],
        env={**os.environ, "OPENAI_API_KEY": FAKE_KEY}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_second_input_for_an_output_is_refused_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", nameless(2, "apple"))
    b = write_jsonl(tmp_path / "b.jsonl", nameless(2, "banana"))
    out = tmp_path / "out.jsonl"
    assert simulate(capsys, a, "-o", str(out)).code == 0
    before = out.read_bytes()
    run = simulate(capsys, b, "-o", str(out))
    assert run.code == 2, run.stdout + run.stderr
    assert "belongs to job a-" in run.stderr and str(a) in run.stderr
    assert "-o" in run.stderr
    assert out.read_bytes() == before


def test_while_a_job_runs_no_other_process_writes_its_output(
    sim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim_factory(SimConfig(latency_s=1.0))
    a_rows = nameless(50, "apple")
    a = write_jsonl(tmp_path / "a.jsonl", a_rows)
    b = write_jsonl(tmp_path / "b.jsonl", nameless(50, "banana"))
    out = tmp_path / "out.jsonl"
    proc = start_writing(sim.base_url, a, out)
    try:
        wait_for(lambda: count_lines(out) >= 1)  # A is running and holds the output
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        link = tmp_path / "link.jsonl"
        os.link(out, link)

        same_home = submit_in_process(capsys, sim.base_url, b, out)
        assert same_home.code == 2, same_home.stderr
        assert "belongs to job a-" in same_home.stderr

        monkeypatch.setenv("BATCHRUN_HOME", str(tmp_path / "other-home"))
        for path in (out, link):
            other = submit_in_process(capsys, sim.base_url, b, path)
            assert other.code == 2, other.stderr
            assert "already running a job that writes" in other.stderr
        # The same input too: it would send A's requests a second time.
        again = submit_in_process(capsys, sim.base_url, a, link)
        assert again.code == 2 and "already running" in again.stderr
    finally:
        proc.kill()
        proc.wait()
    results = read_results(out)
    assert results
    for cid, line in results.items():
        row = a_rows[int(cid.removeprefix("line-")) - 1]
        assert line["response"]["body"]["choices"][0]["message"]["content"] == reply_text(
            body_as_sent(row))
    assert sim.stats.received <= len(results) + 1  # only A's requests were sent


def test_a_hard_link_to_a_jobs_output_names_that_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", nameless(2, "apple"))
    out = tmp_path / "out.jsonl"
    assert simulate(capsys, a, "-o", str(out)).code == 0
    link = tmp_path / "link.jsonl"
    os.link(out, link)
    code = cli.run(["resume", str(link)])
    assert code == 0 and "is finished: 2 of 2 requests" in capsys.readouterr().out
    again = simulate(capsys, a, "-o", str(link))  # the same job, by another name
    assert again.code == 0 and "is finished: 2 of 2 requests" in again.stdout


def test_an_output_rebuilt_under_a_running_job_stays_locked(
    sim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim_factory(SimConfig(latency_s=0.3))
    a = write_jsonl(tmp_path / "a.jsonl", nameless(100, "apple"))
    out = tmp_path / "out.jsonl"
    proc = start_writing(sim.base_url, a, out)
    try:
        wait_for(lambda: count_lines(out) >= 1)
        inode = out.stat().st_ino
        out.unlink()
        wait_for(lambda: out.exists() and out.stat().st_ino != inode)  # A put it back
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        monkeypatch.setenv("BATCHRUN_HOME", str(tmp_path / "other-home"))
        # The same input from another state dir: it would send A's requests again.
        other = submit_in_process(capsys, sim.base_url, a, out)
        assert other.code == 2, other.stdout + other.stderr
        assert "already running a job that writes" in other.stderr
    finally:
        proc.kill()
        proc.wait()

"""Failed requests are counted from the output file: exit codes, the summary, `status` and
`resume --retry-failed` agree with what the file holds, not with what a process remembered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.cli import commands as cli
from batchrun.files.checkpoint import result_line
from batchrun.simulator import Faults, SimConfig
from tests.helpers.cli import FAKE_KEY, REPO, Run, wait_for
from tests.helpers.jsonl import count_lines, read_results, rows, write_jsonl

UNLIMITED = ("--rpm", "0", "--tpm", "0", "--rpd", "0", "--tpd", "0")


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


def cli_run(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    code = cli.run(list(args))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def status_of(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    [job] = orjson.loads(cli_run(capsys, "status", "--json").stdout)["jobs"]
    return job  # type: ignore[no-any-return]


def test_a_deleted_output_takes_its_failures_with_it(
    sim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    sim = sim_factory(SimConfig(faults=Faults(error_500=1.0)))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(3))
    out = tmp_path / "out.jsonl"
    args = ("submit", str(jobs), "-o", str(out), "--base-url", sim.base_url, "-q",
            "--max-retries", "0", *UNLIMITED)
    assert cli_run(capsys, *args).code == 1
    assert status_of(capsys)["failed"] == 3
    out.unlink()
    sim.config.faults.error_500 = 0.0
    again = cli_run(capsys, *args)
    assert again.code == 0, again.stdout + again.stderr
    assert "3 ok · 0 failed" in again.stdout
    assert status_of(capsys)["failed"] == 0


def test_failed_lines_the_manifest_never_saw_count(
    sim: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # As after a kill -9 between two manifest saves: the file holds failures no manifest counts.
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(6))
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(result_line(f"q{i}", 500, "req_x", {"error": "boom"},
                                         ("server_error", "boom")) for i in range(3)))
    run = cli_run(capsys, "submit", str(jobs), "-o", str(out), "--base-url", sim.base_url,
                  "-q", *UNLIMITED)
    assert run.code == 1, run.stdout + run.stderr
    assert "3 ok · 0 failed · 3 done before (3 of them failed)" in run.stdout
    assert "--retry-failed" in run.stdout
    assert status_of(capsys)["failed"] == 3

    retried = cli_run(capsys, "resume", str(out), "--retry-failed", "-q")
    assert retried.code == 0, retried.stdout + retried.stderr
    assert "Dropped 3 failed results" in retried.stderr
    results = read_results(out)
    assert sorted(results) == [f"q{i}" for i in range(6)]
    assert all(line["error"] is None for line in results.values())
    assert status_of(capsys)["failed"] == 0


def test_retry_failed_touches_nothing_while_the_job_runs(
    sim_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    sim = sim_factory(SimConfig(latency_s=1.0))
    jobs = tmp_path / "jobs.jsonl"
    write_jsonl(jobs, rows(30))
    with jobs.open("ab") as f:
        f.write(b"{oops\n")  # recorded as failed at once with --on-bad-line skip
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "-o", str(out), "--base-url",
         sim.base_url, "--concurrency", "1", "--on-bad-line", "skip", "-q", *UNLIMITED],
        env={**os.environ, "OPENAI_API_KEY": FAKE_KEY}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: count_lines(out) >= 1 and b"invalid_request_line" in out.read_bytes())
        inode = out.stat().st_ino
        run = cli_run(capsys, "resume", str(out), "--retry-failed")
        assert run.code == 2, run.stderr
        assert "already running" in run.stderr and "Dropped" not in run.stderr
        assert out.stat().st_ino == inode  # not rewritten under the running job
    finally:
        proc.kill()
        proc.wait()
    assert read_results(out)["line-31"]["error"]["code"] == "invalid_request_line"


def test_status_of_a_crashed_job_counts_its_output(
    sim: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str],
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(6))
    out = tmp_path / "out.jsonl"
    assert cli_run(capsys, "submit", str(jobs), "-o", str(out), "--base-url", sim.base_url,
                   "-q", "--tpd", "40", "--concurrency", "1").code == 3
    done = read_results(out)
    missing = next(f"q{i}" for i in range(6) if f"q{i}" not in done)
    with out.open("ab") as f:  # what the dead process wrote after its last manifest save
        f.write(result_line(missing, 500, "req_x", None, ("server_error", "boom")))
    [path] = (Path(isolated_env["BATCHRUN_HOME"]) / "jobs").glob("*.json")
    manifest = orjson.loads(path.read_bytes())
    path.write_bytes(orjson.dumps({**manifest, "state": "running", "failed": 0}))
    job = status_of(capsys)
    assert (job["state"], job["done"], job["failed"]) == ("crashed", len(done) + 1, 1)

"""`batchrun submit … | head`: a reader that goes away early is no reason to stop the job (issue
21, item 17). Real processes: only a real pipe gives a real EPIPE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.helpers.cli import REPO, run_cli
from tests.helpers.jsonl import prompts, read_results, write_jsonl


@pytest.mark.parametrize("json_", [False, True])
def test_a_closed_stdout_and_stderr_leave_the_job_running_to_the_end(
        tmp_path: Path, json_: bool) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(20))
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "--simulate",
         *(["--json"] if json_ else [])],
        cwd=REPO, env=os.environ, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head` that has read its lines and gone
    if not json_:  # `2>&1 | head`: the progress lines' reader goes too, once the job started
        assert proc.stderr.readline().startswith("batchrun: 20 requests")
        proc.stderr.close()
    code = proc.wait(timeout=60)
    if json_:
        proc.stderr.close()
    assert code == 0
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 20
    [job] = orjson.loads(run_cli("status", "--json").stdout)["jobs"]
    assert job["state"] == "done" and job["done"] == 20

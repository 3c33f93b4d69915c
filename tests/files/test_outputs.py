"""`-o`: files that are not ours are never touched; a refused run leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from batchrun.files.checkpoint import result_line
from batchrun.files.jobstore import describe_change, fingerprint
from tests.helpers.cli import in_process, simulate
from tests.helpers.jsonl import read_results, rows, write_jsonl


def jobs_in_home(isolated_env: dict[str, str]) -> list[str]:
    jobs = Path(isolated_env["BATCHRUN_HOME"]) / "jobs"
    return sorted(p.name for p in jobs.glob("*.json")) if jobs.is_dir() else []


@pytest.mark.parametrize("content", [
    b'{"keep":"me"}',  # one line and no newline: looks like a torn last line
    b'{"keep":"me"}\n{"and":"me"}\n',
    b"plain notes\nnot json at all\n",
    b'{"id": "batch_req_', # a fragment that starts like ours, with nothing to prove it is
])
@pytest.mark.parametrize("input_ok", [True, False])
def test_an_existing_file_that_is_not_ours_is_refused_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str],
    content: bytes, input_ok: bool,
) -> None:
    precious = tmp_path / "precious.json"
    precious.write_bytes(content)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id": "a", "prompt": "x"}\n' if input_ok else b"{oops\n")
    run = simulate(capsys, jobs, "-o", str(precious))
    assert run.code == 2, run.stderr
    assert precious.read_bytes() == content
    if input_ok:
        assert f"{precious} exists and is not a batchrun results file" in run.stderr
        assert "-o" in run.stderr
    assert "Traceback" not in run.stderr
    assert jobs_in_home(isolated_env) == []


def test_results_of_another_input_are_refused_even_without_a_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str],
) -> None:
    out = tmp_path / "out.jsonl"
    theirs = result_line("someone-elses-id", 200, "req_1", {"x": 1}, None)
    out.write_bytes(theirs)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(2))
    run = simulate(capsys, jobs, "-o", str(out))
    assert run.code == 2, run.stderr
    assert "someone-elses-id" in run.stderr and "not an id of" in run.stderr
    assert out.read_bytes() == theirs


def test_our_results_with_a_torn_last_line_are_continued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(3))
    out = tmp_path / "out.jsonl"
    out.write_bytes(result_line("q0", 200, "req_1", {"x": 1}, None) + b'{"id": "batch_req_ab')
    run = simulate(capsys, jobs, "-o", str(out))
    assert run.code == 0, run.stderr
    assert "1 done before" in run.stdout
    assert sorted(read_results(out)) == ["q0", "q1", "q2"]


@pytest.mark.parametrize("target", ["/dev/full", "/dev/zero", "fifo"])
def test_an_output_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str],
    target: str,
) -> None:
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
        target = str(tmp_path / "fifo")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(2))
    run = simulate(capsys, jobs, "-o", target)
    assert run.code == 2, run.stderr
    assert f"{target} is not a regular file" in run.stderr
    assert jobs_in_home(isolated_env) == []


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_the_input_itself_as_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str], how: str,
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    # Batch API lines with no final newline: the last would pass for a torn result line.
    batch = [orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": "gpt-4o-mini", "max_tokens": 5,
                                    "messages": [{"role": "user", "content": "hi"}]}})
             for i in range(3)]
    content = b"\n".join(batch)
    jobs.write_bytes(content)
    out = jobs
    if how == "symlink":
        out = tmp_path / "link.jsonl"
        out.symlink_to(jobs)
    elif how == "hardlink":
        out = tmp_path / "link.jsonl"
        os.link(jobs, out)
    run = simulate(capsys, jobs, "-o", str(out))
    assert run.code == 2, run.stderr
    assert "is the input itself" in run.stderr
    assert jobs.read_bytes() == content
    assert jobs_in_home(isolated_env) == []


@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "bad lines"])
def test_a_refused_submit_leaves_no_job_and_the_corrected_retry_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str],
    problem: str,
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    if problem == "directory":
        jobs.mkdir()
    elif problem == "empty":
        jobs.write_bytes(b"\n\n")
    elif problem == "bad lines":
        jobs.write_bytes(b'{"id": "a", "prompt": "x"}\n{oops\n')
    out = tmp_path / "out.jsonl"
    run = simulate(capsys, jobs, "-o", str(out))
    assert run.code == 2, run.stderr
    assert jobs_in_home(isolated_env) == []
    assert not out.exists()
    status = in_process(capsys, "status", "--json")
    assert orjson.loads(status.stdout)["jobs"] == []
    bare = in_process(capsys, "resume")
    assert bare.code == 0 and "No unfinished job" in bare.stderr

    if jobs.is_dir():
        jobs.rmdir()
    write_jsonl(jobs, rows(2))
    fixed = simulate(capsys, jobs, "-o", str(out))
    assert fixed.code == 0, fixed.stderr
    assert sorted(read_results(out)) == ["q0", "q1"]


def test_describe_change_of_a_job_with_no_fingerprint(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(1))
    assert describe_change({}, fingerprint(jobs)) == "batchrun recorded no fingerprint of it"

"""The sidecar beside an output (`.NAME.batchrun`): the lock a running job holds, so deleting the
output frees nothing, and the output's owner, so no other input takes it whatever
$BATCHRUN_HOME says."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun.files.checkpoint import result_line
from tests.helpers.cli import (
    FAKE_KEY,
    REPO,
    UNLIMITED,
    in_process,
    nameless,
    simulate,
    submit_in_process,
    wait_for,
)
from tests.helpers.jsonl import count_lines, read_results, rows, write_jsonl
from tests.helpers.served_app import ServedApp, ok


def sidecar_of(output: Path) -> Path:
    return output.with_name(f".{output.name}.batchrun")


class GatedServer(ServedApp):
    """Answers at once, except the `held`-th request it receives: that one waits for `open()`."""

    def __init__(self, held: int) -> None:
        self.gate = threading.Event()
        self.arrived = 0

        async def answer(body: dict[str, Any], attempt: int) -> web.Response:
            self.arrived += 1
            if self.arrived == held:
                await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 60)
            return ok(body)

        super().__init__(answer)

    def open(self) -> None:
        self.gate.set()


@pytest.mark.parametrize(("home", "delete"), [
    ("same", "the output"), ("other", "the output"),
    # `rm -rf results/` or `git clean -fdx`: the output and the file kept beside it go together.
    ("other", "its directory"),
])
def test_deleting_a_running_jobs_output_does_not_let_a_second_process_run_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    home: str, delete: str,
) -> None:
    rows = nameless(5, "apple")
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    out = tmp_path / "results" / "out.jsonl"
    with GatedServer(held=2) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun", "submit", str(a), "-o", str(out), "--base-url",
             server.base_url, "--concurrency", "1", "-q", *UNLIMITED],
            env={**os.environ, "OPENAI_API_KEY": FAKE_KEY}, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # A wrote one result and waits on its second: it will not write (and so not
            # notice the deletion) until the gate opens.
            wait_for(lambda: count_lines(out) == 1 and server.arrived == 2)
            if delete == "the output":
                out.unlink()
            else:
                shutil.rmtree(out.parent)
            monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
            if home == "other":
                monkeypatch.setenv("BATCHRUN_HOME", str(tmp_path / "other-home"))
            second = submit_in_process(capsys, server.base_url, a, out)
            assert second.code == 2, second.stdout + second.stderr
            assert "another batchrun process is already running a job that writes" in (
                second.stderr)
            if home == "same":
                [job] = orjson.loads(in_process(capsys, "status", "--json").stdout)["jobs"]
                assert job["state"] == "running"  # not "crashed": A still holds the job
                refused = in_process(capsys, "forget", job["job_id"])
                assert refused.code == 2 and "is running" in refused.stderr
        finally:
            server.open()
            _, a_err = proc.communicate(timeout=60)
        assert proc.returncode == 0, a_err
        assert sorted(read_results(out)) == [f"line-{i}" for i in range(1, 6)]
        assert server.received == 5  # each request once: the second process sent nothing


@pytest.mark.parametrize("how", ["other home", "home wiped"])
def test_an_output_is_not_taken_by_another_input_whatever_the_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", nameless(3, "Translate to French: apple"))
    b = write_jsonl(tmp_path / "b.jsonl", nameless(3, "Write a poem about war"))
    out = tmp_path / "out.jsonl"
    assert simulate(capsys, a, "-o", str(out)).code == 0
    before = out.read_bytes()
    if how == "other home":
        monkeypatch.setenv("BATCHRUN_HOME", str(tmp_path / "other-home"))
    else:
        shutil.rmtree(os.environ["BATCHRUN_HOME"])
    taken = simulate(capsys, b, "-o", str(out))
    assert taken.code == 2, taken.stdout + taken.stderr
    assert f"{out} holds the results of {a}" in taken.stderr
    assert "-o" in taken.stderr
    assert out.read_bytes() == before
    # The input that owns it continues it (nothing left to send) from any state dir.
    same = simulate(capsys, a, "-o", str(out))
    assert same.code == 0, same.stderr
    assert "3 done before" in same.stdout
    assert out.read_bytes() == before


def test_retry_failed_keeps_the_job_locked_through_its_rewrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(4))
    out = tmp_path / "out.jsonl"
    with GatedServer(held=1) as server:
        out.write_bytes(result_line("q0", 200, "req_1", {"x": 1}, None) + b"".join(
            result_line(f"q{i}", 500, "req_x", None, ("server_error", "boom"))
            for i in (1, 2, 3)))
        first = submit_in_process(capsys, server.base_url, jobs, out)
        assert first.code == 1, first.stdout + first.stderr  # nothing left to send but failures
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun", "resume", str(out), "--retry-failed",
             "--concurrency", "1", "-q"],
            env={**os.environ}, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        try:
            wait_for(lambda: server.arrived == 1)  # failures dropped (a new file), one sent
            out.unlink()
            second = submit_in_process(capsys, server.base_url, jobs, out)
            assert second.code == 2, second.stdout + second.stderr
            assert "another batchrun process is already running" in second.stderr
        finally:
            server.open()
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results = read_results(out)
        assert sorted(results) == ["q0", "q1", "q2", "q3"]
        assert all(line["error"] is None for line in results.values())
        assert server.received == 3


def test_the_sidecar_is_private_names_the_input_and_keeps_the_output_pure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sim: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(2))
    target = tmp_path / "results" / "out.jsonl"
    target.parent.mkdir()
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert submit_in_process(capsys, sim.base_url, jobs, link).code == 0
    beside = sidecar_of(target)  # beside the file, not beside the name it was given by
    assert not sidecar_of(link).exists()
    assert stat.S_IMODE(beside.stat().st_mode) == 0o600
    record = beside.read_bytes()
    assert FAKE_KEY.encode() not in record and b"OPENAI_API_KEY" not in record
    assert orjson.loads(record)["batchrun_output_of"]["input"] == str(jobs)
    assert sorted(read_results(target)) == ["q0", "q1"]  # every line a result, nothing more


def test_an_input_changed_in_place_is_refused_from_another_state_dir_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs = write_jsonl(tmp_path / "a.jsonl", nameless(2, "apple"))
    out = tmp_path / "out.jsonl"
    assert simulate(capsys, jobs, "-o", str(out)).code == 0
    before = out.read_bytes()
    write_jsonl(jobs, nameless(3, "pear"))  # same path, same line-N ids, other requests
    monkeypatch.setenv("BATCHRUN_HOME", str(tmp_path / "other-home"))
    refused = simulate(capsys, jobs, "-o", str(out))
    assert refused.code == 2, refused.stdout + refused.stderr
    assert "changed since job a-" in refused.stderr and "--force" in refused.stderr
    assert out.read_bytes() == before
    forced = simulate(capsys, jobs, "-o", str(out), "--force")
    assert forced.code == 0, forced.stderr
    assert "1 ok" in forced.stdout and "2 done before" in forced.stdout
    # The record beside the output now holds the input's new fingerprint.
    monkeypatch.setenv("BATCHRUN_HOME", str(tmp_path / "third-home"))
    again = simulate(capsys, jobs, "-o", str(out))
    assert again.code == 0 and "3 done before" in again.stdout


def test_a_refused_run_leaves_no_sidecar_and_a_refusal_keeps_the_owners(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "prompt": "x"}\n{oops\n')
    out = tmp_path / "out.jsonl"
    assert simulate(capsys, bad, "-o", str(out)).code == 2
    assert not out.exists() and not sidecar_of(out).exists()

    a = write_jsonl(tmp_path / "a.jsonl", nameless(2, "apple"))
    assert simulate(capsys, a, "-o", str(out)).code == 0
    record = sidecar_of(out).read_bytes()
    b = write_jsonl(tmp_path / "b.jsonl", nameless(2, "pear"))
    monkeypatch.setenv("BATCHRUN_HOME", str(tmp_path / "other-home"))
    assert simulate(capsys, b, "-o", str(out)).code == 2
    assert sidecar_of(out).read_bytes() == record


def test_forget_keeps_the_owner_and_a_deleted_output_frees_the_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", nameless(2, "apple"))
    b = write_jsonl(tmp_path / "b.jsonl", nameless(2, "pear"))
    out = tmp_path / "out.jsonl"
    assert simulate(capsys, a, "-o", str(out)).code == 0
    assert in_process(capsys, "forget", str(out)).code == 0
    # Forgotten by this state dir, the output still holds a's results.
    taken = simulate(capsys, b, "-o", str(out))
    assert taken.code == 2 and f"holds the results of {a}" in taken.stderr
    again = simulate(capsys, a, "-o", str(out))
    assert again.code == 0 and "2 done before" in again.stdout
    # Once the output is gone its record protects nothing: another input may use the name.
    assert in_process(capsys, "forget", str(out)).code == 0
    out.unlink()
    fresh = simulate(capsys, b, "-o", str(out))
    assert fresh.code == 0, fresh.stderr
    assert orjson.loads(sidecar_of(out).read_bytes())["batchrun_output_of"]["input"] == str(b)


def test_resume_by_an_output_another_state_dir_started_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", nameless(2, "apple"))
    out = tmp_path / "out.jsonl"
    assert simulate(capsys, a, "-o", str(out)).code == 0
    monkeypatch.setenv("BATCHRUN_HOME", str(tmp_path / "other-home"))
    run = in_process(capsys, "resume", str(out))
    assert run.code == 2
    assert f"holds the results of {a}" in run.stderr and "$BATCHRUN_HOME" in run.stderr
    assert f"batchrun submit {a} -o {out}" in run.stderr


@pytest.mark.parametrize("planted", ["symlink", "directory", "hard link"])
def test_a_sidecar_that_is_not_a_plain_file_of_ours_is_refused_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], planted: str,
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_bytes(b"keep me\n")
    out = tmp_path / "out.jsonl"
    beside = sidecar_of(out)
    if planted == "symlink":
        beside.symlink_to(precious)
    elif planted == "directory":
        beside.mkdir()
    else:
        os.link(precious, beside)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(2))
    run = simulate(capsys, jobs, "-o", str(out))
    assert run.code == 2, run.stdout + run.stderr
    assert str(beside) in run.stderr and "Move it away" in run.stderr
    assert "Traceback" not in run.stderr
    assert precious.read_bytes() == b"keep me\n"
    assert not out.exists()


def test_an_input_named_like_the_outputs_sidecar_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.jsonl"
    jobs = write_jsonl(sidecar_of(out), rows(2))
    content = jobs.read_bytes()
    run = simulate(capsys, jobs, "-o", str(out))
    assert run.code == 2 and "Rename the input" in run.stderr
    assert jobs.read_bytes() == content


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """No entry can be created in `directory` (root ignores modes: the immutable flag)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run(
            [chattr, "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a directory read-only for root here (chattr +i)")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


def test_an_output_in_a_read_only_directory_without_its_sidecar_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(3))
    directory = tmp_path / "ro"
    directory.mkdir()
    out = directory / "out.jsonl"
    out.write_bytes(result_line("q0", 200, "req_1", {"x": 1}, None))  # made elsewhere
    before = out.read_bytes()
    with read_only(directory):
        run = simulate(capsys, jobs, "-o", str(out))
    assert run.code == 2, run.stdout + run.stderr
    assert f"cannot create {sidecar_of(out)}" in run.stderr
    assert f"make {directory} writable" in run.stderr
    assert out.read_bytes() == before


def test_a_hard_link_to_an_output_in_its_directory_finds_the_owner_from_another_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", nameless(2, "apple"))
    b = write_jsonl(tmp_path / "b.jsonl", nameless(2, "pear"))
    out = tmp_path / "out.jsonl"
    assert simulate(capsys, a, "-o", str(out)).code == 0
    before = out.read_bytes()
    link = tmp_path / "link.jsonl"
    os.link(out, link)
    monkeypatch.setenv("BATCHRUN_HOME", str(tmp_path / "other-home"))
    taken = simulate(capsys, b, "-o", str(link))
    assert taken.code == 2, taken.stdout + taken.stderr
    assert f"holds the results of {a}" in taken.stderr
    assert out.read_bytes() == before and not sidecar_of(link).exists()


def test_an_output_name_too_long_for_its_sidecar_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(1))
    out = tmp_path / ("o" * 250)
    run = simulate(capsys, jobs, "-o", str(out))
    assert run.code == 2, run.stdout + run.stderr
    assert "choose a shorter output name" in run.stderr
    assert not out.exists()

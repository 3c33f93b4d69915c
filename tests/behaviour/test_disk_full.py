"""A full disk stops sending, not just writing (issue 21, item 9b).

Measured before: the first run stopped cleanly (exit 5), but each resume while the disk was
still full sent requests, got answers and could not write them: ids billed 2-3 times. Now the
engine checks that the output can take a line before each request goes (free space on its disk,
the process's file-size limit), and stops sending at the first write that fails, so a resume
while the disk is full sends nothing and every answer that came is written or counted as lost.

A real small filesystem (tmpfs, where we may mount one), a real file-size limit (RLIMIT_FSIZE)
on a real process, and an injected write failure on virtual time."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import batchrun.files.checkpoint
from batchrun.messages import phrase
from batchrun.policy.stopkind import StopKind
from tests.helpers.cli import FAKE_KEY, REPO, run_cli
from tests.helpers.counting_server import RESUME, Server, run_job
from tests.helpers.jsonl import assert_all_answered, count_lines, prompts, read_results, write_jsonl
from tests.helpers.sim import RunningSim

ENV = {"OPENAI_API_KEY": FAKE_KEY}
FAST = ("--rpm", "0", "--tpm", "0", "--tpd", "0", "--rpd", "0")


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (skips the test where mounting is not allowed)."""
    where.mkdir()
    mounted = subprocess.run(
        ["/usr/bin/mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["/usr/bin/umount", "-l", str(where)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_full_disk_stops_sending_and_a_resume_while_full_sends_nothing(
        sim: RunningSim, tmp_path: Path) -> None:
    rows = prompts(2_000)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    with small_disk(tmp_path / "disk", "2m") as disk:
        out = disk / "out.jsonl"
        filler = disk / "filler"
        # Leave 400 KB: batchrun keeps 256 KB free, so a few hundred of the 2,000 lines fit.
        filler.write_bytes(b"x" * (free_bytes(disk) - 400_000))
        first = run_cli("submit", str(jobs), "-o", str(out), "--base-url", sim.base_url,
                        *FAST, "--concurrency", "4", env=ENV)
        assert first.code == 5, first.stderr
        assert "disk" in first.stderr and "full" in first.stderr
        assert "Traceback" not in first.stderr
        written = len(read_results(out))
        assert 0 < written < len(rows)
        assert sim.stats.received == written  # every answer that came was written

        received = sim.stats.received
        again = run_cli("resume", str(out), env=ENV)
        assert again.code == 5, again.stderr
        assert sim.stats.received == received  # nothing sent while the disk is full
        assert "nothing more was sent" in again.stderr

        filler.unlink()
        last = run_cli("resume", str(out), env=ENV)
        assert last.code == 0, last.stderr
        assert_all_answered(rows, read_results(out))
        assert set(sim.stats.attempts.values()) == {1}  # no request sent twice


def test_a_file_size_limit_stops_sending_and_a_resume_under_it_sends_nothing(
        sim: RunningSim, tmp_path: Path) -> None:
    """The per-process limit (ulimit -f) refuses a write as a full disk does, with free space
    all around: the engine checks it too."""
    rows = prompts(1_500)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    limit = 600_000  # bytes: the output fills up after ~900 lines (256 KB kept free)
    # tiktoken's encoding file (~1.6 MB) would not fit under the limit: have it cached first.
    assert run_cli("estimate", str(jobs), env=ENV).code == 0

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batchrun", *args, "-q"], env={**os.environ, **ENV},
            cwd=REPO, capture_output=True, text=True, preexec_fn=limited, timeout=120,
            check=False)

    # --no-cache (kept on resume): the response cache's file, under the same limit, would
    # refuse first (its own exit 5); the output's check is what this shows.
    first = run("submit", str(jobs), "--base-url", sim.base_url, *FAST, "--concurrency", "4",
                "--no-cache")
    assert first.returncode == 5, first.stderr
    assert "Traceback" not in first.stderr
    assert sim.stats.received == count_lines(out) < len(rows)
    received = sim.stats.received
    again = run("resume", str(out))
    assert again.returncode == 5, again.stderr
    assert sim.stats.received == received  # nothing sent that could not be written
    assert "file-size limit" in again.stderr
    resumed = run_cli("resume", str(out), env=ENV)
    assert resumed.code == 0, resumed.stderr
    assert_all_answered(rows, read_results(out))
    assert set(sim.stats.attempts.values()) == {1}


def test_sending_stops_at_the_first_failed_write(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A write fails though the checks said there was room (another program filled the disk, a
    quota): nothing more is sent, the answers already coming are still tried, a part line the
    failed write left is cut, and the message counts the answers that could not be written."""
    writes = 0
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        nonlocal writes
        writes += 1
        if writes == 3:
            real_write(fd, bytes(data[:20]))  # a part of the line, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        if writes > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(batchrun.files.checkpoint.os, "write", write)
    server = Server(lambda request: 1.0)
    rows = [{"id": f"q{i}", "prompt": "hi", "max_tokens": 10} for i in range(50)]
    stop, _, _ = run_job(tmp_path, rows, server, concurrency=2)
    assert stop is not None and stop.kind is StopKind.OUTPUT
    # Two went at 0 s and were written; two went at 1 s, and their lines failed at 2 s.
    assert len(server.received) == 4
    raw = (tmp_path / "out.jsonl").read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 2  # the part line was cut
    assert len(read_results(tmp_path / "out.jsonl")) == 2
    assert stop.unwritten == 2
    message = phrase(stop, str(tmp_path / "out.jsonl"), RESUME, "OPENAI_API_KEY").message
    assert "No space left on device" in message
    assert "2 of 50 requests done" in message
    assert "2 answers could not be written" in message
    assert RESUME in message

"""What a new user trips on when resuming: limits given to `resume` and an input rewritten with
the same bytes (issue 21, items 14 and 16)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.cli import run_cli
from tests.helpers.jsonl import prompts, write_jsonl


def _job_id(stderr: str) -> str:
    return stderr.rsplit("batchrun resume ", 1)[1].split()[0]


def test_limits_given_to_resume_are_kept_by_the_next_plain_resume(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(6))
    first = run_cli("submit", str(jobs), "--simulate", "--rpd", "2")
    assert first.code == 3, first.stderr
    job = _job_id(first.stderr)
    raised = run_cli("resume", job, "--rpd", "4")
    assert raised.code == 3, raised.stderr
    assert "4 of 4 requests used" in raised.stderr
    plain = run_cli("resume", job)
    assert plain.code == 3, plain.stderr
    # The limit the user raised, not the one the job was submitted with.
    assert "gpt-4o-mini: 500 RPM · 200K TPM · 4 RPD" in plain.stderr
    assert "4 of 4 requests used" in plain.stderr
    assert "of 2 requests" not in plain.stderr


def test_an_input_rewritten_with_the_same_bytes_is_not_changed(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(6))
    first = run_cli("submit", str(jobs), "--simulate", "--rpd", "2")
    assert first.code == 3, first.stderr
    data = jobs.read_bytes()
    jobs.write_bytes(data)  # a notebook cell run twice: same bytes, a new mtime
    st = jobs.stat()
    os.utime(jobs, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    again = run_cli("resume", _job_id(first.stderr), "--rpd", "0")
    assert again.code == 0, again.stderr
    assert "changed since" not in again.stderr


def test_an_input_edited_in_the_middle_is_still_changed(tmp_path: Path) -> None:
    """Same size, same first and last MiB, another byte between them: the full hash sees it."""
    rows = [{"id": f"q{i}", "prompt": f"{i:05d} " + "x" * 1000, "max_tokens": 5}
            for i in range(2500)]  # 2.5 MB: a middle that neither sampled MiB covers
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    first = run_cli("submit", str(jobs), "--simulate", "--rpd", "1", "-q")
    assert first.code == 3, first.stderr
    data = bytearray(jobs.read_bytes())
    middle = data.index(b'"01250 ') + 1
    assert 2**20 < middle < len(data) - 2**20
    data[middle:middle + 5] = b"99999"
    jobs.write_bytes(bytes(data))
    refused = run_cli("resume", _job_id(first.stderr))
    assert refused.code == 2, refused.stderr
    assert "its content changed" in refused.stderr


def test_a_limit_past_any_real_budget_is_a_usage_error_not_an_internal_one(
        tmp_path: Path) -> None:
    # 24 digits went into the manifest, which cannot hold an integer past 64 bits, and an
    # infinite --timeout into a whole number of milliseconds: exit 70, "This is a bug in
    # batchrun". An infinite --poll-max was saved as null.
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(6))
    first = run_cli("submit", str(jobs), "--simulate", "--rpd", "2")
    assert first.code == 3, first.stderr
    job = _job_id(first.stderr)
    huge = "999999999999999999999999"
    for args in (("submit", str(jobs), "-o", str(tmp_path / "b.jsonl"), "--simulate"),
                 ("resume", job)):
        for flag, value in (("--tpd", huge), ("--max-retries", huge), ("--timeout", "inf"),
                            ("--max-response-mb", "inf"), ("--poll-max", "inf")):
            run = run_cli(*args, flag, value)
            assert run.code == 2, (args, flag, run.stderr)
            assert flag in run.stderr and "internal error" not in run.stderr
    assert run_cli("resume", job, "--rpd", "6").code == 0

"""The files batchrun keeps: modes, atomic rewrites, and state that is damaged or unusable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from batchrun.files.checkpoint import OutputWriter, result_line
from batchrun.files.fsutil import atomic_write, write_bytes_atomic
from tests.helpers.cli import in_process, run_cli, simulate
from tests.helpers.jsonl import rows, write_jsonl


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> object:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_state_home_and_output_are_created_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str],
    umask_022: object,
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(2))
    run = simulate(capsys, jobs)
    assert run.code == 0, run.stderr
    home = Path(isolated_env["BATCHRUN_HOME"])
    assert mode(home) == 0o700
    assert mode(home / "jobs") == 0o700
    assert mode(tmp_path / "jobs.results.jsonl") == 0o600


def test_retry_failed_keeps_the_outputs_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], umask_022: object,
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id": "ok", "prompt": "x", "max_tokens": 5}\n{oops\n')
    out = tmp_path / "jobs.results.jsonl"
    assert simulate(capsys, jobs, "--on-bad-line", "skip").code == 1
    out.chmod(0o640)
    again = in_process(capsys, "resume", str(out), "--retry-failed", "-q")
    assert again.code == 1, again.stderr
    assert "Dropped 1 failed results" in again.stderr
    assert mode(out) == 0o640


def test_a_deleted_output_is_rebuilt_with_its_mode(tmp_path: Path, umask_022: object) -> None:
    out = tmp_path / "out.jsonl"
    writer = OutputWriter(out)
    line = result_line("a", 200, "req_1", {"ok": True}, None)
    writer.write(line)
    out.chmod(0o640)
    out.unlink()
    writer.check()
    writer.write(result_line("b", 200, "req_2", {"ok": True}, None))
    writer.close()
    assert mode(out) == 0o640
    assert out.read_bytes().startswith(line) and out.read_bytes().count(b"\n") == 2


def test_atomic_write_keeps_the_mode_or_makes_a_new_file_private(
    tmp_path: Path, umask_022: object
) -> None:
    (tmp_path / "d").mkdir()
    new = tmp_path / "d" / "new"
    write_bytes_atomic(new, b"one")
    assert new.read_bytes() == b"one" and mode(new) == 0o600
    new.chmod(0o644)
    write_bytes_atomic(new, b"two")
    assert new.read_bytes() == b"two" and mode(new) == 0o644
    assert sorted(p.name for p in new.parent.iterdir()) == ["new"]


def test_atomic_write_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    target = tmp_path / "d" / "target"
    target.write_bytes(b"old")

    def fail(f: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["target"]


def test_a_damaged_output_of_a_job_is_exit_5_and_left_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(3))
    out = tmp_path / "jobs.results.jsonl"
    assert simulate(capsys, jobs, "--tpd", "40").code == 3
    damaged = out.read_bytes() + b"something else wrote here\n"
    out.write_bytes(damaged)
    run = in_process(capsys, "resume", str(out), "-q")
    assert run.code == 5, run.stderr
    assert f"{out} is damaged: line" in run.stderr and "something else" in run.stderr
    assert out.read_bytes() == damaged


def manifests(isolated_env: dict[str, str]) -> Path:
    return Path(isolated_env["BATCHRUN_HOME"]) / "jobs"


@pytest.mark.parametrize("damage", ["not json", "no options", "options lack keys", "total is text",
                                    "done is null", "concurrency is text", "bad overrides"])
def test_a_damaged_manifest_is_skipped_and_named_and_its_job_says_how_to_recover(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str],
    damage: str,
) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", rows(3))
    bad = write_jsonl(tmp_path / "bad.jsonl", rows(3))
    assert simulate(capsys, bad).code == 0
    # paused: something to resume (not answered from the cache the same rows of `bad` filled)
    assert simulate(capsys, good, "--tpd", "40", "--no-cache").code == 3
    [path] = manifests(isolated_env).glob("bad-*.json")
    data = orjson.loads(path.read_bytes())
    if damage == "not json":
        path.write_bytes(b'{"job_id": "bad-')
    elif damage == "no options":
        del data["options"]
        path.write_bytes(orjson.dumps(data))
    elif damage == "total is text":
        data["total"] = "many"
        path.write_bytes(orjson.dumps(data))
    elif damage == "done is null":
        data["done"] = None
        path.write_bytes(orjson.dumps(data))
    elif damage == "concurrency is text":
        data["options"]["concurrency"] = "lots"
        path.write_bytes(orjson.dumps(data))
    elif damage == "bad overrides":
        data["options"]["overrides"] = {"rpm": "fast"}
        path.write_bytes(orjson.dumps(data))
    else:
        data["options"] = {"model": "gpt-4o-mini"}
        data["state"] = "interrupted"
        path.write_bytes(orjson.dumps(data))

    status = in_process(capsys, "status")
    assert status.code == 0, status.stderr
    assert "good-" in status.stdout
    assert f"skipped the damaged job manifest {path}" in status.stderr
    as_json = in_process(capsys, "status", "--json")
    assert as_json.code == 0
    assert [j["job_id"][:5] for j in orjson.loads(as_json.stdout)["jobs"]] == ["good-"]

    bare = in_process(capsys, "resume", "-q")
    assert "Resuming good-" in bare.stderr and str(path) in bare.stderr
    assert bare.code == 3, bare.stderr

    that = in_process(capsys, "resume", path.stem)
    assert that.code == 5, that.stderr
    assert f"the job manifest {path} is damaged" in that.stderr
    assert "move it aside" in that.stderr and "batchrun submit" in that.stderr
    assert "Traceback" not in that.stderr


def test_a_damaged_ledger_says_how_to_recover_and_exits_5(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    ledger = Path(isolated_env["BATCHRUN_HOME"]) / "ledger.sqlite3"
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"this is not a database, it is a grocery list" * 100)
    run = run_cli("status")
    assert run.code == 5, run.stderr
    assert f"the usage ledger {ledger} is damaged" in run.stderr
    assert f"mv {ledger} {ledger}.damaged" in run.stderr
    assert "writable" not in run.stderr  # it is not a permission problem


def test_a_damaged_input_check_cache_is_read_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str]
) -> None:
    """`checked` only saves reading the input twice: damaged, it is dropped, not fatal."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(3))
    assert simulate(capsys, jobs, "--tpd", "40").code == 3
    [path] = manifests(isolated_env).glob("jobs-*.json")
    for damage in ([1], {"size": 1}, {"total": 3, "bad_total": 0, "models": {}, "bad": [[1]],
                                      "duplicates": [], "unnamed": []}):
        data = orjson.loads(path.read_bytes())
        data["checked"] = damage
        path.write_bytes(orjson.dumps(data))
        status = in_process(capsys, "status", "--json")
        assert status.code == 0, status.stderr
        assert [j["job_id"] for j in orjson.loads(status.stdout)["jobs"]] == [path.stem]
        again = in_process(capsys, "resume", path.stem, "--tpd", "0", "-q")
        assert again.code == 0, again.stderr
        data = orjson.loads(path.read_bytes())
        data["state"] = "paused-daily"  # to resume it again with the next kind of damage
        path.write_bytes(orjson.dumps(data))


def test_a_ledger_row_that_is_not_a_count_is_named_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str]
) -> None:
    import sqlite3

    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(2))
    assert simulate(capsys, jobs, "--tpd", "100000").code == 0
    ledger = Path(isolated_env["BATCHRUN_HOME"]) / "ledger.sqlite3"
    db = sqlite3.connect(ledger)
    db.execute("UPDATE usage SET tokens = 'lots'")
    db.commit()
    db.close()
    status = in_process(capsys, "status")
    assert status.code == 5, status.stderr
    assert "is damaged (tokens of gpt-4o-mini on" in status.stderr and "'lots'" in status.stderr
    assert "Move it aside" in status.stderr


def test_reading_a_damaged_ledger_row_is_a_clear_error(tmp_path: Path) -> None:
    import sqlite3

    from batchrun.errors import StateError
    from batchrun.files.ledger import Ledger, Scope

    path = tmp_path / "ledger.sqlite3"
    scope = Scope("h", "k", "m")
    book = Ledger(path)
    assert book.reserve(scope, 10, 100, 0)
    book.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE usage SET tokens = 'lots'")
    db.commit()
    db.close()
    book = Ledger(path)
    with pytest.raises(StateError, match=r"is damaged .*not numbers.*Move it aside"):
        book.usage(scope)
    book.close()


def test_a_ledger_that_fails_at_the_end_still_records_how_the_job_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun.errors import StateError
    from batchrun.files.ledger import Ledger

    def full_disk(self: Ledger) -> None:
        raise StateError(f"the usage ledger {self.path} could not record the last settlements")

    real_flush = Ledger.flush
    monkeypatch.setattr(Ledger, "flush", full_disk)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(3))
    run = simulate(capsys, jobs, "--tpd", "100000")
    assert run.code == 5 and "could not record the last settlements" in run.stderr
    monkeypatch.setattr(Ledger, "flush", real_flush)
    status = in_process(capsys, "status", "--json")
    [job] = orjson.loads(status.stdout)["jobs"]
    assert job["state"] == "done" and job["done"] == 3  # not left "running" (shown as crashed)


def test_an_io_error_preparing_the_output_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from batchrun.errors import StateError
    from batchrun.files import checkpoint

    out = tmp_path / "out.jsonl"
    out.write_bytes(result_line("a", 200, "", {"choices": []}, None) + b'{"id": "torn')

    def failing(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint.os, "ftruncate", failing)
    with pytest.raises(StateError, match=r"cannot prepare the output .*Input/output error"):
        OutputWriter(out)


@pytest.mark.parametrize("damage", ["a fifo", "a link to /dev/zero", "a job_id that escapes"])
def test_a_manifest_that_is_not_a_plain_file_of_its_own_is_skipped_not_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: dict[str, str],
    damage: str,
) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", rows(2))
    assert simulate(capsys, good).code == 0
    jobs_dir = manifests(isolated_env)
    bad = jobs_dir / "zz-000000.json"
    victim = jobs_dir.parent.parent / "victim.json"
    if damage == "a fifo":
        os.mkfifo(bad)
    elif damage == "a link to /dev/zero":
        bad.symlink_to("/dev/zero")
    else:
        [path] = jobs_dir.glob("good-*.json")
        data = orjson.loads(path.read_bytes())
        data["job_id"], data["state"] = "../../victim", "interrupted"
        bad.write_bytes(orjson.dumps(data))
    status = in_process(capsys, "status")  # would hang or grow without bound if it read it
    assert status.code == 0, status.stderr
    assert f"skipped the damaged job manifest {bad}" in status.stderr
    assert "good-" in status.stdout
    resumed = in_process(capsys, "resume", "-q")
    assert resumed.code == 0, resumed.stderr
    assert not victim.exists()  # nothing written outside $BATCHRUN_HOME

"""Pay once (#25): identical lines are sent once, an answer is not bought twice across jobs, and
every id still gets its own line with the answer to its own body."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

import batchrun
from batchrun.simulator import Faults, SimConfig, reply_text
from tests.helpers.cli import FAKE_KEY, REPO, UNLIMITED, run_cli, submit
from tests.helpers.endpoints import two_keyed_endpoints
from tests.helpers.jsonl import body_as_sent, read_results, write_jsonl
from tests.helpers.sim import RunningSim


def with_duplicates(n: int, distinct: int, prefix: str = "q") -> list[dict[str, Any]]:
    """n lines with ids of their own, of which only `distinct` bodies differ: the rest repeat
    earlier ones (spread through the file, as a user's file repeats them)."""
    return [{"id": f"{prefix}{i}", "prompt": f"Question number {i % distinct}",
             "max_tokens": 10} for i in range(n)]


def assert_each_answers_its_own_body(rows: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    results = read_results(out)
    assert len(results) == len(rows)
    for row in rows:
        line = results[row["id"]]
        assert line["error"] is None, line
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == reply_text(body_as_sent(row))
    return results


def test_identical_lines_are_sent_once_and_each_id_gets_its_own_line(
        sim: RunningSim, tmp_path: Path) -> None:
    rows = with_duplicates(300, 245)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, *UNLIMITED, "--json")
    assert run.code == 0, run.stderr
    assert sim.stats.received == 245
    results = assert_each_answers_its_own_body(rows, tmp_path / "jobs.results.jsonl")
    assert sum(line.get("cached", False) for line in results.values()) == 55
    summary = orjson.loads(run.stdout)
    assert summary["requests"]["ok"] == 300
    assert summary["cache"]["answered"] == 55 and summary["cache"]["saved_usd"] > 0


def test_a_rerun_with_new_ids_and_30_changed_lines_sends_the_30(
        sim: RunningSim, tmp_path: Path) -> None:
    first = [{"id": f"a{i}", "prompt": f"Question number {i}", "max_tokens": 10}
             for i in range(300)]
    assert submit(sim, write_jsonl(tmp_path / "first.jsonl", first), *UNLIMITED).code == 0
    assert sim.stats.received == 300
    again = [{"id": f"b{i}", "prompt": f"Question number {i}" + (" again" if i % 10 == 0
                                                                 else ""), "max_tokens": 10}
             for i in range(300)]
    run = submit(sim, write_jsonl(tmp_path / "again.jsonl", again), *UNLIMITED)
    assert run.code == 0, run.stderr
    assert sim.stats.received == 330
    assert_each_answers_its_own_body(again, tmp_path / "again.results.jsonl")
    assert "270 from the cache (saved $" in run.stdout
    assert "[300/300] done" in run.stderr and "· 270 from cache ·" in run.stderr


def test_no_cache_sends_every_line_and_stores_nothing(sim: RunningSim, tmp_path: Path) -> None:
    rows = with_duplicates(300, 245)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    assert submit(sim, jobs, *UNLIMITED, "--no-cache").code == 0
    assert sim.stats.received == 300
    results = assert_each_answers_its_own_body(rows, tmp_path / "jobs.results.jsonl")
    assert not any("cached" in line for line in results.values())
    # Nothing was stored: the same lines into another output are all sent again.
    assert submit(sim, jobs, *UNLIMITED, "-o", str(tmp_path / "two.jsonl")).code == 0
    assert sim.stats.received == 300 + 245


def test_cache_refresh_sends_every_line_and_the_next_job_gets_the_new_answers(
        sim: RunningSim, tmp_path: Path) -> None:
    rows = with_duplicates(20, 20)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    assert submit(sim, jobs, *UNLIMITED).code == 0
    assert submit(sim, jobs, *UNLIMITED, "--cache-refresh", "-o",
                  str(tmp_path / "two.jsonl")).code == 0
    assert sim.stats.received == 40
    assert submit(sim, jobs, *UNLIMITED, "-o", str(tmp_path / "three.jsonl")).code == 0
    assert sim.stats.received == 40
    three = read_results(tmp_path / "three.jsonl")
    two = read_results(tmp_path / "two.jsonl")
    assert all(three[cid]["response"]["body"] == two[cid]["response"]["body"] for cid in two)


def test_cache_refresh_and_no_cache_together_are_refused(sim: RunningSim,
                                                         tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", with_duplicates(3, 3))
    run = submit(sim, jobs, "--no-cache", "--cache-refresh")
    assert run.code == 2
    assert "--cache-refresh" in run.stderr and "--no-cache" in run.stderr
    assert "Traceback" not in run.stderr and sim.stats.received == 0


def test_a_leader_that_fails_for_good_gives_each_copy_its_failure(
        sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(faults=Faults(error_500=1.0)))
    rows = with_duplicates(12, 3)  # 3 distinct bodies, each 4 times
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, *UNLIMITED, "--max-retries", "0")
    assert run.code == 1, run.stderr
    assert sim.stats.received == 3
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert len(results) == 12
    for line in results.values():
        assert line["error"] is not None and line["response"]["status_code"] == 500
        assert "cached" not in line
    # Failures are never stored, and --retry-failed sends each distinct request once again.
    sim.config.faults.error_500 = 0.0
    again = run_cli("resume", str(tmp_path / "jobs.results.jsonl"), "--retry-failed",
                    env={"OPENAI_API_KEY": FAKE_KEY})
    assert again.code == 0, again.stderr
    assert sim.stats.received == 3 + 3
    assert_each_answers_its_own_body(rows, tmp_path / "jobs.results.jsonl")


def test_the_python_api_run_twice_pays_once(sim: RunningSim,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    asked = [{"id": f"p{i}", "prompt": f"Question number {i}", "max_tokens": 10}
             for i in range(10)]
    first = batchrun.run(asked, base_url=sim.base_url, name="first")
    second = batchrun.run(asked, base_url=sim.base_url, name="second")
    assert sim.stats.received == 10
    assert [a["response"]["body"] for a in first] == [a["response"]["body"] for a in second]
    assert all(a["cached"] for a in second)
    assert second.job.summary is not None
    assert second.job.summary["cache"]["answered"] == 10
    off = batchrun.run(asked, base_url=sim.base_url, name="third", cache=False)
    assert sim.stats.received == 20 and not any("cached" in a for a in off)


def test_resume_keeps_no_cache(sim: RunningSim, tmp_path: Path) -> None:
    rows = with_duplicates(30, 10)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    paused = submit(sim, jobs, "--no-cache", "--tpd", "150", "--concurrency", "1")
    assert paused.code == 3, paused.stderr
    sent = sim.stats.received
    done = len(read_results(tmp_path / "jobs.results.jsonl"))
    resumed = run_cli("resume", str(tmp_path / "jobs.results.jsonl"), "--tpd", "0",
                      env={"OPENAI_API_KEY": FAKE_KEY})
    assert resumed.code == 0, resumed.stderr
    assert sim.stats.received == sent + 30 - done


# A kill -9 in the moment between an answer stored and its line written: the process is killed
# by its own first output write, after the answer was put in the cache (the engine's order).
# The server's latency (0.3 s) is past the local cache's write interval, so the put that comes
# before the kill is on disk (files.cachedb: puts wait in memory up to FLUSH_S).
KILLED_AT_FIRST_WRITE = """
import os, signal, sys
from batchrun.files import checkpoint
def write(self, line):
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint.OutputWriter.write = write
from batchrun.cli.commands import run
sys.exit(run(sys.argv[1:]))
"""


def test_a_kill_between_the_cache_and_the_output_costs_nothing_on_resume(
        sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(latency_s=0.3))
    rows = with_duplicates(3, 3)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    env = {**os.environ, "OPENAI_API_KEY": FAKE_KEY}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_FIRST_WRITE, "submit", str(jobs), "--base-url",
         sim.base_url, *UNLIMITED, "--concurrency", "1", "-q"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    assert sim.stats.received == 1
    assert (tmp_path / "jobs.results.jsonl").read_bytes() == b""
    resumed = run_cli("resume", str(tmp_path / "jobs.results.jsonl"), "--force",
                      env={"OPENAI_API_KEY": FAKE_KEY})
    assert resumed.code == 0, resumed.stderr
    assert sim.stats.received == 3  # the one answered before the kill was not sent again
    results = assert_each_answers_its_own_body(rows, tmp_path / "jobs.results.jsonl")
    assert results["q0"]["cached"] is True


@pytest.mark.parametrize("word", ["--cache", "--no-cache", "--cache-refresh"])
def test_help_names_the_cache_options(word: str) -> None:
    for command in ("submit", "resume"):
        shown = run_cli(command, "--help", env={"COLUMNS": "200"})
        assert word in shown.stdout


def test_via_batch_uploads_only_the_distinct_lines_the_cache_has_not_answered(
        sim: RunningSim, tmp_path: Path) -> None:
    known = [{"id": f"k{i}", "prompt": f"Question number {i}", "max_tokens": 10}
             for i in range(10)]
    assert submit(sim, write_jsonl(tmp_path / "known.jsonl", known), *UNLIMITED).code == 0
    # 10 answered before (new ids), then 20 lines of 15 distinct new bodies.
    rows = [{**row, "id": f"b{i}"} for i, row in enumerate(known)] + [
        {"id": f"n{i}", "prompt": f"New question {i % 15}", "max_tokens": 10}
        for i in range(20)]
    run = submit(sim, write_jsonl(tmp_path / "jobs.jsonl", rows), "--via", "batch",
                 "--poll-max", "1", "--json")
    assert run.code == 0, run.stderr
    assert sum(sim.stats.batch.runs.values()) == 15
    results = assert_each_answers_its_own_body(rows, tmp_path / "jobs.results.jsonl")
    assert sum(line.get("cached", False) for line in results.values()) == 10 + 5
    assert orjson.loads(run.stdout)["cache"]["answered"] == 15
    # What the batches answered is stored: a sync job of the same lines sends nothing.
    sent = sim.stats.received
    again = submit(sim, write_jsonl(tmp_path / "again.jsonl", rows), *UNLIMITED)
    assert again.code == 0, again.stderr
    assert sim.stats.received == sent


def test_with_endpoints_an_answer_is_stored_under_the_endpoint_that_gave_it(
        tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, conf = two_keyed_endpoints(tmp_path, sim_factory, monkeypatch)
    rows = with_duplicates(40, 40)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    first = run_cli("submit", str(jobs), "-o", str(tmp_path / "one.jsonl"), "--endpoints",
                    str(conf), "-q")
    assert first.code == 0, first.stderr
    by_a, by_b = a.stats.ok, b.stats.ok
    assert by_a > 0 and by_b > 0 and by_a + by_b == 40
    # Every key of the endpoints file is the user's own: each one's answers are looked up.
    again = run_cli("submit", str(jobs), "-o", str(tmp_path / "two.jsonl"), "--endpoints",
                    str(conf), "-q")
    assert again.code == 0, again.stderr
    assert a.stats.received + b.stats.received == 40
    # Endpoint b alone, with its own key, finds only what b answered.
    alone = run_cli("submit", str(jobs), "-o", str(tmp_path / "three.jsonl"), "--base-url",
                    b.base_url, "--api-key-env", "KEY_B", *UNLIMITED, "-q")
    assert alone.code == 0, alone.stderr
    assert b.stats.received == by_b + by_a
    assert_each_answers_its_own_body(rows, tmp_path / "three.jsonl")

"""`batchrun report`: a job's timeline as the user gets it, checked against what the server saw:
its 429s, a kill -9 and a resume, the Batch API's states, jobs it cannot find."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

import batchrun
from batchrun.files.jobstore import JobStore, job_id_for
from batchrun.report.timeline import timeline_path
from batchrun.simulator import BatchConfig, SimConfig, SimLimits
from tests.helpers.cli import FAKE_KEY, REPO, run_cli, submit, wait_for
from tests.helpers.jsonl import count_lines, read_results, write_jsonl


def report(ref: Path | str) -> dict[str, Any]:
    run = run_cli("report", str(ref), "--json")
    assert run.code == 0, run.stderr
    return orjson.loads(run.stdout)  # type: ignore[no-any-return]


def total(doc: dict[str, Any], name: str) -> int:
    return sum(row[name] for row in doc["series"])


def test_the_series_add_up_to_what_the_server_saw(sim_factory: Any, tmp_path: Path) -> None:
    # The server allows a tenth of what the client was told: 429s are certain.
    sim = sim_factory(SimConfig(SimLimits(rpm=1200, window_s=1.0)))
    rows = [{"id": f"m{i}", "prompt": f"q{i}", "max_tokens": 5} for i in range(60)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--rpm", "12000", "--tpm", "0", "--json")
    assert run.code == 0, run.stderr
    doc = report(tmp_path / "jobs.results.jsonl")
    assert sim.stats.rate_limited > 0
    assert total(doc, "sent") == sim.stats.received
    assert total(doc, "ok") == sim.stats.statuses[200] == 60
    assert total(doc, "rate_limited") == sim.stats.statuses[429] == sim.stats.rate_limited
    assert total(doc, "rate_limited") == (total(doc, "rate_limited_minute")
                                          + total(doc, "rate_limited_day")
                                          + total(doc, "too_large"))
    summary = orjson.loads(run.stdout)
    assert total(doc, "tokens") == summary["tokens"]["input"] + summary["tokens"]["output"]
    assert [s["ended"] for s in doc["sessions"]] == ["done"]
    assert doc["job"]["limits"]["gpt-4o-mini"]["rpm"] == 12000
    assert 0 < max(row["rate_rpm"] for row in doc["series"]) <= 12000  # the engine's Paced
    assert doc["summary"]["rate_limited"] == sim.stats.rate_limited
    assert abs(sum(part["share"] for part in doc["time"]) - 1.0) < 0.02
    assert doc["sentence"].endswith(".")
    assert batchrun.report(str(tmp_path / "jobs.results.jsonl")) == doc  # the Python API


def test_report_writes_one_html_file_beside_the_output(sim: Any, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi", "max_tokens": 5}])
    assert submit(sim, jobs, "-q").code == 0
    run = run_cli("report", str(tmp_path / "jobs.results.jsonl"))
    assert run.code == 0, run.stderr
    page = tmp_path / "jobs.results.report.html"
    assert run.stdout.strip() == str(page)
    assert page.read_text().startswith("<!doctype html>")
    chosen = tmp_path / "elsewhere.html"
    job_id = report(tmp_path / "jobs.results.jsonl")["job"]["id"]
    assert run_cli("report", job_id, "-o", str(chosen)).code == 0
    assert chosen.read_text() == page.read_text()


def test_a_killed_then_resumed_job_has_two_sessions(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(latency_s=0.05))
    rows = [{"id": f"k{i}", "prompt": f"q{i}", "max_tokens": 5} for i in range(60)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": FAKE_KEY}
    # 240 a minute: four answers a second, so the seconds a kill -9 may lose are few answers.
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "--base-url", sim.base_url,
         "--rpm", "240", "--tpm", "0", "--rpd", "0", "--tpd", "0", "-q"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: out.exists() and count_lines(out) >= 20)
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    written = count_lines(out)
    resumed = run_cli("resume", str(out), env={"OPENAI_API_KEY": FAKE_KEY})
    assert resumed.code == 0, resumed.stderr
    assert len(read_results(out)) == 60
    doc = report(out)
    first, second = doc["sessions"]
    assert (first["ended"], second["ended"]) == ("killed", "done")
    assert killed_at - 3 <= first["end"] <= killed_at <= second["start"] + 1
    before = sum(r["ok"] for r in doc["series"] if r["t"] <= first["end"])
    # Lines still in the writer's buffer died with the process (and were asked again), so the
    # first session may count more answers than the output kept, never fewer than ~2 s less.
    assert before >= written - 8
    answered = sim.stats.statuses[200]
    assert answered - 8 <= total(doc, "ok") <= answered


def test_a_batch_api_job_shows_its_parts_states(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(batch=BatchConfig(seconds=1.0)))
    jobs = write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"b{i}", "prompt": f"q{i}", "max_tokens": 5} for i in range(20)])
    run = submit(sim, jobs, "--via", "batch", "--poll-max", "1", "-q")
    assert run.code == 0, run.stderr
    doc = report(tmp_path / "jobs.results.jsonl")
    [part] = doc["batch_parts"]
    states = [s["state"] for s in part["states"]]
    assert part["requests"] == 20 and part["batch_id"].startswith("batch_")
    assert states[-2:] == ["completed", "collected"] and "in_progress" in states
    assert [s["t"] for s in part["states"]] == sorted(s["t"] for s in part["states"])
    assert total(doc, "ok") == 20 and doc["job"]["via"] == "batch"
    assert "waiting for the Batch API" in [t["what"] for t in doc["time"]]


def test_an_unknown_job_is_a_clear_message() -> None:
    run = run_cli("report", "no-such-job", "--json")
    assert run.code == 2
    assert "no job 'no-such-job'" in run.stderr and "Traceback" not in run.stderr


def test_a_job_without_a_timeline_says_so_and_gives_what_its_manifest_knows(
        sim: Any, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi", "max_tokens": 5}])
    assert submit(sim, jobs, "-q").code == 0
    store = JobStore()
    [manifest] = store.all()
    timeline_path(store.dir, manifest.job_id).unlink()  # as a job from before timelines
    run = run_cli("report", manifest.job_id, "--json")
    assert run.code == 5
    assert "has no timeline" in run.stderr and "Traceback" not in run.stderr
    doc = orjson.loads(run.stdout)
    assert (doc["recorded"], doc["series"], doc["summary"]["ok"]) == (False, [], 1)


def test_a_job_forgotten_and_submitted_again_reports_only_its_new_run(
        sim: Any, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "q"}])
    out = tmp_path / "jobs.results.jsonl"
    assert submit(sim, jobs, "-q").code == 0
    job_id = report(out)["job"]["id"]
    assert run_cli("forget", str(out)).code == 0
    assert not timeline_path(JobStore().dir, job_id).exists()
    out.unlink()
    assert submit(sim, jobs, "-q").code == 0  # the same input and output: the same job id
    doc = report(out)
    assert doc["job"]["id"] == job_id
    assert [s["ended"] for s in doc["sessions"]] == ["done"]
    assert total(doc, "ok") + total(doc, "cached") == 1  # (the response cache answers it)


def test_json_with_o_is_refused_rather_than_o_ignored(sim: Any, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "q"}])
    assert submit(sim, jobs, "-q").code == 0
    chosen = tmp_path / "doc.json"
    run = run_cli("report", str(tmp_path / "jobs.results.jsonl"), "--json", "-o", str(chosen))
    assert run.code == 2
    assert "--json" in run.stderr and "-o" in run.stderr
    assert not chosen.exists()


def test_a_timeline_that_cannot_be_written_does_not_stop_the_job(
        sim: Any, tmp_path: Path) -> None:
    # The timeline is a record for the report, not the checkpoint: the output and the manifest
    # say what was done, so a job must not die for it (a full disk shows as a gap in it).
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": f"r{i}", "prompt": f"q{i}"}
                                                 for i in range(5)])
    out = tmp_path / "jobs.results.jsonl"
    store = JobStore()
    store.dir.mkdir(parents=True, exist_ok=True)
    blocked = timeline_path(store.dir, job_id_for(jobs, out))
    blocked.mkdir()  # every open of it for writing fails
    run = submit(sim, jobs, "--json")
    assert run.code == 0, run.stderr
    assert orjson.loads(run.stdout)["state"] == "done"
    assert len(read_results(out)) == 5
    # ...and its report says the timeline cannot be read, not "internal error" (exit 70).
    unread = run_cli("report", str(out))
    assert unread.code == 5, unread.stderr
    assert f"cannot read the timeline {blocked}: Is a directory" in unread.stderr


def test_answers_from_the_response_cache_are_cached_not_ok_and_bill_no_tokens(
        sim: Any, tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "prompt": f"q{i}", "max_tokens": 5} for i in range(3)]
    first = write_jsonl(tmp_path / "first.jsonl", rows)
    assert submit(sim, first, "-q").code == 0
    asked = sim.stats.received
    again = write_jsonl(tmp_path / "again.jsonl", rows)  # the same lines: the cache answers
    assert submit(sim, again, "-q").code == 0
    assert sim.stats.received == asked  # nothing sent
    doc = report(tmp_path / "again.results.jsonl")
    assert [total(doc, k) for k in ("cached", "ok", "sent", "tokens", "tokens_charged")] == [
        3, 0, 0, 0, 0]
    assert (doc["summary"]["cached"], doc["summary"]["tokens"]) == (3, 0)

"""`--state redis://…` through the CLI: a Redis with a password, Redis down or restarted mid-run,
and the URLs batchrun refuses. The credentials in the URL never show anywhere."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.simulator import SimConfig, SimLimits
from tests.helpers.cli import FAKE_KEY, everything_shown, run_cli, wait_for
from tests.helpers.jsonl import prompts, read_results, write_jsonl
from tests.helpers.redis_server import RedisServer
from tests.helpers.sim import RunningSim

ENV = {"OPENAI_API_KEY": FAKE_KEY}
PASSWORD = "s3cret-Redis-PW-4711"


def test_a_redis_with_a_password_is_used_and_the_password_never_shown(
        sim: RunningSim, redis_factory: type[RedisServer], tmp_path: Path,
        isolated_env: dict[str, str]) -> None:
    redis = redis_factory(password=PASSWORD).start()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(20))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--state", redis.url,
                  "--rpd", "1000", "--rpm", "60000", env=ENV)
    assert run.code == 0, run.stderr
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 20
    status = run_cli("status", "--state", redis.url, env=ENV)  # the usage of the key it holds
    assert status.code == 0
    assert f"Shared state: redis://127.0.0.1:{redis.port}/0" in status.stdout
    assert "requests by host today" in status.stdout and "(20)" in status.stdout
    usage = orjson.loads(run_cli("status", "--json",
                                 env={**ENV, "BATCHRUN_STATE": redis.url}).stdout)
    assert [(u["model"], u["requests"], u["rpd"]) for u in usage["usage"]] == [
        ("gpt-4o-mini", 20, 1000)]
    estimate = run_cli("estimate", str(jobs), "--state", redis.url, "--json",
                       env={**ENV, "OPENAI_BASE_URL": sim.base_url})
    assert estimate.code == 0, estimate.stderr
    [model] = orjson.loads(estimate.stdout)["models"]
    used = model["used_today"]  # from Redis: every host's usage
    assert (used["requests"], used["known"]) == (20, True)
    manifest = next(Path(isolated_env["BATCHRUN_HOME"]).rglob("*.json"))
    assert orjson.loads(manifest.read_bytes())["options"]["state"] == \
        f"redis://127.0.0.1:{redis.port}/0"
    wrong = run_cli("submit", str(jobs), "-o", str(tmp_path / "b.jsonl"), "--base-url",
                    sim.base_url, "--state", redis.url.replace(PASSWORD, "wrong-" + PASSWORD),
                    env=ENV)
    assert wrong.code == 5
    assert f"The shared state at redis://127.0.0.1:{redis.port}/0 is unavailable" in wrong.stderr
    shown = everything_shown(Path(isolated_env["BATCHRUN_HOME"]), run, status, estimate,
                              wrong)
    assert PASSWORD not in shown
    assert sim.stats.received == 20  # the refused run sent nothing


@pytest.mark.parametrize("cache", ["--no-cache", "--cache"])
def test_redis_stopped_mid_run_drains_exits_5_and_resume_finishes_exactly_once(
        sim_factory: Any, redis_factory: type[RedisServer], tmp_path: Path, cache: str) -> None:
    sim = sim_factory(SimConfig(SimLimits(rpm=6_000), latency_s=0.05))
    redis = redis_factory().start()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(120))
    args = ("--base-url", sim.base_url, "--state", redis.url)

    def stop_redis() -> None:
        wait_for(lambda: sim.stats.received >= 20)
        redis.stop()

    stopper = threading.Thread(target=stop_redis)
    stopper.start()
    first = run_cli("submit", str(jobs), *args, "--rpm", "6000", cache, env=ENV)
    stopper.join()
    assert first.code == 5, first.stderr
    if cache == "--no-cache":  # with the cache there, the response cache may say it first
        assert f"redis://127.0.0.1:{redis.port}/0 is unavailable" in first.stderr
        assert "never falls back to local limits" in first.stderr
    assert "Once it answers again, continue with: batchrun resume" in first.stderr
    written = read_results(tmp_path / "jobs.results.jsonl")
    # Every request that reached the server was finished and written.
    assert 20 <= len(written) == sim.stats.received < 120
    redis.start()  # back, empty: a new epoch
    second = run_cli("resume", "--state", redis.url, env=ENV)
    assert second.code == 0, second.stderr
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 120
    assert set(sim.stats.attempts.values()) == {1}  # nothing sent twice


def test_redis_not_answering_at_the_start_sends_nothing(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    url = f"redis://user:{PASSWORD}@127.0.0.1:1/0"  # nothing listens on port 1
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--state", url, env=ENV)
    assert run.code == 5
    assert "The shared state at redis://127.0.0.1:1/0 is unavailable" in run.stderr
    assert PASSWORD not in run.stdout + run.stderr
    assert sim.stats.received == 0
    status = run_cli("status", env={"BATCHRUN_STATE": url})
    assert status.code == 5 and "redis://127.0.0.1:1/0 is unavailable" in status.stderr
    assert PASSWORD not in status.stdout + status.stderr


@pytest.mark.parametrize(("url", "words"), [
    ("memcached://localhost:11211", "is not a Redis URL"),
    ("redis://localhost:notaport/0", "is not a valid URL"),
    ("redis://localhost:6379/jobs", "Redis databases are numbers"),
    ("redis://localhost:6379/0?ssl_cert_reqs=maybe", "cannot be used"),
])
def test_a_state_url_batchrun_cannot_use_is_refused(url: str, words: str, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), "--state", url, env=ENV)
    assert run.code == 2 and words in run.stderr


def test_a_password_that_breaks_the_url_is_not_echoed(tmp_path: Path) -> None:
    # An unencoded '/' ends the authority early: the "password" would land in the path.
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), env={**ENV, "BATCHRUN_STATE":
                                            "redis://:pa/ss-SECRET@localhost:6379/0"})
    assert run.code == 2 and "redis://***@localhost:6379/0" in run.stderr
    assert "SECRET" not in run.stdout + run.stderr


def test_without_the_redis_client_the_message_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "redis" else real(name, *a))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), env={**ENV, "BATCHRUN_STATE": "redis://localhost/0"})
    assert run.code == 2
    assert "pip install 'batchrun[redis]'" in run.stderr


def test_resume_asks_again_for_credentials_it_never_stored() -> None:
    from batchrun.errors import InputError
    from batchrun.state import state_for_resume

    options = {"state": "redis://db.internal:6379/0", "state_credentials": True}
    with pytest.raises(InputError, match="needs credentials batchrun does not store"):
        state_for_resume(None, options)
    assert state_for_resume(None, {"state": None}) is None
    given = state_for_resume(f"redis://:{PASSWORD}@db.internal:6379/0", options)
    assert given is not None and given.shown == "redis://db.internal:6379/0"


@pytest.mark.slow
def test_a_redis_that_stops_answering_stops_admission_and_resume_finishes_the_job(
        sim_factory: Any, redis_factory: type[RedisServer], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from batchrun.state import _redis

    monkeypatch.setattr(_redis, "TIMEOUT_S", 0.3)  # "slow" is this slow, for the test
    sim = sim_factory(SimConfig(SimLimits(rpm=6_000), latency_s=0.05))
    redis = redis_factory().start()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(120))
    args = ("--base-url", sim.base_url, "--state", redis.url, "--rpm", "6000")
    assert redis._proc is not None
    pid = redis._proc.pid

    def pause_redis() -> None:
        wait_for(lambda: sim.stats.received >= 20)
        os.kill(pid, signal.SIGSTOP)

    pauser = threading.Thread(target=pause_redis)
    pauser.start()
    try:
        first = run_cli("submit", str(jobs), *args, env=ENV)
    finally:
        pauser.join()
        os.kill(pid, signal.SIGCONT)
    assert first.code == 5, first.stderr
    assert "is unavailable (TimeoutError" in first.stderr
    assert 20 <= len(read_results(tmp_path / "jobs.results.jsonl")) == sim.stats.received
    second = run_cli("resume", env=ENV)  # the URL (no credentials) is in the manifest
    assert second.code == 0, second.stderr
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 120
    assert set(sim.stats.attempts.values()) == {1}

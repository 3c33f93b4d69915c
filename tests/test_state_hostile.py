"""`--state redis://…` attacked as a hostile user and an operator would: credentials in every
place a Redis URL can hold them, keys batchrun leaves behind, hosts that disagree about the
limits, and Redis failing in the ways operators meet."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import FAKE_KEY, RunningSim, read_results, run_cli, write_jsonl
from tests.redis_server import RedisServer
from tests.test_resume import prompts
from tests.test_state_cli import _everything_shown

ENV = {"OPENAI_API_KEY": FAKE_KEY}
PASSWORD = "qs-Secret-PW-0815"


def test_a_password_in_the_urls_query_is_never_shown_or_stored(
        sim: RunningSim, redis_factory: type[RedisServer], tmp_path: Path,
        isolated_env: dict[str, str]) -> None:
    # redis-py also takes the password as ?password=: a URL an operator copies from a
    # connection string holds it there, not before the '@'.
    redis = redis_factory(password=PASSWORD).start()
    url = f"redis://127.0.0.1:{redis.port}/0?password={PASSWORD}"
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--state", url, env=ENV)
    assert run.code == 0, run.stderr
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 3
    status = run_cli("status", "--state", url)
    as_json = run_cli("status", "--json", "--state", url)
    wrong = run_cli("submit", str(jobs), "-o", str(tmp_path / "b.jsonl"), "--base-url",
                    sim.base_url, "--state", url.replace(PASSWORD, PASSWORD + "-wrong"),
                    env=ENV)
    assert (status.code, as_json.code, wrong.code) == (0, 0, 5), wrong.stderr
    assert f"redis://127.0.0.1:{redis.port}/0" in status.stdout + wrong.stderr
    assert PASSWORD not in _everything_shown(Path(isolated_env["BATCHRUN_HOME"]), run,
                                             status, as_json, wrong)
    # Never stored, so `resume` asks for it again rather than going without it.
    manifest = next(Path(isolated_env["BATCHRUN_HOME"]).rglob("*.json"))
    options = orjson.loads(manifest.read_bytes())["options"]
    assert (options["state"], options["state_credentials"]) == (
        f"redis://127.0.0.1:{redis.port}/0", True)


def test_a_refused_url_does_not_echo_a_password_in_its_query(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), env={**ENV, "BATCHRUN_STATE":
                                            f"redis://localhost:6379/jobs?password={PASSWORD}"})
    assert run.code == 2 and "names database 'jobs'" in run.stderr
    assert "redis://localhost:6379/jobs" in run.stderr and PASSWORD not in run.stderr

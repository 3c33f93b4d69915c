"""--metrics-port on a real job: Prometheus scrapes 127.0.0.1:N/metrics while the job runs and
reads what the server saw; the port is free again when the job ends; a missing extra or a port
in use is refused before anything is sent."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

import batchrun
from batchrun.errors import InputError
from tests.helpers.cli import FAKE_KEY, REPO, submit, wait_for
from tests.helpers.jsonl import count_lines, write_jsonl
from tests.helpers.metrics import Key, scrape, value
from tests.helpers.served_app import UNLIMITED, ServedApp, ok
from tests.helpers.sim import RunningSim

M = "gpt-4o-mini"
LANE = {"model": M, "endpoint": ""}
RPM_429 = ("Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): "
           "Limit 500, Used 500, Requested 1. Please try again in 20ms.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """q0 meets a per-minute 429 once, q1 a 400, q3's answer waits for `release`; it counts
    every status it answered."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.answered: Counter[int] = Counter()

    async def __call__(self, body: dict[str, Any], n: int) -> web.Response:
        prompt = body["messages"][0]["content"]
        if prompt == "Question 0" and n == 1:
            answer = web.json_response({"error": {
                "message": RPM_429, "type": "requests", "code": "rate_limit_exceeded"}},
                status=429)
        elif prompt == "Question 1":
            answer = web.json_response({"error": {
                "message": "Invalid value for 'temperature'.", "type": "invalid_request_error",
                "code": None}}, status=400)
        else:
            if prompt == "Question 3":
                await asyncio.to_thread(self.release.wait, 60)
            answer = ok(body, prompt=10, completion=5)
        self.answered[answer.status] += 1
        return answer


@pytest.fixture
def held() -> Iterator[tuple[Server, ServedApp]]:
    server = Server()
    with ServedApp(server) as app:
        yield server, app
        server.release.set()  # a failed test must not leave q3 waiting


def in_flight_one(found: dict[Key, float] | None) -> bool:
    return found is not None and (
        value(found, "batchrun_in_flight_requests", **LANE) == 1
        and sum(value(found, "batchrun_requests_total", **LANE, outcome=o)
                for o in ("ok", "failed")) == 3)


def test_prometheus_reads_what_the_server_saw_while_the_job_runs_and_the_port_closes_after(
    tmp_path: Path, held: tuple[Server, ServedApp],
) -> None:
    server, app = held
    jobs = write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"q{i}", "prompt": f"Question {i}"} for i in range(4)])
    port = free_port()
    job = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "--base-url", app.base_url,
         *UNLIMITED, "-q", "--json", "--metrics-port", str(port)],
        env={**os.environ, "OPENAI_API_KEY": FAKE_KEY}, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: in_flight_one(scrape(port)))  # q3 is held at the server
        found = scrape(port)
        assert found is not None
        assert value(found, "batchrun_http_attempts_total", **LANE) == app.received == 5
        assert value(found, "batchrun_requests_total", **LANE, outcome="ok") == \
            server.answered[200] == 2
        assert value(found, "batchrun_requests_total", **LANE, outcome="failed") == \
            server.answered[400] == 1
        assert value(found, "batchrun_rate_limited_total", **LANE, kind="minute") == \
            server.answered[429] == 1
        assert value(found, "batchrun_tokens_billed_total", **LANE, kind="input") == 2 * 10
        assert value(found, "batchrun_tokens_billed_total", **LANE, kind="output") == 2 * 5
        assert value(found, "batchrun_job_requests") == 4
        server.release.set()
        out, err = job.communicate(timeout=60)
    finally:
        job.kill()
        job.wait()
    assert job.returncode == 1, err  # q1 failed for good
    summary = orjson.loads(out)
    assert summary["requests"]["ok"] == 3
    assert (("batchrun_job_info", (("job_id", summary["job"]), ("state", "running"))) in found)
    assert scrape(port) is None  # nothing serves it any more


def test_without_the_metrics_extra_it_is_a_usage_error_and_nothing_is_sent(
    tmp_path: Path, sim: RunningSim, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "q0", "prompt": "hi"}])
    out = tmp_path / "out.jsonl"
    run = submit(sim, jobs, "-o", str(out), "-q", "--metrics-port", str(free_port()))
    assert run.code == 2
    assert "--metrics-port needs the prometheus_client library" in run.stderr
    assert "pip install 'batchrun[metrics]'" in run.stderr
    assert "Traceback" not in run.stderr
    assert sim.stats.received == 0 and count_lines(out) == 0
    with pytest.raises(InputError, match=r"batchrun\[metrics\]"):
        batchrun.submit(jobs, output=tmp_path / "api.jsonl", base_url=sim.base_url,
                        metrics_port=free_port())


def test_a_port_in_use_is_refused_with_its_reason_and_nothing_is_sent(
    tmp_path: Path, sim: RunningSim, monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "q0", "prompt": "hi"}])
    out = tmp_path / "out.jsonl"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = submit(sim, jobs, "-o", str(out), "-q", "--metrics-port", str(port))
        assert run.code == 2
        assert (f"--metrics-port {port}: cannot serve metrics on 127.0.0.1:{port}: another "
                "program is listening there. Give another port") in run.stderr
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        with pytest.raises(InputError, match="cannot serve metrics"):
            batchrun.submit(jobs, output=tmp_path / "api.jsonl", base_url=sim.base_url,
                            metrics_port=port)
    assert sim.stats.received == 0 and count_lines(out) == 0
    assert count_lines(tmp_path / "api.jsonl") == 0


def test_the_python_api_serves_while_the_job_runs_and_frees_the_port_when_it_returns(
    tmp_path: Path, held: tuple[Server, ServedApp], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In one Python process (a notebook) the server must end with the job, not with the
    process: the next job may want the same port."""
    server, app = held
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    jobs = write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"q{i}", "prompt": f"Question {i}"} for i in range(4)])
    port = free_port()
    ended: list[batchrun.Job] = []
    limits = dict.fromkeys(("rpm", "tpm", "rpd", "tpd"), 0)
    job = threading.Thread(target=lambda: ended.append(batchrun.submit(
        jobs, base_url=app.base_url, metrics_port=port, **limits)))
    job.start()
    try:
        wait_for(lambda: in_flight_one(scrape(port)))
    finally:
        server.release.set()
        job.join(60)
    assert [j.exit_code for j in ended] == [1]
    assert scrape(port) is None
    with socket.socket() as again:
        # as asyncio's servers bind (SO_REUSEADDR: the scrapes' closed connections may linger
        # in TIME_WAIT); a socket still listening there would refuse it all the same
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()

"""An attempt that never left this machine is not counted against the day (hostile round 2).

A refused connection, a DNS failure or a proxy refusing the tunnel sends nothing, so the server
counts nothing: batchrun must not either. Counting them used up the published 10,000 RPD that
batchrun holds itself to, and the charge count, on a flaky network with no request sent."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson

from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.jsonl import write_jsonl


def a_closed_port() -> int:
    """A loopback port with nothing listening: every connection to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unreachable_job(tmp_path: Path, *state: str) -> dict[str, object]:
    """Submit 20 requests to a closed port; the day's usage row `status` shows after it."""
    rows = [{"id": f"q{i}", "prompt": f"hello {i}", "max_tokens": 5} for i in range(20)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = run_cli("submit", str(jobs), "--base-url", f"http://127.0.0.1:{a_closed_port()}/v1",
                  "--max-retries", "2", "-q", *state, env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 5, run.stderr
    assert "Cannot reach 127.0.0.1" in run.stderr and "0 of 20 requests done" in run.stderr
    status = run_cli("status", "--json", *state, env={"OPENAI_API_KEY": FAKE_KEY})
    [usage] = orjson.loads(status.stdout)["usage"]
    return dict(usage)


def test_attempts_that_never_reached_the_server_leave_the_day_untouched(tmp_path: Path) -> None:
    usage = unreachable_job(tmp_path)
    assert (usage["requests"], usage["tokens"], usage["charge"]) == (0, 0, 0)


def test_nor_the_day_every_host_shares_in_redis(tmp_path: Path, redis_url: str) -> None:
    usage = unreachable_job(tmp_path, "--state", redis_url)
    assert (usage["requests"], usage["tokens"], usage["charge"]) == (0, 0, 0)

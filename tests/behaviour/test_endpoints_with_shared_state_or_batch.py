"""Several endpoints together with the shared Redis state, and several endpoints with the Batch
API (which sends through one endpoint, so it is refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.files.ledger import key_fingerprint, ledger_host
from batchrun.simulator import SimConfig, SimLimits
from tests.helpers.cli import run_cli
from tests.helpers.endpoints import KEY_A, KEY_B, openai, prompts, toml_file
from tests.helpers.jsonl import read_results, write_jsonl
from tests.helpers.redis_server import everything_stored


@pytest.fixture
def two_endpoints(tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch,
                  ) -> tuple[Any, Any, Path]:
    a = sim_factory(SimConfig(SimLimits(rpm=1200, window_s=1.0), latency_s=0.02,
                              api_key=KEY_A))
    b = sim_factory(SimConfig(SimLimits(rpm=2400, window_s=1.0), latency_s=0.02,
                              api_key=KEY_B))
    monkeypatch.setenv("KEY_A", KEY_A)
    monkeypatch.setenv("KEY_B", KEY_B)
    conf = toml_file(tmp_path / "endpoints.toml", openai("a", a.base_url, "KEY_A", 1200),
                     openai("b", b.base_url, "KEY_B", 2400))
    return a, b, conf


@pytest.mark.parametrize("via", ["batch", "auto"])
def test_endpoints_with_the_batch_api_is_a_usage_error_and_sends_nothing(
    via: str, tmp_path: Path, two_endpoints: tuple[Any, Any, Path],
) -> None:
    a, b, conf = two_endpoints
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    out = tmp_path / "out.jsonl"
    run = run_cli("submit", str(jobs), "-o", str(out), "--endpoints", str(conf), "--via", via)
    assert run.code == 2, run.stderr
    assert f"--via {via}" in run.stderr and "--endpoints" in run.stderr
    assert a.stats.received == b.stats.received == 0
    assert a.stats.batch.uploads == b.stats.batch.uploads == 0
    assert not out.exists()
    assert "No unfinished job" in run_cli("resume").stderr


def test_endpoints_with_redis_state_keep_each_endpoints_own_scope(
    tmp_path: Path, two_endpoints: tuple[Any, Any, Path], redis_url: str,
) -> None:
    a, b, conf = two_endpoints
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    out = tmp_path / "out.jsonl"
    run = run_cli("submit", str(jobs), "-o", str(out), "--endpoints", str(conf),
                  "--state", redis_url)
    assert run.code == 0, run.stderr
    assert len(read_results(out)) == 40
    assert a.stats.ok > 0 and b.stats.ok > 0 and a.stats.ok + b.stats.ok == 40
    # The endpoints' keys, found through $BATCHRUN_ENDPOINTS: the shared state shows their usage.
    status = run_cli("status", "--state", redis_url, "--json",
                     env={"BATCHRUN_ENDPOINTS": str(conf)})
    assert status.code == 0, status.stderr
    hosts = {row["host"]: row["requests"] for row in _usage(status.stdout)}
    assert hosts == {_host(a.base_url): a.stats.ok, _host(b.base_url): b.stats.ok}
    # Neither key, nor any part of it, in a key name or a value anyone with the Redis can read.
    stored = everything_stored(redis_url)
    assert len(stored) > 10 and any("|" in s for s in stored)  # the scopes were read
    for key in (KEY_A, KEY_B):
        secret = key.removeprefix("sk-test-")
        assert not any(secret[:12] in s or secret[-12:] in s for s in stored), key
        # nor its public fingerprint, which would tell another host whose counts are whose
        assert not any(key_fingerprint(key) in s for s in stored), key


def _usage(stdout: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = orjson.loads(stdout)["usage"]
    return rows


def _host(url: str) -> str:
    return ledger_host(url.split("//", 1)[1].split("/", 1)[0])

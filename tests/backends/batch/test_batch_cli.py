"""What a user sees of the Batch API path: --detach's message, status, resume's summary at
batch prices, cancel, estimate --via batch, a refused key's exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.backends.batch import entry as batch_entry
from batchrun.errors import ApiRefused
from tests.helpers.batch_fake import FakeBatchApi, Outcome
from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.jsonl import read_results, write_jsonl


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBatchApi:
    api = FakeBatchApi(steps=1)
    monkeypatch.setattr(batch_entry, "BatchClient", lambda *a, **k: api)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    return api


def jobs(tmp_path: Path, n: int = 3) -> Path:
    return write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"r{i}", "prompt": f"q {i}", "max_tokens": 5}
                        for i in range(1, n + 1)])


def submit(path: Path, *args: str) -> Any:
    return run_cli("submit", str(path), "--via", "batch", "--base-url",
                   "https://api.example.test/v1", "-o", str(path.with_suffix(".out")), *args)


def test_detach_then_status_then_resume(tmp_path: Path, fake: FakeBatchApi) -> None:
    fake.steps = 2  # still in progress when `status` looks; finished at resume's poll
    path = jobs(tmp_path)
    run = submit(path, "--detach")
    assert run.code == 0, run.stderr
    assert "submitted, not finished: 1 batch running on the server" in run.stdout
    job = run.stdout.split()[1]
    status = run_cli("status", job)
    assert "submitted" in status.stdout and "part 1  3 requests" in status.stdout
    assert "in progress" in status.stdout
    assert "batch_1" in status.stdout
    done = run_cli("resume", job, "--json")
    assert done.code == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["requests"]["ok"] == 3 and summary["state"] == "done"
    # 3 x (10 in, 5 out) of gpt-4o-mini at half the list price.
    assert summary["cost_usd"] == pytest.approx((30 * 0.15 + 15 * 0.60) / 1e6 / 2, abs=5e-7)
    assert len(read_results(path.with_suffix(".out"))) == 3


def test_cancel_then_resume_exits_1_with_the_rest_failed(tmp_path: Path,
                                                         fake: FakeBatchApi) -> None:
    fake.outcome = lambda n: Outcome(finish=2)
    path = jobs(tmp_path, 4)
    job = submit(path, "--detach").stdout.split()[1]
    run = run_cli("cancel", job)
    assert run.code == 0 and "Cancelled 1 batch of job" in run.stdout
    assert f"batchrun resume {job}" in run.stdout
    again = run_cli("resume", job)
    assert again.code == 1
    results = read_results(path.with_suffix(".out"))
    assert sorted(c for c, x in results.items() if x["error"] is None) == ["r1", "r2"]
    assert "--retry-failed" in again.stdout
    nothing = run_cli("cancel", job)
    assert nothing.code == 2 and "nothing to cancel" in nothing.stderr


def test_a_refused_key_exits_4(tmp_path: Path, fake: FakeBatchApi,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(path: Path, name: str) -> dict[str, Any]:
        raise ApiRefused("The API refused the key or the account: bad key (invalid_api_key, "
                         "HTTP 401). Check $OPENAI_API_KEY, the account's billing and quota.")

    monkeypatch.setattr(fake, "upload", refuse)
    run = submit(jobs(tmp_path))
    assert run.code == 4 and "invalid_api_key" in run.stderr
    assert FAKE_KEY not in run.stderr + run.stdout


def test_estimate_via_batch_shows_price_and_queue_rounds(tmp_path: Path) -> None:
    path = jobs(tmp_path, 10)
    run = run_cli("estimate", str(path), "--via", "batch", "--batch-queue-tokens", "40")
    assert run.code == 0, run.stderr
    assert "Batch API" in run.stdout and "half the list price" in run.stdout
    e = orjson.loads(run_cli("estimate", str(path), "--via", "batch", "--batch-queue-tokens",
                             "40", "--json").stdout)
    model = e["models"][0]
    assert model["batch"]["rounds"] == -(-model["prompt_tokens"] // 40) > 1


def test_status_of_a_detached_job_collects_what_has_finished(tmp_path: Path,
                                                             fake: FakeBatchApi) -> None:
    fake.outcome = lambda n: Outcome("expired", finish=2)
    path = jobs(tmp_path, 3)
    job = submit(path, "--detach").stdout.split()[1]
    listing = run_cli("status")  # every job: reads what is recorded, asks the API nothing
    assert listing.code == 0 and fake.calls.count("retrieve") == 0
    shown = run_cli("status", job)
    assert shown.code == 0, shown.stderr
    assert fake.calls.count("retrieve") == 1 and len(fake.order) == 1  # nothing submitted
    assert sorted(read_results(path.with_suffix(".out"))) == ["r1", "r2"]
    assert "done    2 of 3" in shown.stdout and "collected" in shown.stdout
    assert f"batchrun resume {job}" in shown.stdout
    assert run_cli("resume", job).code == 0  # the expired request goes in a new part
    assert len(read_results(path.with_suffix(".out"))) == 3 and len(fake.order) == 2

"""A job's options as recorded in its manifest, read through one typed view (JobOptions) that
tolerates manifests written by older versions: keys they lack take the defaults those versions
ran with."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from batchrun.files.jobstore import OPTION_KEYS, JobOptions
from tests.helpers.cli import run_cli
from tests.helpers.jsonl import write_jsonl

OLDEST = {"model": "gpt-4o-mini", "tier": "tier2", "overrides": {"rpm": 100, "tpm": None},
          "concurrency": None, "max_retries": 8, "timeout_s": 600.0, "on_bad_line": "fail",
          "wait": False, "simulate": True, "base_url": None, "azure_endpoint": None,
          "api_key_env": "OPENAI_API_KEY", "insecure": False}


def test_the_oldest_manifest_options_read_with_the_defaults_they_ran_with() -> None:
    assert set(OLDEST) == OPTION_KEYS
    options = JobOptions.from_dict(OLDEST)
    assert (options.tier, options.overrides, options.via) == ("tier2", {"rpm": 100, "tpm": None},
                                                             "sync")
    assert (options.max_response_mb, options.poll_max_s, options.endpoints) == (64.0, 60.0, None)
    assert (options.detach, options.cancel_batches, options.record_endpoint) == (False,) * 3


def test_keys_it_does_not_know_are_left_to_their_readers() -> None:
    options = JobOptions.from_dict({**OLDEST, "state": "redis://h:6379/0", "later": 1})
    assert options.model == "gpt-4o-mini"


def test_a_job_recorded_by_the_oldest_version_resumes(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"o{i}", "prompt": f"hi {i}", "max_tokens": 5} for i in range(6)])
    first = run_cli("submit", str(jobs), "--simulate", "--rpm", "0", "--tpd", "40")
    assert first.code == 3, first.stderr
    [manifest] = (Path(os.environ["BATCHRUN_HOME"]) / "jobs").glob("*.json")
    data = orjson.loads(manifest.read_bytes())
    data["options"] = {**OLDEST, "overrides": {"rpm": 0, "tpd": 0}}
    manifest.write_bytes(orjson.dumps(data))
    resumed = run_cli("resume", manifest.stem)
    assert resumed.code == 0, resumed.stderr
    assert len((tmp_path / "jobs.results.jsonl").read_bytes().splitlines()) == 6

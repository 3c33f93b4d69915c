"""metrics_port= as a notebook user types it: a whole number from 1 to 65535, refused by name
otherwise before anything is sent or recorded; resume takes it too (for this run only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import batchrun
from tests.helpers.cli import FAKE_KEY
from tests.helpers.jsonl import write_jsonl


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


@pytest.mark.parametrize(("value", "said"), [
    ("9464", "give a whole number"), (True, "give a whole number"),
    (9464.0, "give a whole number"), (0, "out of range"), (65_536, "out of range"),
])
def test_submit_refuses_a_metrics_port_that_is_no_port(value: Any, said: str,
                                                       tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.submit(jobs, simulate=True, metrics_port=value)
    assert raised.value.message.startswith("metrics_port=")
    assert said in raised.value.message
    assert batchrun.status()["jobs"] == []


def test_resume_takes_metrics_port(tmp_path: Path) -> None:
    """An option resume does not know would be refused as unknown; this one is checked."""
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.resume("no-such-job", metrics_port="9464")
    assert raised.value.message.startswith("metrics_port=")

"""Keyword options of the wrong type, as a notebook user types them (`tier=5`, `rpm=1.5`,
`output=3`): an InputError naming the option, before anything is sent or recorded — never a
TypeError or AttributeError from deep inside, never a job that cannot be read back."""

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


WRONG_TYPES = [
    ("tier", 5), ("model", 5), ("output", 5), ("base_url", 5), ("azure_endpoint", 5),
    ("api_key_env", 5), ("state", 5), ("endpoints", 5), ("rpm", 1.5), ("tpd", 2.0),
    ("concurrency", 2.5), ("max_retries", 0.5), ("batch_queue_tokens", 1.5),
    ("simulate", "yes"), ("wait", "no"), ("force", 1), ("on_event", 5), ("progress", "x"),
]


@pytest.mark.parametrize(("option", "value"), WRONG_TYPES)
def test_submit_names_an_option_of_the_wrong_type(option: str, value: Any,
                                                  tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    options = {"simulate": True, option: value}
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.submit(jobs, **options)
    assert raised.value.message.startswith(f"{option}=")
    assert batchrun.status()["jobs"] == []


@pytest.mark.parametrize(("option", "value"), [("name", 5), ("model", 5), ("output", 3)])
def test_run_names_an_option_of_the_wrong_type(option: str, value: Any) -> None:
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.run([{"id": "a", "prompt": "hi"}], simulate=True, **{option: value})
    assert raised.value.message.startswith(f"{option}=")


@pytest.mark.parametrize("requests", [5, None, {"id": "a", "prompt": "hi"}])
def test_run_says_what_requests_are_when_given_something_else(requests: Any) -> None:
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.run(requests, simulate=True)
    assert "requests" in raised.value.message and "list of dicts" in raised.value.message


def test_a_job_refused_for_a_fractional_limit_leaves_the_output_free(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    with pytest.raises(batchrun.InputError):
        batchrun.submit(jobs, simulate=True, rpm=1.5)
    job = batchrun.submit(jobs, simulate=True)  # the same notebook goes on
    assert (job.state, job.exit_code) == ("done", 0)


@pytest.mark.parametrize(("option", "value"), [("rpm", 1.5), ("retry_failed", "yes"),
                                               ("drain", "1"), ("state", 5)])
def test_resume_names_an_option_of_the_wrong_type(option: str, value: Any,
                                                  tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    job = batchrun.submit(jobs, simulate=True, tpd=1)
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.resume(job, **{option: value})
    assert raised.value.message.startswith(f"{option}=")


def test_estimate_names_an_option_of_the_wrong_type(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    wrong: dict[str, Any] = {"tier": 5, "model": 5, "rpm": 1.5, "latency": "2"}
    for option, value in wrong.items():
        with pytest.raises(batchrun.InputError) as raised:
            batchrun.estimate(jobs, **{option: value})
        assert raised.value.message.startswith(f"{option}=")


@pytest.mark.parametrize("jobs", [None, 5, b"jobs.jsonl"])
def test_submit_names_a_jobs_argument_that_is_not_a_path(jobs: Any) -> None:
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.submit(jobs, simulate=True)
    assert raised.value.message.startswith("jobs=")


def test_status_names_arguments_of_the_wrong_type() -> None:
    for call in (lambda: batchrun.status(5), lambda: batchrun.status(state=5)):  # type: ignore[arg-type]
        with pytest.raises(batchrun.InputError) as raised:
            call()
        assert raised.value.message.startswith(("job=", "state="))


@pytest.mark.parametrize("call", [batchrun.run, batchrun.submit])
def test_a_key_given_as_an_argument_is_refused_with_where_it_goes(call: Any,
                                                                  tmp_path: Path) -> None:
    given = ([{"id": "a", "prompt": "hi"}] if call is batchrun.run
             else write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}]))
    with pytest.raises(batchrun.InputError) as raised:
        call(given, simulate=True, api_key="sk-typed-into-a-notebook")
    message = raised.value.message
    assert message.startswith(f"{call.__name__}: ") and "$OPENAI_API_KEY" in message
    assert "api_key_env=" in message and "sk-typed" not in message


def test_estimate_of_no_requests_says_so_without_a_temporary_path() -> None:
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.estimate([])
    assert raised.value.message == "estimate() was given no requests."

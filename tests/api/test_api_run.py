"""`batchrun.run`: dicts in, result dicts out in input order, checkpointed under $BATCHRUN_HOME
so that the same call again resumes instead of paying twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import batchrun
from batchrun.simulator import SimConfig
from tests.helpers.cli import FAKE_KEY
from tests.helpers.sim import RunningSim

UNLIMITED = {"rpm": 0, "tpm": 0, "rpd": 0, "tpd": 0}


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


def requests(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"question {i}", "max_tokens": 5} for i in range(n)]


def test_answers_come_back_in_input_order(sim_factory: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Latency that varies per request: they finish in another order than they were given.
    sim = sim_factory(SimConfig(latency_s=0.05, jitter_s=0.05, seed=3))
    asked = requests(40)
    answers = batchrun.run(asked, base_url=sim.base_url, **UNLIMITED)
    assert [a["custom_id"] if a else None for a in answers] == [r["id"] for r in asked]
    assert all(a is not None and a["error"] is None for a in answers)
    assert answers.job.state == batchrun.JobState.DONE
    assert capsys.readouterr() == ("", "")


def test_requests_without_ids_are_answered_in_their_order() -> None:
    answers = batchrun.run([{"prompt": "one"}, {"prompt": "two"}], simulate=True)
    assert [a["custom_id"] if a else None for a in answers] == ["line-1", "line-2"]


def test_the_same_call_twice_pays_once(sim: RunningSim) -> None:
    first = batchrun.run(requests(12), base_url=sim.base_url, **UNLIMITED)
    assert sim.stats.received == 12
    again = batchrun.run(requests(12), base_url=sim.base_url, **UNLIMITED)
    assert sim.stats.received == 12  # nothing sent again
    assert again == first and again.job.id == first.job.id


def test_a_stopped_run_goes_on_where_it_stopped(sim: RunningSim) -> None:
    asked = [{"id": f"d{i}", "prompt": f"hello there {i}", "max_tokens": 40} for i in range(20)]
    paused = batchrun.run(asked, base_url=sim.base_url, tpd=300, concurrency=1, name="daily")
    assert (paused.job.state, paused.job.exit_code) == ("paused-daily", 3)
    have = [a for a in paused if a is not None]
    assert 0 < len(have) < 20 and paused[len(have)] is None
    sent = sim.stats.received
    # Tomorrow's budget (here: a larger one) finishes it without sending the answered again.
    done = batchrun.run(asked, base_url=sim.base_url, tpd=0, concurrency=1, name="daily")
    assert done.job.state == "done" and all(a is not None for a in done)
    assert sim.stats.received == sent + 20 - len(have)


def test_output_puts_the_results_where_asked(tmp_path: Path) -> None:
    answers = batchrun.run(requests(3), simulate=True, output=tmp_path / "out.jsonl")
    assert answers.job.output == tmp_path / "out.jsonl"
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 3


@pytest.mark.parametrize("given", [[], ["not a dict"], [{"id": "a", "prompt": object()}]])
def test_requests_that_are_not_input_lines_raise_input_error(given: list[Any]) -> None:
    with pytest.raises(batchrun.InputError):
        batchrun.run(given, simulate=True)


def test_estimate_takes_requests_too() -> None:
    result = batchrun.estimate(requests(5))
    assert result["models"][0]["requests"] == 5


def test_a_named_run_given_edited_requests_says_what_to_do_in_python(sim: RunningSim) -> None:
    asked = requests(4)
    first = batchrun.run(asked, base_url=sim.base_url, name="edits", **UNLIMITED)
    edited = [*asked[:2], {**asked[2], "prompt": "reworded"}, asked[3]]
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.run(edited, base_url=sim.base_url, name="edits", **UNLIMITED)
    message = raised.value.message
    assert "name='edits'" in message and "request 3 (id 'r2')" in message
    assert "force=True" in message and "--force" not in message and " -o " not in message
    assert sim.stats.received == 4
    # The refusal changed nothing: the original requests still find their answers.
    again = batchrun.run(asked, base_url=sim.base_url, name="edits", **UNLIMITED)
    assert again == first and sim.stats.received == 4


def test_a_run_at_an_output_given_edited_requests_goes_on_with_force(sim: RunningSim,
                                                                       tmp_path: Path) -> None:
    asked, out = requests(4), tmp_path / "answers.jsonl"
    batchrun.run(asked, base_url=sim.base_url, output=out, **UNLIMITED)
    edited = [*asked, {"id": "r4", "prompt": "one more"}]
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.run(edited, base_url=sim.base_url, output=out, **UNLIMITED)
    assert f"output={str(out)!r}" in raised.value.message
    assert "force=True" in raised.value.message and sim.stats.received == 4
    more = batchrun.run(edited, base_url=sim.base_url, output=out, force=True, **UNLIMITED)
    assert [a["custom_id"] if a else None for a in more] == ["r0", "r1", "r2", "r3", "r4"]
    assert sim.stats.received == 5  # only the new request was sent


def test_bad_requests_are_named_as_requests_with_python_advice() -> None:
    given = [{"id": "a", "prompt": "one"}, {"id": "b"}, {"id": "a", "prompt": "again"}]
    with pytest.raises(batchrun.errors.BadLinesError) as raised:
        batchrun.run(given, simulate=True)
    lines = raised.value.message.splitlines()
    assert lines[0] == "run(): 2 bad requests; nothing was sent."
    assert lines[1].startswith("  request 2 (id 'b'): unrecognised line")
    assert lines[2] == "  request 3: duplicate id 'a'; ids must be unique"
    assert lines[3] == ("Fix these requests, or pass on_bad_line='skip' to record them as "
                        "failed and go on.")
    assert [bad.line_no for bad in raised.value.bad] == [2, 3]

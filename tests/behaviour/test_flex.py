"""--service-tier flex (issue 24 item 4): the body field, the models that offer it, and flex's
"resource unavailable" answers (OpenAI's 429, Groq's 498 capacity_exceeded), which are waited
out under a ceiling of their own: not a rate limit, not a failure, not --max-retries.

The oracle is SERVERS.md "Flex processing"; the simulator plays it (Faults.flex_unavailable,
SimConfig.flex_status, SimConfig.flex_models)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.backends.sync.lanes import learn
from batchrun.events import Throttled
from batchrun.pacing.calibrate import Calibration
from batchrun.policy.classify import Kind, Outcome, classify
from batchrun.policy.decide import Action, Policy, Tries, decide
from batchrun.policy.request import CHAT_URL, Request
from batchrun.policy.sizing import Size
from batchrun.simulator import Faults, SimConfig
from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.jsonl import prompts, read_results, write_jsonl
from tests.helpers.scripted_server import Server, engine_run, ok

ENV = {"OPENAI_API_KEY": FAKE_KEY}
FAST = ("--rpm", "0", "--tpm", "0", "--tpd", "0", "--rpd", "0")
# The flex guide names the answer "429 Resource Unavailable" (and says it is not billed); the
# simulator's body says so in its message, as below.
OPENAI_UNAVAILABLE = orjson.dumps({"error": {
    "message": "Resource Unavailable: flex processing has no capacity for this request right "
    "now. Please try again later.", "type": "resource_unavailable", "param": None,
    "code": None}})
GROQ_CAPACITY = orjson.dumps({"error": {
    "message": "Flex tier capacity exceeded. This is a known issue and we are working on it.",
    "type": "capacity_exceeded", "code": "capacity_exceeded"}})
RATE_429 = orjson.dumps({"error": {
    "message": "Rate limit reached for gpt-5-mini in organization org-x on tokens per min "
    "(TPM): Limit 1000, Used 990, Requested 130. Please try again in 6s.",
    "type": "tokens", "code": "rate_limit_exceeded"}})


def rows_for(n: int, model: str = "gpt-5-mini") -> list[dict[str, Any]]:
    return [{**row, "model": model} for row in prompts(n)]


# -- what an answer means, and what the job does about it (pure) -------------------------------

@pytest.mark.parametrize(("status", "raw"), [(429, OPENAI_UNAVAILABLE), (498, GROQ_CAPACITY)])
def test_resource_unavailable_is_its_own_kind_not_a_rate_limit(status: int, raw: bytes) -> None:
    out = classify(status, {"retry-after": "7"}, raw, CHAT_URL, FAKE_KEY)
    assert out.kind is Kind.FLEX_UNAVAILABLE
    assert out.code == "flex_unavailable"
    # No "Requested R": nothing here is evidence of the server's token accounting.
    assert out.server_requested_tokens is None
    assert out.usage_known and out.usage == (0, 0)  # not billed


def test_a_real_rate_limit_stays_a_rate_limit() -> None:
    assert classify(429, {}, RATE_429, CHAT_URL, FAKE_KEY).kind is Kind.RATE_MINUTE


def test_unavailable_is_waited_out_whatever_max_retries_says() -> None:
    out = classify(429, {}, OPENAI_UNAVAILABLE, CHAT_URL, FAKE_KEY)
    policy = Policy(max_retries=0, flex_wait_s=900.0)
    spent = Tries(failures=0, flex_unavailable=12, flex_waited_s=600.0)
    assert decide(out, spent, policy) is Action.FLEX_WAIT
    # its own ceiling: the time waited for capacity
    assert decide(out, Tries(flex_unavailable=13, flex_waited_s=900.0), policy) is Action.FAIL


# -- on the simulator --------------------------------------------------------------------------

def submit(sim: Any, jobs: Path, *extra: str) -> Any:
    return run_cli("submit", str(jobs), "--base-url", sim.base_url, *FAST, *extra, "--json",
                   env=ENV)


def test_unavailable_answers_are_waited_out_and_every_request_ends_once(
    sim_factory: Any, tmp_path: Path,
) -> None:
    sim = sim_factory(SimConfig(faults=Faults(flex_unavailable=0.25), seed=3))
    # A quarter refused: a request refused 5 times in a row (31 s of backoff) is 1 in 1,000.
    # The simulator's flex draws are their own seeded sequence, so the count is fixed.
    rows = rows_for(12)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    # --max-retries 0: were the 429s counted as failures, the first one would fail its request.
    run = submit(sim, jobs, "--service-tier", "flex", "--max-retries", "0")
    assert run.code == 0, run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert sorted(results) == sorted(r["id"] for r in rows)
    assert all(line["error"] is None for line in results.values())
    assert sim.stats.flex_unavailable > 0  # the fault did happen
    assert sim.stats.ok == len(rows)  # each answered exactly once
    summary = orjson.loads(run.stdout)
    # not a rate limit: no shared cooldown was taken for them
    assert summary["rate_limited_429"] == 0
    assert summary["requests"]["ok"] == len(rows)


def test_every_body_carries_service_tier_and_a_lines_own_wins(
    sim_factory: Any, tmp_path: Path,
) -> None:
    sim = sim_factory()
    rows = rows_for(3)
    rows[0]["service_tier"] = "default"
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--service-tier", "flex")
    assert run.code == 0, run.stderr
    assert sim.stats.service_tiers == {"flex": 2, "default": 1}


def test_without_the_option_no_service_tier_is_sent(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows_for(2))
    assert submit(sim, jobs).code == 0
    assert sim.stats.service_tiers == {}


def test_the_ceiling_fails_the_request_with_its_own_code(sim_factory: Any, tmp_path: Path,
                                                         ) -> None:
    sim = sim_factory(SimConfig(faults=Faults(flex_unavailable=1.0)))
    rows = rows_for(3)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--service-tier", "flex", "--flex-wait", "0")
    assert run.code == 1, run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert sorted(results) == sorted(r["id"] for r in rows)
    for line in results.values():
        assert line["error"]["code"] == "flex_unavailable", line
        assert "--flex-wait" in line["error"]["message"]


def test_groqs_498_is_waited_out_too(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(faults=Faults(flex_unavailable=0.25), flex_status=498, seed=5))
    rows = rows_for(8)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--service-tier", "flex", "--max-retries", "0")
    assert run.code == 0, run.stderr
    assert sim.stats.statuses[498] > 0
    assert sim.stats.ok == len(rows)


def test_a_model_without_flex_is_exit_2_naming_it_and_nothing_is_sent(
    sim_factory: Any, tmp_path: Path,
) -> None:
    sim = sim_factory()
    rows = [*rows_for(2), *rows_for(1, model="gpt-4o-mini")]
    rows[-1]["id"] = "other"
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--service-tier", "flex")
    assert run.code == 2, run.stderr
    assert "gpt-4o-mini" in run.stderr and "flex" in run.stderr
    assert "Traceback" not in run.stderr
    assert sim.stats.received == 0


def test_a_model_batchrun_does_not_price_goes_with_a_warning(sim_factory: Any, tmp_path: Path,
                                                            ) -> None:
    sim = sim_factory()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows_for(2, model="llama-3.3-70b-versatile"))
    run = submit(sim, jobs, "--service-tier", "flex")
    assert run.code == 0, run.stderr
    assert "llama-3.3-70b-versatile" in run.stderr and "flex" in run.stderr
    assert sim.stats.service_tiers == {"flex": 2}


def test_simulator_without_flex_for_a_model_answers_400_as_azure_does(
    sim_factory: Any, tmp_path: Path,
) -> None:
    # batchrun's table says gpt-5-mini offers flex; this server (an Azure deployment, say) does
    # not: its 400 fails the request at once (no fallback to standard processing).
    sim = sim_factory(SimConfig(flex_models=frozenset({"o3"})))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows_for(1))
    run = submit(sim, jobs, "--service-tier", "flex")
    assert run.code == 1, run.stderr
    line = next(iter(read_results(tmp_path / "jobs.results.jsonl").values()))
    assert line["error"]["code"] == "invalid_request_error"
    assert "service_tier" in line["error"]["message"]


def test_summary_costs_flex_at_batch_rates(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows_for(4))
    flex = orjson.loads(submit(sim, jobs, "--service-tier", "flex").stdout)
    jobs2 = write_jsonl(tmp_path / "jobs2.jsonl", rows_for(4))
    plain = orjson.loads(submit(sim, jobs2, "--no-cache").stdout)  # not the flex job's answers
    assert flex["tokens"] == plain["tokens"]
    assert flex["cost_usd"] == pytest.approx(plain["cost_usd"] / 2, rel=1e-3)


def test_resume_keeps_the_service_tier(sim_factory: Any, tmp_path: Path) -> None:
    from batchrun.files.jobstore import JobStore

    sim = sim_factory()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows_for(2))
    assert submit(sim, jobs, "--service-tier", "flex", "--flex-wait", "30").code == 0
    manifest = JobStore().for_output((tmp_path / "jobs.results.jsonl").resolve())
    assert manifest is not None
    assert manifest.options["service_tier"] == "flex"
    assert manifest.options["flex_wait_s"] == 30
    # the longer default timeout with flex (OpenAI suggests 15 minutes)
    assert manifest.options["timeout_s"] == 900


def test_resume_refuses_a_flex_wait_for_a_job_without_flex(sim_factory: Any,
                                                           tmp_path: Path) -> None:
    # submit refuses --flex-wait without --service-tier flex; resume saved it silently
    from batchrun.files.jobstore import JobStore

    sim = sim_factory()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows_for(2))
    assert submit(sim, jobs, "--tpd", "1").code in (1, 3)
    manifest = JobStore().for_output((tmp_path / "jobs.results.jsonl").resolve())
    assert manifest is not None
    run = run_cli("resume", manifest.job_id, "--flex-wait", "5")
    assert run.code == 2
    assert "--service-tier flex" in run.stderr and "Traceback" not in run.stderr
    again = JobStore().for_output((tmp_path / "jobs.results.jsonl").resolve())
    assert again is not None and again.options.get("flex_wait_s") == manifest.options.get(
        "flex_wait_s")


def test_flex_is_refused_with_the_batch_api(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows_for(1))
    run = submit(sim, jobs, "--service-tier", "flex", "--via", "batch")
    assert run.code == 2
    assert "--via" in run.stderr and "Traceback" not in run.stderr


# -- the engine on virtual time: no cooldown, no calibration, its own ceiling ------------------

def _unavailable() -> Outcome:
    return classify(429, {}, OPENAI_UNAVAILABLE, CHAT_URL, FAKE_KEY)


def _rate_limited() -> Outcome:
    return classify(429, {}, RATE_429, CHAT_URL, FAKE_KEY)


def _held_back_by(first_answer: Outcome, tmp_path: Path) -> float:
    """When the second request goes, one slot, after the first's first answer at 0.1 s."""
    def answer(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        return 0.1, (first_answer if request.custom_id == "q0" and attempt == 1 else ok())

    server = Server(answer)
    stop, _, _ = engine_run(tmp_path, 2, server, concurrency=1, service_tier="flex")
    assert stop is None
    return server.times("q1")[0]


def test_unavailable_takes_no_cooldown_where_a_rate_limit_does(tmp_path: Path) -> None:
    (tmp_path / "flex").mkdir()
    (tmp_path / "rate").mkdir()
    assert _held_back_by(_unavailable(), tmp_path / "flex") == pytest.approx(0.1)
    # the contrast that makes the first assertion mean something: a real 429 pauses the lane
    assert _held_back_by(_rate_limited(), tmp_path / "rate") > 0.5


def test_unavailable_answers_are_backed_off_and_not_throttles(tmp_path: Path) -> None:
    def answer(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        return 0.1, (_unavailable() if attempt <= 4 else ok())

    server = Server(answer)
    stop, events, _ = engine_run(tmp_path, 1, server, max_retries=0, service_tier="flex")
    assert stop is None
    sent = server.times("q0")
    assert len(sent) == 5
    gaps = [b - a - 0.1 for a, b in itertools.pairwise(sent)]
    assert all(g >= 0.5 for g in gaps)  # the one backoff (1 s first, ±50 %), never a tight loop
    assert gaps[-1] > gaps[0]  # and it doubles
    assert not [e for e in events if isinstance(e, Throttled)]
    line = read_results(tmp_path / "out.jsonl")["q0"]
    assert line["error"] is None


def test_the_ceiling_on_virtual_time(tmp_path: Path) -> None:
    server = Server(lambda request, attempt, now: (0.1, _unavailable()))
    stop, _, _ = engine_run(tmp_path, 1, server, max_retries=0, service_tier="flex",
                              flex_wait_s=120.0)
    assert stop is None
    sent = server.times("q0")
    # every wait counts toward --flex-wait, the last try comes at the ceiling, not after it
    assert sent[-1] == pytest.approx(120.0 + 0.1 * (len(sent) - 1))
    assert len(sent) > 3
    line = read_results(tmp_path / "out.jsonl")["q0"]
    assert line["error"]["code"] == "flex_unavailable"
    assert f"{len(sent)} answers" in line["error"]["message"]


def test_unavailable_is_no_evidence_for_the_calibration() -> None:
    size = Size(prompt=100, max_output=10, charge=110, chars=100, output_charged=10)
    flex, rate = Calibration(), Calibration()
    for _ in range(8):
        learn(flex, size, _unavailable())
        learn(rate, size, _rate_limited())
    assert flex.learned() is None
    assert rate.learned() is not None  # a real 429's "Requested R" is, the same number of times


def test_estimate_prices_flex_at_batch_rates_and_refuses_a_model_without_it(
    tmp_path: Path,
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows_for(5))
    plain = orjson.loads(run_cli("estimate", str(jobs), "--json", env=ENV).stdout)
    run = run_cli("estimate", str(jobs), "--service-tier", "flex", "--json", env=ENV)
    assert run.code == 0, run.stderr
    assert orjson.loads(run.stdout)["cost_usd"] == pytest.approx(plain["cost_usd"] / 2, rel=1e-3)
    other = write_jsonl(tmp_path / "other.jsonl", rows_for(1, model="gpt-4o-mini"))
    run = run_cli("estimate", str(other), "--service-tier", "flex", env=ENV)
    assert run.code == 2 and "gpt-4o-mini" in run.stderr


def test_the_python_api_takes_service_tier_and_flex_wait(
    sim_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import batchrun

    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    sim = sim_factory(SimConfig(faults=Faults(flex_unavailable=1.0)))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows_for(2))
    with pytest.raises(batchrun.InputError, match="service_tier"):
        batchrun.submit(jobs, base_url=sim.base_url, service_tier="priority")
    assert sim.stats.received == 0
    job = batchrun.submit(jobs, base_url=sim.base_url, service_tier="flex", flex_wait=0,
                          rpm=0, tpm=0, rpd=0, tpd=0)
    assert job.exit_code == 1
    assert sim.stats.service_tiers == {"flex": 2}


def test_resume_sends_at_flex_again(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(faults=Faults(flex_unavailable=1.0)))
    rows = rows_for(2)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    assert submit(sim, jobs, "--service-tier", "flex", "--flex-wait", "0").code == 1
    sim.config.faults.flex_unavailable = 0.0  # capacity is back
    out = str(tmp_path / "jobs.results.jsonl")
    run = run_cli("resume", out, "--retry-failed", "--flex-wait", "60", env=ENV)
    assert run.code == 0, run.stderr
    assert all(line["error"] is None for line in read_results(Path(out)).values())
    assert sim.stats.service_tiers == {"flex": 4}  # two refused, then two answered, all flex


def test_lines_that_name_no_model_are_refused_with_the_way_to_name_one(tmp_path: Path) -> None:
    # The user never wrote the default model's name: the refusal must say where it came from.
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    run = run_cli("estimate", str(jobs), "--service-tier", "flex", env=ENV)
    assert run.code == 2
    assert "name no model" in run.stderr and "-m gpt-5" in run.stderr
    again = run_cli("estimate", str(jobs), "--service-tier", "flex", "-m", "gpt-5-mini", env=ENV)
    assert again.code == 0, again.stderr


def test_embeddings_beside_flex_chat_lines_are_sent_as_they_are(
    sim_factory: Any, tmp_path: Path,
) -> None:
    # docs/flex.md: embeddings take no service tier. A model that is never sent with one
    # cannot lack it, so it must not stop the job.
    sim = sim_factory()
    rows = [*rows_for(2), {"custom_id": "e1", "url": "/v1/embeddings",
                           "method": "POST",
                           "body": {"model": "text-embedding-3-small", "input": "a document"}}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--service-tier", "flex")
    assert run.code == 0, run.stderr
    assert sorted(read_results(tmp_path / "jobs.results.jsonl")) == ["e1", "q0", "q1"]
    assert sim.stats.service_tiers == {"flex": 2}

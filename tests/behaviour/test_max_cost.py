"""--max-cost against an outside judge (tests/billing_server.py: caches prompts, bills at its own
copy of the list prices): the job stops with exit 3 having spent no more than the cap, resumes
with a larger one exactly once, and its spend survives kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import batchrun
from batchrun.files.jobstore import JobStore
from batchrun.files.spend import read_spent, spend_path
from tests.helpers.billing_server import BillingServer, rows
from tests.helpers.cli import FAKE_KEY, REPO, run_cli
from tests.helpers.jsonl import read_results, write_jsonl

# ~1,500 tokens shared by every request: the common batch job the prompt cache bills less.
KEY_ENV = {"OPENAI_API_KEY": FAKE_KEY}
NO_LIMITS = ("--rpm", "0", "--tpm", "0", "--tpd", "0", "--rpd", "0")


@pytest.fixture
def server() -> Iterator[BillingServer]:
    with BillingServer() as running:
        yield running


def submit(srv: BillingServer, jobs: Path, out: Path, *extra: str) -> Any:
    return run_cli("submit", str(jobs), "-o", str(out), "--base-url", srv.url, *NO_LIMITS,
                   "--json", "-q", *extra, env=KEY_ENV)


def bill_of(tmp_path: Path, n: int) -> float:
    """What the whole job bills, uncapped, on a server of its own."""
    with BillingServer() as reference:
        jobs = write_jsonl(tmp_path / "reference.jsonl", rows(n))
        done = submit(reference, jobs, tmp_path / "reference.out.jsonl")
        assert done.code == 0, done.stderr
        return reference.billed()


def test_a_cap_at_40_percent_stops_with_exit_3_within_it_and_a_larger_one_finishes_once(
        server: BillingServer, tmp_path: Path) -> None:
    whole = bill_of(tmp_path, 60)
    cap = round(whole * 0.4, 6)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(60))
    out = tmp_path / "out.jsonl"

    paused = submit(server, jobs, out, "--max-cost", str(cap), "--concurrency", "4")

    assert paused.code == 3, paused.stderr
    summary = orjson.loads(paused.stdout)
    assert summary["state"] == "paused-cost"
    assert server.billed() <= cap
    # Never below the bill (the summary rounds dollars to 6 places).
    assert summary["job_cost_usd"] >= server.billed() - 1e-6
    assert summary["max_cost_usd"] == cap
    job = summary["job"]
    assert f"batchrun resume {job} --max-cost" in summary["message"]
    assert "Spend cap reached" in summary["message"]
    written = read_results(out)
    assert 0 < len(written) < 60
    # What was in flight at the stop was finished and written: nothing billed without a line.
    assert sum(server.answered.values()) == len(written)
    status = orjson.loads(run_cli("status", job, "--json").stdout)
    assert status["jobs"][0]["state"] == "paused-cost"

    again = run_cli("resume", job, "--max-cost", str(round(whole * 2, 6)), "--json", "-q",
                    env=KEY_ENV)

    assert again.code == 0, again.stderr
    assert len(read_results(out)) == 60
    assert set(server.answered.values()) == {1}  # every request billed once, over two runs
    assert server.billed() == pytest.approx(whole, rel=1e-9)
    final = orjson.loads(again.stdout)
    assert final["job_cost_usd"] == pytest.approx(server.billed(), rel=0.01)
    assert final["job_cost_usd"] >= server.billed() - 1e-6


def test_a_plain_resume_keeps_the_cap_and_stops_again_at_once(
        server: BillingServer, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(30))
    out = tmp_path / "out.jsonl"
    first = submit(server, jobs, out, "--max-cost", "0.001", "--concurrency", "2")
    assert first.code == 3, first.stderr
    sent = sum(server.answered.values())

    again = run_cli("resume", orjson.loads(first.stdout)["job"], "--json", "-q", env=KEY_ENV)

    assert again.code == 3, again.stderr
    assert sum(server.answered.values()) == sent  # the spend of the first run counts
    assert server.billed() <= 0.001


def test_the_python_api_takes_max_cost_and_says_paused_cost(
        server: BillingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(30))

    job = batchrun.submit(jobs, output=tmp_path / "out.jsonl", base_url=server.url, rpm=0,
                          tpm=0, tpd=0, rpd=0, concurrency=2, max_cost=0.001)

    assert (job.state, job.exit_code) == ("paused-cost", 3)
    assert server.billed() <= job.job_cost_usd + 1e-6
    assert job.job_cost_usd <= 0.001


def test_a_model_with_no_price_is_refused_by_name(server: BillingServer,
                                                   tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(3))
    refused = submit(server, jobs, tmp_path / "out.jsonl", "-m", "house-model-7",
                     "--max-cost", "1")
    assert refused.code == 2
    assert "house-model-7" in refused.stderr and "no list price" in refused.stderr
    assert not server.answered


def test_lines_without_max_tokens_are_refused_with_their_ids_and_line_numbers(
        server: BillingServer, tmp_path: Path) -> None:
    lines = rows(4)
    del lines[1]["max_tokens"], lines[3]["max_tokens"]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", lines)
    refused = submit(server, jobs, tmp_path / "out.jsonl", "--max-cost", "1")
    assert refused.code == 2
    said = " ".join(refused.stderr.split())
    assert "'r1' (line 2)" in said and "'r3' (line 4)" in said and "max_tokens" in said
    assert "'r0'" not in said
    assert not server.answered


def test_via_auto_does_not_hand_the_rest_to_the_batch_api_at_the_cap(
        server: BillingServer, tmp_path: Path) -> None:
    # The billing server has no Batch API: a hand-off would fail on its first upload.
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(30))
    paused = submit(server, jobs, tmp_path / "out.jsonl", "--max-cost", "0.001", "--via", "auto")
    assert paused.code == 3, paused.stderr
    summary = orjson.loads(paused.stdout)
    assert summary["state"] == "paused-cost"
    assert summary["via"]["batch"]["requests"] == 0
    assert "Batch API" not in paused.stderr


# -- kill -9 ---------------------------------------------------------------------------------

def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll an observable condition (not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start(srv: BillingServer, jobs: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "-o", str(out), "--base-url",
         srv.url, *NO_LIMITS, "-q", "--concurrency", "8", *extra],
        env={**os.environ, **KEY_ENV}, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def spent(out: Path) -> float:
    manifest = JobStore().for_output(out.resolve())
    assert manifest is not None
    return read_spent(spend_path(JobStore().dir, manifest.job_id))


@pytest.mark.parametrize("seed", [1, 2])
def test_the_cap_holds_across_kill_9_and_the_spend_is_never_below_the_bill(
        tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with BillingServer(latency_s=0.05) as srv:
        jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(120))
        out = tmp_path / "out.jsonl"
        cap = 0.008  # about half of the whole job's bill
        proc = start(srv, jobs, out, "--max-cost", str(cap))
        for _ in range(2):
            target = lines_in(out) + rng.randint(3, 15)
            wait_for(lambda t=target, p=proc: lines_in(out) >= t or p.poll() is not None)
            proc.kill()  # SIGKILL: no drain, no last save
            proc.communicate()
            assert proc.returncode == -signal.SIGKILL
            # Answers billed but not yet written count at their worst case: never below.
            assert spent(out) >= srv.billed() - 1e-12
            proc = subprocess.Popen(
                [sys.executable, "-m", "batchrun", "resume", str(out), "-q"],
                env={**os.environ, **KEY_ENV}, cwd=REPO, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(timeout=120)

        assert proc.returncode == 3, err
        assert "Spend cap reached" in " ".join(err.split())
        assert srv.billed() <= cap  # over three runs, two of them killed
        assert srv.billed() - 1e-12 <= spent(out) <= cap
        written = read_results(out)  # each id at most once
        assert len(written) < 120


def test_status_of_a_paused_job_shows_spent_and_cap_and_wait_does_not_sleep_on_it(
        server: BillingServer, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(30))
    # --wait sleeps through a daily limit; a spend cap no night lifts: it stops at once.
    paused = submit(server, jobs, tmp_path / "out.jsonl", "--max-cost", "0.001", "--wait")
    assert paused.code == 3, paused.stderr
    job = orjson.loads(paused.stdout)["job"]

    shown = " ".join(run_cli("status", job).stdout.split())

    assert "paused-cost" in shown
    assert "of the --max-cost $0.0010" in shown and "spent $0.000" in shown


# -- an endpoint's own prices ------------------------------------------------------------------

def endpoints_file(tmp_path: Path, url: str, prices: str) -> Path:
    conf = tmp_path / "endpoints.toml"
    conf.write_text(f'[[endpoint]]\nname = "reseller"\nbase_url = "{url}"\n'
                    f'api_key_env = "OPENAI_API_KEY"\n{prices}'
                    '[endpoint.limits."gpt-4o-mini"]\nrpm = 0\ntpm = 0\ntpd = 0\nrpd = 0\n')
    return conf


def test_an_endpoint_that_gives_its_own_prices_is_capped_at_them(
        server: BillingServer, tmp_path: Path) -> None:
    # Ten times the list prices: the job's spend is ten times the list-price bill.
    conf = endpoints_file(tmp_path, server.url, '[endpoint.prices."gpt-4o-mini"]\n'
                          'input = 1.5\ncached_input = 0.75\noutput = 6.0\n')
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(30))

    paused = run_cli("submit", str(jobs), "-o", str(tmp_path / "out.jsonl"), "--endpoints",
                     str(conf), "--max-cost", "0.01", "--json", "-q", env=KEY_ENV)

    assert paused.code == 3, paused.stderr
    spent = orjson.loads(paused.stdout)["job_cost_usd"]
    assert spent == pytest.approx(10 * server.billed(), rel=1e-3)
    assert spent <= 0.01


def test_an_endpoints_price_table_with_a_wrong_entry_is_refused_with_its_line(
        server: BillingServer, tmp_path: Path) -> None:
    conf = endpoints_file(tmp_path, server.url, '[endpoint.prices."gpt-4o-mini"]\n'
                          'input = 1.5\noutput = "six"\n')
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(3))
    refused = run_cli("submit", str(jobs), "--endpoints", str(conf), "--max-cost", "1",
                      env=KEY_ENV)
    assert refused.code == 2
    said = " ".join(refused.stderr.split())
    assert "line 7" in said and "output price" in said and "gpt-4o-mini" in said
    assert not server.answered


def test_a_model_the_table_does_not_price_is_capped_at_the_price_its_endpoint_gives(
        server: BillingServer, tmp_path: Path) -> None:
    conf = tmp_path / "endpoints.toml"
    conf.write_text(f'[[endpoint]]\nname = "house"\nbase_url = "{server.url}"\n'
                    'api_key_env = "OPENAI_API_KEY"\n'
                    '[endpoint.limits."house-model-7"]\nrpm = 0\ntpm = 0\n'
                    '[endpoint.prices."house-model-7"]\ninput = 0.15\noutput = 0.6\n')
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(3))

    done = run_cli("submit", str(jobs), "-o", str(tmp_path / "out.jsonl"), "-m",
                   "house-model-7", "--endpoints", str(conf), "--max-cost", "1", "--json",
                   "-q", env=KEY_ENV)

    assert done.code == 0, done.stderr
    assert orjson.loads(done.stdout)["job_cost_usd"] > 0


def test_a_hand_edited_cap_of_zero_in_the_manifest_is_named_not_run(
        server: BillingServer, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(30))
    first = submit(server, jobs, tmp_path / "out.jsonl", "--max-cost", "0.001")
    job = orjson.loads(first.stdout)["job"]
    path = JobStore().dir / f"{job}.json"
    manifest = orjson.loads(path.read_bytes())
    manifest["options"]["max_cost"] = 0
    path.write_bytes(orjson.dumps(manifest))
    sent = sum(server.answered.values())

    again = run_cli("resume", job, env=KEY_ENV)

    assert again.code == 5
    assert "option max_cost cannot be 0" in " ".join(again.stderr.split())
    assert sum(server.answered.values()) == sent


def test_with_flex_processing_the_cap_counts_flex_prices(
        server: BillingServer, tmp_path: Path) -> None:
    # gpt-5-mini offers flex; its list prices (input, cached input, output per 1M tokens) at
    # the flex rate, half of them: the judge's own copy.
    inp, cached, out = 0.25 / 2, 0.025 / 2, 2.00 / 2
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(10))
    done = submit(server, jobs, tmp_path / "out.jsonl", "-m", "gpt-5-mini", "--service-tier",
                  "flex", "--max-cost", "1")
    assert done.code == 0, done.stderr
    bill = 0.0
    for line in read_results(tmp_path / "out.jsonl").values():
        usage = line["response"]["body"]["usage"]
        hit = usage["prompt_tokens_details"]["cached_tokens"]
        bill += ((usage["prompt_tokens"] - hit) * inp + hit * cached
                 + usage["completion_tokens"] * out) / 1e6
    assert orjson.loads(done.stdout)["job_cost_usd"] == pytest.approx(bill, abs=1e-6)


# A function whose schema is long (~2,000 tokens): billed as prompt on every request.
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Looks a record up. " * 40,
    "parameters": {"type": "object", "properties": {
        f"field_{i}": {"type": "string", "description": f"the record's field number {i}"}
        for i in range(120)}}}}]


def test_tool_definitions_count_in_the_worst_case_so_the_cap_holds_at_the_server(
        server: BillingServer, tmp_path: Path) -> None:
    lines = [{**row, "tools": TOOLS} for row in rows(40)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", lines)
    cap = 0.003  # about five requests' bill

    paused = submit(server, jobs, tmp_path / "out.jsonl", "--max-cost", str(cap),
                    "--concurrency", "8")

    assert paused.code == 3, paused.stderr
    assert server.billed() <= cap
    assert orjson.loads(paused.stdout)["job_cost_usd"] >= server.billed() - 1e-6


def test_status_names_the_spend_and_the_cap_with_the_date_of_its_prices(
        server: BillingServer, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(30))
    paused = submit(server, jobs, tmp_path / "out.jsonl", "--max-cost", "0.001")
    assert paused.code == 3, paused.stderr
    summary = orjson.loads(paused.stdout)

    shown = run_cli("status", summary["job"]).stdout

    # It read "spent $0.0009 at list prices of the --max-cost $0.0010": no date, and the
    # prices seemed to be the cap's.
    assert (f"spent   ${summary['job_cost_usd']:,.4f} of the --max-cost $0.0010, at list "
            f"prices of {summary['prices_as_of']}") in shown


def test_the_larger_cap_it_suggests_lets_the_next_request_through(
        server: BillingServer, tmp_path: Path) -> None:
    # Four answers of up to 16,384 tokens could cost $0.039: more than the "twice the cap or a
    # cent more" it suggested ($0.011), so the suggested resume stopped again, sending nothing.
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{**row, "n": 4} for row in rows(2, 16_384)])
    paused = submit(server, jobs, tmp_path / "out.jsonl", "--max-cost", "0.001")
    assert paused.code == 3, paused.stderr
    message = orjson.loads(paused.stdout)["message"]
    suggested = message.rsplit("--max-cost ", 1)[1].split()[0]

    again = run_cli("resume", orjson.loads(paused.stdout)["job"], "--max-cost", suggested,
                    "--json", "-q", env=KEY_ENV)

    assert sum(server.answered.values()) >= 1, (message, again.stdout)


def test_an_uncapped_run_killed_with_requests_in_flight_leaves_no_spend_below_the_bill(
        tmp_path: Path) -> None:
    # Without a cap nothing was held before a request left, so requests billed but unanswered
    # at a kill -9 were lost from the job's spend: a later `resume --max-cost` counted less
    # than the server had billed, and the job passed its cap by them.
    with BillingServer(latency_s=2, bill_on_receipt=True) as srv:
        jobs = write_jsonl(tmp_path / "jobs.jsonl", rows(4))
        out = tmp_path / "out.jsonl"
        proc = start(srv, jobs, out)
        wait_for(lambda: srv.received == 4)
        proc.kill()
        proc.communicate()

        assert srv.billed() > 0
        assert spent(out) >= srv.billed() - 1e-12

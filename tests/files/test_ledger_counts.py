"""Two counts in the books (issue 22, item 4): billed tokens and the server's rate-limit charge,
a daily budget that stops on the one the server's per-day 429 shows it counts, and the learned
accounting per key and model that `estimate` reads."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batchrun.files.ledger import (
    BILLED,
    CHARGE,
    DailyBudget,
    Ledger,
    Scope,
    counted_by_server,
    key_fingerprint,
    ledger_host,
)
from batchrun.pacing.calibrate import CHARS, TOKENS, Learned
from batchrun.simulator import SimConfig, SimLimits
from tests.helpers.charging import TPD_429
from tests.helpers.cli import FAKE_KEY, estimate, run_cli, submit
from tests.helpers.jsonl import write_jsonl

SCOPE = Scope("api.openai.com", key_fingerprint("sk-test"), "gpt-4o-mini")
DAY = dt.date(2026, 12, 7)


def ledger_at(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "l.sqlite3", lambda: dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC))


@pytest.mark.parametrize(("tpd", "rpd"), [(0, 0), (0, 100), (10_000, 0), (10_000, 100)])
def test_the_ledger_keeps_billed_tokens_and_the_charge(tmp_path: Path, tpd: int,
                                                       rpd: int) -> None:
    ledger = ledger_at(tmp_path)
    budget = DailyBudget(ledger, SCOPE, tpd=tpd, rpd=rpd)
    for _ in range(3):
        day = budget.reserve(500)  # prompt estimate + max_tokens, as admission charged it
        assert day == DAY
        budget.settle(day, 500, 120)  # the answer's usage
    unsent = budget.reserve(500)
    assert unsent == DAY
    budget.unreserve(unsent, 500)  # never sent: neither count keeps it
    ledger.close()
    usage = Ledger(tmp_path / "l.sqlite3").usage(SCOPE, DAY)
    assert (usage.tokens, usage.charge, usage.requests) == (360, 1_500, 3)


def test_a_ledger_from_before_the_second_count_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE usage (host TEXT NOT NULL, key_fingerprint TEXT NOT NULL, model "
               "TEXT NOT NULL, day TEXT NOT NULL, tokens INTEGER NOT NULL DEFAULT 0, requests "
               "INTEGER NOT NULL DEFAULT 0, exhausted INTEGER NOT NULL DEFAULT 0, tpd INTEGER "
               "NOT NULL DEFAULT 0, rpd INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (host, "
               "key_fingerprint, model, day))")
    db.execute("INSERT INTO usage (host, key_fingerprint, model, day, tokens, requests) VALUES "
               "(?,?,?,?,?,?)", (SCOPE.host, SCOPE.key_fingerprint, SCOPE.model, "2026-12-07",
                                 700, 2))
    db.commit()
    db.close()
    ledger = ledger_at(tmp_path)
    assert ledger.usage(SCOPE) == ledger.usage(SCOPE, DAY)
    assert (ledger.usage(SCOPE).tokens, ledger.usage(SCOPE).charge) == (700, 0)
    DailyBudget(ledger, SCOPE, tpd=0, rpd=0).reserve(50)
    ledger.flush()
    assert ledger.usage(SCOPE).charge == 50
    ledger.close()


def test_which_count_a_per_day_429_shows() -> None:
    assert counted_by_server(TPD_429.format(used=1_990), billed=600, charge=2_000) == CHARGE
    assert counted_by_server(TPD_429.format(used=640), billed=600, charge=2_000) == BILLED
    # an RPD message says nothing of tokens; equal counts cannot tell
    rpd = "Rate limit reached ... on requests per day (RPD): Limit 200, Used 200, Requested 1."
    assert counted_by_server(rpd, 600, 2_000) is None
    assert counted_by_server(TPD_429.format(used=5), 100, 100) is None
    assert counted_by_server("", 600, 2_000) is None


def test_the_budget_stops_on_the_count_the_server_showed(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path)
    budget = DailyBudget(ledger, SCOPE, tpd=2_000, rpd=0)
    assert budget.counts == BILLED  # the default: billed tokens
    for _ in range(4):
        day = budget.reserve(500)
        assert day == DAY
        budget.settle(day, 500, 150)  # billed 600 in all, charged 2,000
    # The server's per-day 429 counts ~2,000 used: its charge, not what it billed.
    budget.exhaust(DAY, TPD_429.format(used=2_000))
    assert ledger.daily_counts(SCOPE) == CHARGE
    ledger.close()

    # The next day (and every process) keeps the budget on the charge.
    later = Ledger(tmp_path / "l.sqlite3",
                   lambda: dt.datetime(2026, 12, 8, 1, tzinfo=dt.UTC))
    budget = DailyBudget(later, SCOPE, tpd=2_000, rpd=0)
    assert budget.counts == CHARGE
    for _ in range(4):
        day = budget.reserve(500)
        assert day == dt.date(2026, 12, 8)
        budget.settle(day, 500, 150)
    assert budget.reserve(500) is None  # 2,000 charged: spent, though only 600 were billed
    assert budget.used_today() == (2_000, 4)
    assert "2,000 of 2,000 tokens used on 2026-12-08" in budget.describe()
    later.close()
    usage = Ledger(tmp_path / "l.sqlite3").usage(SCOPE, dt.date(2026, 12, 8))
    assert (usage.tokens, usage.charge) == (600, 2_000)


def test_learned_accounting_per_key_and_model(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path)
    other_model = Scope(SCOPE.host, SCOPE.key_fingerprint, "gpt-4o")
    assert ledger.accounting(SCOPE) is None
    DailyBudget(ledger, SCOPE, tpd=0, rpd=0).record_accounting(Learned(CHARS, 0.52))
    ledger.record_accounting(other_model, Learned(TOKENS, 1.1))
    # not evidence: the last good one stays
    ledger.record_accounting(SCOPE, Learned(CHARS, float("nan")))
    ledger.record_accounting(SCOPE, Learned(CHARS, -1.0))
    ledger.close()
    again = Ledger(tmp_path / "l.sqlite3")
    assert again.accounting(SCOPE) == Learned(CHARS, 0.52)
    assert again.accounting(other_model) == Learned(TOKENS, 1.1)
    assert DailyBudget(again, SCOPE, tpd=0, rpd=0).accounting() == Learned(CHARS, 0.52)
    assert again.accounting(Scope("localhost:8000", SCOPE.key_fingerprint, "gpt-4o")) is None
    again.close()


def test_an_earlier_versions_whole_charge_ratio_is_dropped_not_read_as_a_prompts(
        tmp_path: Path) -> None:
    """A ledger written before kept the server's whole charge per token of ours (0.55 learned
    on Chinese prose with max_tokens 20) in `learned.accounting`, without the column of the
    prompt's charge: it opens, and that ratio is not started from."""
    path = tmp_path / "l.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE learned (host TEXT NOT NULL, key_fingerprint TEXT NOT NULL, "
                    "model TEXT NOT NULL, accounting REAL, daily_counts TEXT, "
                    "PRIMARY KEY (host, key_fingerprint, model))")
        old.execute("INSERT INTO learned VALUES (?,?,?,0.55,NULL)",
                    (SCOPE.host, SCOPE.key_fingerprint, SCOPE.model))
    old.close()
    ledger = Ledger(path)
    assert ledger.accounting(SCOPE) is None
    assert ledger.accountings(SCOPE.host, SCOPE.key_fingerprint) == {}
    ledger.record_accounting(SCOPE, Learned(CHARS, 1.02))
    assert ledger.accounting(SCOPE) == Learned(CHARS, 1.02)
    ledger.close()


def test_estimate_reads_the_learned_accounting_of_the_key_and_host_it_is_given(
        tmp_path: Path, isolated_env: dict[str, str]) -> None:
    rows = [{"id": f"r{i}", "prompt": "x", "max_tokens": 990} for i in range(600)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    ledger = Ledger(Path(isolated_env["BATCHRUN_HOME"]) / "ledger.sqlite3")
    # Learned on a local server with the key in $MY_KEY: it charges half our estimate.
    ledger.record_accounting(Scope("127.0.0.1:8000", key_fingerprint(FAKE_KEY), "gpt-4o-mini"),
                             Learned(TOKENS, 0.5))
    ledger.close()
    env = {"MY_KEY": FAKE_KEY}
    ours = estimate(str(jobs), env=env)["models"][0]
    assert ours["accounting"] == {"used": "ours", "ratio": None, "prompt": None,
                                  "server_charge_tokens": ours["limit_tokens"]}
    args = ("--base-url", "http://localhost:8000/v1", "--api-key-env", "MY_KEY")
    learned = estimate(str(jobs), *args, env=env)["models"][0]
    # Half of each prompt; the output (990 a request) is charged as set.
    server = round(ours["prompt_tokens"] / 2) + 600 * 990
    assert learned["accounting"] == {
        "used": "learned", "ratio": round(server / ours["limit_tokens"], 4),
        "prompt": {"basis": "tokens", "k": 0.5}, "server_charge_tokens": server}
    assert learned["minutes"]["by_tpm"] == pytest.approx(server / 200_000, abs=0.01)
    text = " ".join(run_cli("estimate", str(jobs), *args, env=env).stdout.split())
    assert ("the server's charge as learned for this key (a prompt at 0.50 x its tiktoken's "
            "count, the output as set)") in text
    # another key at that host has learned nothing
    other = estimate(str(jobs), *args, env={"MY_KEY": "sk-other-key-0123456789"})
    assert other["models"][0]["accounting"]["used"] == "ours"


def test_estimate_says_today_is_spent_when_the_server_said_so(
        tmp_path: Path, isolated_env: dict[str, str]) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "x", "max_tokens": 5}])
    ledger = Ledger(Path(isolated_env["BATCHRUN_HOME"]) / "ledger.sqlite3")
    ledger.exhaust(Scope("api.openai.com", key_fingerprint(FAKE_KEY), "gpt-4o"), ledger.today())
    today = ledger.today().isoformat()
    ledger.close()
    m = estimate(str(jobs), "-m", "gpt-4o", env={"OPENAI_API_KEY": FAKE_KEY})["models"][0]
    assert m["days"] == 2 and m["daily"]["source"] == f"the server's per-day 429 on {today}"
    text = " ".join(run_cli("estimate", str(jobs), "-m", "gpt-4o",
                            env={"OPENAI_API_KEY": FAKE_KEY}).stdout.split())
    assert f"2 UTC days · today is spent (the server's per-day 429 on {today})" in text


def test_estimate_refuses_a_key_given_as_the_variable_name(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "x"}])
    run = run_cli("estimate", str(jobs), "--api-key-env", FAKE_KEY)
    assert run.code == 2 and FAKE_KEY not in run.stderr + run.stdout
    assert "never the key itself" in " ".join(run.stderr.split())


def test_a_server_that_counts_its_charge_per_day_is_learned_from_its_429(
        sim_factory: Any, tmp_path: Path, isolated_env: dict[str, str]) -> None:
    # The simulator's per-day limit counts what it charges at admission (prompt + max_tokens),
    # about three times what it bills for these short answers.
    sim = sim_factory(SimConfig(SimLimits(tpd=500)))
    rows = [{"id": f"d{i}", "prompt": f"hello there {i}", "max_tokens": 40} for i in range(30)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--concurrency", "1")
    assert run.code == 3, run.stderr
    assert "tokens per day (TPD)" in run.stderr and "Resume after 00:00 UTC" in run.stderr
    ledger = Ledger(Path(isolated_env["BATCHRUN_HOME"]) / "ledger.sqlite3")
    scope = Scope(sim.base_url.split("/")[2], key_fingerprint(FAKE_KEY), "gpt-4o-mini")
    usage = ledger.usage(scope)
    assert usage.exhausted and usage.tokens < usage.charge
    assert ledger.daily_counts(scope) == CHARGE
    ledger.close()


def test_a_ledger_from_the_first_release_is_read_and_counted_on(
        sim: Any, tmp_path: Path, isolated_env: dict[str, str]) -> None:
    # The first ledgers had neither `exhausted` nor the budgets nor the charge: `status` ended
    # with exit 70 and `submit` with exit 5 blaming the disk ("no such column: tpd").
    path = Path(isolated_env["BATCHRUN_HOME"]) / "ledger.sqlite3"
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE usage (host TEXT NOT NULL, key_fingerprint TEXT NOT NULL, model "
               "TEXT NOT NULL, day TEXT NOT NULL, tokens INTEGER NOT NULL DEFAULT 0, requests "
               "INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (host, key_fingerprint, model, day))")
    scope = Scope(ledger_host(sim.base_url.split("/")[2]), key_fingerprint(FAKE_KEY),
                  "gpt-4o-mini")
    db.execute("INSERT INTO usage VALUES (?,?,?,?,?,?)",
               (scope.host, scope.key_fingerprint, scope.model,
                dt.datetime.now(dt.UTC).date().isoformat(), 700, 2))
    db.commit()
    db.close()
    status = run_cli("status")
    assert status.code == 0, status.stderr
    assert "700" in status.stdout
    rows = [{"id": f"o{i}", "prompt": f"hello there {i}"} for i in range(3)]
    run = submit(sim, write_jsonl(tmp_path / "jobs.jsonl", rows), "--tpd", "100000")
    assert run.code == 0, run.stderr
    ledger = Ledger(path)
    usage = ledger.usage(scope)
    assert usage.requests == 5 and usage.tokens > 700
    ledger.close()

"""The shared daily ledger: arithmetic, days, and several processes at once."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
from pathlib import Path

from batchrun.files.ledger import DailyBudget, Ledger, Scope, key_fingerprint

SCOPE = Scope("api.openai.com", key_fingerprint("sk-test"), "gpt-4o-mini")


def test_reserve_settle_and_the_day_boundary(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 11, 27, 23, 59, tzinfo=dt.UTC)]
    ledger = Ledger(tmp_path / "l.sqlite3", lambda: now[0])
    budget = DailyBudget(ledger, SCOPE, tpd=1000, rpd=0)
    day = budget.reserve(600)
    assert day == dt.date(2026, 11, 27)
    assert budget.reserve(600) is None  # 1,200 > 1,000
    budget.settle(day, 600, 150)  # the answer used far less than its max
    assert budget.reserve(600) == day  # 150 + 600 fits now
    assert ledger.usage(SCOPE).tokens == 750
    now[0] += dt.timedelta(minutes=2)  # a new UTC day: a fresh budget
    assert budget.reserve(900) == dt.date(2026, 11, 28)
    # A settlement lands on the day its reservation was made.
    budget.settle(day, 600, 100)
    assert ledger.usage(SCOPE, dt.date(2026, 11, 27)).tokens == 250
    ledger.close()


def test_exhausted_by_the_server_stops_everyone_today(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3")
    DailyBudget(ledger, SCOPE, tpd=0, rpd=0).exhaust(ledger.today())
    other = Ledger(tmp_path / "l.sqlite3")
    assert DailyBudget(other, SCOPE, tpd=0, rpd=0).reserve(1) is None
    assert DailyBudget(other, SCOPE, tpd=10**9, rpd=0).reserve(1) is None
    assert "per-day limit is spent" in DailyBudget(other, SCOPE, 0, 0).describe("(TPD)")
    ledger.close()
    other.close()


def _hammer(path: str, results: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        ledger = Ledger(Path(path))
        budget = DailyBudget(ledger, SCOPE, tpd=5_000, rpd=0)
        taken = sum(7 for _ in range(400) if budget.reserve(7))
        ledger.close()
        results.put(taken)
    except Exception as exc:  # reported to the test, which fails on it
        results.put(repr(exc))


def test_processes_starting_together_share_one_budget(tmp_path: Path) -> None:
    """Four processes open a new ledger at once (this once failed with 'database is locked')
    and reserve concurrently, in leases: together they never take more than the budget."""
    ctx = mp.get_context("spawn")
    for trial in range(3):
        path = tmp_path / f"l{trial}.sqlite3"
        results = ctx.Queue()
        procs = [ctx.Process(target=_hammer, args=(str(path), results)) for _ in range(4)]
        for p in procs:
            p.start()
        taken = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
        assert all(isinstance(t, int) for t in taken), taken
        # Never more than the budget; at most one lease (1 %) per process left unused.
        assert 5_000 - 4 * (50 + 7) <= sum(taken) <= 5_000


def test_leases_make_one_transaction_serve_many_requests(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3")
    budget = DailyBudget(ledger, SCOPE, tpd=2_000_000, rpd=10_000)
    for _ in range(150):
        assert budget.reserve(200) is not None
    # One lease: 1 % of each budget (20,000 tokens, 100 requests), then a second.
    row = ledger._db.execute("SELECT tokens, requests FROM usage").fetchone()
    assert row == (40_000, 200)
    ledger.close()  # gives back what was not used
    after = Ledger(tmp_path / "l.sqlite3")
    assert after.usage(SCOPE).tokens == 150 * 200 and after.usage(SCOPE).requests == 150
    after.close()

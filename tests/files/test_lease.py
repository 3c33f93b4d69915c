"""The lease arithmetic of the daily budget: whatever happens, what other processes see in the
ledger is never below the truth and never above it by more than one lease per process."""

from __future__ import annotations

import datetime as dt
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun.files.ledger import LEASE_SHARE, DailyBudget, Ledger, Scope, key_fingerprint

SCOPE = Scope("api.openai.com", key_fingerprint("sk-test"), "gpt-4o-mini")
DAY = dt.date(2026, 11, 27)
TPD, RPD = 200_000, 1_000
TOKEN_LEASE, REQUEST_LEASE = math.ceil(TPD * LEASE_SHARE), math.ceil(RPD * LEASE_SHARE)


def _seen_by_others(path: Path) -> tuple[int, int]:
    other = Ledger(path, lambda: dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC))
    usage = other.usage(SCOPE, DAY)
    other._db.close()
    return usage.tokens, usage.requests


def _crash(ledger: Ledger) -> None:
    """kill -9: nothing held in memory reaches the file."""
    ledger._db.close()


@dataclass
class _Truth:
    tokens: int = 0
    requests: int = 0
    in_flight: list[tuple[int, int]] = field(default_factory=list)  # (reserved, will use)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(1, 6_000), st.floats(0.0, 1.6)),
        st.tuples(st.just("settle"), st.integers(0, 50), st.just(0.0)),
        st.tuples(st.just("unknown"), st.integers(0, 50), st.just(0.0)),
        st.tuples(st.just("crash"), st.just(0), st.just(0.0)),
        st.tuples(st.just("close"), st.just(0), st.just(0.0)),
    ),
    max_size=120,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_the_ledger_stays_within_one_lease_per_process_of_the_truth(
    steps: list[tuple[str, int, float]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.sqlite3"
        now = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
        ledger = Ledger(path, lambda: now)
        budget = DailyBudget(ledger, SCOPE, TPD, RPD)
        truth = _Truth()
        dead = 0  # processes that ended by a crash: each may leave one lease counted as used
        for op, n, ratio in steps:
            if op == "reserve":
                if budget.reserve(n) is not None:
                    truth.requests += 1
                    # ratio > 1: the server billed more than was reserved (no max_tokens).
                    truth.in_flight.append((n, round(n * ratio)))
            elif op in ("settle", "unknown") and truth.in_flight:
                reserved, used = truth.in_flight.pop(n % len(truth.in_flight))
                if op == "unknown":  # a reset or a timeout: settled at its reservation
                    used = reserved
                budget.settle(DAY, reserved, used)
                truth.tokens += used
            elif op in ("crash", "close"):
                if op == "crash":
                    _crash(ledger)
                    dead += 1
                    # What was in flight may have been billed in full.
                    truth.tokens += sum(reserved for reserved, _ in truth.in_flight)
                    truth.in_flight.clear()
                else:
                    for reserved, _used in truth.in_flight:  # a drain settles at reservation
                        budget.settle(DAY, reserved, reserved)
                        truth.tokens += reserved
                    truth.in_flight.clear()
                    ledger.close()
                ledger = Ledger(path, lambda: now)
                budget = DailyBudget(ledger, SCOPE, TPD, RPD)
            tokens, requests = _seen_by_others(path)
            held = sum(reserved for reserved, _ in truth.in_flight)
            assert truth.tokens + held <= tokens <= truth.tokens + held + (dead + 1) * TOKEN_LEASE
            assert truth.requests <= requests <= truth.requests + (dead + 1) * REQUEST_LEASE
        ledger.close()


def test_token_leases_do_not_take_requests_they_do_not_need(tmp_path: Path) -> None:
    """Every token lease used to take another 1 % of the RPD: tier1 defaults stopped at ~4,000
    requests of 10,000 with 'daily request budget reached'."""
    ledger = Ledger(tmp_path / "l.sqlite3")
    budget = DailyBudget(ledger, SCOPE, tpd=2_000_000, rpd=10_000)
    for _ in range(300):
        assert budget.reserve(2_000) is not None
    requests = _seen_by_others_today(tmp_path / "l.sqlite3")[1]
    assert requests <= 300 + 100  # what was used, plus at most one lease of 1 %
    ledger.close()


def test_no_token_budget_means_no_token_leases_taking_requests(tmp_path: Path) -> None:
    """--tpd 0 with the preset's RPD 10,000: it stopped after exactly 100 requests."""
    ledger = Ledger(tmp_path / "l.sqlite3")
    budget = DailyBudget(ledger, SCOPE, tpd=0, rpd=10_000)
    assert all(budget.reserve(500) is not None for _ in range(1_000))
    ledger.close()


def _seen_by_others_today(path: Path) -> tuple[int, int]:
    other = Ledger(path)
    usage = other.usage(SCOPE)
    other._db.close()
    return usage.tokens, usage.requests


def test_usage_above_the_reservation_is_visible_to_other_processes_at_once(
    tmp_path: Path,
) -> None:
    """A request without max_tokens is charged an estimate; when it used more, the excess must
    not wait in memory for the next lease (kill -9 would lose it and the day be overspent)."""
    ledger = Ledger(tmp_path / "l.sqlite3")
    budget = DailyBudget(ledger, SCOPE, tpd=1_000, rpd=0)
    day = budget.reserve(100)  # takes the whole lease of 100 (1 % of 1,000 is 10)
    assert day is not None
    budget.settle(day, 100, 700)
    _crash(ledger)
    assert _seen_by_others_today(tmp_path / "l.sqlite3")[0] >= 700


def test_absurd_usage_from_a_server_is_clamped(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3")
    budget = DailyBudget(ledger, SCOPE, tpd=10_000, rpd=0)
    day = budget.reserve(100)
    assert day is not None
    budget.settle(day, 100, -3_000_000)
    ledger.close()
    assert _seen_by_others_today(tmp_path / "l.sqlite3")[0] == 0
    ledger = Ledger(tmp_path / "l.sqlite3")
    budget = DailyBudget(ledger, SCOPE, tpd=10_000, rpd=0)
    day = budget.reserve(100)
    assert day is not None
    budget.settle(day, 100, 10**30)  # would overflow SQLite's integer
    ledger.close()
    tokens = _seen_by_others_today(tmp_path / "l.sqlite3")[0]
    assert 100 <= tokens < 2**62


def test_one_api_host_has_one_budget_however_it_is_written(tmp_path: Path) -> None:
    """127.0.0.1 and localhost (or API.openai.com and :443) each got the whole budget."""
    ledger = Ledger(tmp_path / "l.sqlite3")
    fp = key_fingerprint("sk-test")
    pairs = [("127.0.0.1:8000", "localhost:8000"), ("[::1]:8000", "127.0.0.2:8000"),
             ("API.OpenAI.com:443", "api.openai.com"), ("Example.com:80", "example.com"),
             ("user:sk-secret@api.openai.com", "api.openai.com")]
    for i, (a, b) in enumerate(pairs):
        assert Scope(a, fp, "m") == Scope(b, fp, "m"), (a, b)
        first = DailyBudget(ledger, Scope(a, fp, f"m{i}"), tpd=1_000, rpd=0)
        second = DailyBudget(ledger, Scope(b, fp, f"m{i}"), tpd=1_000, rpd=0)
        assert first.reserve(800) is not None
        assert second.reserve(800) is None
    hosts = {str(r["host"]) for r in ledger.usage_rows(ledger.today())}
    assert hosts == {"localhost:8000", "api.openai.com", "example.com"}
    assert not any("secret" in h for h in hosts)
    ledger.close()

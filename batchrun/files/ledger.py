"""The daily token and request budget, shared by every process that uses the same key and model.

SQLite in $BATCHRUN_HOME, one row per (API host, key fingerprint, model, UTC day). Before a
request is sent its charge is reserved (from a lease: see DailyBudget); when the answer comes the
reservation is settled to the real usage. Only what errs on the safe side waits in memory for the
next write (budget given back); usage above a reservation is counted before anything else is
admitted. So a crash can leave the ledger over-counted by what a process held, never under.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import math
import os
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from batchrun.errors import StateError
from batchrun.pacing.calibrate import Learned

BUSY_TIMEOUT_S = 30.0
EXHAUSTED_CHECK_S = 5.0
LEASE_SHARE = 0.01  # of the daily budget, taken from the ledger at a time
# No one request is billed more than this (2,048 embedding inputs of 8k tokens is 17M); a
# server's usage above it is taken as this, so a hostile number cannot overflow the ledger.
MAX_USAGE = 100_000_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    host TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    day TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    exhausted INTEGER NOT NULL DEFAULT 0,
    tpd INTEGER NOT NULL DEFAULT 0,  -- the budget the last reservation was checked against
    rpd INTEGER NOT NULL DEFAULT 0,
    -- the server's rate-limit charge of the requests sent (what admission reserved), beside
    -- `tokens`, the billed count (settled from each answer's usage)
    charge INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (host, key_fingerprint, model, day)
);
CREATE TABLE IF NOT EXISTS learned (
    host TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    -- versions before 0.x kept the server's whole charge per token of our estimate here; it
    -- is no longer read (it is not a prompt's k), but stays for those versions to read
    accounting REAL,
    -- the server's prompt charge as learned, calibrate.Learned.text(): "chars:1.02"
    prompt_accounting TEXT,
    daily_counts TEXT,  -- what the server's per-day token limit counts: billed or charge
    PRIMARY KEY (host, key_fingerprint, model)
);
"""
# Columns of `usage` that ledgers written by earlier versions may lack (all counts, default 0).
_USAGE_COLUMNS_ADDED = ("exhausted", "tpd", "rpd", "charge")
_LEARNED_COLUMNS_ADDED = ("prompt_accounting",)
BILLED, CHARGE = "billed", "charge"
# `exhausted` of a day the API's per-day request limit (RPD) spent; 1 is any other per-day 429.
# Any value but 0 stops the day, so an older batchrun reading this one's ledger stops as well.
EXHAUSTED_REQUESTS = 2
# "… on tokens per day (TPD): Limit 2000000, Used 1999000, Requested 1200. …"
_USED_PER_DAY = re.compile(r"\(TPD\)\s*:.*?Used\s+(\d+)", re.IGNORECASE | re.DOTALL)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_fingerprint(api_key: str) -> str:
    """Enough to tell keys apart in `status`; the key cannot be recovered from it."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def until_midnight(now: dt.datetime) -> dt.timedelta:
    tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    return tomorrow - now


def fmt_wait(delta: dt.timedelta) -> str:
    minutes = max(1, round(delta.total_seconds() / 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


def ledger_host(netloc: str) -> str:
    """One name per API host, so one server has one budget however its URL was typed: lower
    case, no credentials, no default port, every loopback address as `localhost`."""
    host = netloc.rpartition("@")[2].strip().lower()
    port = ""
    if host.startswith("["):  # [::1]:8000
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    elif host.count(":") == 1:
        name, port = host.split(":")
    else:
        name = host
    name = name.rstrip(".")
    try:
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        name = "localhost"
    elif ":" in name:
        name = f"[{name}]"
    return name if port in ("", "80", "443") else f"{name}:{port}"


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose budget: limits are per key and model at one API host."""

    host: str
    key_fingerprint: str
    model: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", ledger_host(self.host))


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: dt.date
    tokens: int
    requests: int
    exhausted: bool
    charge: int = 0  # the server's rate-limit charge (tokens: what it bills)
    # The per-day 429 that spent the day was about requests (RPD), not tokens.
    exhausted_requests: bool = False


class Ledger:
    """One connection to the shared ledger file. Not thread-safe; one per process."""

    def __init__(
        self,
        path: Path,
        now: Callable[[], dt.datetime] = utc_now,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._now = now
        # Settlements and returned leases not yet written: (scope, day) -> [tokens, requests,
        # charge].
        self._pending: defaultdict[tuple[Scope, str], list[int]] = defaultdict(
            lambda: [0, 0, 0])
        self._budgets: list[DailyBudget] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
            self._setup()
        except OSError as exc:
            raise StateError(
                f"cannot open the usage ledger {path}: {exc.strerror}. Make $BATCHRUN_HOME "
                "writable or point it elsewhere."
            ) from None
        except sqlite3.OperationalError as exc:  # locked, or a file SQLite cannot open
            raise StateError(
                f"cannot open the usage ledger {path}: {exc}. Another process may hold it; "
                "run the same command again."
            ) from None
        except sqlite3.DatabaseError as exc:  # not a database, or a malformed one
            raise self._damaged(str(exc)) from None

    def _setup(self) -> None:
        # Switching a new file to WAL needs an exclusive lock, and SQLite does not always wait
        # for it under its busy timeout: two processes starting together can see "locked".
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                self._add_missing_columns()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _add_missing_columns(self) -> None:
        """A ledger written by an earlier version lacks the columns added since (`exhausted`,
        the budgets, the charge): add them with their defaults, so its counts go on being used
        (another process may add one at the same moment)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(usage)")}
        for name in _USAGE_COLUMNS_ADDED:
            if name in columns:
                continue
            try:
                self._db.execute(f"ALTER TABLE usage ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(learned)")}
        for name in _LEARNED_COLUMNS_ADDED:
            if name in columns:
                continue
            try:
                self._db.execute(f"ALTER TABLE learned ADD COLUMN {name} TEXT")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise

    def close(self) -> None:
        try:
            for budget in self._budgets:
                budget.release()
            self.flush()
        finally:
            self._db.close()

    def today(self) -> dt.date:
        return self._now().date()

    def usage(self, scope: Scope, day: dt.date | None = None) -> DayUsage:
        day = day or self.today()
        try:
            row = self._db.execute(
                "SELECT tokens, requests, exhausted, charge FROM usage WHERE host=? AND "
                "key_fingerprint=? AND model=? AND day=?",
                (scope.host, scope.key_fingerprint, scope.model, day.isoformat()),
            ).fetchone()
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk I/O
            raise StateError(
                f"cannot read the usage ledger {self.path} ({exc}); another batchrun may hold "
                "it. Results so far are kept; run the same command again."
            ) from None
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from None
        pending = self._pending.get((scope, day.isoformat()), [0, 0, 0])
        tokens, requests, exhausted, charge = row or (0, 0, 0, 0)
        if not all(isinstance(n, int) for n in (tokens, requests, exhausted, charge)):
            raise self._damaged(f"the counts of {scope.model} on {day} are not numbers")
        return DayUsage(day, tokens + pending[0], requests + pending[1], bool(exhausted),
                        charge + pending[2], exhausted == EXHAUSTED_REQUESTS)

    def usage_rows(self, day: dt.date) -> list[dict[str, object]]:
        """Every (host, key, model) row of one UTC day, for `batchrun status`."""
        self.flush()
        cursor = self._db.execute(
            "SELECT u.host, u.key_fingerprint, u.model, day, tokens, requests, tpd, rpd, "
            "exhausted, charge, prompt_accounting AS accounting, daily_counts FROM usage u "
            "LEFT JOIN learned l ON "
            "u.host=l.host AND u.key_fingerprint=l.key_fingerprint AND u.model=l.model "
            "WHERE day=? ORDER BY u.host, u.key_fingerprint, u.model", (day.isoformat(),))
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor]
        for row in rows:
            row["daily_counts"] = row["daily_counts"] or BILLED
            for name in ("tokens", "requests", "tpd", "rpd", "exhausted", "charge"):
                if not isinstance(row[name], int):
                    raise self._damaged(f"{name} of {row['model']} on {row['day']} is "
                                        f"{row[name]!r}, not a count")
            row["exhausted"] = int(bool(row["exhausted"]))  # which per-day limit: usage() says
        return rows

    def _damaged(self, what: str) -> StateError:
        return StateError(
            f"the usage ledger {self.path} is damaged ({what}). Move it aside (mv {self.path} "
            f"{self.path}.damaged) and run again: batchrun starts a new ledger, and today's "
            "usage counts start again from zero, so the daily limits it enforces today no "
            "longer see what was spent before."
        )

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.OperationalError as exc:
            raise StateError(
                f"the usage ledger {self.path} is busy or unusable ({exc}); another batchrun may "
                "hold it. Results so far are kept; run the same command again."
            ) from None

    def reserve(self, scope: Scope, tokens: int, tpd: int, rpd: int) -> bool:
        """Atomically take `tokens` and one request from today's budget; False if they don't fit."""
        return self.lease(scope, self.today(), (tokens, tokens), (1, 1), tpd, rpd) is not None

    def lease(self, scope: Scope, day: dt.date, tokens: tuple[int, int],
              requests: tuple[int, int], tpd: int, rpd: int,
              counts: str = BILLED) -> tuple[int, int] | None:
        """Atomically take up to `want` of (need, want) tokens and requests from the day's
        budget, as long as `need` of each fits; None when they don't. A budget of 0 is
        unlimited: what is wanted of it is granted and only counted. `counts`: which count the
        tokens are taken from and checked against (billed tokens or the rate-limit charge)."""
        (need_t, want_t), (need_r, want_r) = tokens, requests
        key = (scope.host, scope.key_fingerprint, scope.model, day.isoformat())
        with self._transaction("failed"):
            self._apply_pending()
            row = self._db.execute(
                "SELECT tokens, requests, exhausted, charge FROM usage WHERE host=? AND "
                "key_fingerprint=? AND model=? AND day=?", key,
            ).fetchone()
            billed, used_r, exhausted, charge = row or (0, 0, 0, 0)
            used_t = charge if counts == CHARGE else billed
            left_t = tpd - used_t if tpd else want_t
            left_r = rpd - used_r if rpd else want_r
            if exhausted or left_t < need_t or left_r < need_r:
                return None
            grant = (max(0, min(want_t, left_t)), max(0, min(want_r, left_r)))
            if counts == CHARGE:
                self._add(scope, day.isoformat(), 0, grant[1], grant[0])
            else:
                self._add(scope, day.isoformat(), *grant)
            self._db.execute(
                "UPDATE usage SET tpd=?, rpd=? WHERE host=? AND key_fingerprint=? AND model=? "
                "AND day=?", (tpd, rpd, *key))
        return grant

    def add_later(self, scope: Scope, day: dt.date, tokens: int, requests: int,
                  charge: int = 0) -> None:
        """Count this with the next write. Only for what may be lost in a crash without harm:
        budget given back (the ledger over-counts) or usage of a count with no limit."""
        pending = self._pending[(scope, day.isoformat())]
        pending[0] += tokens
        pending[1] += requests
        pending[2] += charge

    def add_now(self, scope: Scope, day: dt.date, tokens: int, requests: int) -> None:
        """Count this before anything else is admitted: usage beyond what was reserved."""
        with self._transaction("could not record usage above a reservation"):
            self._apply_pending()
            self._add(scope, day.isoformat(), tokens, requests)

    def exhaust(self, scope: Scope, day: dt.date, requests: bool = False) -> None:
        """The server says the day's budget is spent: no process should try again that day.
        `requests`: its per-day 429 was about requests (kept, so a later stop names it)."""
        flag = EXHAUSTED_REQUESTS if requests else 1
        self._write(
            "INSERT INTO usage (host, key_fingerprint, model, day, exhausted) VALUES (?,?,?,?,?) "
            "ON CONFLICT DO UPDATE SET exhausted=excluded.exhausted",
            (scope.host, scope.key_fingerprint, scope.model, day.isoformat(), flag),
        )

    def _add(self, scope: Scope, day: str, tokens: int, requests: int, charge: int = 0) -> None:
        self._db.execute(
            "INSERT INTO usage (host, key_fingerprint, model, day, tokens, requests, charge) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET tokens=tokens+excluded.tokens, "
            "requests=requests+excluded.requests, charge=charge+excluded.charge",
            (scope.host, scope.key_fingerprint, scope.model, day, tokens, requests, charge),
        )

    def _apply_pending(self) -> None:
        for (scope, day), counts in self._pending.items():
            if any(counts):
                self._add(scope, day, *counts)
        self._pending.clear()

    def flush(self) -> None:
        if any(any(counts) for counts in self._pending.values()):
            with self._transaction("could not record the last settlements (so it over-counts "
                                   "today's usage, which is safe)"):
                self._apply_pending()
        self._pending.clear()

    def _learned(self, scope: Scope, column: str) -> object:
        try:
            row = self._db.execute(
                f"SELECT {column} FROM learned WHERE host=? AND key_fingerprint=? "  # noqa: S608 - a column name of ours, never input
                "AND model=?", (scope.host, scope.key_fingerprint, scope.model)).fetchone()
        except sqlite3.OperationalError as exc:
            raise StateError(f"cannot read the usage ledger {self.path} ({exc}); another "
                             "batchrun may hold it. Run the same command again.") from None
        return row[0] if row else None

    def _learn(self, scope: Scope, column: str, value: object) -> None:
        self._write(
            f"INSERT INTO learned (host, key_fingerprint, model, {column}) VALUES (?,?,?,?) "  # noqa: S608 - a column name of ours, never input
            f"ON CONFLICT DO UPDATE SET {column}=excluded.{column}",
            (scope.host, scope.key_fingerprint, scope.model, value))

    def record_accounting(self, scope: Scope, learned: Learned) -> None:
        """Keep what the server was learned to charge for a prompt, for this key and model (the
        limiter's calibration), so `estimate` and later runs start from it. What does not read
        back as evidence (a k that is not plausible) is not kept."""
        if learned.plausible:
            self._learn(scope, "prompt_accounting", learned.text())

    def accounting(self, scope: Scope) -> Learned | None:
        """The learned prompt charge for this key and model, or None."""
        return Learned.parse(self._learned(scope, "prompt_accounting"))

    def accountings(self, host: str, key_fingerprint: str) -> dict[str, Learned]:
        """Every model's learned accounting for one key at one host."""
        try:
            rows = self._db.execute(
                "SELECT model, prompt_accounting FROM learned WHERE host=? AND "
                "key_fingerprint=? AND prompt_accounting IS NOT NULL",
                (ledger_host(host), key_fingerprint)).fetchall()
        except sqlite3.OperationalError as exc:
            raise StateError(f"cannot read the usage ledger {self.path} ({exc}); another "
                             "batchrun may hold it. Run the same command again.") from None
        found = {str(m): Learned.parse(r) for m, r in rows}
        return {m: learned for m, learned in found.items() if learned is not None}

    def record_daily_counts(self, scope: Scope, counts: str) -> None:
        """Which count the server's per-day token limit was seen to count (BILLED or CHARGE)."""
        self._learn(scope, "daily_counts", counts)

    def daily_counts(self, scope: Scope) -> str:
        """What the daily budget (--tpd) stops on: billed tokens unless the server's per-day
        429 showed that it counts its rate-limit charge."""
        return CHARGE if self._learned(scope, "daily_counts") == CHARGE else BILLED

    @contextlib.contextmanager
    def _transaction(self, what_failed: str) -> Iterator[None]:
        """One short write transaction; every SQLite failure becomes a clear StateError (exit 5)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StateError(
                f"the usage ledger {self.path} stayed locked for {self._busy_timeout_s:.0f}s "
                f"({exc}). Another process holds it; results so far are kept, run the same "
                "command again."
            ) from None
        try:
            yield
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise StateError(
                f"the usage ledger {self.path} {what_failed} ({exc}); the disk may be full. "
                "Results so far are kept; fix it, then run the same command again."
            ) from None
        except BaseException:
            self._db.execute("ROLLBACK")
            raise


class DailyBudget:
    """One model's budget within the shared ledger, as the engine sees it.

    It takes budget from the ledger in leases of 1 % of the day's budget (or exactly what a
    request needs, when that is more), each dimension only when it runs short, so the hot path
    costs one SQLite transaction per lease, not per request. A budget of 0 is not leased; its
    usage is only counted. What other processes see never falls below the truth: usage above a
    reservation comes out of the lease (already counted) or is written at once. It exceeds the
    truth by at most one lease per process: returns beyond that are written, and what is left
    goes back when the run ends (a crash leaves it counted as used, the safe side).

    Two counts are kept: billed tokens (each reservation settled to the answer's usage) and the
    server's rate-limit charge (what admission reserved, never settled: the server charges at
    admission). The token budget is leased from the one the server's per-day 429 was seen to
    count (`Ledger.daily_counts`), billed tokens until then.
    """

    def __init__(self, ledger: Ledger, scope: Scope, tpd: int, rpd: int,
                 job_tokens: Callable[[dt.date], int] | None = None) -> None:
        """`job_tokens(day)`: the tokens the job's earlier runs used that day; with `spent`,
        what this run billed, the daily-stop message says how much of the key's day other
        jobs took."""
        self.ledger, self.scope, self.tpd, self.rpd = ledger, scope, tpd, rpd
        self.counts = ledger.daily_counts(scope)
        self._job_tokens = job_tokens
        self.spent: defaultdict[dt.date, int] = defaultdict(int)  # billed by this run, by day
        self.lease_tokens = max(1, math.ceil(tpd * LEASE_SHARE))
        self.lease_requests = max(1, math.ceil(rpd * LEASE_SHARE))
        self._checked = -math.inf
        self._checked_day: dt.date | None = None
        self._exhausted_day: dt.date | None = None
        self._lease_day: dt.date | None = None
        self._tokens = 0  # held: counted in the ledger, not yet used
        self._requests = 0
        self._returned = 0  # tokens given back but not yet written
        ledger._budgets.append(self)

    @property
    def limited(self) -> bool:
        return bool(self.tpd or self.rpd)

    @property
    def _leases_charge(self) -> bool:
        """The token lease is taken from the charge count, not billed tokens."""
        return bool(self.tpd) and self.counts == CHARGE

    def record_accounting(self, learned: Learned) -> None:
        """Keep the server's learned prompt charge, for this key and model."""
        self.ledger.record_accounting(self.scope, learned)

    def accounting(self) -> Learned | None:
        """What an earlier run learned of the server's prompt charge."""
        return self.ledger.accounting(self.scope)

    def reserve(self, tokens: int, now: float | None = None) -> dt.date | None:
        """The day the reservation was made on, or None if today's budget can't cover it.
        `now` (the engine's clock) lets an unlimited budget look for the API's per-day 429 in
        the ledger now and then instead of on every request."""
        day = self.ledger.today()
        if self._exhausted_day == day:
            return None
        if not self.limited:
            # Only the API's own "per day" 429 can stop us; another process may have met it.
            if now is None or now - self._checked >= EXHAUSTED_CHECK_S or day != self._checked_day:
                self._checked, self._checked_day = now if now is not None else -math.inf, day
                if self.ledger.usage(self.scope).exhausted:
                    self._exhausted_day = day
            if self._exhausted_day == day:
                return None
            self.ledger.add_later(self.scope, day, 0, 1, tokens)  # no limit: only counted
            return day
        if self._lease_day != day:
            self.release()  # a new UTC day: what is left of yesterday's lease goes back
            self._lease_day = day
        short_t = bool(self.tpd) and self._tokens < tokens
        short_r = bool(self.rpd) and self._requests < 1
        if short_t or short_r:
            need_t = tokens - self._tokens if short_t else 0
            need_r = 1 if short_r else 0
            got = self.ledger.lease(
                self.scope, day,
                (need_t, max(need_t, self.lease_tokens) if short_t else 0),
                (need_r, self.lease_requests if short_r else 0),
                self.tpd, self.rpd, self.counts,
            )
            if got is None:
                return None
            self._tokens += got[0]
            self._requests += got[1]
            self._returned = 0  # the lease's transaction wrote what was waiting
        if self.tpd:
            self._tokens -= tokens
        if not self._leases_charge:
            self.ledger.add_later(self.scope, day, 0, 0, tokens)  # the charge, only counted
        if self.rpd:
            self._requests -= 1
        else:
            self.ledger.add_later(self.scope, day, 0, 1)
        return day

    def used_today(self) -> tuple[int, int]:
        """Tokens and requests used today by every process, less what this one holds unused."""
        usage = self.ledger.usage(self.scope)
        tokens = usage.charge if self._leases_charge else usage.tokens
        return tokens - self._tokens, usage.requests - self._requests

    def release(self) -> None:
        """Give the unused lease back to the ledger."""
        if self._lease_day is not None and (self._tokens or self._requests):
            if self._leases_charge:
                self.ledger.add_later(self.scope, self._lease_day, 0, -self._requests,
                                      -self._tokens)
            else:
                self.ledger.add_later(self.scope, self._lease_day, -self._tokens,
                                      -self._requests)
        self._tokens = self._requests = 0

    def unreserve(self, day: dt.date, tokens: int) -> None:
        """Take back a reservation whose request was never sent: its tokens and its request."""
        if not self.limited:
            self.ledger.add_later(self.scope, day, 0, -1, -tokens)
            return
        if self._leases_charge:
            if day == self._lease_day:
                self._tokens += tokens
            else:
                self.ledger.add_later(self.scope, day, 0, 0, -tokens)
        else:
            self.settle(day, tokens, 0)
            self.ledger.add_later(self.scope, day, 0, 0, -tokens)
        if self.rpd and day == self._lease_day:
            self._requests += 1
        else:
            self.ledger.add_later(self.scope, day, 0, -1)

    def settle(self, day: dt.date, reserved: int, actual: int) -> None:
        """Replace a reservation made on `day` by the usage the API reported (clamped: a
        server's negative or absurd numbers must not move the day's count)."""
        actual = min(max(0, actual), MAX_USAGE)
        self.spent[day] += actual
        if not self.tpd or self._leases_charge:
            # No budget on billed tokens: they are only counted (the charge stays reserved).
            self.ledger.add_later(self.scope, day, actual, 0)
            return
        extra = actual - reserved
        if extra > 0:
            if day == self._lease_day:
                taken = min(extra, self._tokens)
                self._tokens -= taken
                extra -= taken
            if extra:
                self.ledger.add_now(self.scope, day, extra, 0)
                self._returned = 0
        elif extra < 0:
            if day == self._lease_day:
                self._tokens -= extra
            else:
                self.ledger.add_later(self.scope, day, extra, 0)
                self._returned -= extra
            if self._tokens + self._returned > self.lease_tokens:
                # Holding more than a lease: a crash would over-count by more than one lease.
                keep = self.lease_tokens // 2
                if self._tokens > keep:
                    assert self._lease_day is not None
                    self.ledger.add_later(self.scope, self._lease_day, keep - self._tokens, 0)
                    self._tokens = keep
                self.ledger.flush()
                self._returned = 0

    def exhaust(self, day: dt.date, server_message: str = "") -> None:
        """The API said the budget of `day` (the reservation's day) is spent. Its per-day 429
        says how much it counts as used: whichever of our two counts is nearer is what a
        --tpd budget stops on from then on."""
        self.ledger.exhaust(self.scope, day, requests=about_requests(server_message))
        self._exhausted_day = day
        self.release()
        self.ledger.flush()
        usage = self.ledger.usage(self.scope, day)
        counts = counted_by_server(server_message, usage.tokens, usage.charge)
        if counts is not None:
            self.ledger.record_daily_counts(self.scope, counts)
            self.counts = counts

    def describe(self, server_message: str = "") -> str:
        """e.g. 'Daily token budget reached for gpt-4o-mini: 2,000,000 of 2,000,000 tokens used
        on 2026-11-27 (UTC)'."""
        self.release()  # what this process holds but has not used is not "used"
        usage = self.ledger.usage(self.scope)
        if self._leases_charge:  # the budget was kept on the server's count: say that one
            return describe_usage(replace(usage, tokens=usage.charge), self.scope.model,
                                  self.tpd, self.rpd, server_message)
        others = (max(0, usage.tokens - self._job_tokens(usage.day) - self.spent[usage.day])
                  if self._job_tokens is not None else 0)
        return describe_usage(usage, self.scope.model, self.tpd, self.rpd, server_message,
                              others)


def accountings_in(path: Path, host: str, key_fingerprint: str) -> dict[str, Learned]:
    """Every model's learned accounting for one key at one host, from the ledger at `path`."""
    book = Ledger(path)
    try:
        return book.accountings(host, key_fingerprint)
    finally:
        book.close()


def counted_by_server(server_message: str, billed: int, charge: int) -> str | None:
    """Which of our two counts a per-day 429's "Used U" is nearer to (BILLED or CHARGE), or
    None when the message states no tokens used per day or the counts cannot tell."""
    found = _USED_PER_DAY.search(server_message)
    if found is None or billed == charge:
        return None
    used = int(found.group(1))
    return CHARGE if abs(used - charge) < abs(used - billed) else BILLED


def about_requests(server_message: str) -> bool:
    """A per-day 429 about the request limit (RPD), not the token limit."""
    return "(RPD)" in server_message


def describe_usage(usage: DayUsage, model: str, tpd: int, rpd: int,
                   server_message: str = "", others: int = 0) -> str:
    """Why a model's day is spent, in the words of DailyBudget.describe (also the Redis
    state's). Counts are the ledger's, never capped at the budget: usage can pass it (other
    jobs on the key, answers longer than reserved), and a capped figure would hide that.
    `others`: the tokens of the day other jobs used."""
    day = usage.day.isoformat()
    if usage.exhausted and not (tpd or rpd):
        what = ("request" if about_requests(server_message) or usage.exhausted_requests
                else "token")
        return (f"Daily {what} budget reached for {model}: the API's per-day limit is spent "
                f"on {day} (UTC)")
    if rpd and usage.requests >= rpd:
        return (f"Daily request budget reached for {model}: {usage.requests:,} "
                f"of {rpd:,} requests used on {day} (UTC)")
    if tpd and usage.exhausted and (about_requests(server_message) or usage.exhausted_requests):
        # The API's request limit ran out, not the token budget: name the limit that stopped.
        requests = f"{usage.requests:,} request" + ("" if usage.requests == 1 else "s")
        return (f"Daily request budget reached for {model}: the API says its per-day request "
                f"limit is spent on {day} (UTC); batchrun used {requests} and "
                f"{usage.tokens:,} of {tpd:,} tokens")
    if tpd and usage.exhausted and usage.tokens < tpd:
        # The server's count, not ours, ran out: other tools or hosts on the key, or a
        # different way of counting. Say what batchrun used, not the limit.
        return (f"Daily token budget reached for {model}: the API says its per-day limit is "
                f"spent on {day} (UTC); batchrun used {usage.tokens:,} of {tpd:,} tokens")
    if tpd:
        by_others = ""
        if others:
            share = "all" if others >= usage.tokens else f"{others:,}"
            by_others = f", {share} of them by other jobs on this key"
        return (f"Daily token budget reached for {model}: {usage.tokens:,} of "
                f"{tpd:,} tokens used on {day} (UTC){by_others}")
    return (f"Daily budget reached for {model}: the API's per-day limit is spent on {day} "
            "(UTC)")

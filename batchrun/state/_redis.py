"""The limiter's shared state and the daily ledger in Redis, for many hosts on one key.

Design (issue #17), and why:

- One round trip admits a request: the ADMIT script (EVALSHA through redis-py's
  register_script) checks and takes the day's tokens and request and a place in the per-minute
  buckets of (API host, API key, model) in one atomic step, so two hosts can never both
  take the last of any budget. No leases: a lease is budget one host holds while another waits,
  and a dead host's lease must be timed out. Here nothing is held but what was admitted.
- The buckets are GCRA, "scheduled into the near future": the script records when each bucket is
  full again (tat) on the Redis server's clock and answers how long the caller waits before
  sending. Hosts are served in the order they ask, whatever their share of the traffic. It never
  schedules more than AHEAD_S ahead (the caller asks again later), so an idle or dead host holds
  at most that much of the minute, and the total sent across hosts never exceeds the limit plus
  one burst. The burst is BURST_S of the limit, the local limiter's paced burst less its reserve:
  a server enforcing 1 s windows sees no 429 storm from four hosts. (The local limiter grows its
  burst by probing; shared pacing does not: its job is many hosts, where the limit, not the
  burst, decides throughput.)
- The daily ledger is a hash per (API host, API key, model family, UTC day) with tokens,
  requests, the per-day 429 "exhausted" flag and a count per host; it expires after 48 h, the
  buckets after LIM_TTL idle. Two token counts, as the local ledger keeps them (issue 22):
  billed tokens (settled to usage) and the server's rate-limit charge (what admission
  reserved). Which one a --tpd budget stops on (billed until a per-day 429's "Used U" shows
  the server counts its charge) and the learned accounting (the limiter's calibration) are
  kept per (API host, API key, model) in a `learned` hash every host reads with each
  admission: what one host learns, every host uses. The UTC day is batchrun's `now_utc`,
  bucket time is Redis's TIME.
  No key or value holds an API key or its fingerprint: names are an HMAC keyed by the API key
  (see _Names), so only a holder of the key finds its state, and `status` shows the caller's
  keys only. Keys written before that (batchrun:v1:, named by the fingerprint) are renamed on
  a job's first admission of the day (_from_old_names).
- Exactly once: each write carries this process's give-backs as numbered running totals, and
  Redis applies only what a newer write adds (_lua.py, `carried`): a write that ran but whose
  answer was lost to a cancellation is never applied twice. An admission a stop cancels is
  shielded: its answer is still read, and a request it admitted, never to be sent, is given
  back (a crash before the answer leaves it counted: the safe side).
- Settlement: what goes back (usage below the reservation, a request never sent) travels with
  this host's next admission, so it costs no round trip and is always counted before this host
  asks again; a crash loses only give-backs (the ledger over-counts, the safe side). Usage above
  the reservation travels the same way while more than 1 % of the day's tokens is left (a
  running output estimate is below the truth about half the time: a round trip for each would
  double the cost of admission); a crash then under-counts by those few tokens, far from the
  budget's end. Nearer the end, and for what every host must see at once, there is a round
  trip of its own (SETTLE): usage above or below the reservation, a per-minute 429 (a shared
  cooldown and, for two within 30 s, a shared rate cut: the local limiter's rules), a per-day
  429 (the day is spent for every host) and a lower x-ratelimit-limit-* (the lowest any host
  saw is every host's).
- The end of the day: a reservation charges the request's maximum output, and the server bills
  far less, so a day "spent" while reservations are in flight on any host usually is not.
  Redis keeps each process's unsettled reservations (o:<instance>, see _lua.py); a host refused
  for the day while other processes hold some that could make room for it waits for them to
  settle (asking again every POLL_S) instead of stopping: its own are the engine's to wait for.
  A dead host's stop counting once its hold (its request timeout and a margin after its last
  admission) has passed, and a waiting host gives up after as long without any coming back.
- Each host's local Limiter keeps only the in-flight cap (see _slots.py): x-ratelimit-remaining
  reflects every host's traffic, and reading it as this host's would throttle it twice.
- Redis down, slow or restarted: every failure becomes a SharedStateError (exit 5) naming the
  URL without its password. Admission stops there (the engine drains what is in flight and
  exits with the checkpoint kept); a failed settlement is kept for the next admission to
  raise, never dropped into local limits. A restart without persistence is caught by the
  epoch key (see _lua.py). A job resumed after one does not get its day's budget again: its
  first admission of a day adds what its manifest says it used that day, unless its mark
  (j:<job>) shows the day's counts already hold it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import hmac
import os
import secrets
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from batchrun.errors import InputError, redact
from batchrun.files.ledger import (
    BILLED,
    CHARGE,
    EXHAUSTED_REQUESTS,
    LEASE_SHARE,
    MAX_USAGE,
    DayUsage,
    Scope,
    about_requests,
    counted_by_server,
    describe_usage,
    key_fingerprint,
    utc_now,
)
from batchrun.pacing.calibrate import Learned
from batchrun.pacing.limiter import ServerState, Ticket
from batchrun.policy.classify import Kind, Outcome
from batchrun.policy.decide import billed
from batchrun.policy.tiers import Limits
from batchrun.state._gate import SharedStateError
from batchrun.state._lua import ADMIT, MIGRATE, SETTLE
from batchrun.state._midnight import servers_yesterday
from batchrun.state._slots import SlotLimiter
from batchrun.state._url import StateUrl

PREFIX = "batchrun:v2:"
OLD_PREFIX = "batchrun:v1:"  # names built from the public fingerprint (see _Names)
BURST_S = 0.9  # the local limiter's starting burst (1 s) less its reserve (0.1 s)
AHEAD_S = 1.5  # the furthest ahead a request is scheduled; later ones ask again
LIM_TTL_MS = 300_000  # buckets, cooldowns and learned limits outlive an idle minute, then go
DAY_TTL_S = 48 * 3600
LEARNED_TTL_S = 30 * 86400  # what was learned of the server outlives a pause of some weeks
ACTIVE_S = 15.0  # `status` lists hosts admitted within this long as active
TIMEOUT_S = 5.0  # a Redis slower than this counts as down
POLL_S = 1.0  # how often a host refused for the day asks whether other hosts' usage came back
HOLD_MARGIN_S = 30.0  # past the request timeout: an answer's settlement on a slow host
ADMITTED, DAY_SPENT, LATER, LOST = 0, 1, 2, 3
Totals = tuple[int, int, int, int]  # tokens, requests, reservations closed, charge
NOTHING: Totals = (0, 0, 0, 0)


def _minus(a: Totals, b: Totals) -> Totals:
    return a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3]


def _key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


def scope_name(scope: Scope) -> str:
    """How `status` lists a scope of a key: its API host and model (the key is the caller's)."""
    return f"{scope.host}|{scope.model}"


def key_secret(api_key: str) -> bytes:
    """What names a key's data in Redis: derived from the key itself, never stored or shown."""
    return hmac.new(api_key.encode(), b"batchrun shared state names", hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class _Names:
    """The Redis keys of one scope. They are an HMAC keyed by the API key, not the fingerprint
    `status` shows: a host that can read the Redis but does not hold the key cannot tell which
    names are that key's, and so cannot read its usage or set its `exhausted` or limits. (It
    can still scan and overwrite every name: only Redis ACLs or a database of its own keep out
    a host that must not touch the key's state at all.)"""

    scope: str
    per_key: str

    @classmethod
    def of(cls, secret: bytes, host: str, model: str) -> _Names:
        return cls(_mac(secret, "scope", host, model), _mac(secret, "scopes"))

    def lim(self) -> str:
        return _key("lim", self.scope)

    def day(self, day: dt.date) -> str:
        return _key("day", self.scope, day.isoformat())

    def hosts(self) -> str:
        return _key("hosts", self.scope)

    def open(self, day: dt.date) -> str:
        return _key("open", self.scope, day.isoformat())

    def scopes(self, day: dt.date) -> str:
        return _key("scopes", self.per_key, day.isoformat())

    def learned(self) -> str:
        return _key("learned", self.scope)

    def learned_scopes(self) -> str:
        """The scopes of the key something was learned of, for `estimate`."""
        return _key("learned-scopes", self.per_key)


def _mac(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()[:32]


def _old(kind: str, scope: Scope, *rest: str) -> str:
    """A name as batchrun before key-derived names wrote it."""
    return OLD_PREFIX + ":".join((kind, f"{scope.host}|{scope.key_fingerprint}|{scope.model}",
                                  *rest))


def _ratio(stored: object) -> Learned | None:
    """A learned accounting as Redis holds it (Learned.text()), or None when there is none
    usable: an earlier version's whole-charge ratio (a bare number) is not read as a prompt's
    k. The field keeps its name, so the admission script passes it through unchanged."""
    return None if stored is None else Learned.parse(stored)


class RedisState:
    """One connection to the shared state; one per process, made inside the running loop."""

    def __init__(self, client: Any, url: StateUrl, now_utc: Callable[[], dt.datetime],
                 host_id: str, keys: Iterable[str] = ()) -> None:
        self._client = client
        # fingerprint -> what names the key's data: only the keys this process holds
        self._secrets = {key_fingerprint(k): key_secret(k) for k in keys}
        self.url = url
        self._now_utc = now_utc
        self.host_id = host_id
        # This process's reservations are its own: hosts in one process (tests) or one host's
        # restarted process must not read them as another's.
        self.instance = f"{host_id}/{secrets.token_hex(4)}"
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)
        self._migrate = client.register_script(MIGRATE)
        self._epoch = ""
        self.failure: SharedStateError | None = None  # Redis failed: not asked again this run
        self._budgets: list[RedisBudget] = []
        self._late: set[asyncio.Future[Any]] = set()  # admissions a stop gave up waiting for
        self._writes: set[asyncio.Future[None]] = set()  # what was learned, being read/written

    @classmethod
    async def connect(cls, url: StateUrl, now_utc: Callable[[], dt.datetime] = utc_now,
                      timeout_s: float | None = None, host_id: str | None = None,
                      keys: Iterable[str] = ()) -> RedisState:
        """Connect and check the server answers; SharedStateError (exit 5) when it does not.
        `keys`: the API keys whose state this process may read and write."""
        timeout_s = timeout_s or TIMEOUT_S
        import redis.asyncio
        import redis.exceptions
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One quick retry mends a connection the server closed while idle; more would turn a
        # dead Redis into a long silence before the user hears of it. Not after a timeout: a
        # Redis that did not answer in time is down, and asking again doubles the wait.
        client = None
        try:
            client = redis.asyncio.from_url(
                url.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)))
            state = cls(client, url, now_utc,
                        host_id or f"{socket.gethostname()}:{os.getpid()}", keys)
            await state._call(state._open())
        except (ValueError, TypeError) as exc:  # an ?option= redis-py does not take
            if client is not None:
                await client.aclose()
            raise InputError(f"--state {url.shown} cannot be used: "
                             f"{redact(str(exc), *url.secrets)}") from None
        except BaseException:
            if client is not None:
                await client.aclose()
            raise
        return state

    async def _open(self) -> None:
        epoch = _key("epoch")
        await self._client.set(epoch, secrets.token_hex(8), nx=True, ex=DAY_TTL_S)
        self._epoch = (await self._client.get(epoch) or b"").decode()

    async def _call(self, work: Awaitable[Any]) -> Any:
        import redis.exceptions

        try:
            return await work
        except redis.exceptions.RedisError as exc:
            # Not asked again this run (close() gives nothing back to it): each question to a
            # Redis that stopped answering costs the whole timeout.
            self.failure = self.failure or self.unavailable(exc)
            raise self.failure from None

    def unavailable(self, exc: BaseException) -> SharedStateError:
        reason = redact(f"{type(exc).__name__}: {exc}", *self.url.secrets) if str(exc) else \
            type(exc).__name__
        return SharedStateError(
            f"The shared state at {self.url.shown} is unavailable ({reason}); nothing more "
            "is admitted: batchrun never falls back to local limits, which would overspend "
            "the key's quota.")

    def lost(self) -> SharedStateError:
        return SharedStateError(
            f"The shared state at {self.url.shown} was reset (Redis restarted without "
            "persistence, or its keys were deleted): today's usage across hosts is no longer "
            "known there. Nothing more is admitted. Turn on Redis persistence (appendonly) "
            "to keep it across restarts.")

    def now_utc(self) -> dt.datetime:
        return self._now_utc()

    def today(self) -> dt.date:
        return self._now_utc().date()

    def budget(self, scope: Scope, tpd: int, rpd: int, timeout_s: float = 600.0,
               job_id: str = "", job_tokens: Callable[[dt.date], int] | None = None,
               ) -> RedisBudget:
        """`timeout_s`: the run's request timeout, which bounds how long its reservations may
        be in flight. `job_tokens(day)`: the tokens job `job_id`'s earlier runs used that day
        (its manifest), counted here if this Redis does not hold them (it lost its memory)."""
        secret = self._secrets.get(scope.key_fingerprint)
        if secret is None:
            raise ValueError(f"no API key of {scope.key_fingerprint} was given to the state")
        budget = RedisBudget(self, scope, _Names.of(secret, scope.host, scope.model), tpd,
                             rpd, timeout_s + HOLD_MARGIN_S)
        if job_id and job_tokens is not None:
            budget.job = ("j:" + _mac(secret, "job", job_id), job_tokens)
        self._budgets.append(budget)
        # What other hosts learned is read at once, for whoever asks before the first admission.
        self._background(self.learned(budget))
        return budget

    async def learned(self, budget: RedisBudget) -> None:
        """Read what every host learned of this scope (the daily count, the accounting), and
        write what this host learned and has not yet written."""
        if self.failure is not None:
            return
        name = budget.names.learned()
        try:
            if budget.unlearned:
                fields, budget.unlearned = budget.unlearned, {}
                # One transaction: a key batchrun writes never stays without its expiry.
                write = self._client.pipeline(transaction=True)
                write.hset(name, mapping=fields)
                write.expire(name, LEARNED_TTL_S)
                write.sadd(budget.names.learned_scopes(), scope_name(budget.scope))
                write.expire(budget.names.learned_scopes(), LEARNED_TTL_S)
                await self._call(write.execute())
            counts, ratio = await self._call(self._client.hmget(name, "counts", "accounting"))
        except SharedStateError:
            return  # the next admission raises it
        budget.learned(counts == CHARGE.encode(), ratio)

    def learn(self, budget: RedisBudget) -> None:
        """Write what `budget` learned without waiting for it (close() waits)."""
        self._background(self.learned(budget))

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def admit(self, budget: RedisBudget, cost: int, day: dt.date, limits: Limits,
                    ) -> tuple[int, float, int, int]:
        """(status, wait_s, rpm, tpm); the day's counts go to `budget`."""
        if self.failure is not None:
            raise self.failure
        await self._flush(budget, other_than=day)
        if day not in budget.migrated:
            await self._from_old_names(budget, day)
            budget.migrated.add(day)
        seq, carried = budget.carry(day)
        back_t, back_r, closed, back_c = carried
        oks, budget.oks = budget.oks, 0
        n = budget.names
        job_field, job_tokens = budget.job_seed(day)
        keys = [n.lim(), n.day(day), n.hosts(), n.scopes(day), _key("epoch"), n.open(day),
                n.learned()]
        args = [self._epoch, self.host_id, scope_name(budget.scope), limits.rpm, limits.tpm,
                budget.tpd, budget.rpd, cost, back_t, back_r, oks, round(BURST_S * 1000),
                round(AHEAD_S * 1000), LIM_TTL_MS, DAY_TTL_S, round(ACTIVE_S * 1000),
                self.instance, closed, round(budget.hold_s * 1000), seq, back_c, job_field,
                job_tokens]
        call = asyncio.ensure_future(self._call(self._admit(keys=keys, args=args)))
        try:
            # Shielded: a stop that cancels this admission must still learn what Redis did.
            reply = await asyncio.shield(call)
        except BaseException as exc:
            budget.oks += oks
            if isinstance(exc, asyncio.CancelledError):  # (a done call: run at once)
                self._late.add(call)
                call.add_done_callback(lambda done: self._admitted_unsent(
                    done, budget, day, seq, carried, cost))
            raise
        budget.written(day, seq, carried)
        status, wait_ms, tokens, requests, exhausted, rpm, tpm, now_ms, held, billed_t, \
            charge, on_charge = (int(x) for x in reply[:12])
        if status == LOST:
            raise self.lost()
        budget.marked(day)
        budget.learned(bool(on_charge), reply[12])
        budget.seen(DayUsage(day, tokens, requests, bool(exhausted), charge,
                             exhausted == EXHAUSTED_REQUESTS), now_ms, billed_t)
        budget.held_elsewhere = held
        return status, wait_ms / 1000, rpm, tpm

    def _admitted_unsent(self, done: asyncio.Future[Any], budget: RedisBudget, day: dt.date,
                         seq: int, carried: Totals, cost: int) -> None:
        """The answer to an admission its caller gave up on (a stop): what it carried was
        written, and a request it admitted will never be sent, so its share goes back."""
        self._late.discard(done)
        if done.cancelled() or done.exception() is not None:
            return  # not known to have run: left counted, the safe side
        budget.written(day, seq, carried)
        if int(done.result()[0]) == ADMITTED:
            budget.never_sent(day, cost)

    async def settle(self, budget: RedisBudget, day: dt.date, kind: int = 0,
                     hint_s: float | None = None, admitted_ms: int = 0, rpm: int = 0,
                     tpm: int = 0, server_message: str = "") -> float:
        """Write what `budget` has to give back on `day` (and what a 429 or the headers
        taught) now; the shared pause."""
        n = budget.names
        seq, carried = budget.carry(day)
        tokens, requests, closed, charge = carried
        keys = [n.lim(), n.day(day), _key("epoch"), n.open(day)]
        args = [self._epoch, tokens, requests, kind, round((hint_s or 0) * 1000), admitted_ms,
                rpm, tpm, round(BURST_S * 1000), LIM_TTL_MS, DAY_TTL_S, self.instance, closed,
                seq, charge]
        status, pause_ms, billed_t, charged = (
            int(x) for x in await self._call(self._settle(keys=keys, args=args)))
        if status == LOST:
            raise self.lost()
        budget.counted(day, budget.written(day, seq, carried))
        if kind == 2:
            # A per-day 429's "Used U" shows which count the server's daily limit is on.
            counts = counted_by_server(server_message, billed_t, charged)
            if counts is not None:
                budget.unlearned["counts"] = counts
                budget.counts = counts
                await self.learned(budget)
        return pause_ms / 1000

    async def _from_old_names(self, budget: RedisBudget, day: dt.date) -> None:
        """A job that ran under batchrun before key-derived names keeps the day's usage, its
        learned limits and its reservations in flight: their keys are renamed (once, by
        whichever host comes first) to the new names. A host still on the old version writes
        the old names and counts apart until it is upgraded too."""
        scope, n, iso = budget.scope, budget.names, day.isoformat()
        keys = [_old("day", scope, iso), n.day(day), _old("lim", scope), n.lim(),
                _old("hosts", scope), n.hosts(), _old("open", scope, iso), n.open(day),
                OLD_PREFIX + f"scopes:{iso}", n.scopes(day)]
        old_member = f"{scope.host}|{scope.key_fingerprint}|{scope.model}"
        await self._call(self._migrate(keys=keys,
                                       args=[old_member, scope_name(scope), DAY_TTL_S]))

    async def _flush(self, budget: RedisBudget, other_than: dt.date | None = None) -> None:
        for day in budget.unwritten_days():
            if day != other_than:
                await self.settle(budget, day)

    async def close(self) -> None:
        """Give back what is pending; the connection closes even if Redis is gone (what is
        not given back stays counted: the safe side)."""
        try:
            if self._late:  # their give-backs are written with the rest
                await asyncio.wait(self._late, timeout=TIMEOUT_S)
            if self._writes:
                await asyncio.wait(self._writes, timeout=TIMEOUT_S)
            if self.failure is None:
                for budget in self._budgets:
                    try:
                        await self._flush(budget)
                    except SharedStateError:
                        break
        finally:
            await self._client.aclose()

    async def accountings(self, host: str, key_fingerprint: str) -> dict[str, Learned]:
        """Every model's learned accounting for one key (one this process holds) at one API
        host, as any host learned it."""
        secret = self._secrets.get(key_fingerprint)
        if secret is None:
            return {}
        members = await self._call(self._client.smembers(
            _Names.of(secret, "", "").learned_scopes()))
        found: dict[str, Learned] = {}
        for member in sorted(m.decode() for m in members):
            scope_host, _, model = member.partition("|")
            if scope_host == host:
                stored = await self._call(self._client.hget(
                    _Names.of(secret, host, model).learned(), "accounting"))
                ratio = _ratio(stored)
                if ratio is not None:
                    found[model] = ratio
        return found

    async def usage_rows(self, day: dt.date) -> list[dict[str, object]]:
        """Every (host, model) of the keys this process holds used on `day` across all hosts,
        with the hosts admitted lately, for `batchrun status`. Other keys' usage is not
        found: their names are derived from keys this process does not hold."""
        now = await self._call(self._client.time())
        now_ms = now[0] * 1000 + now[1] // 1000
        rows: list[dict[str, object]] = []
        for keyfp, secret in sorted(self._secrets.items()):
            per_key = _Names.of(secret, "", "")
            scopes = sorted(m.decode() for m in await self._call(
                self._client.smembers(per_key.scopes(day))))
            for member in scopes:
                host, _, model = member.partition("|")
                names = _Names.of(secret, host, model)
                rows.append(await self._usage_row(names, day, now_ms, host, keyfp, model))
        return rows

    async def _usage_row(self, n: _Names, day: dt.date, now_ms: int, host: str, keyfp: str,
                         model: str) -> dict[str, object]:
        fields = {k.decode(): v.decode() for k, v in (await self._call(
            self._client.hgetall(n.day(day)))).items()}
        recent = await self._call(self._client.zrangebyscore(
            n.hosts(), now_ms - ACTIVE_S * 1000, "+inf"))
        counts, ratio = await self._call(self._client.hmget(n.learned(), "counts",
                                                            "accounting"))
        try:
            return {
                "host": host, "key_fingerprint": keyfp, "model": model,
                "day": day.isoformat(), "tokens": int(fields.get("tokens", 0)),
                "charge": int(fields.get("charge", 0)),
                "requests": int(fields.get("requests", 0)),
                "tpd": int(fields.get("tpd", 0)), "rpd": int(fields.get("rpd", 0)),
                "exhausted": min(1, int(fields.get("exhausted", 0))),
                "accounting": None if (learned := _ratio(ratio)) is None else learned.text(),
                "daily_counts": CHARGE if counts == CHARGE.encode() else BILLED,
                "hosts": {k[2:]: int(v) for k, v in sorted(fields.items())
                          if k.startswith("h:")},
                "active_hosts": sorted(h.decode() for h in recent),
            }
        except ValueError:
            raise SharedStateError(
                f"The shared state at {self.url.shown} holds counts for {model} on {day} "
                "that are not numbers: something other than batchrun wrote its keys "
                f"({PREFIX}*).") from None


class RedisBudget:
    """One model's daily budget in Redis, as the engine reads it: the last counts Redis
    answered with (every admission brings them), less what this host is giving back."""

    def __init__(self, state: RedisState, scope: Scope, names: _Names, tpd: int, rpd: int,
                 hold_s: float) -> None:
        self.state, self.scope, self.tpd, self.rpd = state, scope, tpd, rpd
        self.names = names
        self.migrated: set[dt.date] = set()  # days whose old-named keys were looked for
        self.hold_s = hold_s  # how long a reservation of this run may be in flight, at most
        # day -> (tokens, requests, reservations closed) given back since the run began. Every
        # write to Redis carries these totals, numbered, and Redis applies only what a higher
        # number adds to the last totals it applied: a write that Redis ran but whose answer
        # never came (a stop cancelled it) is not applied twice by the next, and one that
        # failed is carried by the next.
        self._given: defaultdict[dt.date, Totals] = defaultdict(lambda: NOTHING)
        self._written: dict[dt.date, tuple[int, Totals]] = {}  # day -> (number, totals)
        self._seq = 0
        self.held_elsewhere = 0  # other processes' reservations in flight, at the last refusal
        self.oks = 0  # answers since the last admission: they end a streak of 429s
        self._usage = DayUsage(state.today(), 0, 0, False)
        self._billed = 0  # the day's billed tokens at the last answer (usage: the binding count)
        self._exhausted_day: dt.date | None = None
        self.now_ms = 0
        # Learned for the scope, every host's (Redis's `learned` hash): which count --tpd stops
        # on, and the server's charge per token of our estimate; `unlearned`: what this host
        # learned that Redis does not have yet.
        self.counts = BILLED
        self._accounting: Learned | None = None
        self.unlearned: dict[str, str] = {}
        # The job's field and its earlier runs' tokens by day (RedisState.budget), and the days
        # Redis answered an admission carrying them.
        self.job: tuple[str, Callable[[dt.date], int]] | None = None
        self._marked: set[dt.date] = set()
        self.spent: defaultdict[dt.date, int] = defaultdict(int)  # billed by this run, by day

    @property
    def _on_charge(self) -> bool:
        """The --tpd budget stops on the server's charge, not billed tokens."""
        return bool(self.tpd) and self.counts == CHARGE

    def learned(self, on_charge: bool, ratio: object) -> None:
        """What Redis holds of the scope's learned counts and accounting (as read), except
        what this host learned and is still writing."""
        if "counts" not in self.unlearned:
            self.counts = CHARGE if on_charge else BILLED
        if "accounting" not in self.unlearned:
            self._accounting = _ratio(ratio)

    def job_seed(self, day: dt.date) -> tuple[str, int]:
        """What an admission on `day` carries of the job: its field and what its earlier runs
        used that day, until Redis has answered one."""
        if self.job is None or day in self._marked:
            return "", 0
        field, tokens_on = self.job
        return field, max(0, tokens_on(day))

    def marked(self, day: dt.date) -> None:
        self._marked.add(day)

    @property
    def limited(self) -> bool:
        return bool(self.tpd or self.rpd)

    def seen(self, usage: DayUsage, now_ms: int, billed_tokens: int) -> None:
        """`usage.tokens`: the count the budget stops on (billed tokens or the charge)."""
        self._usage, self.now_ms, self._billed = usage, now_ms, billed_tokens
        if usage.exhausted:
            self._exhausted_day = usage.day

    def counted(self, day: dt.date, applied: Totals) -> None:
        """Redis has counted these too (a settlement of its own)."""
        u = self._usage
        if u.day == day:
            self._billed += applied[0]
            self._usage = DayUsage(day, u.tokens + applied[3 if self._on_charge else 0],
                                   u.requests + applied[1], u.exhausted, u.charge + applied[3])

    def give_back(self, day: dt.date, tokens: int, requests: int, closed: int = 0,
                  charge: int = 0) -> None:
        """Count this with the next write to Redis (negative: given back), `closed` tokens
        of reservations as no longer in flight and `charge` off the rate-limit charge (a
        request never sent)."""
        t, r, c, g = self._given[day]
        self._given[day] = (t + tokens, r + requests, c + closed, g + charge)

    def never_sent(self, day: dt.date, cost: int) -> None:
        """A reservation whose request never left this machine: the server counted neither
        its request nor its tokens nor its charge, so all of it goes back."""
        self.give_back(day, -cost, -1, cost, -cost)

    def carry(self, day: dt.date) -> tuple[int, Totals]:
        """The next write's number and the totals it carries for `day`."""
        self._seq += 1
        return self._seq, self._given[day]

    def written(self, day: dt.date, seq: int, totals: Totals) -> Totals:
        """Redis answered write `seq`: what it newly applied of `day`'s totals."""
        last, before = self._written.get(day, (0, NOTHING))
        if seq <= last:
            return NOTHING
        self._written[day] = (seq, totals)
        return _minus(totals, before)

    def unwritten(self, day: dt.date) -> Totals:
        return _minus(self._given.get(day, NOTHING), self._written.get(day, (0, NOTHING))[1])

    def unwritten_days(self) -> list[dt.date]:
        return [day for day in list(self._given) if self.unwritten(day) != NOTHING]

    def near_end(self, cost: int, extra: int) -> bool:
        """Would so little of the day's token budget be left after `extra` tokens above a
        reservation of `cost` that they must be written now, not with the next admission?"""
        left = self.tpd - self.used_today()[0] - extra
        return bool(self.tpd) and left < max(cost, self.tpd * LEASE_SHARE)

    def used_today(self) -> tuple[int, int]:
        u = self._usage
        t, r, _, charge = self.unwritten(u.day)
        return u.tokens + (charge if self._on_charge else t), u.requests + r

    def release(self) -> None:
        """Nothing is leased; what is pending is given back when the state closes."""

    def describe(self, server_message: str = "") -> str:
        tokens, requests = self.used_today()
        u = self._usage
        return describe_usage(DayUsage(u.day, tokens, requests, u.exhausted,
                                       exhausted_requests=u.exhausted_requests),
                              self.scope.model, self.tpd, self.rpd, server_message)

    def exhaust(self, day: dt.date, server_message: str = "") -> None:
        """The API said the day is spent. The settlement already told Redis, and learned there
        which count the server's message shows it counts (RedisState.settle)."""
        self._exhausted_day = day
        u = self._usage
        if u.day == day and about_requests(server_message):
            # Said at once, before the next admission reads the day back from Redis.
            self._usage = dataclasses.replace(u, exhausted=True, exhausted_requests=True)

    def record_accounting(self, learned: Learned) -> None:
        """Keep the server's learned prompt charge for every host of the key (written in the
        background). What does not read back as evidence is not kept."""
        if learned.plausible:
            self._accounting = learned
            self.unlearned["accounting"] = learned.text()
            self.state.learn(self)

    def accounting(self) -> Learned | None:
        """The learned prompt charge, as any host of the key learned it
        last (read when the budget opens and with every admission), or None."""
        return self._accounting

    def is_exhausted(self, day: dt.date) -> bool:
        return self._exhausted_day == day

    def may_come_back(self, cost: int) -> bool:
        """After a refusal: could other processes' reservations in flight, once settled,
        leave room for `cost`? (Requests sent stay counted; the API's own "spent" is final.)"""
        u = self._usage
        # The charge is what admission reserved and stays: nothing in flight gives it back.
        return (bool(self.held_elsewhere) and not u.exhausted and not self._on_charge
                and not (self.rpd and u.requests + 1 > self.rpd)
                and u.tokens - self.held_elsewhere + cost <= self.tpd)

    def gate(self, limits: Limits, concurrency: int | None, clock: Callable[[], float],
             sleep: Callable[[float], Awaitable[None]]) -> RedisGate:
        limiter = SlotLimiter(limits.rpm, limits.tpm, concurrency, clock, sleep)
        return RedisGate(self, limiter, limits, clock, sleep)


class RedisGate:
    """Admission through Redis: a local in-flight slot, then the ADMIT script, then the wait
    it prescribes."""

    def __init__(self, budget: RedisBudget, limiter: SlotLimiter, limits: Limits,
                 clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
        self.budget, self.limiter, self._limits = budget, limiter, limits
        self._clock, self._sleep = clock, sleep
        self._admitted_ms: dict[int, int] = {}  # id(ticket) -> Redis time of its admission
        self._known = (limits.rpm, limits.tpm)

    async def admit(self, cost: int, now: float) -> tuple[dt.date, Ticket] | None:
        b, state = self.budget, self.budget.state
        day = state.today()
        if b.is_exhausted(day):
            return None
        ticket = await self.limiter.acquire(cost)
        held, given_up_at = 0, 0.0
        try:
            while True:
                day = state.today()
                status, wait_s, rpm, tpm = await state.admit(b, cost, day, self._limits)
                if (rpm, tpm) != self._known:
                    self._known = (rpm, tpm)
                    self.limiter.adopt(rpm, tpm)
                if status == DAY_SPENT:
                    if not b.may_come_back(cost):
                        self.limiter.release(ticket, None)
                        return None
                    # Other hosts' reservations may settle below their charge: the day is
                    # spent only once they have (or, a dead host's, their hold has passed).
                    if b.held_elsewhere < held or not given_up_at:
                        given_up_at = self._clock() + b.hold_s
                    elif self._clock() >= given_up_at:
                        self.limiter.release(ticket, None)
                        return None
                    held = b.held_elsewhere
                    wait_s = POLL_S
                elif status == ADMITTED:
                    break
                await self._sleep(wait_s)
            if wait_s > 0:
                try:
                    await self._sleep(wait_s)
                except BaseException:
                    b.never_sent(day, cost)
                    raise
        except BaseException:
            self.limiter.release(ticket, None)
            raise
        self._admitted_ms[id(ticket)] = b.now_ms
        return day, ticket

    async def settle(self, day: dt.date, ticket: Ticket, cost: int, outcome: Outcome,
                     server: ServerState | None) -> None:
        b, kind = self.budget, outcome.kind
        admitted_ms = self._admitted_ms.pop(id(ticket), 0)
        self.limiter.release(ticket, None if kind is Kind.RATE_MINUTE else server,
                             ok=kind is Kind.OK)
        b.oks += kind is Kind.OK
        actual = min(max(0, billed(outcome, cost)), MAX_USAGE)
        b.spent[day] += actual
        extra = actual - cost
        rpm, tpm = self._lower_limits(server)
        code = {Kind.RATE_MINUTE: 1, Kind.RATE_DAY: 2}.get(kind, 0)
        if code == 2 and about_requests(outcome.message):
            code = 3  # the API's request limit spent the day, not a token count
        # Near the day's end a give-back is written at once too: other hosts may be waiting
        # for it (RedisGate.admit).
        at_once = bool(code or rpm or tpm) or b.near_end(cost, max(0, extra))
        if outcome.sent:
            b.give_back(day, extra, 0, cost)
        else:
            b.never_sent(day, cost)
        if not at_once:
            return
        state = b.state
        # A per-day 429 marks the day the server meant; the usage is the reservation's day's,
        # as always (it rides with the next write to that day).
        spent = self._servers_day(outcome.hint_s, day) if code >= 2 else day
        try:
            pause = await state.settle(b, spent, code, outcome.hint_s, admitted_ms, rpm, tpm,
                                       outcome.message)
        except SharedStateError as exc:
            # Answered and written all the same; the next admission stops the run.
            state.failure = state.failure or exc
            return
        if code == 1:
            self.limiter.shared_pause = pause

    def _servers_day(self, hint_s: float | None, day: dt.date) -> dt.date:
        """The UTC day a per-day 429 is about (see _midnight.py): marking `day` spent when the
        server meant its yesterday would stop every host for a day the server has not begun."""
        if servers_yesterday(day, self.budget.state.now_utc(), hint_s):
            return day - dt.timedelta(days=1)
        return day

    def _lower_limits(self, server: ServerState | None) -> tuple[int, int]:
        if server is None:
            return 0, 0
        rpm, tpm = self._known
        seen_r, seen_t = server.limit_requests or 0, server.limit_tokens or 0
        return (seen_r if 0 < seen_r < rpm else 0), (seen_t if 0 < seen_t < tpm else 0)

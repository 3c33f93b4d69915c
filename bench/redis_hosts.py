"""Many hosts, one key, through `--state redis://`: four `batchrun submit` processes (each its own
$BATCHRUN_HOME) against one simulator that enforces 1 s windows, and the per-request cost of Redis
admission against the local SQLite default at no limit.

    python bench/redis_hosts.py                  # four hosts, with and without --state
    python bench/redis_hosts.py --overhead-only  # the per-request cost only

Needs redis-server (Debian: apt-get install redis-server) and the redis client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from overhead import run_once, write_jobs  # noqa: E402

from batchrun.simulator import SimConfig, SimLimits, SimServer, Simulator  # noqa: E402
from tests.helpers.redis_server import RedisServer  # noqa: E402


class ThreadSim:
    """The simulator in this process (its own thread and loop), so its counts can be read."""

    def __init__(self, config: SimConfig) -> None:
        self.sim = Simulator(config)
        self.base_url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with SimServer(self.sim) as server:
            self.base_url = server.base_url
            self._ready.set()
            await self._stop.wait()


def redis_calls(redis: RedisServer) -> int:
    import redis as client

    r = client.Redis(host="127.0.0.1", port=redis.port)
    stats = r.info("commandstats")
    r.close()
    # Round trips: the scripts (commandstats also counts the commands run inside them).
    return sum(int(v["calls"]) for k, v in stats.items()
               if k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script"))


def four_hosts(redis: RedisServer | None, rpm: int, lines: int, tmp: Path,
               hosts: int = 4) -> dict[str, float]:
    sim = ThreadSim(SimConfig(SimLimits(rpm=rpm, window_s=1.0), latency_s=0.1, jitter_s=0.05))
    if redis is not None:
        redis.flush()
        import redis as client

        r = client.Redis(host="127.0.0.1", port=redis.port)
        r.config_resetstat()
        r.close()
    procs = []
    for n in range(hosts):
        jobs = tmp / f"jobs{n}.jsonl"
        jobs.write_bytes(b"".join(orjson.dumps(
            {"id": f"h{n}-{i}", "prompt": f"Question {i} from host {n}", "max_tokens": 10})
            + b"\n" for i in range(lines)))
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "BATCHRUN_HOME": str(tmp / f"h{n}")}
        env.pop("BATCHRUN_STATE", None)
        if redis is not None:
            env["BATCHRUN_STATE"] = redis.url
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "batchrun", "submit", str(jobs), "-o",
             str(tmp / f"out{n}-{redis is not None}.jsonl"), "--base-url", sim.base_url,
             # --no-cache: the hosts' pacing is measured, not the response cache's answers
             "--rpm", str(rpm), "-q", "--no-cache"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a host exited {p.returncode}: {err}")
    stats = sim.sim.stats
    times = sorted(t for t, _ in stats.admitted_at)
    share = (len(times) - 1) / (times[-1] - times[0]) / (rpm / 60)
    # Without the first seconds: the server's bucket starts full, which flatters a short run.
    steady = [t for t in times if t >= times[0] + 2]
    steady_share = (len(steady) - 1) / (steady[-1] - steady[0]) / (rpm / 60)
    calls = redis_calls(redis) if redis is not None else 0
    return {"share": share, "steady": steady_share, "429s": stats.rate_limited / stats.received,
            "received": stats.received, "per_request": calls / len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rpm", type=int, default=3_000)
    parser.add_argument("--lines", type=int, default=500, help="per host")
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--requests", type=int, default=5_000, help="for the overhead runs")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--overhead-only", action="store_true")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the four hosts without shared state")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        redis = RedisServer(tmp).start()
        try:
            if not args.overhead_only:
                modes = [("--state redis://", redis), ("no shared state", None)]
                for label, server in modes[:1] if args.no_baseline else modes:
                    r = four_hosts(server, args.rpm, args.lines, tmp, args.hosts)
                    trips = f", {r['per_request']:.2f} Redis calls/request" if server else ""
                    print(f"{args.hosts} hosts, {label}: {r['share']:.1%} of {args.rpm:,} RPM "
                          f"({r['steady']:.1%} after the first 2 s), "
                          f"{r['429s']:.1%} 429s of {r['received']:,} received{trips}")
            jobs = tmp / "overhead.jsonl"
            write_jobs(jobs, args.requests)
            rates: dict[str, list[float]] = {"sqlite": [], "redis": []}
            for i in range(args.runs):
                for label in rates:
                    os.environ.pop("BATCHRUN_STATE", None)
                    if label == "redis":
                        os.environ["BATCHRUN_STATE"] = redis.url
                    # --no-cache: Redis's cost for the limiter and ledger, as before the
                    # cache (bench/cache_store.py measures the cache's own calls)
                    rate, _, _ = run_once(jobs, tmp / "o.jsonl", tmp / f"o{label}{i}", False,
                                          ("--no-cache",))
                    rates[label].append(rate)
            sq, rd = (statistics.median(rates[k]) for k in ("sqlite", "redis"))
            print(f"no limit, {args.requests:,} requests, median of {args.runs}: local "
                  f"{sq:,.0f} req/s, redis {rd:,.0f} req/s: {(1 / rd - 1 / sq) * 1e6:,.0f} µs "
                  "more per request")
        finally:
            redis.stop()


if __name__ == "__main__":
    start = time.monotonic()
    main()
    print(f"({time.monotonic() - start:.0f} s)")

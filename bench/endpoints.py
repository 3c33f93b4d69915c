"""Several endpoints for one job: combined throughput against the summed ideal, and 429s.

Each endpoint is `python -m batchrun.simulator` in its own process, with its own RPM enforced in 1 s
windows (the servers the issue measured LiteLLM's Router against: a minute's burst is a 429
storm there), 300 ms ±30 % latency. `batchrun submit --endpoints` runs as a subprocess with the
file's per-endpoint limits; the figures come from its `--json` summary.

The ideal: every endpoint's window starts full, then each admits its RPM/60 a second, so N
requests take (N - the first windows' worth) / (summed RPM / 60) seconds, plus one latency.

    python bench/endpoints.py                             # 600 + 1,200 RPM, 900 requests, 3 runs
    python bench/endpoints.py --rpm 600 1200 1800 --requests 1800
    python bench/endpoints.py --tpd-first 10000            # the first runs out of its day

With --tpd-first the first endpoint's daily token budget runs out mid-job. Its ideal: both
serve until the first has done what its budget covered (as many requests as it answered in the
run), then the others alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from throughput import free_port

LATENCY_S = 0.3
WINDOW_S = 1.0


def ideal_seconds(rpms: list[int], requests: int, first_served: int | None = None) -> float:
    rate = sum(rpms) / 60
    first = sum(rpm / 60 * WINDOW_S for rpm in rpms)
    if first_served is None:
        return max(0.0, requests - first) / rate + LATENCY_S
    r0, rest = rpms[0] / 60, sum(rpms[1:]) / 60
    spent_at = max(0.0, first_served - r0 * WINDOW_S) / r0
    by_then = (first - r0 * WINDOW_S) + rest * spent_at
    return spent_at + max(0.0, requests - first_served - by_then) / rest + LATENCY_S


def run_once(rpms: list[int], requests: int, workdir: Path, tpd_first: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(dir=workdir))  # each run is a new job
    jobs = workdir / "jobs.jsonl"
    with jobs.open("wb") as f:
        for i in range(requests):
            f.write(orjson.dumps({"id": f"q{i}", "prompt": f"Question {i}: say hi",
                                  "max_tokens": 16}) + b"\n")
    servers, blocks = [], []
    try:
        for n, rpm in enumerate(rpms):
            port = free_port()
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "batchrun.simulator", "--port", str(port), "--rpm", str(rpm),
                 "--window", str(WINDOW_S), "--latency", str(LATENCY_S),
                 "--jitter", str(0.3 * LATENCY_S), "--seed", str(n)],
                stdout=subprocess.PIPE, text=True))
            blocks.append(f'[[endpoint]]\nname = "ep{n}"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
                          f'api_key_env = "BENCH_KEY_{n}"\n[endpoint.limits."gpt-4o-mini"]\n'
                          f"rpm = {rpm}\ntpm = 0\nrpd = 0\ntpd = {tpd_first if n == 0 else 0}\n")
        for server in servers:
            assert server.stdout is not None
            server.stdout.readline()  # "listening on ..."
        conf = workdir / "endpoints.toml"
        conf.write_text("\n".join(blocks))
        # One home for every run (and --no-cache): the routing is measured, not answers
        # stored by an earlier run.
        env = {**os.environ, "BATCHRUN_HOME": str(workdir / "batchrun-home"),
               **{f"BENCH_KEY_{n}": f"sk-bench-{n}" for n in range(len(rpms))}}
        proc = subprocess.run(
            [sys.executable, "-m", "batchrun", "submit", str(jobs), "--json",
             "--endpoints", str(conf), "--no-cache"],
            capture_output=True, text=True, env=env, check=False)
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    if proc.returncode != 0:
        raise SystemExit(f"batchrun exited {proc.returncode}\n{proc.stderr}")
    return orjson.loads(proc.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rpm", type=int, nargs="+", default=[600, 1200])
    parser.add_argument("--requests", type=int, default=900)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tpd-first", type=int, default=0, help="first endpoint's TPD")
    args = parser.parse_args()
    ideal = ideal_seconds(args.rpm, args.requests)
    shares, rates, splits = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            s = run_once(args.rpm, args.requests, Path(tmp), args.tpd_first)
            if args.tpd_first:
                ideal = ideal_seconds(args.rpm, args.requests,
                                      s["endpoints"]["ep0"]["requests"])
            shares.append(ideal / s["wall_seconds"])
            rates.append(s["rate_limited_429"] / max(1, s["requests"]["ok"]))
            splits.append([e["requests"] for e in s["endpoints"].values()])
            print(f"  run: {s['wall_seconds']:.1f}s, share {shares[-1]:.1%}, 429s "
                  f"{s['rate_limited_429']}, split {splits[-1]}", flush=True)
    rpm = " + ".join(f"{r:,}" for r in args.rpm) + (
        f" (first: {args.tpd_first:,} TPD)" if args.tpd_first else "")
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| endpoints (RPM, 1 s windows) | requests | ideal | share of ideal (median) | "
          "429s per success (median) | split (median run) | runs |")
    print("|---|---|---|---|---|---|---|")
    mid = sorted(range(len(shares)), key=shares.__getitem__)[len(shares) // 2]
    print(f"| {rpm} | {args.requests:,} | {ideal:.1f} s | {statistics.median(shares):.1%} | "
          f"{statistics.median(rates):.2%} | {' / '.join(map(str, splits[mid]))} | "
          f"{args.runs} |")


if __name__ == "__main__":
    main()

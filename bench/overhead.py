"""Client overhead: completed requests per second with no limits and ~0 latency.

The simulator runs in its own process (one core each). Target: >= 2,000 requests/s on a
2-core machine. Also reports peak RSS of the batchrun process.

    python bench/overhead.py                     # 50,000 requests, 3 runs
    python bench/overhead.py --requests 1000000 --runs 1   # memory at scale
    python bench/overhead.py --with-ledger       # keep tier 1's daily budget (a ledger
                                                 # transaction per request)
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

# batchrun's own peak RSS, reported by the process itself as it exits.
MEASURED = (
    "import resource, sys\n"
    "from batchrun.cli.commands import run\n"
    "code = run(sys.argv[1:])\n"
    "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "sys.stderr.write(f'PEAK_RSS_KB {peak}\\n')\n"
    "sys.exit(code)\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_jobs(path: Path, n: int) -> None:
    with path.open("wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"id": f"r{i}", "prompt": f"Say {i}", "max_tokens": 5}) + b"\n")


def run_once(jobs: Path, out: Path, home: Path, with_ledger: bool,
             extra: tuple[str, ...] = ()) -> tuple[float, float, int]:
    """One run in a fresh `home`: its response cache starts empty, so every line is sent and
    the cache's lookups and stores are part of what is measured."""
    out.unlink(missing_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "batchrun.simulator", "--port", str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        limits = [] if with_ledger else ["--rpm", "0", "--tpm", "0", "--rpd", "0", "--tpd", "0"]
        if with_ledger:
            limits = ["--rpm", "0", "--tpm", "0", "--rpd", "0", "--tpd", "10000000000"]
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "BATCHRUN_HOME": str(home)}
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", MEASURED, "submit", str(jobs), "-o", str(out), "--json",
             "--base-url", f"http://127.0.0.1:{port}/v1", *limits, *extra],
            capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait()
    if proc.returncode != 0:
        raise SystemExit(f"batchrun exited {proc.returncode}\n{proc.stderr}")
    summary = orjson.loads(proc.stdout)
    ok = summary["requests"]["ok"]
    peak_kb = int(proc.stderr.rsplit("PEAK_RSS_KB ", 1)[1].split()[0])
    return ok / summary["wall_seconds"], wall, peak_kb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--with-ledger", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.jsonl"
        write_jobs(jobs, args.requests)
        results = [run_once(jobs, Path(tmp) / "out.jsonl", Path(tmp) / f"home{i}",
                            args.with_ledger) for i in range(args.runs)]
    rates = [r[0] for r in results]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    print(f"{args.requests:,} requests{' with the ledger' if args.with_ledger else ''}: "
          f"median {statistics.median(rates):,.0f} req/s over {args.runs} runs "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}); whole command "
          f"{statistics.median(r[1] for r in results):.1f} s; batchrun's peak RSS "
          f"{max(r[2] for r in results) / 1024:.0f} MB")


if __name__ == "__main__":
    main()

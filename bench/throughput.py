"""Throughput against the limit: how close batchrun comes to the ideal finishing time.

Each scenario starts the simulator in its own process (so client and server each get a core),
runs `batchrun submit` as a subprocess with the true limits, and compares the job's wall time with
the ideal: the server's bucket starts full, so the ideal is (work - one bucket) / refill rate,
plus one round trip. Prints a Markdown table of medians over --runs runs.

    python bench/throughput.py                # all scenarios, 3 runs each (~10 minutes)
    python bench/throughput.py --runs 1 --only rpm-1s
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

_TEXT = ("the quick brown fox jumps over a lazy dog while batch jobs wait for their turn at the "
         "rate limiter and tokens refill every second")
WORDS = _TEXT.split(" ")


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    rpm: int
    tpm: int
    window_s: float
    latency_s: float
    requests: int
    prompt_chars: int
    max_tokens: int
    told_rpm: int | None = None  # what the client is told, when it differs from the server


SCENARIOS = [
    Scenario("tpm-1s", "TPM-bound, 1 s windows, 300 ms", 500, 200_000, 1.0, 0.3, 103, 400, 900),
    Scenario("rpm-1s", "RPM-bound, 1 s windows, 300 ms", 500, 200_000, 1.0, 0.3, 258, 60, 20),
    Scenario("rpm-2s-latency", "RPM-bound, 1 s windows, 2 s latency", 500, 200_000, 1.0, 2.0,
             258, 60, 20),
    Scenario("tpm-minute", "TPM-bound, whole-minute bucket, 300 ms", 500, 200_000, 60.0, 0.3,
             300, 400, 900),
    Scenario("rpm-10s", "RPM-bound, 10 s windows (Azure-like), 300 ms", 500, 200_000, 10.0, 0.3,
             333, 60, 20),
    Scenario("rpm-told-double", "RPM-bound, 1 s windows, client told 2x the real RPM", 500,
             200_000, 1.0, 0.3, 258, 60, 20, told_rpm=1000),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prompt(i: int, chars: int) -> str:
    text, k = f"Request {i}: ", i
    while len(text) < chars:
        text += WORDS[k % len(WORDS)] + " "
        k += 7
    return text[:chars]


def server_cost(sc: Scenario) -> int:
    # The simulator's admission charge: prompt characters / 4 plus max_tokens.
    return math.ceil(sc.prompt_chars / 4) + sc.max_tokens


def ideal_seconds(sc: Scenario) -> float:
    """The server admits one bucket at once, then refills at the per-minute rate."""
    times = []
    for limit, unit in ((sc.rpm, 1), (sc.tpm, server_cost(sc))):
        rate = limit / 60
        bucket = rate * sc.window_s
        times.append(max(0.0, (sc.requests * unit - bucket) / rate))
    return max(times) + sc.latency_s


def run_once(sc: Scenario, workdir: Path) -> dict[str, float]:
    jobs = workdir / f"{sc.name}.jsonl"
    with jobs.open("wb") as f:
        for i in range(sc.requests):
            f.write(orjson.dumps({"id": f"{sc.name}-{i}", "prompt": prompt(i, sc.prompt_chars),
                                  "max_tokens": sc.max_tokens}) + b"\n")
    out = workdir / f"{sc.name}.results.jsonl"
    out.unlink(missing_ok=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "batchrun.sim", "--port", str(port), "--rpm", str(sc.rpm),
         "--tpm", str(sc.tpm), "--window", str(sc.window_s), "--latency", str(sc.latency_s),
         "--jitter", str(sc.latency_s / 6)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "listening on ..."
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
        proc = subprocess.run(
            [sys.executable, "-m", "batchrun", "submit", str(jobs), "-o", str(out), "--json",
             "--base-url", f"http://127.0.0.1:{port}/v1", "--rpm", str(sc.told_rpm or sc.rpm),
             "--tpm", str(sc.tpm), "--rpd", "0", "--tpd", "0"],
            capture_output=True, text=True, env=env, check=False,
        )
    finally:
        server.terminate()
        server.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{sc.name}: batchrun exited {proc.returncode}\n{proc.stderr}")
    summary = orjson.loads(proc.stdout)
    ok = summary["requests"]["ok"]
    return {
        "wall": summary["wall_seconds"],
        "share": ideal_seconds(sc) / summary["wall_seconds"],
        "429_per_ok": summary["rate_limited_429"] / max(1, ok),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", action="append", help="scenario name (repeatable)")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print("| scenario | requests | ideal s | median wall s | share of ideal (min–max) | "
          "429s per ok |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for sc in chosen:
            runs = [run_once(sc, Path(tmp)) for _ in range(args.runs)]
            shares = [r["share"] for r in runs]
            print(f"| {sc.what} | {sc.requests} | {ideal_seconds(sc):.1f} | "
                  f"{statistics.median(r['wall'] for r in runs):.1f} | "
                  f"{statistics.median(shares):.1%} ({min(shares):.1%}–{max(shares):.1%}) | "
                  f"{statistics.median(r['429_per_ok'] for r in runs):.2%} |", flush=True)


if __name__ == "__main__":
    main()

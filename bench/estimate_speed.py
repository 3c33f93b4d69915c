"""How long `batchrun estimate` takes on 100,000 lines of ~200-token prompts (target: < 10 s).

    python bench/estimate_speed.py            # 3 runs, median
    python bench/estimate_speed.py --lines 1000000 --runs 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

_TEXT = ("rate limits decide how long a batch job takes so the estimate must be exact about "
         "tokens and honest about output while reading a large file quickly")
WORDS = _TEXT.split(" ")


def write_jobs(path: Path, lines: int) -> None:
    with path.open("wb") as f:
        for i in range(lines):
            words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(175)]  # ~200 tokens
            f.write(orjson.dumps({"id": f"r{i}", "max_tokens": 200, "messages": [
                {"role": "system", "content": "Answer in one paragraph."},
                {"role": "user", "content": f"Item {i}: " + " ".join(words)}]}) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.jsonl"
        write_jobs(jobs, args.lines)
        size_mb = jobs.stat().st_size / 1e6
        times, prompt_tokens = [], 0
        for _ in range(args.runs):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "batchrun", "estimate", str(jobs),
                                   "--json"], capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - start)
            prompt_tokens = orjson.loads(proc.stdout)["models"][0]["prompt_tokens"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    print(f"{args.lines:,} lines ({size_mb:.0f} MB, {prompt_tokens / args.lines:.0f} prompt "
          f"tokens per line): median {statistics.median(times):.2f} s over {args.runs} runs "
          f"(min {min(times):.2f}, max {max(times):.2f}), wall time of the whole command")


if __name__ == "__main__":
    main()

"""Resume at scale: with 1,000,000 lines of which 900,000 are done, how soon does the first new
request go out? (target: within 5 s of starting `batchrun resume`).

    python bench/resume_speed.py              # 3 runs, median
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from batchrun.files.checkpoint import result_line
from batchrun.simulator import SimServer, Simulator


def serve(sim: Simulator, ready: threading.Event, port: list[int]) -> None:
    async def main() -> None:
        async with SimServer(sim) as server:
            port.append(server.port)
            ready.set()
            await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--done", type=int, default=900_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sim = Simulator()
    ready, port = threading.Event(), []
    threading.Thread(target=serve, args=(sim, ready, port), daemon=True).start()
    ready.wait()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs, out = Path(tmp) / "jobs.jsonl", Path(tmp) / "jobs.results.jsonl"
        with jobs.open("wb") as f:
            for i in range(args.lines):
                f.write(orjson.dumps({"id": f"r{i}", "prompt": f"Say {i}", "max_tokens": 5})
                        + b"\n")
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "BATCHRUN_HOME": f"{tmp}/home"}
        base = ["--base-url", f"http://127.0.0.1:{port[0]}/v1", "--rpm", "0", "--tpm", "0",
                "--tpd", "0", "--rpd", "0", "-q"]
        # A real first run, stopped by SIGKILL, makes the manifest; then the output is
        # replaced by 900,000 done lines, as if the job had got that far before the kill.
        first = subprocess.Popen([sys.executable, "-m", "batchrun", "submit", str(jobs), *base],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while sim.stats.received == 0:
            time.sleep(0.01)
        first.kill()
        first.wait()
        body = {"choices": [{"message": {"content": "done"}}]}
        with out.open("wb") as f:
            for i in range(args.done):
                f.write(result_line(f"r{i}", 200, "req", body, None))
        for _ in range(args.runs):
            received = sim.stats.received
            start = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "batchrun", "resume", str(out), "-q",
                                     *base[6:-1]], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            while sim.stats.received == received:
                time.sleep(0.005)
            times.append(time.monotonic() - start)
            proc.kill()
            proc.wait()
            # Back to exactly 900,000 done lines for the next run.
            with out.open("r+b") as f:
                f.truncate(sum(len(result_line(f"r{i}", 200, "req", body, None))
                               for i in range(args.done)))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    print(f"{args.lines:,} lines, {args.done:,} done: first new request after median "
          f"{statistics.median(times):.2f} s over {args.runs} runs (min {min(times):.2f}, max "
          f"{max(times):.2f}), from the start of `batchrun resume`")


if __name__ == "__main__":
    main()

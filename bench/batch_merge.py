"""Merging Batch API results: how long and how much memory to merge the output files of a
200,000-line job into its output, exactly once per custom_id (batchrun.backends.batch.collect).

    python bench/batch_merge.py                 # 200,000 lines in 4 parts of 50,000
    python bench/batch_merge.py --lines 1000000
    python bench/batch_merge.py --job           # the whole job: submit --simulate --via batch

Each part's output file is written as the API writes one (a chat completion per line), then
merged through the job's OutputWriter; a second merge of the same files (a resume after a crash
between merging and recording) must write nothing. Reports wall time per merge, lines/s, and
the Python heap peak during the merges (tracemalloc) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

from batchrun.backends.batch.collect import Collector, Merged
from batchrun.files.checkpoint import OutputWriter, read_output

PART = 50_000


def answer_line(i: int) -> bytes:
    cid = f"r{i}"
    # Ids as the API writes them: random, not counters (so no long runs of digits).
    return orjson.dumps({"id": f"batch_req_{random.getrandbits(96):024x}", "custom_id": cid,
                         "response": {
        "status_code": 200, "request_id": f"req_{i:x}", "body": {
            "id": f"chatcmpl-{i}", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": f"The answer to question {i} is {i * 7}."}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 11, "total_tokens": 23}}},
        "error": None}) + b"\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("the simulator did not start")


def whole_job(lines: int) -> None:
    """`batchrun submit --via batch` of `lines` requests against the simulator's Batch API in
    a process of its own (`python -m batchrun.simulator`), so the peak RSS is batchrun's alone."""
    port = _free_port()
    sim = subprocess.Popen([sys.executable, "-m", "batchrun.simulator", "--port", str(port),
                            "--batch-seconds", "5"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        _wait_for(port)
        with tempfile.TemporaryDirectory() as tmp:
            _job(lines, port, Path(tmp))
    finally:
        sim.terminate()
        sim.wait()


def _job(lines: int, port: int, tmp: Path) -> None:
    jobs = tmp / "jobs.jsonl"
    with jobs.open("wb") as f:
        for i in range(lines):
            f.write(orjson.dumps({"id": f"r{i}", "prompt": f"Question {i}: say yes.",
                                  "max_tokens": 5}) + b"\n")
    env = {**os.environ, "BATCHRUN_HOME": f"{tmp}/home", "OPENAI_API_KEY": "sk-bench"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "batchrun", "submit", str(jobs), "--via",
                             "batch", "--base-url", f"http://127.0.0.1:{port}/v1", "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        raise SystemExit(stderr.decode()[-2000:])
    summary = orjson.loads(stdout)
    scan = read_output(Path(summary["results"]))
    assert len(scan.done) == lines == scan.lines, "not exactly one line per id"
    manifest = orjson.loads(next((tmp / "home" / "jobs").glob("*.json")).read_bytes())
    sizes = ", ".join(f"{p['count']:,}" for p in manifest["batch"]["parts"])
    print(f"{lines:,} requests · submit --via batch against python -m batchrun.simulator "
          f"--batch-seconds 5 (2,000,000-token queue) · {platform.python_version()} · "
          f"{platform.machine()}")
    print(f"  {seconds:.1f} s wall · parts of {sizes} requests · batchrun's peak RSS "
          f"{rss:.0f} MB · {summary['requests']['ok']:,} ok, one line per id · cost "
          f"${summary['cost_usd']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--job", action="store_true", help="run the whole job instead")
    args = parser.parse_args()
    if args.job:
        whole_job(args.lines)
        return
    with tempfile.TemporaryDirectory() as tmp:
        files, parts = [], []
        for start in range(0, args.lines, PART):
            path = Path(tmp) / f"part-{start // PART}.output.jsonl"
            ids = range(start, min(args.lines, start + PART))
            path.write_bytes(b"".join(answer_line(i) for i in ids))
            files.append(path)
            parts.append({f"r{i}" for i in ids})
        size = sum(f.stat().st_size for f in files)
        output = Path(tmp) / "jobs.results.jsonl"
        done: set[str] = set()
        runs = []
        # Timed without tracemalloc (it slows allocation several times); the heap is measured
        # by a third merge into a fresh output.
        for label in ("merge", "merge again (resume)", "heap"):
            if label == "heap":
                output.unlink()
                done.clear()
                tracemalloc.start()
            writer = OutputWriter(output)
            collector = Collector(writer, done, lambda event: None)
            t0 = time.perf_counter()
            merged = Merged()
            for path, ids in zip(files, parts, strict=True):
                collector.merge(path, ids, "gpt-4o-mini", 1, merged)
            seconds = time.perf_counter() - t0
            writer.close()
            if label != "heap":
                runs.append((label, seconds, merged.ok))
        _, heap_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        scan = read_output(output)
        assert len(scan.done) == args.lines == scan.lines, "not exactly one line per id"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.lines:,} result lines in {len(files)} output files, {size / 2**20:.0f} MB "
              f"· {platform.python_version()} · {platform.machine()}")
        for label, seconds, written in runs:
            print(f"  {label}: {seconds:.2f} s, {written:,} lines written "
                  f"({args.lines / seconds:,.0f} lines/s)")
        print(f"  Python heap peak during merges {heap_peak / 2**20:.0f} MB · process peak RSS "
              f"{rss:.0f} MB · output {output.stat().st_size / 2**20:.0f} MB, one line per id")


if __name__ == "__main__":
    main()

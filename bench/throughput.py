"""Throughput against the limit: the share of the ideal finishing time, and 429s per success.

Two parts. The matrix runs batchrun's Limiter against the simulator's rate model on virtual time
(bench/virtual.py): the four jobs of issue 12 x header timing x header scope x latency shape,
plus Azure-like 10 s windows, a shared key, a limit lowered mid-run and quantized windows, each
cell the median of --seeds runs, in seconds for the whole matrix. The real-socket cells then run
`batchrun submit` as a subprocess against `python -m batchrun.simulator` in its own process
(client and server each get a core) for a few cells of the matrix, to show that virtual and real
agree.

The ideal: an oracle that knows the server sends each request the moment it would be admitted
(the server's bucket starts full), and has its answer one latency later.

    python bench/throughput.py                     # matrix + 5 real cells (~3 minutes)
    python bench/throughput.py --real 0            # the matrix only (~15 s)
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from virtual import Server, ideal_seconds, run_virtual

from batchrun.simulator.model import Habits, SimLimits

_TEXT = ("the quick brown fox jumps over a lazy dog while batch jobs wait for their turn at the "
         "rate limiter and tokens refill every second")
WORDS = _TEXT.split(" ")
RPM, TPM = 500, 200_000


@dataclass(frozen=True)
class Job:
    name: str
    what: str
    window_s: float
    latency_s: float
    requests: int
    prompt_chars: int
    max_tokens: int


JOBS = [
    Job("tpm-1s", "TPM-bound, 1 s windows, 300 ms", 1.0, 0.3, 103, 400, 900),
    Job("rpm-1s", "RPM-bound, 1 s windows, 300 ms", 1.0, 0.3, 258, 60, 20),
    Job("rpm-1s-2s", "RPM-bound, 1 s windows, 2 s latency", 1.0, 2.0, 258, 60, 20),
    Job("tpm-minute", "TPM-bound, whole-minute bucket, 300 ms", 60.0, 0.3, 300, 400, 900),
]
AZURE = Job("rpm-10s", "RPM-bound, 10 s windows (Azure-like), 300 ms", 10.0, 0.3, 333, 60, 20)
# Latency shapes, as (jitter as a share of the latency, share of requests taking 10x).
SHAPES = {"fixed": (0.0, 0.0), "±30 %": (0.3, 0.0), "tail 1 % x10": (0.3, 0.01)}


@dataclass(frozen=True)
class Cell:
    job: Job
    habits: Habits
    shape: str
    told_rpm: int = RPM

    def server(self) -> Server:
        jitter, tail = SHAPES[self.shape]
        return Server(SimLimits(RPM, TPM, window_s=self.job.window_s), self.habits,
                      self.job.latency_s, jitter * self.job.latency_s, tail)


def prompt(i: int, chars: int) -> str:
    text, k = f"Request {i}: ", i
    while len(text) < chars:
        text += WORDS[k % len(WORDS)] + " "
        k += 7
    return text[:chars]


def bodies(job: Job) -> list[dict[str, Any]]:
    return [{"model": "gpt-4o-mini", "max_tokens": job.max_tokens,
             "messages": [{"role": "user", "content": prompt(i, job.prompt_chars)}]}
            for i in range(job.requests)]


def matrix() -> list[tuple[str, list[Cell]]]:
    """Sections of the matrix: a title and its cells."""
    sections = []
    for job in JOBS:
        cells = [Cell(job, Habits(header_timing=t, header_scope=sc), shape)  # type: ignore[arg-type]
                 for t, sc, shape in itertools.product(("admission", "response"),
                                                       ("window", "minute", "none"), SHAPES)]
        sections.append((job.what, cells))
    extra = [Cell(AZURE, Habits(header_scope=sc), "±30 %")  # type: ignore[arg-type]
             for sc in ("window", "none", "minute")]
    extra += [Cell(JOBS[1], Habits(header_timing=t, shared=0.3), "±30 %")  # type: ignore[arg-type]
              for t in ("admission", "response")]
    extra += [Cell(JOBS[3], Habits(header_scope=sc, shared=0.3), "±30 %")  # type: ignore[arg-type]
              for sc in ("window", "none")]
    extra += [Cell(JOBS[1], Habits(header_scope=sc, lower_at_s=10, lower_to=0.6), "±30 %")  # type: ignore[arg-type]
              for sc in ("window", "none")]
    extra += [Cell(JOBS[1], Habits(header_scope=sc, refill="quantized"), "±30 %")  # type: ignore[arg-type]
              for sc in ("window", "none")]
    extra.append(Cell(JOBS[1], Habits(), "±30 %", told_rpm=2 * RPM))
    sections.append(("Other habits", extra))
    return sections


def describe(cell: Cell) -> str:
    h = cell.habits
    parts = [f"headers at {h.header_timing}" if h.header_scope != "none" else "",
             f"scope {h.header_scope}"]
    if h.shared:
        parts.append(f"another client uses {h.shared:.0%}")
    if h.lower_at_s is not None:
        parts.append(f"limit drops to {h.lower_to:.0%} at {h.lower_at_s:.0f} s")
    if h.refill == "quantized":
        parts.append("quantized refill")
    if cell.told_rpm != RPM:
        parts.append(f"client told {cell.told_rpm} RPM")
    return ", ".join(p for p in parts if p)


def run_cell(cell: Cell, seeds: int) -> tuple[float, float]:
    jobs = bodies(cell.job)
    results = [run_virtual(cell.server(), jobs, cell.told_rpm, TPM, seed) for seed in range(seeds)]
    return (statistics.median(r.share for r in results),
            statistics.median(r.per_ok for r in results))


def mark(share: float, per_ok: float) -> str:
    return "" if share >= 0.95 and per_ok <= 0.01 else " ✗"


def print_matrix(seeds: int) -> None:
    started = time.perf_counter()
    for title, cells in matrix():
        print(f"\n**{title}** (share of the ideal · 429s per success; ✗ = below target)\n")
        if title == "Other habits":
            print("| job | server | share | 429s/ok |\n|---|---|---|---|")
            for cell in cells:
                share, per_ok = run_cell(cell, seeds)
                print(f"| {cell.job.name} | {describe(cell)}, {cell.shape} | {share:.1%} | "
                      f"{per_ok:.2%}{mark(share, per_ok)} |", flush=True)
            continue
        print("| headers | " + " | ".join(SHAPES) + " |\n|---|" + "---|" * len(SHAPES))
        for row in range(0, len(cells), len(SHAPES)):
            out = []
            for cell in cells[row:row + len(SHAPES)]:
                share, per_ok = run_cell(cell, seeds)
                out.append(f"{share:.1%} · {per_ok:.2%}{mark(share, per_ok)}")
            h = cells[row].habits
            label = f"{h.header_scope}, at {h.header_timing}"
            print(f"| {label} | " + " | ".join(out) + " |", flush=True)
    print(f"\n(matrix: {time.perf_counter() - started:.1f} s, medians of {seeds} seeds)")


# -- real sockets ----------------------------------------------------------------------------

REAL = [
    Cell(JOBS[3], Habits(header_timing="response", header_scope="minute"), "±30 %"),
    Cell(JOBS[0], Habits(header_timing="admission", header_scope="minute"), "±30 %"),
    Cell(JOBS[1], Habits(header_scope="none"), "±30 %"),
    Cell(JOBS[2], Habits(header_timing="response"), "±30 %"),
    Cell(AZURE, Habits(), "±30 %"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_real(cell: Cell, workdir: Path) -> tuple[float, float]:
    job, h = cell.job, cell.habits
    workdir = Path(tempfile.mkdtemp(dir=workdir))  # each run is a new job
    jobs = workdir / f"{job.name}.jsonl"
    with jobs.open("wb") as f:
        for i, body in enumerate(bodies(job)):
            f.write(orjson.dumps({"id": f"{job.name}-{i}", "messages": body["messages"],
                                  "max_tokens": job.max_tokens}) + b"\n")
    out = workdir / f"{job.name}.results.jsonl"
    port = free_port()
    jitter, tail = SHAPES[cell.shape]
    server = subprocess.Popen(
        [sys.executable, "-m", "batchrun.simulator", "--port", str(port), "--rpm", str(RPM),
         "--tpm", str(TPM), "--window", str(job.window_s), "--latency", str(job.latency_s),
         "--jitter", str(jitter * job.latency_s), "--tail", str(tail),
         "--headers-at", h.header_timing, "--header-scope", h.header_scope],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "listening on ..."
        # A state dir of its own: benchmark jobs stay out of the user's status and ledger.
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench",
               "BATCHRUN_HOME": str(workdir / "batchrun-home")}
        proc = subprocess.run(
            [sys.executable, "-m", "batchrun", "submit", str(jobs), "-o", str(out), "--json",
             "--base-url", f"http://127.0.0.1:{port}/v1", "--rpm", str(cell.told_rpm),
             "--tpm", str(TPM), "--rpd", "0", "--tpd", "0"],
            capture_output=True, text=True, env=env, check=False,
        )
    finally:
        server.terminate()
        server.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{job.name}: batchrun exited {proc.returncode}\n{proc.stderr}")
    summary = orjson.loads(proc.stdout)
    ideal = ideal_seconds(replace(cell.server(), tail=0.0), bodies(job))
    return ideal / summary["wall_seconds"], summary["rate_limited_429"] / max(
        1, summary["requests"]["ok"])


def print_real(count: int, runs: int, seeds: int) -> None:
    print("\n**Real sockets** (batchrun submit against python -m batchrun.simulator)\n")
    print("| job | server | virtual: share · 429s/ok | real (median of runs) | runs |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for cell in REAL[:count]:
            v_share, v_per_ok = run_cell(cell, seeds)
            real = [run_real(cell, Path(tmp)) for _ in range(runs)]
            r_share = statistics.median(r[0] for r in real)
            r_per_ok = statistics.median(r[1] for r in real)
            print(f"| {cell.job.name} | {describe(cell)}, {cell.shape} | {v_share:.1%} · "
                  f"{v_per_ok:.2%} | {r_share:.1%} · {r_per_ok:.2%} | {runs} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="virtual runs per cell")
    parser.add_argument("--real", type=int, default=len(REAL), help="real-socket cells to run")
    parser.add_argument("--runs", type=int, default=1, help="runs per real-socket cell")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print_matrix(args.seeds)
    if args.real:
        print_real(args.real, args.runs, args.seeds)


if __name__ == "__main__":
    main()

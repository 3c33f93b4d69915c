"""A second opinion on throughput: the real `batchrun submit` against an independent server.

Each cell starts bench/independent/server.py (a strict OpenAI-style rate-limited server written
by an outside tester, importing nothing from batchrun) in its own process, runs the real CLI
against it in another, and reads the server's record of every attempt. Nothing here imports
batchrun either: what batchrun achieved is judged only by what the server saw.

The ideal is a perfect client with unlimited concurrency that knows the server's rules: it sends
each request, in file order, the instant both server buckets (which start full) can pay for it,
and is done one mean latency after the last admission. The measured span runs from the first
request's arrival at the server to the server's last reply. Share = ideal / span; 429s per
success counts the server's refusals.

Limits are 600 RPM and 60K TPM in every cell. Cells (seed = round number):

    A  TPM-bound, 1 s windows, 300 ms ±30 %, headers describe a whole minute, at response
    B  RPM-bound, 1 s windows, 300 ms ±30 %, whole-minute headers at response
    C  RPM-bound, 1 s windows, 2 s ±30 %, whole-minute headers at response
    D  TPM-bound, whole-minute bucket, 300 ms ±30 %, headers at response
    E  TPM-bound, whole-minute bucket, 300 ms ±30 %, headers at admission
    F  TPM-bound, 1 s windows, 300 ms ±30 %, no headers
    G  RPM-bound, 1 s windows, 300 ms fixed, window headers at admission
    H  TPM-bound, 1 s windows, 300 ms fixed, window headers at admission
    I  TPM-bound, whole-minute bucket, 300 ms ±30 %, no headers                  (extra)
    J  as F, but the server counts 1 token per 3 characters, more than tiktoken  (extra)
    K  as D, but the server counts 1 token per 3 characters                      (extra)

The accounting axis (issue 22): A's server and habits (1 s windows, 300 ms ±30 %, whole-minute
headers at response; A itself is characters / 4 on mixed English), charging otherwise:

    L  mixed English, the prompt as tiktoken counts it (our own count, exactly)
    N  mixed English, 1 token per 3 characters (more than tiktoken)
    O  Chinese prose, characters / 4 (about half of tiktoken), usage = the charge + 7
    P  Chinese prose, characters / 4, usage = tiktoken's count (OpenAI's habit: it bills
       tokens and rate-limits characters)
    Q  Python and JSON, characters / 4, usage = the charge + 7

    python bench/independent/run_matrix.py --cells A,L,N,O,P,Q --rounds 3

And the whole-minute bucket whose opening burst is 2/3 of the job (360 requests, ideal ~30 s):

    R  as D (headers at response)        S  as E (headers at admission)

And a limit taught by a refusal (issue 22): the client is told 60K TPM, the server's is 2,000 on
10 s windows (window headers at response); the first request (3,030 tokens) is refused as too
large (final, not a 429 counted against the client), the 18 small ones after it (612 tokens)
must go at the taught 2,000 TPM. Its ideal leaves the refused request out.

    T  python bench/independent/run_matrix.py --cells T --rounds 3

    python bench/independent/run_matrix.py                    # A-H, 2 rounds (~18 minutes)
    python bench/independent/run_matrix.py --cells I,J,K --rounds 1
    python bench/independent/run_matrix.py --cells F,D --rounds 1

Every file (jobs, results, batchrun's state and caches, the server's log) lives in a temporary
directory removed at the end. Exit status 1 if any run did not finish every job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # no __pycache__ next to the bench: it writes only to its temp dir
from make_jobs import write_jobs  # noqa: E402
from server import charge_of  # noqa: E402

HERE = Path(__file__).resolve().parent
RPM, TPM = 600, 60000
JOBS = {"tpm1s": ("tpm", 270), "tpm60": ("tpm", 480), "tpm60b": ("tpm", 360),
        "rpm1s": ("rpm", 650), "zh": ("zh", 240), "code": ("code", 270), "big": ("big", 19)}
JITTER = ["--jitter", "0.3"]
RESP_MINUTE = ["--headers-at", "response", "--header-scope", "minute"]
ADM_WINDOW = ["--headers-at", "admission", "--header-scope", "window"]
NONE = ["--header-scope", "none"]
CPT3 = ["--chars-per-token", "3"]
TIKTOKEN = ["--accounting", "tiktoken"]
BILLS_TIKTOKEN = ["--usage", "tiktoken"]


@dataclass(frozen=True)
class Cell:
    name: str
    jobs: str
    window: float
    latency: float
    server: list[str]

    def server_args(self, seed: int) -> list[str]:
        # The cell's own --tpm, if any, comes later and wins: the client is still told TPM.
        return ["--rpm", str(RPM), "--tpm", str(TPM), "--window", str(self.window),
                "--latency", str(self.latency), *self.server, "--seed", str(seed)]

    @property
    def tpm(self) -> int:
        s = self.server
        return int(s[s.index("--tpm") + 1]) if "--tpm" in s else TPM

    @property
    def chars_per_token(self) -> float:
        s = self.server
        return float(s[s.index("--chars-per-token") + 1]) if "--chars-per-token" in s else 4.0

    @property
    def accounting(self) -> str:
        s = self.server
        return s[s.index("--accounting") + 1] if "--accounting" in s else "chars"


CELLS = {c.name[0]: c for c in (
    Cell("A-tpm1s-300ms-minhdr@resp", "tpm1s", 1, 0.3, [*JITTER, *RESP_MINUTE]),
    Cell("B-rpm1s-300ms-minhdr@resp", "rpm1s", 1, 0.3, [*JITTER, *RESP_MINUTE]),
    Cell("C-rpm1s-2s-minhdr@resp", "rpm1s", 1, 2.0, [*JITTER, *RESP_MINUTE]),
    Cell("D-tpm60s-300ms-hdr@resp", "tpm60", 60, 0.3,
         [*JITTER, "--headers-at", "response", "--header-scope", "window"]),
    Cell("E-tpm60s-300ms-hdr@adm", "tpm60", 60, 0.3, [*JITTER, *ADM_WINDOW]),
    Cell("F-tpm1s-300ms-nohdr", "tpm1s", 1, 0.3, [*JITTER, *NONE]),
    Cell("G-rpm1s-300ms-winhdr@adm-fixed", "rpm1s", 1, 0.3, ADM_WINDOW),
    Cell("H-tpm1s-300ms-winhdr@adm-fixed", "tpm1s", 1, 0.3, ADM_WINDOW),
    Cell("I-tpm60s-300ms-nohdr", "tpm60", 60, 0.3, [*JITTER, *NONE]),
    Cell("J-tpm1s-300ms-nohdr-cpt3", "tpm1s", 1, 0.3, [*JITTER, *NONE, *CPT3]),
    Cell("K-tpm60s-300ms-hdr@resp-cpt3", "tpm60", 60, 0.3,
         [*JITTER, "--headers-at", "response", "--header-scope", "window", *CPT3]),
    Cell("L-tpm1s-tiktoken-exact", "tpm1s", 1, 0.3, [*JITTER, *RESP_MINUTE, *TIKTOKEN]),
    Cell("N-tpm1s-chars/3", "tpm1s", 1, 0.3, [*JITTER, *RESP_MINUTE, *CPT3]),
    Cell("O-chinese-chars/4", "zh", 1, 0.3, [*JITTER, *RESP_MINUTE]),
    Cell("P-chinese-chars/4-bills-tiktoken", "zh", 1, 0.3,
         [*JITTER, *RESP_MINUTE, *BILLS_TIKTOKEN]),
    Cell("Q-code-json-chars/4", "code", 1, 0.3, [*JITTER, *RESP_MINUTE]),
    Cell("R-tpm60s-burst2/3-hdr@resp", "tpm60b", 60, 0.3,
         [*JITTER, "--headers-at", "response", "--header-scope", "window"]),
    Cell("S-tpm60s-burst2/3-hdr@adm", "tpm60b", 60, 0.3, [*JITTER, *ADM_WINDOW]),
    Cell("T-too-large-teaches-2000tpm", "big", 10, 0.3,
         [*JITTER, "--headers-at", "response", "--header-scope", "window", "--tpm", "2000"]),
)}
DEFAULT_CELLS = "A,B,C,D,E,F,G,H"


def ideal_seconds(charges: list[int], window: float, latency: float, tpm: int = TPM) -> float:
    """The perfect client's finishing time (see the module docstring); a request above the TPM
    is refused at once, for nothing."""
    req_rate, tok_rate = RPM / 60, tpm / 60
    req_cap, tok_cap = RPM * window / 60, tpm * window / 60
    req, tok, t = req_cap, tok_cap, 0.0
    for charge in (c for c in charges if c <= tpm):
        dt = max(0.0, (1 - req) / req_rate, (charge - tok) / tok_rate)
        t += dt
        req = min(req_cap, req + dt * req_rate) - 1
        tok = min(tok_cap, tok + dt * tok_rate) - charge
    return t + latency


def batchrun_command() -> list[str]:
    """The `batchrun` console script next to this interpreter, else `python -m batchrun`."""
    script = Path(sys.executable).parent / "batchrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "batchrun"]


def clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BATCHRUN_"))}
    env.update(OPENAI_API_KEY="sk-test-anything", BATCHRUN_HOME=str(tmp / "home"),
               XDG_STATE_HOME=str(tmp / "state"), XDG_CACHE_HOME=str(tmp / "cache"),
               TIKTOKEN_CACHE_DIR=str(tmp / "cache" / "tiktoken"), PYTHONDONTWRITEBYTECODE="1")
    return env


def run_cell(cell: Cell, seed: int, jobs: Path, tmp: Path) -> dict[str, Any]:
    """One run: server up, `batchrun submit` to the end, server down; the server's numbers."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{cell.name[0]}{seed}-", dir=tmp))
    server_log = run_dir / "server.json"
    server_cmd = [sys.executable, str(HERE / "server.py"), *cell.server_args(seed),
                  "--log", str(server_log)]
    server = subprocess.Popen(
        server_cmd, stdout=subprocess.PIPE, text=True, cwd=run_dir, env=clean_env(run_dir))
    try:
        assert server.stdout is not None
        first = server.stdout.readline().split()
        if first[:1] != ["PORT"]:
            raise RuntimeError(f"server did not start (said {first!r})")
        cmd = [*batchrun_command(), "submit", str(jobs), "-o", str(run_dir / "results.jsonl"),
               "--base-url", f"http://127.0.0.1:{first[1]}/v1", "--rpm", str(RPM),
               "--tpm", str(TPM), "--tpd", "0", "--rpd", "0", "-q", "--json"]
        try:
            done = subprocess.run(cmd, env=clean_env(run_dir), cwd=run_dir, capture_output=True,
                                  text=True, timeout=300, check=False)
            rc: int | str = done.returncode
            stderr = done.stderr
        except subprocess.TimeoutExpired:
            rc, stderr = "timeout", ""
    finally:
        server.terminate()
        server.wait(10)
    log = json.loads(server_log.read_text())["log"]

    ok = [r for r in log if r["ok"]]
    # A too-large refusal is the server's final answer to that request, not a 429 of pacing.
    refused = [r for r in log if not r["ok"] and r.get("kind") != "too_large"]
    charges = [charge_of(json.loads(line), cell.chars_per_token, cell.accounting)[2]
               for line in jobs.read_text().splitlines() if line.strip()]
    ideal = ideal_seconds(charges, cell.window, cell.latency, cell.tpm)
    span = max(r["done"] for r in ok) - min(r["arr"] for r in log) if ok else float("inf")
    runnable = sum(c <= cell.tpm for c in charges)
    # Exit 1: finished, the too-large requests recorded as failed for good.
    rc = 0 if rc == 1 and runnable < len(charges) and len(ok) == runnable else rc
    result = {"cell": cell.name, "seed": seed, "rc": rc, "n_ok": len(ok), "n_jobs": runnable,
              "n429": len(refused), "ideal": round(ideal, 2), "span": round(span, 2),
              "share": round(ideal / span, 4)}
    if rc != 0 or len(ok) != runnable:
        result["stderr"] = stderr[-500:]
    return result


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def row(cell: Cell, runs: list[dict[str, Any]]) -> str:
    shares = [r["share"] for r in runs]
    n429, n_ok = sum(r["n429"] for r in runs), sum(r["n_ok"] for r in runs)
    each = " / ".join(pct(s) for s in shares)
    bad = [r for r in runs if r["rc"] != 0 or r["n_ok"] != r["n_jobs"]]
    flag = f" ✗ {len(bad)} run(s) unfinished" if bad else ""
    return (f"| {cell.name} | {pct(statistics.median(shares))} ({each}) | "
            f"{100 * n429 / max(1, n_ok):.2f}% ({n429}/{n_ok}) | {len(runs)}{flag} |")


def main() -> int:
    p = argparse.ArgumentParser(description="batchrun against an independent server")
    p.add_argument("--rounds", type=int, default=2, help="runs of each cell (seed = round)")
    p.add_argument("--cells", default=DEFAULT_CELLS,
                   help=f"comma-separated letters from {','.join(CELLS)} (default {DEFAULT_CELLS})")
    args = p.parse_args()
    letters = [c.strip().upper() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in letters if c not in CELLS]
    if unknown:
        p.error(f"unknown cell(s) {','.join(unknown)}; choose from {','.join(CELLS)}")

    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; batchrun: {' '.join(batchrun_command())}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in letters}
    with tempfile.TemporaryDirectory(prefix="batchrun-indep-") as tmp_name:
        tmp = Path(tmp_name)
        files = {name: write_jobs(kind, count, tmp / f"{name}.jsonl")
                 for name, (kind, count) in JOBS.items()}
        for seed in range(1, args.rounds + 1):
            for letter in letters:
                cell = CELLS[letter]
                result = run_cell(cell, seed, files[cell.jobs], tmp)
                runs[letter].append(result)
                print(f"# {json.dumps(result)}", file=sys.stderr, flush=True)

    print("\n| cell | share of ideal, median (each run) | 429s per success | runs |")
    print("|---|---|---|---|")
    for letter in letters:
        print(row(CELLS[letter], runs[letter]))
    finished = all(r["rc"] == 0 and r["n_ok"] == r["n_jobs"] for rs in runs.values() for r in rs)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())

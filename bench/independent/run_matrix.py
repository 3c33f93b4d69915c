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

Four hosts on one key (issue 22 item 6): four `batchrun submit` processes, each a quarter of one
TPM-bound job (520 requests), its own home, told the full limits (3,000 RPM, 270K TPM: ideal
~28 s), sharing one redis-server (started on a free loopback port) through --state; A's server
habits otherwise. Besides the share, each run says where the rest went, as the server saw it
(`where_time_went`) and how many round trips Redis served:

    W  the prompt as tiktoken counts it (our own count)   X  characters / 4

    python bench/independent/run_matrix.py --cells W,X --rounds 3

    python bench/independent/run_matrix.py                    # A-H, 2 rounds (~18 minutes)
    python bench/independent/run_matrix.py --cells I,J,K --rounds 1
    python bench/independent/run_matrix.py --cells F,D --rounds 1

Every file (jobs, results, batchrun's state and caches, the server's log) lives in a temporary
directory removed at the end. Exit status 1 if any run did not finish every job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
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
JOBS = {"tpm1s": ("tpm", 270), "hosts": ("tpm", 520), "tpm60": ("tpm", 480),
        "tpm60b": ("tpm", 360), "rpm1s": ("rpm", 650), "zh": ("zh", 240), "code": ("code", 270),
        "big": ("big", 19)}
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


def ideal_seconds(charges: list[int], window: float, latency: float, rpm: int = RPM,
                  tpm: int = TPM) -> float:
    """The perfect client's finishing time (see the module docstring); a request above the TPM
    is refused at once, for nothing."""
    req_rate, tok_rate = rpm / 60, tpm / 60
    req_cap, tok_cap = rpm * window / 60, tpm * window / 60
    req, tok, t = req_cap, tok_cap, 0.0
    for charge in (c for c in charges if c <= tpm):
        dt = max(0.0, (1 - req) / req_rate, (charge - tok) / tok_rate)
        t += dt
        req = min(req_cap, req + dt * req_rate) - 1
        tok = min(tok_cap, tok + dt * tok_rate) - charge
    return t + latency


def cell_ideal(cell: Cell, charges: list[int]) -> float:
    """The perfect client's time on this cell's server: at its own TPM (cell T's 2,000), the
    RPM every one-host cell shares."""
    return ideal_seconds(charges, cell.window, cell.latency, rpm=RPM, tpm=cell.tpm)


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
    ideal = cell_ideal(cell, charges)
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


# Four hosts on one key (issue 22 item 6): `hosts` processes, each `batchrun submit` of a
# contiguous share of the job with its own home, all told the full limits and sharing one
# redis-server through --state. The limits are higher than the other cells' so that the whole
# job (520 requests) has an ideal of ~28 s, as the issue measured it.
HOSTS_RPM, HOSTS_TPM = 3000, 270000


@dataclass(frozen=True)
class HostsCell(Cell):
    hosts: int = 4

    def server_args(self, seed: int) -> list[str]:
        return ["--rpm", str(HOSTS_RPM), "--tpm", str(HOSTS_TPM), "--window", str(self.window),
                "--latency", str(self.latency), *self.server, "--seed", str(seed)]


HOST_CELLS = {c.name[0]: c for c in (
    HostsCell("W-4hosts-redis-tiktoken-exact", "hosts", 1, 0.3,
              [*JITTER, *RESP_MINUTE, *TIKTOKEN]),
    HostsCell("X-4hosts-redis-chars/4", "hosts", 1, 0.3, [*JITTER, *RESP_MINUTE]),
)}
CELLS.update(HOST_CELLS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(run_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server of its own on a free loopback port, no persistence; ready when it takes
    a connection."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("the four-host cells need redis-server (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(run_dir), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.02)


def split_job(jobs: Path, parts: int, run_dir: Path) -> list[Path]:
    """The job cut into `parts` contiguous shares, one file each."""
    lines = [line for line in jobs.read_text().splitlines() if line.strip()]
    size = -(-len(lines) // parts)
    paths = []
    for n in range(parts):
        path = run_dir / f"part{n}.jsonl"
        path.write_text("".join(line + "\n" for line in lines[n * size:(n + 1) * size]))
        paths.append(path)
    return paths


def redis_scripts(port: int) -> dict[str, float]:
    """Round trips to Redis (script calls) and the server's time per call, from INFO."""
    cli = shutil.which("redis-cli")
    if cli is None:
        return {}
    info = subprocess.run([cli, "-p", str(port), "info", "commandstats"],
                          capture_output=True, text=True, check=False).stdout
    calls, usec = 0, 0.0
    for line in info.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            fields = dict(f.split("=") for f in line.split(":", 1)[1].split(","))
            calls += int(fields["calls"])
            usec += float(fields["usec"])
    return {"redis_calls": calls, "redis_us_per_call": round(usec / max(1, calls), 1)}


def ids_written(outputs: list[Path]) -> list[str]:
    ids = []
    for out in outputs:
        if out.exists():
            ids += [json.loads(line)["id"] for line in out.read_text().splitlines() if line]
    return ids


def digest(line: str) -> str:
    """A job line's request as the server's log names it (server.py: `msg`)."""
    messages = json.loads(line).get("messages")
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:12]


def where_time_went(ok: list[dict[str, Any]], host_of: dict[str, int], cell: Cell,
                    ) -> dict[str, Any]:
    """Seconds of the token limit the hosts left unused, by phase, as the server saw it: its
    token bucket replayed from the first arrival (full, as the ideal assumes), each moment it
    sat full is limit wasted. Phases: `start` until every host's first request arrived, `run`
    until the first host's last admission, `end` until the last admission; `tail` is the last
    admission to the last reply. Span - ideal = the seconds lost + left_s + tail - latency."""
    rate, cap = HOSTS_TPM / 60, HOSTS_TPM * cell.window / 60
    ok = sorted(ok, key=lambda r: r["t"])
    hosts = sorted(set(host_of.values()))
    first = {h: min(r["arr"] for r in ok if host_of.get(r["msg"]) == h) for h in hosts}
    last = {h: max(r["t"] for r in ok if host_of.get(r["msg"]) == h) for h in hosts}
    t0 = min(r["arr"] for r in ok)
    bounds = {"start": max(first.values()), "run": min(last.values()), "end": ok[-1]["t"]}
    lost = dict.fromkeys(bounds, 0.0)
    level, t = cap, t0
    for r in ok:
        level += (r["t"] - t) * rate
        if level > cap:  # the refill past a full bucket, at the moment it overflowed
            overflow_at = r["t"] - (level - cap) / rate
            phase = next((p for p, b in bounds.items() if overflow_at <= b), "end")
            lost[phase] += (level - cap) / rate
            level = cap
        level -= r["charge"]
        t = r["t"]
    return {"lost_s": {p: round(v, 2) for p, v in lost.items()},
            # what the bucket still held at the last admission: limit unspent at the end
            "left_s": round(max(0.0, level) / rate, 2),
            "hosts_first": [round(first[h] - t0, 2) for h in hosts],
            "hosts_last": [round(last[h] - t0, 2) for h in hosts],
            "tail": round(max(r["done"] for r in ok) - ok[-1]["t"], 2)}


def run_hosts_cell(cell: Cell, seed: int, jobs: Path, tmp: Path) -> dict[str, Any]:
    """One run of a four-host cell: server and redis up, the hosts started together and run to
    the end, everything down; the server's numbers, per host too."""
    assert isinstance(cell, HostsCell)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{cell.name[0]}{seed}-", dir=tmp))
    server_log = run_dir / "server.json"
    redis, redis_port = start_redis(run_dir)
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), *cell.server_args(seed), "--log",
         str(server_log)], stdout=subprocess.PIPE, text=True, cwd=run_dir,
        env=clean_env(run_dir))
    parts = split_job(jobs, cell.hosts, run_dir)
    outputs = [run_dir / f"results{n}.jsonl" for n in range(cell.hosts)]
    rcs: list[int | str] = []
    stderr = ""
    try:
        assert server.stdout is not None
        first = server.stdout.readline().split()
        if first[:1] != ["PORT"]:
            raise RuntimeError(f"server did not start (said {first!r})")
        procs = []
        launched = time.monotonic()
        for n, (part, out) in enumerate(zip(parts, outputs, strict=True)):
            home = run_dir / f"host{n}"
            home.mkdir()
            cmd = [*batchrun_command(), "submit", str(part), "-o", str(out), "--base-url",
                   f"http://127.0.0.1:{first[1]}/v1", "--rpm", str(HOSTS_RPM), "--tpm",
                   str(HOSTS_TPM), "--tpd", "0", "--rpd", "0", "-q", "--json",
                   "--state", f"redis://127.0.0.1:{redis_port}/0"]
            procs.append(subprocess.Popen(cmd, env=clean_env(home), cwd=home, text=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=300)
                rcs.append(proc.returncode)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                rcs.append("timeout")
            stderr += err[-300:]
        wall = time.monotonic() - launched
        scripts = redis_scripts(redis_port)
    finally:
        server.terminate()
        server.wait(10)
        redis.terminate()
        redis.wait(10)
    log = json.loads(server_log.read_text())["log"]
    ok = [r for r in log if r["ok"]]
    charges = [charge_of(json.loads(line), cell.chars_per_token, cell.accounting)[2]
               for line in jobs.read_text().splitlines() if line.strip()]
    ideal = ideal_seconds(charges, cell.window, cell.latency, HOSTS_RPM, HOSTS_TPM)
    start = min(r["arr"] for r in log) if log else 0.0
    span = max(r["done"] for r in ok) - start if ok else float("inf")
    ids = ids_written(outputs)
    rc: int | str = next((c for c in rcs if c != 0), 0)
    result: dict[str, Any] = {
        "cell": cell.name, "seed": seed, "rc": rc, "n_ok": len(ok), "n_jobs": len(charges),
        "n429": len(log) - len(ok), "ideal": round(ideal, 2), "span": round(span, 2),
        "share": round(ideal / span, 4), "wall": round(wall, 2),
        "ids_once": len(ids) == len(set(ids)) == len(charges), **scripts}
    if ok:
        host_of = {digest(line): n for n, part in enumerate(parts)
                   for line in part.read_text().splitlines() if line}
        result.update(where_time_went(ok, host_of, cell))
    if rc != 0 or len(ok) != len(charges) or not result["ids_once"]:
        result["rc"] = rc or "ids not exactly once"
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
                run = run_hosts_cell if letter in HOST_CELLS else run_cell
                result = run(cell, seed, files[cell.jobs], tmp)
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

"""The bill check: does batchrun's `--json` cost_usd match what the server bills?

150 requests share a ~1,500-token system prompt (the common case of a batch job), each with its
own short question. The independent server (server.py --prompt-cache) serves the shared prefix
from its prompt cache as OpenAI's prompt-caching guide describes, reports cached_tokens, and bills
every answer at its own list prices. batchrun is judged only by what it prints: its cost_usd
must be within 1 % of the server's bill_usd.

    python bench/independent/bill_check.py            # prints both and the gap; exit 1 past 1 %
    python bench/independent/bill_check.py --batchrun /work/main/.venv/bin/batchrun
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from run_matrix import HERE, batchrun_command, clean_env

WORDS = ("You are a careful assistant for a support team. Answer in one sentence, cite the "
         "policy section by number, never invent a section, and say so when unsure. ")


def write_jobs(path: Path, n: int, system_chars: int) -> None:
    system = (WORDS * (system_chars // len(WORDS) + 1))[:system_chars]
    with path.open("w") as f:
        for i in range(n):
            body = {"model": "gpt-4o-mini", "max_tokens": 40, "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Question {i}: may a customer return item {i}?"}]}
            f.write(json.dumps({"custom_id": f"q{i}", "method": "POST",
                                "url": "/v1/chat/completions", "body": body}) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=150)
    p.add_argument("--system-chars", type=int, default=6_000, help="~1,500 tokens at 4 a token")
    p.add_argument("--batchrun", default=None, help="the batchrun command to judge")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bill-"))
    jobs = tmp / "jobs.jsonl"
    write_jobs(jobs, a.requests, a.system_chars)
    log = tmp / "server.json"
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), "--rpm", "100000", "--tpm", "100000000",
         "--latency", "0.05", "--prompt-cache", "--log", str(log)],
        stdout=subprocess.PIPE, text=True, cwd=tmp, env=clean_env(tmp))
    try:
        assert server.stdout is not None
        first = server.stdout.readline().split()
        if first[:1] != ["PORT"]:
            raise RuntimeError(f"server did not start (said {first!r})")
        command = [a.batchrun] if a.batchrun else batchrun_command()
        done = subprocess.run(
            [*command, "submit", str(jobs), "-o", str(tmp / "results.jsonl"), "--base-url",
             f"http://127.0.0.1:{first[1]}/v1", "--rpm", "0", "--tpm", "0", "--rpd", "0",
             "--tpd", "0", "-q", "--json"],
            env=clean_env(tmp), cwd=tmp, capture_output=True, text=True, timeout=300,
            check=False)
    finally:
        server.terminate()
        server.wait(10)
    if done.returncode != 0:
        print(f"batchrun exited {done.returncode}: {done.stderr[-500:]}")
        return 2
    summary = json.loads(done.stdout)
    record = json.loads(log.read_text())
    ok = [r for r in record["log"] if r["ok"]]
    bill, cost = record["bill_usd"], summary["cost_usd"]
    gap = (cost - bill) / bill
    print(f"{len(ok)} answers, {sum(r['cached'] for r in ok):,} of "
          f"{sum(r['prompt'] for r in ok):,} prompt tokens cached by the server")
    print(f"server bill ${bill:.4f} · batchrun cost_usd ${cost:.4f} · gap {gap:+.2%}")
    return 0 if abs(gap) <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())

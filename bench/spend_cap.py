"""The spend cap against an outside judge (tests/billing_server.py: caches prompts, bills at its
own copy of the list prices): 150 requests sharing a ~1,500-token system prompt, run uncapped,
then with --max-cost at 40 % of that bill, then resumed with a larger cap.

    .venv/bin/python bench/spend_cap.py
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batchrun.cli import commands as cli
from tests.helpers.billing_server import BillingServer, rows

# --no-cache: both runs send every request (the second must not be answered by the first's
# answers, whatever port its server gets), so the bills compare.
LIMITS = ("--rpm", "0", "--tpm", "0", "--tpd", "0", "--rpd", "0", "--json", "-q", "--no-cache")


def run(*args: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.run(list(args))
    return code, orjson.loads(out.getvalue())


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="batchrun-spend-cap-"))
    os.environ.update(BATCHRUN_HOME=str(tmp / "home"),
                      OPENAI_API_KEY="sk-bench-0123456789abcdef0123456789")
    jobs = tmp / "jobs.jsonl"
    jobs.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows(150)))
    with BillingServer() as ref:
        code, s = run("submit", str(jobs), "-o", str(tmp / "ref.jsonl"), "--base-url", ref.url,
                      *LIMITS)
        whole = ref.billed()
        print(f"uncapped: exit {code}, server bill ${whole:.6f}, job_cost_usd "
              f"${s['job_cost_usd']:.6f} ({(s['job_cost_usd'] / whole - 1) * 100:+.2f} %)")
    cap, larger = round(whole * 0.4, 6), round(whole * 2, 6)
    with BillingServer() as srv:
        code, s = run("submit", str(jobs), "-o", str(tmp / "out.jsonl"), "--base-url", srv.url,
                      "--max-cost", str(cap), *LIMITS)
        print(f"--max-cost {cap}: exit {code}, {s['state']}, server bill ${srv.billed():.6f} "
              f"({srv.billed() / cap * 100:.1f} % of the cap), job_cost_usd "
              f"${s['job_cost_usd']:.6f}, {s['requests']['ok']} lines")
        code, s = run("resume", s["job"], "--max-cost", str(larger), *LIMITS)
        twice = sum(1 for n in srv.answered.values() if n > 1)
        print(f"resume --max-cost {larger}: exit {code}, server bill ${srv.billed():.6f} "
              f"(uncapped: ${whole:.6f}), requests billed twice: {twice}, job_cost_usd "
              f"${s['job_cost_usd']:.6f}")


if __name__ == "__main__":
    main()

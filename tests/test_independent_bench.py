"""bench/independent is a second opinion only while it stays apart from what it measures."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "independent"


def imports_of(path: Path) -> set[str]:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    return imported


def test_the_independent_server_shares_no_code_with_batchrun() -> None:
    """Its buckets, token count and headers would agree with batchrun by construction if they
    came from batchrun. It may use the standard library, aiohttp and tiktoken (for the server
    that charges the prompt as tiktoken counts it), nothing else."""
    imported = {name.split(".")[0] for name in imports_of(BENCH / "server.py")}
    assert "batchrun" not in imported
    assert imported - set(sys.stdlib_module_names) == {"aiohttp", "tiktoken"}


def test_the_bench_around_it_does_not_import_batchrun_either() -> None:
    """The runner judges batchrun only by what the server saw; it runs the CLI, never the code."""
    for name in ("run_matrix.py", "make_jobs.py", "bill_check.py"):
        imported = {m.split(".")[0] for m in imports_of(BENCH / name)}
        assert "batchrun" not in imported, name
        assert imported - set(sys.stdlib_module_names) <= {"server", "make_jobs",
                                                            "run_matrix"}, name


def test_a_cell_with_its_own_tpm_is_judged_at_that_tpm() -> None:
    """Cell T's server enforces 2,000 TPM (the client is told 60K): its ideal is the 18 small
    requests (612 tokens) less the 10 s window (333) at 2,000 TPM, plus one latency, not the
    0.3 s of the client's 60K (the call passed the cell's TPM where the RPM goes)."""
    sys.path.insert(0, str(BENCH))
    try:
        import run_matrix
    finally:
        sys.path.remove(str(BENCH))
    cell = run_matrix.CELLS["T"]
    charges = [3030, *[34] * 18]
    assert run_matrix.cell_ideal(cell, charges) == pytest.approx((612 - 333.33) / (2000 / 60) + 0.3,
                                                                  abs=0.01)


def test_the_server_caches_a_shared_prefix_in_128_token_steps_and_bills_it() -> None:
    """OpenAI's rule: 1,024 tokens at least, then steps of 128; the first request fills the
    cache. The bill takes the cached part at the cached price (gpt-4o-mini: $0.075 vs $0.15)."""
    sys.path.insert(0, str(BENCH))
    try:
        import server  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(BENCH))
    cache = server.PromptCache(ttl=300)
    shared = [{"role": "system", "content": "x" * 6_000}]
    first = server.prompt_pieces({"messages": [*shared, {"role": "user", "content": "a"}]})
    second = server.prompt_pieces({"messages": [*shared, {"role": "user", "content": "b"}]})
    short = server.prompt_pieces({"messages": [{"role": "user", "content": "y" * 4_000}]})
    assert cache.admit(first, now=0) == 0
    assert cache.admit(second, now=1) == 1_408  # ~1,500 shared tokens: the last whole step
    assert cache.admit(short, now=2) == 0 and cache.admit(short, now=3) == 0  # under 1,024
    assert cache.admit(second, now=400) == 0  # gone after the ttl
    assert server.bill_of("gpt-4o-mini", 1_500, 1_408, 40) == (
        (92 * 0.15 + 1_408 * 0.075 + 40 * 0.60) / 1e6)

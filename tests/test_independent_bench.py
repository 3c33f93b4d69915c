"""bench/independent is a second opinion only while it stays apart from what it measures."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

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
    for name in ("run_matrix.py", "make_jobs.py"):
        imported = {m.split(".")[0] for m in imports_of(BENCH / name)}
        assert "batchrun" not in imported, name
        assert imported - set(sys.stdlib_module_names) <= {"server", "make_jobs"}, name

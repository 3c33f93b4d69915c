"""`make test` where redis-server is missing: the Redis state tests are skipped, and the run
says so in a line of its own at the end (locally), or fails (under CI, which installs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import REPO


def _pytest_without_redis_server(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # A PATH holding only the venv's python: no redis-server on it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    run_env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER")}
    run_env.update(PATH=str(bin_dir), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/state/test_state_redis.py", "-q",
         "-p", "no:randomly", "-p", "no:cacheprovider",
         "-k", "racing_for_the_last or midnight_for_every"],
        cwd=REPO, env=run_env, capture_output=True, text=True, timeout=110)


def test_skipped_redis_tests_are_named_in_the_summary(tmp_path: Path) -> None:
    run = _pytest_without_redis_server(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 skipped" in run.stdout
    assert "2 Redis state tests were SKIPPED: redis-server is not installed" in run.stdout


def test_under_ci_a_missing_redis_server_fails_the_run(tmp_path: Path) -> None:
    run = _pytest_without_redis_server(tmp_path, CI="true")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 errors" in run.stdout and "redis-server is not installed" in run.stdout

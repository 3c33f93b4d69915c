"""Running batchrun as a user does: the CLI in this process (`run_cli`) or as a real process
(`run_cli_process`, `start_submit`), and waiting on what it shows."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.cli import commands as cli
from tests.helpers.sim import RunningSim

REPO = Path(__file__).resolve().parents[2]
FAKE_KEY = "sk-test-SECRETKEY0123456789abcdefSECRET"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """Run the CLI in this process, as `batchrun ARGS` would run, and capture what it prints.

    In-process saves the ~0.7 s of imports a subprocess costs; the exit code comes from the same
    `cli.run` that `main()` hands to `sys.exit`. Tests of kill -9, signals and the installed
    console script use `run_cli_process` instead. (`timeout` is the per-test timeout's job here.)
    """
    from batchrun.cli import commands as cli

    stdout, stderr = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.run(list(args))
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Run(code, stdout.getvalue(), stderr.getvalue())


def run_cli_process(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """Run `python -m batchrun ARGS` as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def wait_for(condition: Any, timeout: float = 60) -> None:
    """Poll an observable condition (not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def start_submit(sim: RunningSim, jobs: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "--base-url", sim.base_url,
         "--rpm", "0", "--tpm", "0", "--tpd", "0", "--rpd", "0", "-q", *extra],
        env={**os.environ, "OPENAI_API_KEY": FAKE_KEY}, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def submit(sim: RunningSim, jobs: Path, *extra: str, key: str = FAKE_KEY) -> Any:
    return run_cli("submit", str(jobs), "--base-url", sim.base_url, *extra,
                   env={"OPENAI_API_KEY": key})


def estimate(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    run = run_cli("estimate", *args, "--json", env=env)
    assert run.code == 0, run.stderr
    return orjson.loads(run.stdout)  # type: ignore[no-any-return]


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    code = cli.run(list(args))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def simulate(capsys: pytest.CaptureFixture[str], jobs: Path, *extra: str) -> Run:
    return in_process(capsys, "submit", str(jobs), "--simulate", "--rpm", "0", "--tpm", "0",
                      "-q", *extra)


UNLIMITED = ("--rpm", "0", "--tpm", "0", "--rpd", "0", "--tpd", "0")


def nameless(n: int, word: str) -> list[dict[str, Any]]:
    """Lines without ids: every file's ids are line-1, line-2, …"""
    return [{"prompt": f"{word} {i}", "max_tokens": 5} for i in range(n)]


def submit_in_process(capsys: pytest.CaptureFixture[str], base_url: str, jobs: Path,
                      out: Path) -> Run:
    code = cli.run(["submit", str(jobs), "--base-url", base_url, "-o", str(out), "-q",
                    *UNLIMITED])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def submit_with_key(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                    base_url: str, jobs: Path, *extra: str) -> Run:
    """`submit` in this process, quiet, with the fake key in the environment."""
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    code = cli.run(["submit", str(jobs), "--base-url", base_url, "--quiet", *extra])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def everything_shown(home: Path, *runs: Any) -> str:
    """stdout, stderr and every file batchrun keeps in its home (manifests, ledger)."""
    text = "".join(r.stdout + r.stderr for r in runs)
    for path in home.rglob("*"):
        if path.is_file():
            text += path.read_bytes().decode(errors="replace")
    return text

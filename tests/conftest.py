"""Shared fixtures: an isolated home for every test, and the simulator on a real loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.simulator import SimConfig, SimServer, Simulator

REPO = Path(__file__).resolve().parent.parent
# A real redis-server for the --state redis:// tests (skipped where it is not installed).
pytest_plugins = ["tests.redis_server"]
FAKE_KEY = "sk-test-SECRETKEY0123456789abcdefSECRET"


@pytest.fixture(scope="session")
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiktoken")


@pytest.fixture(autouse=True)
def isolated_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiktoken_cache: Path
) -> dict[str, str]:
    """Every test gets its own HOME and state dir; nothing touches the developer's."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "BATCHRUN_HOME": str(home / "batchrun"),
        "TIKTOKEN_CACHE_DIR": str(tiktoken_cache),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT",
                "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION", "BATCHRUN_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    return env


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set proxy variables on a clean slate (urllib reads upper and lower case)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "request_method"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


class RunningSim:
    """A simulator served from its own thread and event loop, so tests can run the CLI as a
    real subprocess against it."""

    def __init__(self, config: SimConfig) -> None:
        self.sim = Simulator(config)
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.server: SimServer | None = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with SimServer(self.sim) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> RunningSim:
        self._thread.start()
        assert self._ready.wait(10), "simulator did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return self.server.base_url

    @property
    def azure_endpoint(self) -> str:
        assert self.server is not None
        return self.server.azure_endpoint

    @property
    def stats(self) -> Any:
        return self.sim.stats

    @property
    def config(self) -> SimConfig:
        return self.sim.config


@pytest.fixture
def sim_factory() -> Iterator[Any]:
    running: list[RunningSim] = []

    def start(config: SimConfig | None = None) -> RunningSim:
        sim = RunningSim(config or SimConfig()).__enter__()
        running.append(sim)
        return sim

    yield start
    for sim in running:
        sim.__exit__(None, None, None)


@pytest.fixture
def sim(sim_factory: Any) -> RunningSim:
    return sim_factory()  # type: ignore[no-any-return]


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


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """custom_id -> output line; fails the test if any id appears twice."""
    results: dict[str, dict[str, Any]] = {}
    for raw in path.read_bytes().splitlines():
        line = orjson.loads(raw)
        assert line["custom_id"] not in results, f"duplicate output for {line['custom_id']}"
        results[line["custom_id"]] = line
    return results

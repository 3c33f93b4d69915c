"""Shared fixtures: an isolated home for every test, and the simulator on a real loopback socket.
What tests share that is not a fixture lives in tests/helpers/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrun.simulator import SimConfig
from tests.helpers.sim import RunningSim

# A real redis-server for the --state redis:// tests (skipped where it is not installed), and
# the `hosts` fixture: several RedisState connections on it.
pytest_plugins = ["tests.helpers.redis_server", "tests.helpers.redis_hosts"]


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




"""A real redis-server for the shared-state tests: started on a free loopback port with no
persistence, stopped after. Where redis-server is not installed, tests that need it are
skipped, and the run ends with a line saying how many; under CI (`CI` set, as .ci/run's host
sets it), which installs it, they fail instead: a CI that lost redis-server must not pass
without them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
SKIP = "redis-server is not installed (apt-get install redis-server); the Redis state tests need it"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; `stop()` and `start()` again keep its port (a restart)."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port = _free_port()
        self.password = password
        self.workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:  # ready when it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") \
                        from None
                time.sleep(0.01)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None

    def flush(self) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        client.flushall()
        client.close()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require() -> None:
    if REDIS_SERVER is None:
        if _in_ci():
            pytest.fail(f"{SKIP}; CI installs it (.ci/run), so here its absence is an error",
                        pytrace=False)
        pytest.skip(SKIP)
    pytest.importorskip("redis", reason="the redis client is not installed: "
                        "pip install -e '.[test]'")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """A skip listed among the others is easy to miss: say it once more, loudly, after the
    short summary (outermost wrapper: after the terminal reporter's own), just above the
    counts."""
    yield
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if SKIP in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep(
            "!", f"{len(skipped)} Redis state tests were SKIPPED: redis-server is not "
            "installed (apt-get install redis-server)", red=True, bold=True)


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    _require()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """A shared redis-server, emptied for this test."""
    redis_session.flush()
    return redis_session.url


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[type[RedisServer]]:
    """Dedicated servers a test may stop and restart, or protect with a password."""
    _require()
    started: list[RedisServer] = []

    class Factory(RedisServer):
        def __init__(self, password: str | None = None) -> None:
            super().__init__(tmp_path, password)
            started.append(self)

    yield Factory
    for server in started:
        server.stop()


def everything_stored(url: str) -> list[str]:
    """Every key name and every value (hash fields and values, set and sorted-set members)
    in the Redis at `url`, as text: what anyone who can read that Redis can read."""
    import redis

    client = redis.Redis.from_url(url)
    found: list[str] = []
    try:
        for name in client.scan_iter("*"):
            found.append(name.decode())
            kind = client.type(name).decode()
            if kind == "string":
                found.append((client.get(name) or b"").decode(errors="replace"))
            elif kind == "hash":
                for field, value in client.hgetall(name).items():
                    found += [field.decode(errors="replace"), value.decode(errors="replace")]
            elif kind == "set":
                found += [m.decode(errors="replace") for m in client.smembers(name)]
            elif kind == "zset":
                found += [m.decode(errors="replace") for m in client.zrange(name, 0, -1)]
            else:
                raise AssertionError(f"batchrun wrote a {kind} at {name!r}: read it here too")
    finally:
        client.close()
    return found

"""batchrun's simulator on a real loopback socket, served from a thread of its own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from batchrun.simulator import SimConfig, SimServer, Simulator


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

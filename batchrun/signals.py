"""Ctrl-C and SIGTERM as calls, not exceptions, for as long as one piece of work runs.

Both ways of running a job (the sync engine, the Batch API path) stop on a signal by being asked
to (`interrupt`), so what is in flight is finished or left running on the server, never torn."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def on_signals(interrupt: Callable[[], None], work: Awaitable[T]) -> T:
    """Await `work` with SIGINT and SIGTERM calling `interrupt` (where the loop allows it: not
    outside the main thread, nor on Windows)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, interrupt)
            installed.append(sig)
    try:
        return await work
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)

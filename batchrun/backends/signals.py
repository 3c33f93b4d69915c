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
# The interrupt of the work each loop runs, for a caller on another thread: a blocking API call
# run in a worker thread (a notebook's loop is busy) gets Ctrl-C as KeyboardInterrupt in the
# main thread, where no signal handler of the worker's loop can be installed.
_running: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}


async def on_signals(interrupt: Callable[[], None], work: Awaitable[T]) -> T:
    """Await `work` with SIGINT and SIGTERM calling `interrupt` (where the loop allows it: not
    outside the main thread, nor on Windows)."""
    loop = asyncio.get_running_loop()
    _running.setdefault(loop, []).append(interrupt)
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
        _running[loop].remove(interrupt)
        if not _running[loop]:
            del _running[loop]


def interrupt_work(loop: asyncio.AbstractEventLoop) -> bool:
    """From any thread: ask the work running under `on_signals` in `loop` to stop, as Ctrl-C
    would. False when none runs there (yet)."""
    interrupts = list(_running.get(loop, ()))
    for interrupt in interrupts:
        loop.call_soon_threadsafe(interrupt)
    return bool(interrupts)

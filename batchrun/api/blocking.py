"""Blocking calls over coroutines, also from a thread whose event loop is busy (Jupyter)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from batchrun.backends.signals import interrupt_work

T = TypeVar("T")


def block(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end from synchronous code. With a loop already running in this thread
    (Jupyter), it runs on a worker thread with its own loop; Ctrl-C (KeyboardInterrupt here)
    then asks the job to stop as the CLI's Ctrl-C does, and the interrupted job comes back."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    loop = asyncio.new_event_loop()
    outcome: list[Any] = []

    def worker() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome.append(loop.run_until_complete(work))
        except BaseException as exc:  # handed to the caller's thread, raised there
            outcome.append(exc)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=worker, name="batchrun-job", daemon=True)
    pressed: list[bool] = []

    def ctrl_c() -> None:
        pressed.append(True)
        if not interrupt_work(loop):  # not sending yet: stop what it is doing
            loop.call_soon_threadsafe(_cancel_all, loop)

    with _on_ctrl_c(ctrl_c):
        thread.start()
        while thread.is_alive():
            try:
                thread.join(timeout=0.2)  # wakes for Ctrl-C on every platform
            except KeyboardInterrupt:  # a handler of the caller's raised it
                ctrl_c()
    result = outcome[0]
    if isinstance(result, asyncio.CancelledError) and pressed:
        raise KeyboardInterrupt
    if isinstance(result, BaseException):
        raise result
    return result  # type: ignore[no-any-return]


@contextlib.contextmanager
def _on_ctrl_c(stop: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C (SIGINT) calls `stop` while the job runs on the worker thread: the caller's loop
    (asyncio.run's handler cancels its main task, which is blocked here) never could."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda _sig, _frame: stop())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()

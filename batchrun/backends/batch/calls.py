"""How the Batch API path calls the files and batches endpoints: again after a transient
failure (with backoff), and cut short by Ctrl-C at once rather than when the server answers.
All waiting uses the injected `sleep`, so tests run on virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from batchrun.backends.batch.api import ApiCallFailed, Transient
from batchrun.errors import BatchrunError, StateError
from batchrun.pacing.backoff import backoff_s

T = TypeVar("T")
FIRST_POLL_S = 1.0
MIN_CALL_RETRIES = 5


class CallInterrupted(Exception):
    """Ctrl-C ended a files or batches call: the run stops where a kill -9 would have, which
    the manifest's order of saves makes safe to resume from. Control flow, outside the error
    tree: the run catches it and ends as interrupted; it never reaches the user."""


class Caller:
    """`hint` says how to go on after a call fails for good (it depends on how many batches
    are on the server at that moment, so it is asked for then)."""

    def __init__(self, host: str, retries: int, hint: Callable[[], str],
                 sleep: Callable[[float], Awaitable[None]]) -> None:
        self._host, self._hint, self._sleep = host, hint, sleep
        # A files or batches call is asked again at least this often: a --max-retries 0 meant
        # for requests must not end a day-long wait at the first 502 of a poll.
        self.retries = max(retries, MIN_CALL_RETRIES)
        self.interrupted = False
        self._napping: asyncio.Task[None] | None = None
        self._calling: asyncio.Future[Any] | None = None  # the files or batches call in flight

    def interrupt(self) -> None:
        self.interrupted = True
        if self._napping is not None:
            self._napping.cancel()
        if self._calling is not None:
            self._calling.cancel()

    async def interruptible(self, call: Awaitable[T]) -> T:
        """A files or batches call that Ctrl-C ends at once, not when the server answers."""
        if self.interrupted:
            if asyncio.iscoroutine(call):
                call.close()  # never to run: closed, so no "never awaited" warning
            raise CallInterrupted
        task: asyncio.Future[T] = asyncio.ensure_future(call)
        self._calling = task
        try:
            return await task
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
            raise CallInterrupted from None
        finally:
            self._calling = None

    async def nap(self, seconds: float) -> None:
        self._napping = asyncio.ensure_future(self._sleep(seconds))
        try:
            await self._napping
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
        finally:
            self._napping = None

    async def call(self, what: str, call: Callable[[], Awaitable[T]],
                   refused: Callable[[ApiCallFailed], BatchrunError] | None = None) -> T:
        """`call`, again after a transient failure (with backoff), up to --max-retries."""
        for attempt in range(self.retries + 1):
            try:
                return await self.interruptible(call())
            except Transient as exc:
                if attempt == self.retries:
                    raise self.unreachable(what, exc) from None
                await self.nap(backoff_s(attempt + 1, first_s=FIRST_POLL_S))
            except ApiCallFailed as exc:
                if refused is not None:
                    raise refused(exc) from None
                raise self.refused(what, exc) from None
        raise AssertionError("unreachable")

    def refused(self, what: str, exc: ApiCallFailed) -> BatchrunError:
        return BatchrunError(f"The Batch API refused {what}: {exc.message}. {self._hint()}")

    def no_batch_api(self, job: str) -> Callable[[ApiCallFailed], BatchrunError]:
        """For an upload: with a 404 or 405 the route itself is missing, and resuming meets
        the same answer."""
        def refused(exc: ApiCallFailed) -> BatchrunError:
            hint = (f"Does {self._host} serve the Batch API (files and batches)? If not, run "
                    f"the job with --via sync: batchrun resume {job} --via sync."
                    if exc.status in (404, 405) else self._hint())
            return BatchrunError(f"The Batch API refused uploading a part: {exc.message}. "
                                 f"{hint}")
        return refused

    def unreachable(self, what: str, exc: Transient) -> StateError:
        return StateError(
            f"The Batch API at {self._host} failed {what} {self.retries + 1} times (last: "
            f"{exc.message}). {self._hint()}")

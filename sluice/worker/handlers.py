"""Calling user code: sync handlers on worker threads, async ones on one event loop thread.

A time-out or cancellation sets the context's cancel flag; async handlers are also cancelled
outright. A sync handler cannot be killed from outside: it should check ``ctx.cancelled``. Its
late result is fenced off, because the time-out already ended that attempt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable
from typing import Any

from sluice.context import Context
from sluice.errors import Cancelled


class LoopThread:
    """One asyncio loop per worker process, started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="sluice-async",
                                 daemon=True).start()
            return self._loop

    def stop(self) -> None:
        with self._lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None


def call(func: Callable[..., Any], ctx: Context, args: tuple[Any, ...], loops: LoopThread,
         timeout: float | None) -> Any:
    """Run ``func(ctx, *args)`` to completion on this thread; raise TimeoutError after
    ``timeout`` seconds (async) or report it when it returns late (sync)."""
    if _is_async(func):
        future = asyncio.run_coroutine_threadsafe(func(ctx, *args), loops.loop())
        return _wait_async(future, ctx, timeout)
    result = func(ctx, *args)
    if result is not None and inspect.isawaitable(result):  # a sync function returning a coroutine
        return _wait_async(asyncio.run_coroutine_threadsafe(_await(result), loops.loop()),
                           ctx, timeout)
    return result


_async: dict[Callable[..., Any], bool] = {}


def _is_async(func: Callable[..., Any]) -> bool:
    """``inspect.iscoroutinefunction``, remembered: it is asked once per record."""
    try:
        known = _async.get(func)
        if known is None:
            known = _async[func] = inspect.iscoroutinefunction(func)
        return known
    except TypeError:  # an unhashable callable object
        return inspect.iscoroutinefunction(func)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _wait_async(future: concurrent.futures.Future[Any], ctx: Context,
                timeout: float | None) -> Any:
    waited = 0.0
    while True:
        step = 0.05 if timeout is None else min(0.05, max(0.0, timeout - waited))
        try:
            return future.result(timeout=step)
        except concurrent.futures.TimeoutError:
            waited += step
            if ctx.cancelled:
                future.cancel()
                raise Cancelled(f"run {ctx.run_id} of {ctx.job!r} was cancelled") from None
            if timeout is not None and waited >= timeout:
                future.cancel()
                raise TimeoutError(f"timed out after {timeout:g}s") from None
        except concurrent.futures.CancelledError:
            raise Cancelled(f"run {ctx.run_id} of {ctx.job!r} was cancelled") from None

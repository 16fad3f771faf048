"""Small asyncio helpers shared across the package."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


@contextlib.asynccontextmanager
async def task_scope(*, first_error: bool = False) -> AsyncIterator[asyncio.TaskGroup]:
    """An ``asyncio.TaskGroup`` that raises a lone error as itself, not as a one-member group.

    Callers of our context managers should catch ``ActivityLost``, not ``ExceptionGroup``; when
    several tasks fail at once the group is kept, as nothing would be right to drop, unless
    ``first_error``: the tasks do parts of one thing (say, the chunks of one file), so the
    first error is the thing's, and the others repeat it.
    """
    try:
        async with asyncio.TaskGroup() as tg:
            yield tg
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 or (
                first_error and all(isinstance(e, Exception) for e in group.exceptions)):
            raise group.exceptions[0] from None
        raise


async def logging_failures(coro: Coroutine[Any, Any, None], what: str,
                           logger: logging.Logger) -> None:
    """Run ``coro``, logging its failure instead of raising it: for a background task whose
    failure must not cancel its task group's other members. Cancellation passes through."""
    try:
        await coro
    except Exception:
        logger.exception("%s failed", what)


class Signalled(Exception):
    """The program was asked to stop by a signal, and what it ran has been cleaned up.

    ``exit_code`` is what the process should exit with: ``128 + signum``, as a shell reports a
    process killed by that signal (143 for SIGTERM).
    """

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {_signal_name(signum)}")


async def until_signalled(
    awaitable: Awaitable[T], signals: tuple[int, ...] = (signal.SIGTERM,)
) -> T:
    """Awaits ``awaitable`` in the current task; any of ``signals`` cancels that task.

    The cancellation unwinds the awaitable as Ctrl-C does under :func:`asyncio.run` (its
    ``async with`` blocks exit, its ``finally`` clauses run); then :class:`Signalled` is raised.
    Signals that come while it unwinds are ignored: the cleanup under way finishes. Use it in
    the main thread (where signal handlers live), e.g. ``asyncio.run(until_signalled(main()))``;
    the handlers in place before are put back afterwards.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None, "until_signalled must run in a task"
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received:
            task.cancel()
        received.append(signum)

    previous: dict[int, Any] = {}
    try:
        for sig in signals:
            previous[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if received and task.uncancel() == 0:
                raise Signalled(received[0]) from None
            raise
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if received:  # the awaitable ended anyway (it swallowed the cancellation)
        task.uncancel()
        raise Signalled(received[0])
    return result


@contextlib.contextmanager
def signals_as_interrupt(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """In the block, any of ``signals`` acts as Ctrl-C (SIGINT) would at that moment.

    For synchronous code, which Ctrl-C stops with ``KeyboardInterrupt`` (so its cleanup for
    that runs), and for code that runs its own event loop with :func:`asyncio.run` (which
    handles Ctrl-C by cancelling its main task). A ``KeyboardInterrupt`` that leaves the block
    after such a signal is turned into :class:`Signalled`. Use it in the main thread.
    """
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        interrupt = signal.getsignal(signal.SIGINT)
        if callable(interrupt) and interrupt is not signal.default_int_handler:
            interrupt(signal.SIGINT, frame)  # e.g. asyncio.run's: cancels its main task
        else:
            raise KeyboardInterrupt

    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, on_signal)
        yield
    except KeyboardInterrupt:
        if received:
            raise Signalled(received[0]) from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"

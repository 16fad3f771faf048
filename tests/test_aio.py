"""The signal helpers: SIGTERM unwinds what runs, then says so with Signalled."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from workgen._aio import Signalled, signals_as_interrupt, until_signalled


async def test_sigterm_cancels_the_awaitable_which_cleans_up_then_signalled() -> None:
    before = signal.getsignal(signal.SIGTERM)
    steps: list[str] = []

    async def work() -> None:
        try:
            steps.append("running")
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(30)
        finally:
            steps.append("cleaning up")
            await asyncio.sleep(0)  # cleanup may await
            os.kill(os.getpid(), signal.SIGTERM)  # a second one does not cut it short
            await asyncio.sleep(0.05)
            steps.append("cleaned up")

    with pytest.raises(Signalled) as info:
        await until_signalled(work())
    assert steps == ["running", "cleaning up", "cleaned up"]
    assert info.value.exit_code == 143 and info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


async def test_without_a_signal_the_result_passes_through() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await until_signalled(work()) == 7


async def test_other_cancellations_stay_cancellations() -> None:
    async def outer() -> None:
        await until_signalled(asyncio.sleep(30))

    task = asyncio.create_task(outer())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_signals_as_interrupt_raises_where_the_program_is_and_ends_as_signalled() -> None:
    before = signal.getsignal(signal.SIGTERM)
    steps = []
    with pytest.raises(Signalled) as info:
        with signals_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            except KeyboardInterrupt:
                steps.append("interrupted")
                raise
    assert steps == ["interrupted"]
    assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_signals_as_interrupt_lets_asyncio_run_cancel_its_main_task() -> None:
    steps = []

    async def main() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(30)
        finally:
            steps.append("cleaned up")

    with pytest.raises(Signalled):
        with signals_as_interrupt():
            asyncio.run(main())
    assert steps == ["cleaned up"]


def test_ctrl_c_stays_a_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt) as info:
        with signals_as_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
    assert not isinstance(info.value, Signalled)

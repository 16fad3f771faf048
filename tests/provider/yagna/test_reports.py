"""An activity's reports to its daemon: results wait for its state, never for its usage."""

from __future__ import annotations

import asyncio

from workgen.provider.exeunit.unit import ActivityState
from workgen.provider.yagna.agent import _States


async def test_with_every_state_change_reported_nothing_is_waited_for() -> None:
    states = _States()
    states.changed(ActivityState.READY)
    await states.mark_reported(states.changes)
    async with asyncio.timeout(1):
        await states.settled()
    assert states.queue.qsize() == 1  # settling asked for no report of its own


async def test_a_state_change_is_waited_for_until_the_daemon_has_it() -> None:
    states = _States()
    states.changed(ActivityState.DEPLOYED)
    waiting = asyncio.ensure_future(states.settled())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await states.mark_reported(states.changes)
    async with asyncio.timeout(1):
        await waiting

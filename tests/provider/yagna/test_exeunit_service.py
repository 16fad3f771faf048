"""The exe unit's GSB service answers as yagna's exe unit does, called directly (no daemon)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from workgen.gsb import GsbHandlerError
from workgen.provider.exeunit.unit import ExeUnit
from workgen.provider.yagna.service import ExeUnitService

SETUP = [{"deploy": {}}, {"start": {}}]


def run(script: str) -> dict[str, Any]:
    return {"run": {"entry_point": "/bin/sh", "args": ["-c", script]}}


async def call(service: ExeUnitService, method: str, **msg: Any) -> Any:
    return await service.handle(f"/public/exeunit/x/{method}", "caller",
                                {"activityId": service.unit.activity_id, **msg})


async def test_results_without_an_index_wait_up_to_the_timeout_for_the_last_command() -> None:
    async with ExeUnit() as unit:
        service = ExeUnitService(unit, ())
        batch = await call(service, "Exec", batchId="b1",
                           exeScript=[*SETUP, run("sleep 0.3; echo done")])
        began = time.monotonic()
        results = await call(service, "GetExecBatchResults", batchId=batch, timeout=30)
        assert [r["index"] for r in results] == [0, 1, 2] and results[-1]["isBatchFinished"]
        assert time.monotonic() - began < 20


async def test_results_without_an_index_on_timeout_answer_what_is_done() -> None:
    async with ExeUnit() as unit:
        service = ExeUnitService(unit, ())
        await call(service, "Exec", batchId="b1", exeScript=[*SETUP])
        await unit.batch("b1").finished.wait()
        await call(service, "Exec", batchId="b2", exeScript=[run("true"), run("sleep 30")])
        results = await call(service, "GetExecBatchResults", batchId="b2", timeout=0.2)
        assert [r["index"] for r in results] in ([], [0])
        with pytest.raises(GsbHandlerError) as caught:
            await call(service, "GetExecBatchResults", batchId="b2", timeout=0.1,
                       commandIndex=1)
        assert caught.value.error == "timeout"
        first = await call(service, "GetExecBatchResults", batchId="b2", timeout=10,
                           commandIndex=0)
        assert [r["index"] for r in first] == [0]


@pytest.mark.parametrize("bad", [{"timeout": float("nan")}, {"timeout": -1},
                                 {"commandIndex": -1}, {"commandIndex": "0"},
                                 {"commandIndex": 7}])
async def test_results_refuse_nonsense(bad: dict[str, Any]) -> None:
    async with ExeUnit() as unit:
        service = ExeUnitService(unit, ())
        batch = await call(service, "Exec", batchId="b1", exeScript=SETUP)
        with pytest.raises(GsbHandlerError) as caught:
            await call(service, "GetExecBatchResults", batchId=batch, **bad)
        assert "badRequest" in caught.value.error



async def test_results_go_out_once_the_daemon_has_the_activitys_state() -> None:
    reported = asyncio.Event()
    waits = 0

    async def settled() -> None:
        nonlocal waits
        waits += 1
        await reported.wait()

    async with ExeUnit() as unit:
        service = ExeUnitService(unit, (), settled)
        batch = await call(service, "Exec", batchId="b1", exeScript=SETUP)
        answer = asyncio.ensure_future(
            call(service, "GetExecBatchResults", batchId=batch, timeout=30))
        await unit.batch(batch).finished.wait()
        await asyncio.sleep(0.05)
        assert not answer.done() and waits == 1
        reported.set()
        assert (await answer)[-1]["isBatchFinished"]

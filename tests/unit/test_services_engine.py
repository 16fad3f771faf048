"""The services engine's decisions on MockBackend: the budget stopping an instance, a shutdown
handler held to its bound, stopping an instance that has no provider yet, handler mistakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from workgen import Golem, Service, ServiceState, events, vm
from workgen.protocol.pricing import LinearPricing
from workgen.testing import MockBackend, MockProvider


class Idle(Service):
    @staticmethod
    async def get_payload() -> Any:
        return await vm.repo()


async def _ended(instance: Service) -> None:
    await instance.wait_for(ServiceState.terminated, ServiceState.unresponsive)


async def test_an_instance_the_budget_cannot_pay_for_any_longer_is_stopped_with_a_reason(
        ) -> None:
    # 0.5 a second against a budget of 2: a few seconds at most.
    dear = MockProvider("dear", pricing=LinearPricing.from_prices(
        {"golem.usage.duration_sec": 0.5}))
    seen: list[events.Event] = []
    backend = MockBackend([dear])
    async with Golem(budget=2, backend=backend, event_consumer=seen.append) as golem:
        cluster = await golem.run_service(Idle)
        (instance,) = cluster.instances
        async with asyncio.timeout(20):
            await _ended(instance)
    assert instance.state is ServiceState.terminated
    (ended,) = [e for e in seen if isinstance(e, events.AgreementTerminated)]
    assert "budget" in ended.reason
    assert sum(backend.invoices_paid.values()) <= 2


class SlowShutdown(Idle):
    async def shutdown(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield None


async def test_a_shutdown_handler_is_held_to_its_bound() -> None:
    seen: list[events.Event] = []
    async with Golem(budget=1, backend=MockBackend(1), event_consumer=seen.append) as golem:
        cluster = await golem.run_service(SlowShutdown)
        cluster.shutdown_timeout = 0.1
        (instance,) = cluster.instances
        await instance.wait_for(ServiceState.running)
        await cluster.stop()
    assert instance.state is ServiceState.terminated
    (ended,) = [e for e in seen if isinstance(e, events.AgreementTerminated)]
    assert "shutdown handler ran past 0.1s" in ended.reason


async def test_stopping_an_instance_waiting_for_a_provider_ends_it_without_an_agreement(
        ) -> None:
    seen: list[events.Event] = []
    async with Golem(budget=1, backend=MockBackend(1), event_consumer=seen.append) as golem:
        cluster = await golem.run_service(Idle, num_instances=2)
        first, second = cluster.instances
        assert await first.wait_for(ServiceState.running) is ServiceState.running
        assert second.state is ServiceState.pending  # one provider, taken
        cluster.stop_instance(second)
        async with asyncio.timeout(5):
            await _ended(second)
        assert second.state is ServiceState.terminated and first.state is ServiceState.running
        with pytest.raises(ValueError, match="not an instance"):
            cluster.stop_instance(Idle())
        await cluster.stop()
    assert len([e for e in seen if isinstance(e, events.AgreementCreated)]) == 1


class NotAGenerator(Idle):
    async def run(self) -> None:  # type: ignore[override]
        return None


async def test_a_handler_that_is_no_generator_ends_the_instance_with_a_clear_error() -> None:
    async with Golem(budget=1, backend=MockBackend(1), event_consumer=lambda e: None) as golem:
        cluster = await golem.run_service(NotAGenerator)
        (instance,) = cluster.instances
        async with asyncio.timeout(5):
            await _ended(instance)
        await cluster.stop()
    assert isinstance(instance.exc_info, TypeError)
    assert "must be an async generator" in str(instance.exc_info)


class Forgets(Service):
    def __init__(self) -> None:  # no super().__init__()
        pass


async def test_a_service_that_skips_super_init_is_told_so() -> None:
    async with Golem(budget=1, backend=MockBackend(1), event_consumer=lambda e: None) as golem:
        with pytest.raises(TypeError, match=r"super\(\).__init__\(\)"):
            await golem.run_service(Forgets, payload=await vm.repo())


async def test_no_provider_at_all_ends_the_instance_with_no_providers_error() -> None:
    from workgen import NoProvidersError

    async with Golem(budget=1, backend=MockBackend(0), event_consumer=lambda e: None) as golem:
        cluster = await golem.run_service(Idle)
        (instance,) = cluster.instances
        async with asyncio.timeout(10):
            await _ended(instance)
    assert instance.state is ServiceState.terminated
    assert isinstance(instance.exc_info, NoProvidersError)


async def test_leaving_golem_while_instances_start_ends_them_all() -> None:
    seen: list[events.Event] = []
    backend = MockBackend(2)
    async with Golem(budget=1, backend=backend, event_consumer=seen.append) as golem:
        cluster = await golem.run_service(Idle, num_instances=3)  # one more than providers
    assert {s.state for s in cluster.instances} == {ServiceState.terminated}
    made = {e.agreement_id for e in seen if isinstance(e, events.AgreementCreated)}
    assert made == set(backend.terminated) == set(backend.invoices_paid)

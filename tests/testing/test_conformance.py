"""The backend conformance suite passes on every backend workgen has (the mock, the local
network, a devnet's yagna), and it catches a backend that breaks the seam's contract."""

from __future__ import annotations

import pytest

from support.networks import DevnetNet
from workgen.backends.local import LocalNetwork
from workgen.devnet import Devnet
from workgen.errors import ActivityLost
from workgen.protocol.results import CommandOutcome, FailureKind
from workgen.testing import CHECKS, ConformanceError, MockBackend, check_backend


async def test_the_mock_backend_conforms() -> None:
    results = await check_backend(lambda: MockBackend(1))
    assert [r.name for r in results] == list(CHECKS)
    assert all(r.passed for r in results)


async def test_the_local_network_conforms() -> None:
    results = await check_backend(lambda: LocalNetwork(1))
    assert all(r.passed for r in results), results


@pytest.mark.watchdog(150)
async def test_the_yagna_backend_conforms_on_a_devnet(test_devnet: Devnet) -> None:
    net = DevnetNet(test_devnet)
    honest = set(net.provider_names(2))
    results = await check_backend(net.backend, accept=lambda p: p.provider_name in honest)
    assert all(r.passed for r in results), results


class _ReadsMeaningFromOutput(MockBackend):
    """Decides a command timed out from what it printed, as a careless backend would."""

    async def exec(self, activity, commands, timeout):  # type: ignore[no-untyped-def]
        batch = await super().exec(activity, commands, timeout)
        results = batch.results

        async def guessed() -> list[CommandOutcome]:
            return [CommandOutcome.of(o, o.return_code, FailureKind.TIMED_OUT)
                    if "timed out" in str(o.stderr) else o for o in await results()]

        batch.results = guessed  # type: ignore[method-assign]
        return batch


class _ForgetsItClosedActivities(MockBackend):
    """Reports an activity it destroyed itself as lost."""

    async def exec(self, activity, commands, timeout):  # type: ignore[no-untyped-def]
        if self._activities[activity.id].destroyed:
            raise ActivityLost("gone", activity_id=activity.id)
        return await super().exec(activity, commands, timeout)


async def test_the_suite_names_what_a_backend_gets_wrong() -> None:
    with pytest.raises(ConformanceError) as caught:
        await check_backend(lambda: _ReadsMeaningFromOutput(1))
    failed = [r.name for r in caught.value.results if r.passed is False]
    assert failed == ["output-is-not-meaning"]
    assert "output-is-not-meaning" in str(caught.value)

    results = await check_backend(lambda: _ForgetsItClosedActivities(1),
                                  raise_on_failure=False)
    assert [r.name for r in results if r.passed is False] == ["closed-by-us"]


async def test_checks_that_need_a_failed_one_are_reported_as_not_run() -> None:
    results = await check_backend(lambda: MockBackend(0), timeout=1,
                                  raise_on_failure=False)
    by_name = {r.name: r for r in results}
    assert by_name["market"].passed is False and "1s" in (by_name["market"].reason or "")
    assert by_name["batch"].passed is None and by_name["batch"].reason == "needs market"
    assert by_name["aclose"].passed is True  # always runs

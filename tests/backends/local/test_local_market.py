"""The local network's market: offers, matching, negotiation and images."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from localnet_support import (
    agreement_on, drain, first_draft, make_demand, next_answer, paid_demand, ready_activity, sh,
    with_props,
)
from workgen.backends.base import Backend, Proposal, ProposalRejectedEvent
from workgen.backends.local import INET, LocalNetwork, ProviderConfig
from workgen.errors import ImageNotFound
from workgen.provider.offer import asks_for_inet
from workgen.protocol.constraints import ConstraintSyntaxError, parse_constraints
from workgen.protocol.pricing import LinearPricing

DURATION, CPU = "golem.usage.duration_sec", "golem.usage.cpu_sec"
TASK_PACKAGE = "golem.srv.comp.task_package"
IMAGE_HASH = "9a3b5d67b0b27746283cb5f287c13eab1beaa12d92a9f536b747c7ae"


def config(name: str, threads: int = 1, mem: float = 1.0, inet: bool = False) -> ProviderConfig:
    return ProviderConfig(name, threads, mem, 4.0,
                          LinearPricing.from_prices({DURATION: 0.001, CPU: 0.002}), inet=inet)


async def test_the_local_network_is_a_backend() -> None:
    net = LocalNetwork(1)
    assert isinstance(net, Backend) and net.name == "local" and net.startup_timeout <= 5
    await net.aclose()


async def test_offers_carry_golems_properties_and_a_node_id() -> None:
    async with LocalNetwork(3, debit_note_interval=30) as net:
        allocation, demand = await paid_demand(net)
        offers = await drain(await net.subscribe_demand(demand))
        providers = {p.node_id: p for p in net.providers}
    assert len(offers) == 3
    for offer in offers:
        assert isinstance(offer, Proposal) and offer.state == "Initial"
        assert re.fullmatch(r"0x[0-9a-f]{40}", offer.issuer_id) and offer.issuer_id in providers
        props = offer.properties
        assert props["golem.runtime.name"] == "vm" and props["golem.runtime.capabilities"] == []
        assert props["golem.node.id.name"] == providers[offer.issuer_id].name
        assert props["golem.node.debug.subnet"] == "public"
        assert props["golem.com.pricing.model"] == "linear"
        assert props["golem.com.usage.vector"] == [DURATION, CPU]
        assert len(props["golem.com.pricing.model.linear.coeffs"]) == 3  # type: ignore[arg-type]
        assert props["golem.com.scheme"] == "payu"
        assert props["golem.com.scheme.payu.debit-note.interval-sec?"] == 30
        assert props[f"golem.com.payment.platform.{allocation.payment_platform}.address"] \
            == offer.issuer_id
        assert props["golem.activity.caps.transfer.protocol"] == ["local", "http", "https"]
        assert props["golem.srv.caps.multi-activity"] is True
        for name in ("golem.inf.cpu.threads", "golem.inf.mem.gib", "golem.inf.storage.gib",
                     "golem.inf.cpu.architecture"):
            assert name in props
        assert "golem.srv.comp.expiration>" in offer.constraints
    # Default providers differ in resources and prices.
    coeffs = {str(o.properties["golem.com.pricing.model.linear.coeffs"])
              for o in offers if isinstance(o, Proposal)}
    assert len(coeffs) == 3


async def test_a_demand_gets_initial_proposals_only_from_matching_offers() -> None:
    providers = [config("small", 1, 1.0), config("big", 2, 4.0), config("big-b", 4, 2.0)]
    async with LocalNetwork(providers) as net:
        _, demand = await paid_demand(net, constraints=(
            "(golem.inf.mem.gib>=2)(golem.inf.cpu.threads>=2)(golem.node.id.name=big*)"))
        names = [e.provider_name for e in await drain(await net.subscribe_demand(demand))
                 if isinstance(e, Proposal)]
        _, other_subnet = await paid_demand(net, props={"golem.node.debug.subnet": "elsewhere"})
        none = await drain(await net.subscribe_demand(other_subnet))
    assert sorted(names) == ["big", "big-b"]
    assert none == []  # the offers' constraints want their own subnet


async def test_counter_proposal_is_answered_with_a_draft_on_the_agreed_terms() -> None:
    async with LocalNetwork(1, debit_note_interval=60) as net:
        _, demand = await paid_demand(
            net, props={"golem.com.scheme.payu.debit-note.interval-sec?": 5.0})
        sub, draft = await first_draft(net, demand)
        await sub.aclose()
    assert draft.state == "Draft" and draft.prev_proposal_id is not None
    assert draft.properties["golem.com.scheme.payu.debit-note.interval-sec?"] == 5.0


async def test_counter_with_unacceptable_terms_is_rejected_with_a_reason() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        sub = await net.subscribe_demand(demand)
        initial = await anext(aiter(sub))
        assert isinstance(initial, Proposal)
        too_often = with_props(demand, {"golem.com.scheme.payu.debit-note.interval-sec?": 0.001})
        await net.counter_proposal(sub, initial, too_often)
        first = await next_answer(sub)
        unpaid = make_demand()  # no payment platform chosen
        await net.counter_proposal(sub, initial, unpaid)
        second = await next_answer(sub)
        await sub.aclose()
    assert isinstance(first, ProposalRejectedEvent) and "debit-note interval must be" in first.reason
    assert isinstance(second, ProposalRejectedEvent) and "payment platform" in second.reason
    assert first.issuer_id == initial.issuer_id


async def test_a_malformed_constraint_is_a_clear_error() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net, constraints="(golem.inf.mem.gib>=")
        with pytest.raises(ConstraintSyntaxError, match="position") as caught:
            await net.subscribe_demand(demand)
    assert isinstance(caught.value, ValueError)


async def test_an_unknown_image_is_image_not_found_naming_it() -> None:
    async with LocalNetwork(1) as net:
        # No URL: nowhere to fetch it from (with one, it would be fetched at deploy).
        _, demand = await paid_demand(net, props={TASK_PACKAGE: f"hash:sha3:{IMAGE_HASH}"})
        with pytest.raises(ImageNotFound, match=IMAGE_HASH) as caught:
            await net.subscribe_demand(demand)
        _, tagged = await paid_demand(net, props={"golem.srv.comp.vm.image_tag": "nope:1"})
        with pytest.raises(ImageNotFound, match="nope:1"):
            await net.subscribe_demand(tagged)
    assert "workgen image build" in str(caught.value) and "dev_images" in str(caught.value)


async def test_a_task_package_that_is_not_a_sha3_digest_is_refused_saying_so() -> None:
    async with LocalNetwork(1) as net:
        for package in ("hash:sha3:abc:http://example.com/x.gvmi",
                        f"hash:sha3:{IMAGE_HASH}0:http://example.com/x.gvmi",
                        f"hash:md5:{IMAGE_HASH}:http://example.com/x.gvmi"):
            _, demand = await paid_demand(net, props={TASK_PACKAGE: package})
            with pytest.raises(ImageNotFound, match="cannot be read"):
                await net.subscribe_demand(demand)


async def test_a_registered_image_gives_the_activity_its_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "image"
    rootfs.mkdir()
    async with LocalNetwork(1) as net:
        net.images.register(rootfs, hash=IMAGE_HASH, tags=["mine:1"])
        _, by_hash = await paid_demand(
            net, props={TASK_PACKAGE: f"hash:sha3:{IMAGE_HASH}:http://h/x.gvmi"})
        agreement = await agreement_on(net, by_hash)
        activity = await net.create_activity(agreement)
        assert net.exe_unit(activity.id).config.rootfs == rootfs.resolve()
        await net.terminate_agreement(agreement, "done")
        _, by_tag = await paid_demand(net, props={"golem.srv.comp.vm.image_tag": "mine:1"})
        agreement = await agreement_on(net, by_tag)
        activity = await net.create_activity(agreement)
        assert net.exe_unit(activity.id).config.rootfs == rootfs.resolve()
        await net.terminate_agreement(agreement, "done")


async def test_dev_mode_runs_an_unknown_image_on_the_host_image_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="workgen.provider.images")
    async with LocalNetwork(1, dev_images=True) as net:
        _, demand = await paid_demand(net, props={TASK_PACKAGE: f"hash:sha3:{IMAGE_HASH}"})
        await drain(await net.subscribe_demand(demand))
        agreement, activity = await ready_activity(net, demand)
        assert net.exe_unit(activity.id).config.rootfs is None
        (result,) = await (await net.exec(activity, [sh("echo on the host")], 30)).results()
        await net.terminate_agreement(agreement, "done")
    assert result.stdout == "on the host\n"
    warnings = [r for r in caplog.records if IMAGE_HASH in r.getMessage()]
    assert len(warnings) == 1 and "development mode" in warnings[0].getMessage()


async def test_dev_mode_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKGEN_DEV_IMAGES", "1")
    net = LocalNetwork(1)
    assert net.dev_images
    await net.aclose()


async def test_inet_goes_only_to_providers_that_allow_it_and_only_when_asked() -> None:
    async with LocalNetwork([config("closed"), config("open", inet=True)]) as net:
        _, wants_inet = await paid_demand(net, props={INET: True})
        names = [e.provider_name for e in await drain(await net.subscribe_demand(wants_inet))
                 if isinstance(e, Proposal)]
        assert names == ["open"]
        agreement = await agreement_on(net, wants_inet)
        activity = await net.create_activity(agreement)
        assert net.exe_unit(activity.id).config.inet
        await net.terminate_agreement(agreement, "done")
        _, requires_inet = await paid_demand(net, constraints="(golem.runtime.capabilities=inet)")
        agreement = await agreement_on(net, requires_inet)
        activity = await net.create_activity(agreement)
        assert net.exe_unit(activity.id).config.inet
        await net.terminate_agreement(agreement, "done")
        _, plain = await paid_demand(net, constraints="(golem.node.id.name=open)")
        agreement = await agreement_on(net, plain)
        activity = await net.create_activity(agreement)
        assert not net.exe_unit(activity.id).config.inet
        await net.terminate_agreement(agreement, "done")


async def test_two_networks_share_nothing() -> None:
    async with LocalNetwork(1) as one, LocalNetwork(1) as two:
        assert one.providers[0].node_id != two.providers[0].node_id
        assert one.ledger.address != two.ledger.address
        _, demand = await paid_demand(one)
        sub = await one.subscribe_demand(demand)
        initial = await anext(aiter(sub))
        assert isinstance(initial, Proposal)
        _, other_demand = await paid_demand(two)
        other_sub = await two.subscribe_demand(other_demand)
        with pytest.raises(ValueError):
            await two.counter_proposal(other_sub, initial, demand)
        await sub.aclose()
        await other_sub.aclose()


def test_only_a_required_inet_capability_asks_for_the_network() -> None:
    def asks(constraints: str, props: dict[str, object] | None = None) -> bool:
        return asks_for_inet(props or {}, parse_constraints(constraints))

    assert asks("(&(golem.inf.mem.gib>=1)(golem.runtime.capabilities=inet))")
    assert asks("(&)", {INET: True})
    assert not asks("(|(golem.runtime.capabilities=inet)(golem.inf.mem.gib>=1))")
    assert not asks("(!(golem.runtime.capabilities=inet))")
    assert not asks("(golem.runtime.capabilities=vpn)", {INET: False})


def test_the_package_exports_a_sorted_public_surface() -> None:
    import workgen.backends.local as local

    assert local.__all__ == sorted(local.__all__)
    assert all(hasattr(local, name) for name in local.__all__)

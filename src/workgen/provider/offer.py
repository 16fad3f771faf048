"""Provider configuration and the offer properties it turns into (shared by the local network
and the provider on a yagna node).

The properties are Golem's (``golem.inf.*``, ``golem.runtime.*``, ``golem.com.*``, ...), so a
demand, a strategy or a payload behaves the same locally and on Golem. Two are our own:
:data:`INET` (a demand asks for outbound network access) and the image tag of
:mod:`workgen.provider.images`.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass

from ..protocol.constraints import And, Compare, Constraint, Op
from ..protocol.pricing import LinearPricing
from ..protocol.properties import (
    ACTIVITY_CAPS_TRANSFER_PROTOCOL, COM_SCHEME, COM_SCHEME_PAYU_DEBIT_NOTE_INTERVAL_SEC,
    INF_CPU_ARCHITECTURE, INF_CPU_CORES, INF_CPU_THREADS, INF_MEM_GIB, INF_STORAGE_GIB,
    NODE_DEBUG_SUBNET, NODE_ID_NAME, RUNTIME_CAPABILITIES, RUNTIME_NAME, SCHEME_PAYU,
    USAGE_CPU_SEC, USAGE_DURATION_SEC, payment_platform_address,
)

INET = "golem.srv.caps.inet"
"""Demand property: ``True`` asks for outbound network access in the activity's sandbox.

A demand may instead (or also) *require* the capability in its constraints,
``(golem.runtime.capabilities=inet)`` at its top level (not under ``|`` or ``!``). Either way,
only providers whose config allows ``inet`` match (their offers list the ``inet`` runtime
capability; the others' offer constraints exclude the property), and only such a demand gets
the network in its sandbox: a demand that does not ask runs offline even on those providers.
"""

MULTI_ACTIVITY = "golem.srv.caps.multi-activity"
PAYMENT_PROTOCOL_VERSION = "golem.com.payment.protocol.version"
USAGE_COUNTERS = (USAGE_DURATION_SEC, USAGE_CPU_SEC)
"""What the execution unit measures, so what an offer can price."""


@dataclass(frozen=True)
class ProviderConfig:
    """One provider: its resources (all given to one agreement at a time) and its prices."""

    name: str
    cpu_threads: int
    mem_gib: float
    storage_gib: float
    pricing: LinearPricing
    inet: bool = False
    max_processes: int = 256

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a provider needs a name")
        if self.cpu_threads < 1 or self.max_processes < 1:
            raise ValueError(f"{self.name}: cpu_threads and max_processes must be at least 1")
        for what, value in (("mem_gib", self.mem_gib), ("storage_gib", self.storage_gib)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{self.name}: {what} must be a positive number, got {value}")
        unknown = [c for c in self.pricing.usage_vector if c not in USAGE_COUNTERS]
        if unknown:
            raise ValueError(
                f"{self.name}: the execution unit measures only {list(USAGE_COUNTERS)}; "
                f"cannot price {unknown}"
            )


def asks_for_inet(properties: Mapping[str, object], constraint: Constraint) -> bool:
    """Whether a (flat, parsed) demand asks for outbound network access; see :data:`INET`."""
    if properties.get(INET) is True:
        return True
    pending = [constraint]
    while pending:  # only through "&": a capability under "|" or "!" is not required
        node = pending.pop()
        if isinstance(node, And):
            pending.extend(node.children)
        elif (isinstance(node, Compare) and node.name == RUNTIME_CAPABILITIES
              and node.op is Op.EQ and node.value == "inet"):
            return True
    return False


def default_provider_configs(count: int) -> list[ProviderConfig]:
    """``count`` providers with varied resources and prices, the same on every call."""
    if count < 0:
        raise ValueError(f"the number of providers must not be negative, got {count}")
    configs = []
    for i in range(count):
        # Varied, and within the limits other SDKs' examples set (golem-js: start 0.5 GLM,
        # CPU 1 GLM/h, environment 0.5 GLM/h): at most 0.324 GLM/h for time and 0.432 GLM/h
        # for CPU, so every default provider is usable by them.
        pricing = LinearPricing.from_prices(
            {USAGE_DURATION_SEC: round(0.00003 * (1 + i % 3), 10),
             USAGE_CPU_SEC: round(0.00006 * (1 + i % 2), 10)},
            fixed=0.0 if i % 4 < 2 else 0.001,
        )
        configs.append(ProviderConfig(
            name=f"local-provider-{i}", cpu_threads=1 + i % 2, mem_gib=1.0 + i % 2,
            storage_gib=4.0 + 2.0 * (i % 3), pricing=pricing,
        ))
    return configs


def offer_properties(
    config: ProviderConfig, *, node_id: str, subnet: str, platform_name: str,
    debit_note_interval: float, transfer_protocols: tuple[str, ...] = ("http", "https"),
) -> dict[str, object]:
    """The flat properties of ``config``'s offer."""
    return {
        INF_CPU_THREADS: config.cpu_threads,
        INF_CPU_CORES: config.cpu_threads,
        INF_MEM_GIB: float(config.mem_gib),
        INF_STORAGE_GIB: float(config.storage_gib),
        INF_CPU_ARCHITECTURE: platform.machine() or "unknown",
        RUNTIME_NAME: "vm",
        RUNTIME_CAPABILITIES: ["inet"] if config.inet else [],
        NODE_ID_NAME: config.name,
        NODE_DEBUG_SUBNET: subnet,
        **config.pricing.to_properties(),
        COM_SCHEME: SCHEME_PAYU,
        COM_SCHEME_PAYU_DEBIT_NOTE_INTERVAL_SEC: debit_note_interval,
        payment_platform_address(platform_name): node_id,
        # yagna's demand decorations require payment protocol version > 1.
        PAYMENT_PROTOCOL_VERSION: 3,
        ACTIVITY_CAPS_TRANSFER_PROTOCOL: list(transfer_protocols),
        MULTI_ACTIVITY: True,
    }

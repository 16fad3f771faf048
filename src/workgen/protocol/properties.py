"""Golem property names and conversion between the flat and nested forms of a property set.

Demands, offers and proposals on yagna's market carry their properties as a JSON object.
The market API documents the *flat* convention, where each key is a full dotted property
name (``{"golem.inf.mem.gib": 4.0}``), but yagna also accepts and may return a *nested*
object (``{"golem": {"inf": {"mem": {"gib": 4.0}}}}``) and keys that mix the two
(``{"golem": {"inf.mem.gib": 4.0}}``). When a name is both a property and the prefix of
other properties (``golem.com.scheme`` and ``golem.com.scheme.payu...``), the nested form
keeps the property's own value under the ``"@tag"`` key of that object, as yagna does.

The names below are the wire names from Golem's standards; the trailing ``?`` on some of
them is part of the name (it marks a negotiable property).
"""

from __future__ import annotations

from collections.abc import Mapping

# Infrastructure (golem.inf)
INF_CPU_THREADS = "golem.inf.cpu.threads"
INF_CPU_CORES = "golem.inf.cpu.cores"
INF_CPU_ARCHITECTURE = "golem.inf.cpu.architecture"
INF_MEM_GIB = "golem.inf.mem.gib"
INF_STORAGE_GIB = "golem.inf.storage.gib"

# Runtime and node
RUNTIME_NAME = "golem.runtime.name"
RUNTIME_CAPABILITIES = "golem.runtime.capabilities"
NODE_ID_NAME = "golem.node.id.name"
NODE_DEBUG_SUBNET = "golem.node.debug.subnet"

# Commercial terms (golem.com)
COM_PRICING_MODEL = "golem.com.pricing.model"
COM_PRICING_MODEL_LINEAR_COEFFS = "golem.com.pricing.model.linear.coeffs"
COM_USAGE_VECTOR = "golem.com.usage.vector"
COM_SCHEME = "golem.com.scheme"
COM_SCHEME_PAYU_DEBIT_NOTE_INTERVAL_SEC = "golem.com.scheme.payu.debit-note.interval-sec?"
COM_SCHEME_PAYU_PAYMENT_TIMEOUT_SEC = "golem.com.scheme.payu.payment-timeout-sec?"
COM_PAYMENT_DEBIT_NOTES_ACCEPT_TIMEOUT = "golem.com.payment.debit-notes.accept-timeout?"
COM_PAYMENT_CHOSEN_PLATFORM = "golem.com.payment.chosen-platform"

PRICING_MODEL_LINEAR = "linear"
SCHEME_PAYU = "payu"

# Service (golem.srv); the expiration is a Unix timestamp in milliseconds.
SRV_COMP_EXPIRATION = "golem.srv.comp.expiration"
SRV_COMP_TASK_PACKAGE = "golem.srv.comp.task_package"
SRV_COMP_VM_PACKAGE_FORMAT = "golem.srv.comp.vm.package_format"
# Not a Golem standard property: a payload's image tag, which a backend resolves (the yagna
# backend through the image registry, the local network in its image store).
SRV_COMP_VM_IMAGE_TAG = "golem.srv.comp.vm.image_tag"

# Activity
ACTIVITY_CAPS_TRANSFER_PROTOCOL = "golem.activity.caps.transfer.protocol"

# Usage counters, as listed in golem.com.usage.vector
USAGE_DURATION_SEC = "golem.usage.duration_sec"
USAGE_CPU_SEC = "golem.usage.cpu_sec"

PROPERTY_TAG = "@tag"


def payment_platform_address(platform: str) -> str:
    """``golem.com.payment.platform.<platform>.address``, e.g. for ``erc20-holesky-tglm``."""
    if not platform or "." in platform:
        raise ValueError(f"invalid payment platform name {platform!r}")
    return f"golem.com.payment.platform.{platform}.address"


def _check_key(key: object, where: str) -> str:
    if not isinstance(key, str):
        raise ValueError(f"property keys must be str, got {key!r} under {where or 'the top'}")
    segments = key.split(".")
    if "" in segments or PROPERTY_TAG in segments:
        raise ValueError(f"invalid property key {key!r} under {where or 'the top'}")
    return key


def _put(flat: dict[str, object], name: str, value: object) -> None:
    if name in flat and flat[name] != value:
        raise ValueError(f"conflicting values for {name!r}: {flat[name]!r} and {value!r}")
    flat[name] = value


def _flatten_into(flat: dict[str, object], prefix: str, node: Mapping[str, object]) -> None:
    for key, value in node.items():
        if key == PROPERTY_TAG:
            if not prefix:
                raise ValueError(f"{PROPERTY_TAG!r} at the top level belongs to no property")
            if isinstance(value, Mapping):
                raise ValueError(f"the {PROPERTY_TAG!r} value of {prefix!r} is an object")
            _put(flat, prefix, value)
            continue
        name = _check_key(key, prefix)
        if prefix:
            name = f"{prefix}.{name}"
        if isinstance(value, Mapping):
            # Property values are scalars or lists, so an object is always more names.
            _flatten_into(flat, name, value)
        else:
            _put(flat, name, value)


def flatten_properties(props: Mapping[str, object]) -> dict[str, object]:
    """The flat form of a nested, flat or mixed property object.

    Lists are values, not objects, so they are kept whole. An empty object contributes no
    property. Two spellings of the same name must agree, or :class:`ValueError` is raised.
    """
    flat: dict[str, object] = {}
    _flatten_into(flat, "", props)
    return flat


def unflatten_properties(props: Mapping[str, object]) -> dict[str, object]:
    """The fully nested form of a flat, nested or mixed property object.

    A name that is also a prefix of other names keeps its own value under ``"@tag"``, so
    ``flatten_properties(unflatten_properties(p)) == flatten_properties(p)``.
    """
    nested: dict[str, object] = {}
    for name, value in flatten_properties(props).items():
        *path, last = name.split(".")
        node = nested
        for segment in path:
            child = node.get(segment)
            if not isinstance(child, dict):
                child = {} if segment not in node else {PROPERTY_TAG: child}
                node[segment] = child
            node = child
        existing = node.get(last)
        if isinstance(existing, dict):
            existing[PROPERTY_TAG] = value
        else:
            node[last] = value
    return nested

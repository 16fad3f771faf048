"""Tests for the VM payload: demand properties, constraint clauses, validation, awaiting."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from workgen.protocol.constraints import match, parse_constraints
from workgen.requestor import vm
from workgen.requestor.payload import VmPayload, repo

IMAGE_HASH = hashlib.sha3_224(b"an example gvmi image").hexdigest()
IMAGE_URL = "http://registry.example.net:8000/docker-example-latest-1a2b3c.gvmi"

PROVIDER_OFFER = {
    "golem.inf.mem.gib": 8.0,
    "golem.inf.storage.gib": 40.0,
    "golem.inf.cpu.threads": 4,
    "golem.runtime.name": "vm",
    "golem.runtime.capabilities": ["inet", "vpn", "manifest-support"],
}


def test_hash_and_url_make_golems_task_package() -> None:
    payload = vm.repo(image_hash=IMAGE_HASH, image_url=IMAGE_URL)
    assert payload.properties() == {
        "golem.srv.comp.task_package": f"hash:sha3:{IMAGE_HASH}:{IMAGE_URL}",
        "golem.srv.comp.vm.package_format": "gvmkit-squash",
    }


def test_hash_without_url_leaves_the_url_part_empty() -> None:
    assert vm.repo(image_hash=IMAGE_HASH).properties() == {
        "golem.srv.comp.task_package": f"hash:sha3:{IMAGE_HASH}:",
        "golem.srv.comp.vm.package_format": "gvmkit-squash",
    }


def test_hash_is_normalised_to_lower_case() -> None:
    assert repo(image_hash=IMAGE_HASH.upper()).image_hash == IMAGE_HASH


def test_tag_is_passed_for_the_backend_to_resolve() -> None:
    assert vm.repo(image_tag="golem/examples-blender:1.0").properties() == {
        "golem.srv.comp.vm.image_tag": "golem/examples-blender:1.0",
        "golem.srv.comp.vm.package_format": "gvmkit-squash",
    }


def test_no_image_means_no_image_properties() -> None:
    payload = vm.repo()
    assert payload.properties() == {}
    assert not payload.names_image


def test_default_constraints_are_exactly_yapapis_defaults() -> None:
    assert vm.repo(image_hash=IMAGE_HASH).constraints() == [
        "(golem.inf.mem.gib>=0.5)",
        "(golem.inf.storage.gib>=2.0)",
        "(golem.inf.cpu.threads>=1)",
        "(golem.runtime.name=vm)",
    ]


def test_resources_and_each_capability_become_clauses() -> None:
    payload = vm.repo(
        image_tag="golem/alpine:latest", min_mem_gib=4, min_storage_gib=10.5, min_cpu_threads=2,
        capabilities=["vpn", "inet", "vpn"],
    )
    assert payload.constraints() == [
        "(golem.inf.mem.gib>=4.0)",
        "(golem.inf.storage.gib>=10.5)",
        "(golem.inf.cpu.threads>=2)",
        "(golem.runtime.name=vm)",
        "(golem.runtime.capabilities=vpn)",
        "(golem.runtime.capabilities=inet)",
    ]
    assert payload.capabilities == ("vpn", "inet")


def test_constraints_parse_and_match_a_provider_that_fits_and_not_one_that_does_not() -> None:
    payload = vm.repo(image_hash=IMAGE_HASH, min_mem_gib=4, capabilities=["vpn"])
    demand = "(&" + "".join(payload.constraints()) + ")"
    parse_constraints(demand)
    assert match(payload.properties(), demand, PROVIDER_OFFER, "()")
    small = {**PROVIDER_OFFER, "golem.inf.mem.gib": 2.0}
    assert not match(payload.properties(), demand, small, "()")
    no_vpn = {**PROVIDER_OFFER, "golem.runtime.capabilities": ["inet"]}
    assert not match(payload.properties(), demand, no_vpn, "()")


async def test_awaiting_the_payload_gives_the_same_payload() -> None:
    payload = vm.repo(image_hash=IMAGE_HASH)
    assert await payload is payload
    assert await vm.repo(image_hash=IMAGE_HASH) == payload


def test_payload_is_frozen_and_vm_namespace_exports_the_same_type() -> None:
    payload = vm.repo()
    assert isinstance(payload, VmPayload) and vm.VmPayload is VmPayload
    with pytest.raises(dataclasses.FrozenInstanceError):
        payload.min_mem_gib = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, message", [
    ({"image_hash": "z" * 56}, "hex"),
    ({"image_hash": IMAGE_HASH[:-1]}, "hex"),
    ({"image_hash": ""}, "hex"),
    ({"image_tag": "alpine"}, "name:version"),
    ({"image_tag": "golem/alpine:latest extra"}, "name:version"),
    ({"image_tag": "a/b/c:1"}, "name:version"),
    ({"image_hash": IMAGE_HASH, "image_tag": "golem/alpine:latest"}, "not both"),
    ({"image_url": IMAGE_URL}, "needs image_hash"),
    ({"image_url": IMAGE_URL, "image_tag": "golem/alpine:latest"}, "needs image_hash"),
    ({"image_hash": IMAGE_HASH, "image_url": "registry/image.gvmi"}, "absolute URL"),
    ({"min_mem_gib": -0.5}, "min_mem_gib"),
    ({"min_storage_gib": -1}, "min_storage_gib"),
    ({"min_mem_gib": float("nan")}, "min_mem_gib"),
    ({"min_storage_gib": float("inf")}, "min_storage_gib"),
    ({"min_cpu_threads": 0}, "min_cpu_threads"),
    ({"capabilities": ["vpn", ""]}, "capabilities"),
    ({"capabilities": ["in et"]}, "capabilities"),
])
def test_bad_input_is_a_clear_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vm.repo(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [
    {"image_hash": 123},
    {"min_cpu_threads": 1.5},
    {"min_mem_gib": True},
    {"capabilities": "vpn"},
])
def test_arguments_of_the_wrong_type_are_a_type_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        vm.repo(**kwargs)  # type: ignore[arg-type]


def test_a_payload_built_directly_is_validated_too() -> None:
    with pytest.raises(ValueError, match="min_mem_gib"):
        VmPayload(min_mem_gib=-1.0)

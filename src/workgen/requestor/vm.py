"""The ``vm`` namespace of yapapi fame: ``vm.repo(...)`` builds a :class:`VmPayload`."""

from __future__ import annotations

from .payload import VmPayload, repo

__all__ = ["VmPayload", "repo"]

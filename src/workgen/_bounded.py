"""Records that stay bounded over a long run (a service's days, a job of a million tasks)."""

from __future__ import annotations


class RecentIds:
    """The ids of the last ``size`` things let go, to tell "no longer kept" from "never
    existed" when one is asked for again. Insertion-ordered, so the oldest goes first; a dict,
    so a lookup does not scan."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: dict[str, None] = {}

    def add(self, item_id: str) -> None:
        self._ids[item_id] = None
        if len(self._ids) > self._size:
            del self._ids[next(iter(self._ids))]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

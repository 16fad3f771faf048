"""Small asyncio helpers shared across the package."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def task_scope() -> AsyncIterator[asyncio.TaskGroup]:
    """An ``asyncio.TaskGroup`` that raises a lone error as itself, not as a one-member group.

    Callers of our context managers should catch ``ActivityLost``, not ``ExceptionGroup``; when
    several tasks fail at once the group is kept, as nothing would be right to drop.
    """
    try:
        async with asyncio.TaskGroup() as tg:
            yield tg
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise

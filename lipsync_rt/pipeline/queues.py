"""The bounded queue between live stages: putting never waits; when full, the oldest item leaves.

Offline stages use plain ``asyncio.Queue(maxsize)`` instead, whose ``put`` waits: backpressure.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """``put_nowait`` hands back the item it pushed out (or None); ``get`` waits for an item."""

    def __init__(self, maxsize: int, on_drop: Optional[Callable[[T], None]] = None) -> None:
        self.maxsize = maxsize
        self.on_drop = on_drop
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()

    def put_nowait(self, item: T, droppable: bool = True) -> Optional[T]:
        self._items.append(item)
        self._ready.set()
        if droppable and len(self._items) > self.maxsize:
            dropped = self._items.popleft()
            if self.on_drop is not None:
                self.on_drop(dropped)
            return dropped
        return None

    async def put(self, item: T) -> None:
        self.put_nowait(item)

    async def get(self) -> T:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def peek(self) -> Optional[T]:
        return self._items[0] if self._items else None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

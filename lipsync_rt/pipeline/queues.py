"""The queues between stages, and the marker that ends a stream.

Two kinds, chosen by the session's policy (``policy.py``):

- :class:`BackpressureQueue`: ``put`` waits while the queue is full, so a slow stage throttles the
  ones before it (offline: nothing is lost, the reader slows down). ``maxsize`` 0 is unbounded.
- :class:`DropOldestQueue`: ``put`` never waits; when full, the oldest item leaves and is handed to
  ``on_drop`` (live: a backlog never delays what comes after it; the stalest work is given up).

Pushed input enters through an :class:`Inbox`, which is safe to feed from any thread.

Both queue kinds end a stream the same way: :meth:`end` puts :data:`END` after everything already queued (waiting
for room, like any put), :meth:`close` puts it at once and drops what it must (shutting down).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, Optional, TypeVar, Union

T = TypeVar("T")


@dataclass(frozen=True)
class StreamEnd:
    """End of a stream. On the mel windows' queue it says how many frames the stream has."""

    frames: Optional[int] = None


END = StreamEnd()


class BackpressureQueue(asyncio.Queue):
    """An ``asyncio.Queue`` that can be ended and closed like every queue of the graph."""

    async def end(self, marker: StreamEnd = END) -> None:
        await self.put(marker)

    def close(self, drain: bool = False) -> None:
        """Put :data:`END` without waiting; a full queue loses its oldest items (nobody will read them).
        ``drain``: everything queued goes first (a session shutting down lets go of its frames)."""
        while drain and not self.empty():
            self.get_nowait()
        while True:
            try:
                self.put_nowait(END)
                return
            except asyncio.QueueFull:
                self.get_nowait()


class DropOldestQueue(Generic[T]):
    """``put_nowait`` hands back the item it pushed out (or None); ``get`` waits for an item."""

    def __init__(self, maxsize: int, on_drop: Optional[Callable[[T], None]] = None) -> None:
        self.maxsize = maxsize
        self.on_drop = on_drop
        self._items: deque = deque()
        self._ready = asyncio.Event()

    def put_nowait(self, item: T, droppable: bool = True) -> Optional[T]:
        """Append ``item``; with ``droppable`` False nothing is pushed out for it (end markers)."""
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

    async def end(self, marker: StreamEnd = END) -> None:
        self.put_nowait(marker, droppable=False)

    def close(self, drain: bool = False) -> None:
        if drain:
            self._items.clear()
        self.put_nowait(END, droppable=False)

    async def get(self) -> T:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items


#: Either kind; a stage does not care which it was given.
Queue = Union[BackpressureQueue, DropOldestQueue]


class Inbox:
    """What the application pushes for one stage (speech, camera frames): :meth:`put` never waits and
    is safe from any thread once :meth:`bind` has named the session's loop; before that (pushes made
    before ``start()``) items wait here as they come."""

    def __init__(self) -> None:
        self.ended = False
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[int] = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._thread = loop, threading.get_ident()

    def put(self, item: object) -> None:
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        else:
            self._queue.put_nowait(item)

    def end(self) -> None:
        """No more input: ``ended`` at once (any thread), :data:`END` after what was pushed."""
        if not self.ended:
            self.ended = True
            self.put(END)

    async def get(self) -> object:
        return await self._queue.get()

    def get_nowait(self) -> object:
        return self._queue.get_nowait()

    def clear(self) -> None:
        """Forget what waits (a closed session); pushes from other threads may still land, and are small."""
        while not self._queue.empty():
            self._queue.get_nowait()

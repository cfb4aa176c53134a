"""One session's output for many readers: viewers, a recording, an RTMP stream.

A session's ``video()``, ``audio()`` and ``media()`` iterators have one consumer each. A session the
server shares (several browsers watching one pushed-audio avatar, plus ``--record``, plus RTMP) is read
once by a :class:`Broadcast`, which hands every item to each :class:`Subscription`. The frames are the
same objects for every reader (nothing is copied; each WebRTC sender still encodes its own).

Each subscription has its own bounded queues, so a slow reader never holds up the session or the
others: when its queue is full the oldest item leaves and is counted (``dropped_video``,
``dropped_audio``). A subscription made late starts with what is released from then on; its readers
pace by the items' own pts, as every reader of a session does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, AsyncIterator, Optional

from lipsync_rt.pipeline import OutputAudio, OutputFrame
from lipsync_rt.pipeline.queues import DropOldestQueue, StreamEnd

if TYPE_CHECKING:
    from lipsync_rt.pipeline import LipSyncSession

log = logging.getLogger(__name__)


class Subscription:
    """One reader's view of a broadcast session: ``video()`` and ``audio()``, like the session's own
    (so :func:`~lipsync_rt.io.sinks.run_sinks` takes it in place of a session)."""

    def __init__(self, name: str, video_kept: int, audio_kept: int) -> None:
        self.name = name
        self.dropped_video = 0
        self.dropped_audio = 0
        self._video: DropOldestQueue = DropOldestQueue(video_kept, self._drop_video)
        self._audio: DropOldestQueue = DropOldestQueue(audio_kept, self._drop_audio)
        self.closed = False

    def _drop_video(self, item: object) -> None:
        self.dropped_video += 1

    def _drop_audio(self, item: object) -> None:
        self.dropped_audio += 1

    def put(self, item: OutputFrame | OutputAudio) -> None:
        if not self.closed:
            (self._video if isinstance(item, OutputFrame) else self._audio).put_nowait(item)

    def close(self, drain: bool = False) -> None:
        """End both streams (after what is queued, unless ``drain``); idempotent."""
        if not self.closed:
            self.closed = True
            self._video.close(drain)
            self._audio.close(drain)

    async def video(self) -> AsyncIterator[OutputFrame]:
        while not isinstance(item := await self._video.get(), StreamEnd):
            yield item

    async def audio(self) -> AsyncIterator[OutputAudio]:
        while not isinstance(item := await self._audio.get(), StreamEnd):
            yield item


class Broadcast:
    """Reads ``session.media()`` in one task and copies every item to the subscriptions.

    ``start()`` begins reading; ``done`` completes when the session's output ends (closed, ended or
    failed), and then every subscription ends after what it has queued. The session is not closed
    here: its owner closes it, which ends the broadcast.
    """

    def __init__(self, session: "LipSyncSession") -> None:
        self.session = session
        self._subscriptions: set[Subscription] = set()
        self._task: Optional[asyncio.Task] = None
        self.ended = False
        self.error: Optional[BaseException] = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def subscribe(self, name: str, *, video_kept: int = 50, audio_kept: int = 200) -> Subscription:
        """A new reader; ``video_kept``/``audio_kept``: items it may fall behind before the oldest leave
        (the defaults hold about two seconds at 25 fps and 16 kHz chunks of 10 ms or more)."""
        sub = Subscription(name, video_kept, audio_kept)
        if self.ended:
            sub.close()
        else:
            self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """The reader leaves: its queues are emptied and its iterators end."""
        self._subscriptions.discard(sub)
        sub.close(drain=True)

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    async def _run(self) -> None:
        try:
            async for item in self.session.media():
                for sub in tuple(self._subscriptions):
                    sub.put(item)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a failed session ends its readers, it is logged once
            self.error = error
            log.warning("session output ended with an error: %s", error)
        finally:
            self.ended = True
            for sub in tuple(self._subscriptions):
                sub.close()
            self._subscriptions.clear()

    async def wait(self) -> None:
        """Until the session's output has ended and every subscription was told."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        """Stop reading now (the session is closing or gone); every subscription ends."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.wait()
        self.ended = True
        for sub in tuple(self._subscriptions):
            sub.close()
        self._subscriptions.clear()

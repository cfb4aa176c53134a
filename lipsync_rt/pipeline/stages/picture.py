"""Picture: mel window i + picture i -> a job for the engine, or a frame that passes through.

The picture of frame i comes from an avatar (:class:`AvatarPictures`, at once) or a camera
(``camera.CameraPictures``, in order). A frame with no face, a camera picture taken while the tracker
was behind, and (``skip_silence``) a frame whose audio is all filled-in silence leave unchanged at
once; the rest become jobs, each leaving a stand-in at the release stage, which is what goes out
(as a drop) if its generated frame is not back in time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

from ..avatar import Avatar
from ..messages import DROPPED, IDLE, NO_FACE, PENDING, FrameResult, Job, MelWindow, SourceFrame
from ..queues import Queue, StreamEnd

if TYPE_CHECKING:
    from .release import ReleaseStage


class Pictures(Protocol):
    async def picture(self, index: int) -> Optional[SourceFrame]:
        """Frame ``index``'s picture (None: nothing to show yet); called once per index, in order."""

    def stand_in(self, index: int) -> Optional[SourceFrame]:
        """What to show for a frame that never reached the release stage (None: skip its slot)."""

    def finish(self, frames: int) -> None:
        """The stream has ``frames`` frames."""


class AvatarPictures:
    """Output frame i shows avatar frame ``avatar.index(i, mode)``: ``loop`` or ``pingpong``."""

    def __init__(self, avatar: Avatar, mode: str = "loop") -> None:
        self.avatar, self.mode = avatar, mode

    async def picture(self, index: int) -> SourceFrame:
        return self.stand_in(index)

    def stand_in(self, index: int) -> SourceFrame:
        j = self.avatar.index(index, self.mode)
        return SourceFrame(index, self.avatar.frames[j], self.avatar.track(j), None, avatar_index=j)

    def finish(self, frames: int) -> None:
        pass


class PictureStage:
    def __init__(self, windows: Queue, pictures: Pictures, jobs: Queue, release: "ReleaseStage",
                 skip_silence: bool = True) -> None:
        self._windows, self._pictures, self._jobs = windows, pictures, jobs
        self._release = release
        self._skip_silence = skip_silence

    async def run(self) -> None:
        while not isinstance(mel := await self._windows.get(), StreamEnd):
            frame = await self._pictures.picture(mel.index)
            job = self._route(mel, frame)
            if job is not None:
                await self._jobs.put(job)
        self._pictures.finish(mel.frames)
        self._release.finish(mel.frames)
        await self._jobs.end()

    def _route(self, mel: MelWindow, frame: Optional[SourceFrame]) -> Optional[Job]:
        """The job for this frame, or None when it was handed to the release stage as it is."""
        submit, generation = self._release.submit, mel.generation
        if frame is None:                   # camera mode before the first camera frame: no output
            submit(FrameResult.nothing(mel.index, generation))
            return None
        reason = (DROPPED if frame.dropped else NO_FACE if frame.track is None
                  else IDLE if mel.idle and self._skip_silence else None)
        if reason is not None:
            submit(FrameResult.passed_through(frame, reason, generation))
            return None
        submit(FrameResult.passed_through(frame, PENDING, generation))
        return Job(frame, mel)

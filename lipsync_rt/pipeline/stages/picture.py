"""Picture: mel window i + picture i -> a job for the engine, or a frame that passes through.

The picture of frame i comes from an avatar (:class:`AvatarPictures`, at once) or a camera
(``camera.CameraPictures``, in order). A frame with no face, a camera picture taken while the tracker
was behind, an idle-clip picture, and (``skip_silence``) a frame whose audio is all filled-in silence
leave unchanged at once; the rest become jobs, each leaving a stand-in at the release stage, which is
what goes out (as a drop) if its generated frame is not back in time. A live job is handed on no
earlier than real-time audio would have allowed (``policy.job_slot``), so a reply pushed in one burst
waits here rather than flooding the engine's queue. Windows of an interrupted speech (a stale
generation) are dropped here, before they cost anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol

from ..avatar import Avatar
from ..idle import clip_index
from ..messages import DROPPED, IDLE, NO_FACE, PENDING, FrameResult, Generation, Job, MelWindow, SourceFrame
from ..queues import Queue, StreamEnd

if TYPE_CHECKING:
    from ..metrics import SessionMetrics
    from ..policy import Policy
    from .release import ReleaseStage


class Pictures(Protocol):
    async def picture(self, index: int, idle: bool = False) -> Optional[SourceFrame]:
        """Frame ``index``'s picture (None: nothing to show yet); called once per index, in order, with
        whether its audio is idle silence. Indices may be skipped (windows of an interrupted speech)."""

    def stand_in(self, index: int) -> Optional[SourceFrame]:
        """What to show for a frame that never reached the release stage (None: skip its slot)."""

    def interrupt(self, index: int) -> None:
        """From frame ``index`` on nothing is speech: ``stand_in`` shows the idle picture."""

    def finish(self, frames: int) -> None:
        """The stream has ``frames`` frames."""


@dataclass(frozen=True)
class _Run:
    """From output frame ``start`` on, the avatar shows its idle clip (``idle``) or its speaking frames,
    at phase ``phase + (i - start)`` of that clip."""

    start: int
    idle: bool
    phase: int


class AvatarPictures:
    """The avatar's picture for each output frame.

    Without an idle clip, frame i shows avatar frame ``avatar.index(i, mode)`` (``loop`` or
    ``pingpong``), as ``infer`` does. With one, idle frames show the idle clip and speech the speaking
    frames; at each change the new clip starts at its frame nearest to the picture on screen
    (``avatar.transitions``), so the picture does not jump.
    """

    _KEEP_RUNS = 32

    def __init__(self, avatar: Avatar, mode: str = "loop", transition: str = "nearest") -> None:
        self.avatar, self.mode, self.transition = avatar, mode, transition
        self._runs = [_Run(0, avatar.idle is not None, 0)]
        self.changes = 0        # clip changes so far (idle <-> speech)

    async def picture(self, index: int, idle: bool = False) -> SourceFrame:
        want_idle = idle and self.avatar.idle is not None
        if self._run(index).idle != want_idle:
            self._change(index, want_idle)
        return self.stand_in(index)

    def stand_in(self, index: int) -> SourceFrame:
        run = self._run(index)
        phase = run.phase + index - run.start
        if run.idle:
            j = self.avatar.idle.index(phase)
            return SourceFrame(index, self.avatar.idle.frames[j], None, None, idle=True)
        j = clip_index(phase, len(self.avatar), self.mode)
        return SourceFrame(index, self.avatar.frames[j], self.avatar.track(j), None, avatar_index=j)

    def interrupt(self, index: int) -> None:
        self._runs = [run for run in self._runs if run.start < index] or [self._runs[0]]
        if self.avatar.idle is not None and not self._run(index).idle:
            self._change(index, True)

    def finish(self, frames: int) -> None:
        pass

    def _run(self, index: int) -> _Run:
        for run in reversed(self._runs):
            if run.start <= index:
                return run
        return self._runs[0]

    def _change(self, index: int, idle: bool) -> None:
        """From ``index`` on show the other clip, starting at its frame nearest to the one on screen."""
        if index == 0:                        # nothing shown yet: each clip starts at its beginning
            self._runs = [_Run(0, idle, 0)]
            return
        if self.transition == "cut":          # each clip where its own loop is: for comparison
            phase = index
        else:
            shown = self.stand_in(index - 1)
            table = self.avatar.transitions
            # both clips show their frame j at phase j (forwards), so the match is the phase
            phase = (int(table.to_idle[shown.avatar_index]) if idle
                     else int(table.to_speech[self._idle_frame(index - 1)]))
        self._runs.append(_Run(index, idle, phase))
        del self._runs[:-self._KEEP_RUNS]
        self.changes += 1

    def _idle_frame(self, index: int) -> int:
        run = self._run(index)
        return self.avatar.idle.index(run.phase + index - run.start)


class PictureStage:
    def __init__(self, windows: Queue, pictures: Pictures, jobs: Queue, release: "ReleaseStage",
                 skip_silence: bool = True, generation: Optional[Generation] = None,
                 policy: Optional["Policy"] = None, metrics: Optional["SessionMetrics"] = None) -> None:
        self._windows, self._pictures, self._jobs = windows, pictures, jobs
        self._metrics = metrics
        self._release = release
        self._policy = policy
        self._generation = generation or release.generation
        self._skip_silence = skip_silence

    async def run(self) -> None:
        while not isinstance(mel := await self._windows.get(), StreamEnd):
            if self._generation.stale(mel.generation):
                continue
            frame = await self._pictures.picture(mel.index, mel.idle)
            job = self._route(mel, frame)
            if job is not None:
                if self._policy is not None and self._metrics is not None:
                    self._metrics.reached("audio in", self._policy.overhead(job.index, time.monotonic()))
                if self._policy is not None:
                    await self._policy.job_slot(job.index)
                    if self._generation.stale(job.generation):     # interrupted meanwhile
                        continue
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
        reason = (IDLE if frame.idle else DROPPED if frame.dropped else NO_FACE if frame.track is None
                  else IDLE if mel.idle and self._skip_silence else None)
        if reason is not None:
            submit(FrameResult.passed_through(frame, reason, generation))
            return None
        submit(FrameResult.passed_through(frame, PENDING, generation))
        return Job(frame, mel)

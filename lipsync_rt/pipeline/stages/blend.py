"""Blend: generated 96x96 faces pasted back into their pictures -> finished frames for release.

The paste (feathered lower-face mask with colour matching, or the reference's hard paste) runs in a
worker thread; each finished frame goes to the release stage, which keeps it until its slot. Faces
of an interrupted speech are not pasted. With ``rest`` (``rest.py``), each paste's strength comes from
its frame's mel window, so the lower face rests as the picture in pauses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from ..messages import FrameResult, GeneratedFaces, Generation
from ..metrics import SessionMetrics
from ..queues import Queue, StreamEnd

if TYPE_CHECKING:
    from lipsync_rt.blend import Blender

    from ..policy import Policy
    from .release import ReleaseStage


class BlendStage:
    def __init__(self, generated: Queue, blender: "Blender", pool: concurrent.futures.Executor,
                 release: "ReleaseStage", policy: "Policy", metrics: SessionMetrics,
                 generation: Optional[Generation] = None,
                 rest: Optional[Callable[[np.ndarray], float]] = None) -> None:
        self._generated, self._blender, self._pool = generated, blender, pool
        self._rest = rest
        self._release, self._policy, self._metrics = release, policy, metrics
        self._generation = generation or release.generation

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not isinstance(batch := await self._generated.get(), StreamEnd):
            current = [k for k, job in enumerate(batch.jobs) if not self._generation.stale(job.generation)]
            if not current:
                continue
            if len(current) < len(batch.jobs):
                batch = GeneratedFaces([batch.jobs[k] for k in current], batch.faces[current])
            started = time.perf_counter()
            images = await loop.run_in_executor(self._pool, self._paste, batch)
            self._metrics.record("blend", started)
            now = time.monotonic()
            for job, image in zip(batch.jobs, images):
                self._release.submit(FrameResult(job.index, image, True, job.capture_time, None, job.generation,
                                                 job.frame.avatar_index, tuple(job.frame.track.box)))
                self._metrics.ready(self._policy.frame_settled(job.index, now))

    def _paste(self, batch: GeneratedFaces) -> list[np.ndarray]:
        paste, rest = self._blender.paste, self._rest
        return [paste(job.frame.image, face, job.frame.track.box, job.frame.track.landmarks,
                      1.0 if rest is None else rest(job.mel.window))
                for job, face in zip(batch.jobs, batch.faces)]

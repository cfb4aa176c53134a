"""Infer: batches of jobs through the engine (shared through a MicroBatcher) -> generated faces.

Batches are the policy's: live, whatever jobs are waiting (never wait for more, latency matters);
offline, the jobs of one block of ``batch_size`` frame indices, exactly as the reference batches them
(a convolution's float result depends on the batch, so this is what keeps the output bit-exact). A
live job already past its release time is dropped before it costs an engine call. A failing batch
passes its frames through unchanged and is counted; the stream goes on. Jobs of an interrupted
speech (a stale generation) are dropped before the engine call, so a barge-in costs no engine time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING, Optional

import numpy as np

from lipsync_rt.lipsync import crop_face, face_input, mel_input

from ..avatar import Avatar
from ..messages import DROPPED, ERROR, FaceBatch, FrameResult, GeneratedFaces, Generation, Job
from ..metrics import SessionMetrics
from ..queues import Queue, StreamEnd

if TYPE_CHECKING:
    from lipsync_rt.engine import MicroBatcher

    from ..policy import Policy
    from .release import ReleaseStage

log = logging.getLogger("lipsync_rt.pipeline.session")


class LipSyncModel:
    """The engine as a session calls it: model inputs built from jobs, one request through the batcher.

    ``encoded``: avatar mode with a SplitEngine, using the avatar's cached face-encoder features
    instead of running the face encoder on every frame.
    """

    def __init__(self, batcher: "MicroBatcher", avatar: Optional[Avatar], encoded: bool) -> None:
        self.batcher, self.avatar, self.encoded = batcher, avatar, encoded

    def inputs(self, jobs: list[Job]) -> tuple[np.ndarray, FaceBatch]:
        """``mel[B,1,80,16]`` and the face input (crops, or features); CPU work for a worker thread."""
        mel = mel_input([job.mel.window for job in jobs])
        if self.avatar is not None:
            rows = [int(self.avatar.rows[job.frame.avatar_index]) for job in jobs]
            if self.encoded:
                return mel, self.avatar.features.take(rows)
            return mel, face_input(self.avatar.crops[rows])
        return mel, face_input(np.stack([crop_face(job.frame.image, job.frame.track.box) for job in jobs]))

    async def infer(self, mel: np.ndarray, face: FaceBatch) -> np.ndarray:
        if self.encoded:
            return await self.batcher.infer_encoded(mel, face)
        return await self.batcher.infer(mel, face)

    async def probe(self, frames: int) -> None:
        """One request of ``frames`` frames on zero inputs, the way the session will call the engine."""
        mel = np.zeros((frames, 1, 80, 16), np.float32)
        if self.encoded:
            row = int(self.avatar.rows[np.flatnonzero(self.avatar.rows >= 0)[0]])
            await self.batcher.infer_encoded(mel, self.avatar.features.take([row] * frames))
        else:
            await self.batcher.infer(mel, np.zeros((frames, 6, 96, 96), np.float32))


class InferStage:
    def __init__(self, jobs: Queue, model: LipSyncModel, policy: "Policy", batch_size: int, generated: Queue,
                 release: "ReleaseStage", metrics: SessionMetrics, pool: concurrent.futures.Executor,
                 generation: Optional[Generation] = None) -> None:
        self._jobs, self._model, self._policy = jobs, model, policy
        self._generation = generation or release.generation
        self._size = batch_size
        self._generated, self._release, self._metrics, self._pool = generated, release, metrics, pool
        self._held: object = None      # read ahead of a batch: the next one's first job, or the end

    async def run(self) -> None:
        while (batch := await self._next_batch()) is not None:
            batch = self._drop_late(batch)
            faces = await self._generate(batch) if batch else None
            if faces is not None:
                await self._generated.put(GeneratedFaces(batch, faces))
        await self._generated.end()

    async def _next_batch(self) -> Optional[list[Job]]:
        first = self._held if self._held is not None else await self._jobs.get()
        self._held = None
        if isinstance(first, StreamEnd):
            return None
        batch = [first]
        key = self._policy.batch_key(first.index, self._size)
        while len(batch) < self._size and (self._policy.fill_batches or not self._jobs.empty()):
            job = await self._jobs.get()
            if isinstance(job, StreamEnd) or self._policy.batch_key(job.index, self._size) != key:
                self._held = job
                break
            batch.append(job)
        return batch

    def _drop_late(self, batch: list[Job]) -> list[Job]:
        now = time.monotonic()
        kept = []
        for job in batch:
            if self._generation.stale(job.generation):
                continue
            if self._policy.is_late(job.index, now):
                self._policy.frame_settled(job.index, now)
                self._release.submit(FrameResult.passed_through(job.frame, DROPPED, job.generation))
            else:
                kept.append(job)
        return kept

    def _reached(self, milestone: str, batch: list[Job]) -> None:
        now = time.monotonic()
        for job in batch:
            self._metrics.reached(milestone, self._policy.overhead(job.index, now))

    async def _generate(self, batch: list[Job]) -> Optional[np.ndarray]:
        loop = asyncio.get_running_loop()
        try:
            started = time.perf_counter()
            mel, face = await loop.run_in_executor(self._pool, self._model.inputs, batch)
            self._metrics.record("prepare", started)
            self._reached("engine start", batch)
            started = time.perf_counter()
            out = await self._model.infer(mel, face)
            self._metrics.record("infer", started)
            self._reached("engine done", batch)
            if len(out) != len(batch):
                raise RuntimeError(f"engine returned {len(out)} faces for {len(batch)} inputs")
            return out
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one failed batch passes its frames through
            self._metrics.engine_errors += 1
            log.warning("engine error on frames %d-%d (passed through): %s", batch[0].index, batch[-1].index, e)
            for job in batch:
                self._release.submit(FrameResult.passed_through(job.frame, ERROR, job.generation))
            return None

"""The session's stage objects and its live/offline policy, one at a time, without a model.

The whole graph is tested end to end in test_pipeline.py; here each stage gets the inputs that are
hard to provoke there (a result that comes back after its slot, a stale generation, gaps in a block
of frame indices) and the policy's answers are checked side by side.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from lipsync_rt.pipeline.clock import MediaClock
from lipsync_rt.pipeline.config import SessionConfig
from lipsync_rt.pipeline.messages import (DROPPED, IDLE, NO_FACE, PENDING, FrameResult, Job,
                                          MelWindow, SourceFrame)
from lipsync_rt.pipeline.metrics import SessionMetrics, percentiles
from lipsync_rt.pipeline.policy import LivePolicy, OfflinePolicy, policy_for
from lipsync_rt.pipeline.queues import END, BackpressureQueue, DropOldestQueue, StreamEnd
from lipsync_rt.pipeline.stages import InferStage, PictureStage, ReleaseStage
from lipsync_rt.pipeline.timeline import Timeline

FACE = object()        # stands for a FaceTrack: the stages only ask whether there is one


def picture(i: int, face: bool = True, **kw) -> SourceFrame:
    return SourceFrame(i, np.full((4, 4, 3), i, np.uint8), FACE if face else None, None, **kw)


def window(i: int, idle: bool = False, generation: int = 0) -> MelWindow:
    return MelWindow(i, np.zeros((80, 16), np.float32), None, idle, generation)


def generated(i: int, generation: int = 0) -> FrameResult:
    return FrameResult(i, np.full((4, 4, 3), 200, np.uint8), True, None, None, generation)


async def drain(queue) -> list:
    items = []
    while not isinstance(item := await queue.get(), StreamEnd):
        items.append(item)
    return items


def release_stage(policy, clock, stand_in=lambda i: None, timeline=None):
    metrics = SessionMetrics()
    video = policy.droppable_queue(16, metrics.output_dropped)
    audio = BackpressureQueue()
    stage = ReleaseStage(policy, clock, timeline or Timeline(), video, audio, stand_in, metrics)
    return stage, video, audio, metrics


# ----------------------------------------------------------------------------------------------
# Policy


def test_policy_answers_side_by_side():
    config = SessionConfig(audio_grace_ms=20, audio_chunk=320)
    clock = MediaClock(25, delay=0.3)
    clock.start(now=100.0)
    live, offline = policy_for(config, clock, 0.2125), policy_for(SessionConfig(live=False), clock, 0.2125)
    assert isinstance(live, LivePolicy) and isinstance(offline, OfflinePolicy)
    assert isinstance(live.droppable_queue(2, lambda item: None), DropOldestQueue)
    assert isinstance(offline.droppable_queue(2, lambda item: None), BackpressureQueue)
    assert live.ordered_queue(2).maxsize == 0 and offline.ordered_queue(2).maxsize == 2   # live never loses one
    # frame 10 (t = 0.4 s) leaves at 100.7; from then on it is late
    assert not live.is_late(10, 100.69) and live.is_late(10, 100.7) and not offline.is_late(10, 1e9)
    # 1 s after T0, all but the 20 ms grace must have come
    assert live.samples_due(101.0) == 16000 - 320 and offline.samples_due(101.0) is None
    assert live.stamp(5.0) == 5.0 and offline.stamp(5.0) is None
    assert live.overhead(10, 100.7) == pytest.approx(0.3 - 0.2125) and offline.overhead(10, 100.7) is None
    assert {live.batch_key(i, 4) for i in range(9)} == {0}
    assert [offline.batch_key(i, 4) for i in range(9)] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert live.tick and not offline.tick and offline.fill_batches and not live.fill_batches


def test_offline_budget_is_the_configured_overhead_and_calls_no_engine():
    async def probe(frames):
        raise AssertionError("an offline session does not measure its engine")

    offline = OfflinePolicy(SessionConfig(live=False, overhead_ms=30))
    assert asyncio.run(offline.processing_budget(probe)) == pytest.approx(0.030)
    assert asyncio.run(OfflinePolicy(SessionConfig(live=False)).processing_budget(probe)) == 0.0


def test_live_budget_warms_every_batch_size_then_measures():
    calls = []

    async def probe(frames):
        calls.append(frames)

    live = LivePolicy(SessionConfig(batch_size=3, audio_grace_ms=20), MediaClock(25), 0.2125)
    budget = asyncio.run(live.processing_budget(probe))
    assert calls == [1, 2, 3] + [1] * 20
    assert 0.030 <= budget < 0.040        # grace + 2 x (almost nothing) + 10 ms


# ----------------------------------------------------------------------------------------------
# Picture


def test_picture_stage_routes_each_frame_once():
    class Pictures:
        frames = {0: picture(0), 1: picture(1, face=False), 2: picture(2, dropped=True), 3: picture(3), 4: None}

        async def picture(self, index, idle=False):
            return self.frames[index]

        def stand_in(self, index):
            return None

        def finish(self, frames):
            self.finished = frames

    async def run():
        policy = OfflinePolicy(SessionConfig(live=False))
        release, *_ = release_stage(policy, MediaClock(25))
        windows, jobs = BackpressureQueue(), BackpressureQueue()
        for i in range(5):
            windows.put_nowait(window(i, idle=(i == 3)))
        windows.put_nowait(StreamEnd(frames=5))
        pictures = Pictures()
        await PictureStage(windows, pictures, jobs, release, skip_silence=True).run()
        return await drain(jobs), release, pictures

    jobs, release, pictures = asyncio.run(run())
    assert [job.index for job in jobs] == [0]
    held = release.held
    assert held(0).reason == PENDING and not held(0).final               # the stand-in of the job
    assert [held(i).reason for i in (1, 2, 3)] == [NO_FACE, DROPPED, IDLE]
    assert held(4).image is None                                         # nothing to show: slot skipped
    assert release.frames == pictures.finished == 5


# ----------------------------------------------------------------------------------------------
# Infer


class RecordingModel:
    """Stands for LipSyncModel: records the batches, returns grey faces."""

    def __init__(self, fail_on=()):
        self.batches, self.fail_on = [], set(fail_on)

    def inputs(self, jobs):
        return np.zeros((len(jobs), 1, 80, 16), np.float32), np.zeros((len(jobs), 6, 96, 96), np.float32)

    async def infer(self, mel, face):
        self.batches.append(len(mel))
        if len(self.batches) in self.fail_on:
            raise RuntimeError("simulated engine failure")
        return np.full((len(mel), 3, 96, 96), 0.5, np.float32)


def run_infer(policy, indices, batch_size, model=None):
    import concurrent.futures

    async def run():
        release, *_ = release_stage(policy, policy.clock if policy.live else MediaClock(25))
        jobs, out = BackpressureQueue(), BackpressureQueue()
        for i in indices:
            jobs.put_nowait(Job(picture(i), window(i)))
        jobs.put_nowait(END)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            await InferStage(jobs, model or RecordingModel(), policy, batch_size, out, release, SessionMetrics(),
                             pool).run()
        return [[job.index for job in batch.jobs] for batch in await drain(out)], release

    return asyncio.run(run())


def test_offline_batches_are_blocks_of_frame_indices():
    # frames without a face (2, 6, 7) are not jobs; batches still follow the reference's blocks of 4
    batches, _ = run_infer(OfflinePolicy(SessionConfig(live=False)), [0, 1, 3, 4, 5, 8, 9, 10, 11, 12], 4)
    assert batches == [[0, 1, 3], [4, 5], [8, 9, 10, 11], [12]]


def test_live_batches_take_what_waits_and_drop_what_is_late():
    clock = MediaClock(25, delay=0.2)
    clock.start(now=time.monotonic() - 1.0)      # frames 0-5 are past their release time, 100-105 are not
    batches, release = run_infer(LivePolicy(SessionConfig(), clock, 0.2125), [0, 1, 2, 3, 4, 5, 100, 101, 102, 103,
                                                                              104, 105], 4)
    assert batches == [[100, 101], [102, 103, 104, 105]]
    assert all(release.held(i).reason == DROPPED for i in range(6))


def test_a_failing_batch_passes_its_frames_through():
    model = RecordingModel(fail_on={2})
    batches, release = run_infer(OfflinePolicy(SessionConfig(live=False)), list(range(10)), 4, model)
    assert model.batches == [4, 4, 2] and batches == [[0, 1, 2, 3], [8, 9]]
    assert [release.held(i).reason for i in range(4, 8)] == ["error"] * 4


# ----------------------------------------------------------------------------------------------
# Release


def test_offline_release_waits_for_each_frame_and_lets_only_the_current_generation_in():
    async def run():
        timeline = Timeline()
        policy = OfflinePolicy(SessionConfig(live=False))
        release, video, audio, metrics = release_stage(policy, MediaClock(25), timeline=timeline)
        task = asyncio.ensure_future(release.run())
        release.submit(FrameResult.passed_through(picture(0), PENDING))
        release.submit(FrameResult.passed_through(picture(1, face=False), NO_FACE))
        timeline.append(np.ones(300, np.float32))
        timeline.append(np.ones(500, np.float32))
        await asyncio.sleep(0.05)
        early = video.qsize()                        # frame 0 is not settled: nothing leaves
        release.submit(generated(0, generation=1))   # stale (an interrupted speech): ignored
        await asyncio.sleep(0.01)
        stale = video.qsize()
        release.submit(generated(0))
        release.finish(2)
        timeline.close()
        frames, chunks = await asyncio.gather(drain(video), drain(audio))
        await task
        return early, stale, frames, chunks, metrics

    early, stale, frames, chunks, metrics = asyncio.run(run())
    assert early == stale == 0
    assert [(f.pts, f.generated) for f in frames] == [(0, True), (1, False)]
    assert [(c.pts, c.samples.size) for c in chunks] == [(0, 300), (300, 500)]     # audio as it was written
    assert metrics.frames_out == 2 and metrics.frames_without_face == 1 and metrics.audio_samples_out == 800


def test_live_release_sends_whatever_is_there_at_each_release_time():
    async def run():
        clock = MediaClock(25, delay=0.05)
        policy = LivePolicy(SessionConfig(audio_chunk=160), clock, 0.0)
        stand_ins = []
        release, video, audio, metrics = release_stage(
            policy, clock, stand_in=lambda i: stand_ins.append(i) or picture(i))
        release.submit(FrameResult.passed_through(picture(0), PENDING))   # a job still in the engine
        release.submit(generated(1))
        release.finish(3)                                                # frame 2 never reached release
        clock.start()
        task = asyncio.ensure_future(release.run())
        frames = [await video.get()]
        release.submit(generated(0))                                     # back after its slot: too late
        frames += await drain(video)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return clock, frames, stand_ins, metrics

    clock, frames, stand_ins, metrics = asyncio.run(run())
    assert [(f.pts, f.generated) for f in frames] == [(0, False), (1, True), (2, False)]
    assert stand_ins == [2] and metrics.frames_dropped == 2
    assert frames[0].image[0, 0, 0] == 0                  # the original picture left in frame 0's slot


def test_percentiles_of_nothing_are_nan():
    assert all(np.isnan(v) for v in percentiles([]).values())
    assert percentiles(range(101)) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}


# ----------------------------------------------------------------------------------------------
# Interrupt: the gate and the cut


def test_release_cut_replaces_what_waits_with_idle_stand_ins():
    from lipsync_rt.pipeline.messages import Generation

    async def run():
        generation = Generation()
        policy = OfflinePolicy(SessionConfig(live=False))
        metrics = SessionMetrics()
        video, audio = policy.droppable_queue(1, metrics.output_dropped), BackpressureQueue()   # holds it at 2
        idle_image = np.full((4, 4, 3), 7, np.uint8)
        release = ReleaseStage(policy, MediaClock(25), Timeline(), video, audio,
                               lambda i: SourceFrame(i, idle_image, None, None, idle=True), metrics, generation)
        for i in range(6):
            release.submit(generated(i))
        task = asyncio.ensure_future(release._release_video())
        while release.next_index < 2:                  # frames 0 and 1 leave
            await asyncio.sleep(0.001)
        generation.advance()
        release.cut(until=4)                           # 2, 3: windows of the old speech -> idle
        release.submit(generated(4))                   # stale: dropped at the gate
        release.submit(generated(4, generation=1))     # the new speech's frame 4
        release.submit(generated(5, generation=1))
        release.finish(6)
        frames = await drain(video)
        await task
        return frames, metrics

    frames, metrics = asyncio.run(run())
    assert [f.pts for f in frames] == [0, 1, 2, 3, 4, 5]
    assert [f.idle for f in frames] == [False, False, True, True, False, False]
    assert frames[2].image[0, 0, 0] == 7 and frames[4].generated
    assert metrics.frames_idle == 2 and metrics.frames_dropped == 0


def test_picture_stage_drops_stale_windows_and_a_camera_stays_in_step():
    from lipsync_rt.pipeline.messages import Generation
    from lipsync_rt.pipeline.stages import CameraPictures

    class Camera:
        pictures = BackpressureQueue()

        def stop_at(self, frames):
            pass

    async def run():
        camera = Camera()
        for i in range(6):
            camera.pictures.put_nowait(picture(i))
        generation = Generation()
        generation.advance()                            # windows 0-2 belong to an interrupted speech
        policy = OfflinePolicy(SessionConfig(live=False))
        release, *_ = release_stage(policy, MediaClock(25))
        release.generation = generation
        windows, jobs = BackpressureQueue(), BackpressureQueue()
        for i in range(6):
            windows.put_nowait(window(i, generation=0 if i < 3 else 1))
        windows.put_nowait(StreamEnd(frames=6))
        pictures = CameraPictures(camera)
        await PictureStage(windows, pictures, jobs, release, generation=generation).run()
        return await drain(jobs), pictures

    jobs, pictures = asyncio.run(run())
    assert [(job.index, job.frame.index) for job in jobs] == [(3, 3), (4, 4), (5, 5)]
    assert pictures.stand_in(1).index == 1 and pictures.stand_in(1).track is None   # read aside, kept

"""The Pipecat adapter in a real Pipecat pipeline, in-process: a feeder standing in for the TTS, the
avatar service, and a sink recording what a transport would get (skipped without pipecat-ai).

Checked: pictures at the avatar's rate all the time, idle too; each picture followed by the audio
that plays with it, which is the TTS's own audio, sample for sample, delayed; the TTSStoppedFrame
held until the reply has played; an InterruptionFrame ending the reply's audio at once; frames the
service cannot use reported upstream without stopping it; two pipelines on one shared engine; and
nothing left running afterwards.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (EndFrame, ErrorFrame, InterruptionFrame, OutputImageRawFrame, TextFrame,  # noqa: E402
                                   TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from conftest import EXAMPLE_FACE, seeded_generator  # noqa: E402
from lipsync_rt.audio import load_audio  # noqa: E402
from lipsync_rt.engine import MicroBatcher, TorchEngine  # noqa: E402
from lipsync_rt.integrations.pipecat import LipSyncAvatarService  # noqa: E402
from lipsync_rt.pipeline import Avatar, SessionConfig  # noqa: E402

FPS = 25


@pytest.fixture(scope="module")
def engine():
    return TorchEngine(seeded_generator(seed=5))


@pytest.fixture(scope="module")
def avatar(engine):
    return Avatar.prepare(EXAMPLE_FACE, engine)


@pytest.fixture(scope="module")
def reply_24k(speech):
    """1.6 s of speech as a TTS sends it: int16 at 24 kHz."""
    import av

    wav = load_audio(speech)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=24000)
    frame = av.AudioFrame.from_ndarray(wav.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = 16000
    return np.concatenate([f.to_ndarray().reshape(-1) for f in resampler.resample(frame) + resampler.resample(None)])


class Recorder(FrameProcessor):
    """Records every frame passing in ``direction``, with when it came."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__()
        self.direction = direction
        self.frames: list[tuple[float, object]] = []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.frames.append((time.monotonic(), frame))
        await self.push_frame(frame, direction)


def tts_frames(pcm: np.ndarray, rate: int, context: str, channels: int = 1, ms: int = 20) -> list:
    step = rate * ms // 1000 * channels
    data = pcm.reshape(-1)
    return ([TTSStartedFrame(context_id=context)]
            + [TTSAudioRawFrame(audio=data[a:a + step].tobytes(), sample_rate=rate, num_channels=channels,
                                context_id=context) for a in range(0, data.size, step)]
            + [TTSStoppedFrame(context_id=context)])


async def run_pipeline(service, script):
    """Run [head, service, sink]; ``script(worker, marks)`` feeds it and ends it with an EndFrame."""
    head, sink = Recorder(FrameDirection.UPSTREAM), Recorder(FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(Pipeline([head, service, sink]), cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    marks = {}

    async def drive():
        await asyncio.wait_for(started.wait(), 60)
        marks["start"] = time.monotonic()
        await script(worker, marks)

    await asyncio.gather(runner.run(), drive())
    return sink.frames, head.frames, marks


def split(frames):
    images = [(t, f) for t, f in frames if isinstance(f, OutputImageRawFrame)]
    audio = [(t, f) for t, f in frames if isinstance(f, TTSAudioRawFrame)]
    return images, audio


def test_pictures_all_the_time_each_followed_by_its_own_delayed_audio(engine, avatar, reply_24k):
    service = LipSyncAvatarService(avatar=avatar, engine=engine, config=SessionConfig(overhead_ms=80))

    async def script(worker, marks):
        await asyncio.sleep(0.6)                                   # idle
        marks["tts"] = time.monotonic()
        for frame in tts_frames(reply_24k, 24000, "hello"):        # a burst, faster than real time
            await worker.queue_frame(frame)
        await worker.queue_frame(TextFrame("a text frame passes on"))
        await asyncio.sleep(2.6)                                   # the reply, then idle again
        await worker.queue_frame(EndFrame())

    frames, _, marks = asyncio.run(run_pipeline(service, script))
    images, audio = split(frames)
    # pictures at the avatar's rate, all the time, RGB at its size, shown with the audio before them
    times = np.array([t for t, _ in images])
    assert len(images) >= FPS * 3
    assert np.median(np.diff(times)) == pytest.approx(1 / FPS, abs=0.01)
    assert times[-1] - times[0] == pytest.approx(len(images) / FPS, rel=0.1)
    height, width = avatar.frames[0].shape[:2]
    assert all(f.size == (width, height) and f.format == "RGB" and len(f.image) == width * height * 3
               and f.sync_with_audio for _, f in images)
    # the audio is the TTS's own, sample for sample, at its own rate, delayed by about D
    out = np.concatenate([np.frombuffer(f.audio, np.int16) for _, f in audio])
    assert all(f.sample_rate == 24000 and f.num_channels == 1 and f.context_id == "hello" for _, f in audio)
    assert abs(out.size - reply_24k.size) <= 24
    n = min(out.size, reply_24k.size)
    np.testing.assert_array_equal(out[:n], reply_24k[:n])
    assert audio[0][0] - marks["tts"] == pytest.approx(service.delay, abs=0.1)
    # pairing: during the reply each picture is followed by the 40 ms of audio that plays with it
    order = [type(f).__name__ for _, f in frames if isinstance(f, (OutputImageRawFrame, TTSAudioRawFrame))]
    first, last = order.index("TTSAudioRawFrame"), len(order) - 1 - order[::-1].index("TTSAudioRawFrame")
    between = []
    count = 0
    for kind in order[first:last + 1]:
        if kind == "OutputImageRawFrame":
            between.append(count)
            count = 0
        else:
            count += 1
    assert between and all(c == 2 for c in between[1:])              # two 20 ms chunks per 40 ms picture
    # the stop comes when the reply has played, after its last audio
    kinds = [type(f) for _, f in frames]
    stop = kinds.index(TTSStoppedFrame)
    assert stop > max(i for i, k in enumerate(kinds) if k is TTSAudioRawFrame)
    assert kinds.index(TTSStartedFrame) < kinds.index(TTSAudioRawFrame)
    assert any(isinstance(f, TextFrame) for _, f in frames)


def test_an_interruption_cuts_the_reply_at_once(engine, avatar, reply_24k):
    service = LipSyncAvatarService(avatar=avatar, engine=engine, config=SessionConfig(overhead_ms=80))
    long_reply = np.concatenate([reply_24k, reply_24k, reply_24k])

    async def script(worker, marks):
        for frame in tts_frames(long_reply, 24000, "long"):
            await worker.queue_frame(frame)
        await asyncio.sleep(service.delay + 0.8)                   # 0.8 s into the reply
        marks["interrupt"] = time.monotonic()
        await worker.queue_frame(InterruptionFrame())
        await asyncio.sleep(0.8)
        for frame in tts_frames(reply_24k[:12000], 24000, "next"):   # the next reply plays whole
            await worker.queue_frame(frame)
        await asyncio.sleep(1.2)
        await worker.queue_frame(EndFrame())

    frames, _, marks = asyncio.run(run_pipeline(service, script))
    images, audio = split(frames)
    cut = marks["interrupt"]
    long_audio = [t for t, f in audio if f.context_id == "long"]
    assert long_audio and min(long_audio) < cut
    assert max(long_audio) - cut < 0.06                            # its audio stops within one chunk
    stops = [f.context_id for _, f in frames if isinstance(f, TTSStoppedFrame)]
    assert stops == ["next"]                                       # the cut reply's stop is not played
    nxt = np.concatenate([np.frombuffer(f.audio, np.int16) for _, f in audio if f.context_id == "next"])
    assert abs(nxt.size - 12000) <= 24
    after = [t for t, _ in images if t > cut]
    assert np.median(np.diff(after)) == pytest.approx(1 / FPS, abs=0.01)      # pictures go on


def test_frames_it_cannot_use_are_reported_and_any_tts_rate_works(engine, avatar, reply_24k, speech):
    import av

    service = LipSyncAvatarService(avatar=avatar, engine=engine, config=SessionConfig(overhead_ms=80))
    wav = load_audio(speech)[:16000]
    stereo = av.AudioResampler(format="s16", layout="stereo", rate=48000)
    frame = av.AudioFrame.from_ndarray(wav.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = 16000
    pcm48 = np.concatenate([f.to_ndarray().reshape(-1, 2) for f in stereo.resample(frame) + stereo.resample(None)])
    pcm8 = (wav[::2] * 32767).astype(np.int16)

    async def script(worker, marks):
        await worker.queue_frame(TTSAudioRawFrame(audio=b"\x01\x02\x03", sample_rate=24000, num_channels=1))
        await worker.queue_frame(TTSAudioRawFrame(audio=b"\x00" * 640, sample_rate=0, num_channels=1))
        for f in tts_frames(pcm48, 48000, "stereo48", channels=2) + tts_frames(pcm8, 8000, "mono8"):
            await worker.queue_frame(f)
        await asyncio.sleep(service.delay + 2.4)
        await worker.queue_frame(EndFrame())

    frames, upstream, _ = asyncio.run(run_pipeline(service, script))
    errors = [f for _, f in upstream if isinstance(f, ErrorFrame)]
    assert len(errors) == 2 and "int16" in errors[0].error and "sample rate" in errors[1].error
    _, audio = split(frames)
    rates = {f.context_id: f.sample_rate for _, f in audio}
    assert rates == {"stereo48": 48000, "mono8": 8000}
    played = {c: sum(len(f.audio) // 2 for _, f in audio if f.context_id == c) / rates[c] for c in rates}
    assert played["stereo48"] == pytest.approx(1.0, abs=0.01) and played["mono8"] == pytest.approx(1.0, abs=0.01)
    assert [f.context_id for _, f in frames if isinstance(f, TTSStoppedFrame)] == ["stereo48", "mono8"]


def test_two_pipelines_share_one_engine_and_leave_nothing_running(engine, avatar, reply_24k):
    batcher = MicroBatcher(engine, max_batch=8)

    async def main():
        services = [LipSyncAvatarService(avatar=avatar, engine=batcher, config=SessionConfig(overhead_ms=80))
                    for _ in range(2)]

        async def script(worker, marks):
            for frame in tts_frames(reply_24k[:24000], 24000, "r"):
                await worker.queue_frame(frame)
            await asyncio.sleep(1.6)
            await worker.queue_frame(EndFrame())

        results = await asyncio.gather(*(run_pipeline(s, script) for s in services))
        stats = batcher.stats()
        await batcher.close()
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return results, stats, leftover

    results, stats, leftover = asyncio.run(main())
    for frames, _, _ in results:
        assert sum(isinstance(f, TTSAudioRawFrame) for _, f in frames) > 0
    assert stats.frames > 0 and leftover == []
    for thread in [t for t in threading.enumerate() if t.name.startswith(("lipsync-", "batcher"))]:
        thread.join(timeout=5)
    assert not [t for t in threading.enumerate() if t.name.startswith(("lipsync-", "batcher"))]

"""The streaming graph: offline equality with the batch path, live pacing, drops, faults, shutdown.

Real code paths with real data (the example speech and face, a seeded lite generator); live tests
play 1.6 s of speech in real time. No assertion is about speed: pacing is checked against the
session's own clock and D, and drops are forced with a deliberately slow engine.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from conftest import seeded_generator
from lipsync_rt.audio import SAMPLE_RATE, load_audio, mel_chunks, melspectrogram
from lipsync_rt.blend import Blender
from lipsync_rt.engine import TorchEngine
from lipsync_rt.errors import LipSyncError
from lipsync_rt.media import iter_video_frames
from lipsync_rt.pipeline import Avatar, LipSyncSession, SessionConfig
from lipsync_rt.pipeline.clock import LOOKAHEAD, MediaClock
from lipsync_rt.pipeline.rest import speech_weight
from lipsync_rt.pipeline.timeline import MelFramer
from oracle import lipsync_frames


@pytest.fixture(scope="module")
def wav(speech):
    return load_audio(speech)


class SlowEngine:
    """Sleeps before each call: processing that cannot keep up with real time."""

    name = "slow"

    def __init__(self, engine, seconds: float) -> None:
        self.engine, self.seconds, self.calls = engine, seconds, 0

    def infer(self, mel, face):
        self.calls += 1
        time.sleep(self.seconds)
        return self.engine.infer(mel, face)


class FailingEngine:
    """Raises on the calls listed in ``fail``."""

    name = "failing"

    def __init__(self, engine, fail=(1,)) -> None:
        self.engine, self.fail, self.calls = engine, set(fail), 0

    def infer(self, mel, face):
        self.calls += 1
        if self.calls - 1 in self.fail:
            raise RuntimeError("simulated engine failure")
        return self.engine.infer(mel, face)


async def offline(engine, avatar, wav, chunk=1000, rate=SAMPLE_RATE, **config):
    async with LipSyncSession(engine, avatar=avatar, config=SessionConfig(live=False, **config)) as session:
        for a in range(0, len(wav), chunk):
            session.push_audio(wav[a:a + chunk], rate)
        session.end_of_input()
        frames, audio = await asyncio.gather(_collect(session.video()), _collect(session.audio()))
    return frames, audio, session


async def _collect(iterator):
    return [item async for item in iterator]


def test_mel_framer_gives_mel_chunks_windows(wav):
    expected = mel_chunks(melspectrogram(wav), 25)
    framer = MelFramer(MediaClock(25))
    got, rng, a = [], np.random.default_rng(0), 0
    while a < len(wav):
        n = int(rng.integers(1, 900))
        got += framer.push(wav[a:a + n])
        a += n
    got += framer.flush()
    assert [i for i, _ in got] == list(range(len(expected)))
    np.testing.assert_array_equal(np.stack([w for _, w in got]), expected)


def test_offline_session_equals_the_batch_infer_path(engine, avatar, wav):
    frames, audio, session = asyncio.run(offline(engine, avatar, wav))
    chunks = mel_chunks(melspectrogram(wav), 25)
    expected = list(lipsync_frames(avatar.frames, avatar.faces, chunks, engine, Blender("feather"), 4, speech_weight))
    assert [f.pts for f in frames] == list(range(len(expected)))
    for frame, reference in zip(frames, expected):
        np.testing.assert_array_equal(frame.image, reference)
    has_face = [bool(avatar.faces.has_face[i % len(avatar)]) for i in range(len(expected))]
    assert [f.generated for f in frames] == has_face
    np.testing.assert_array_equal(np.concatenate([a.samples for a in audio]), wav)
    assert [a.pts for a in audio] == list(np.cumsum([0] + [a.samples.size for a in audio[:-1]]))
    stats = session.stats()
    assert stats.frames_out == len(expected) and stats.frames_dropped == 0
    assert stats.frames_without_face == has_face.count(False) > 0


def test_encoder_cache_matches_within_a_grey_level(engine, face_video, wav):
    cached = Avatar.prepare(face_video, engine)
    assert cached.features is not None and len(cached.features) == int((cached.rows >= 0).sum())
    plain, _, _ = asyncio.run(offline(engine, Avatar.prepare(face_video), wav, encoder_cache=False))
    fast, _, _ = asyncio.run(offline(engine, cached, wav))
    assert len(plain) == len(fast)
    worst = max(int(np.abs(a.image.astype(int) - b.image.astype(int)).max()) for a, b in zip(plain, fast))
    assert worst <= 2


def test_any_rate_and_layout_of_pcm(engine, avatar, wav):
    import av

    resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000)
    frame = av.AudioFrame.from_ndarray(wav.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    stereo = np.concatenate([f.to_ndarray().reshape(-1, 2) for f in resampler.resample(frame) + resampler.resample(None)])
    frames, audio, _ = asyncio.run(offline(engine, avatar, stereo, chunk=4800, rate=48000))
    out = np.concatenate([a.samples for a in audio])
    assert abs(len(out) - len(wav)) <= 32
    assert abs(len(frames) - len(mel_chunks(melspectrogram(wav), 25))) <= 1
    n = min(len(out), len(wav)) - 200
    assert np.corrcoef(out[100:n], wav[100:n])[0, 1] > 0.98     # same speech, resampled twice

    session = LipSyncSession(engine, avatar=avatar)
    with pytest.raises(LipSyncError, match="mono"):
        session.push_audio(np.zeros((2, 3, 4), np.int16), 16000)
    with pytest.raises(LipSyncError, match="sample_rate"):
        session.push_audio(np.zeros(10, np.int16), 0)


def test_engine_error_passes_that_batch_through(engine, avatar, wav):
    failing = FailingEngine(engine, fail={1})
    frames, audio, session = asyncio.run(offline(failing, avatar, wav))
    good, _, _ = asyncio.run(offline(engine, avatar, wav))
    assert session.stats().engine_errors == 1
    assert len(frames) == len(good)
    failed = [f.pts for f, g in zip(frames, good) if g.generated and not f.generated]
    assert failed and len(failed) <= 4                      # one batch of at most batch_size frames
    for pts in failed:
        np.testing.assert_array_equal(frames[pts].image, avatar.frames[pts % len(avatar)])
    assert sum(f.generated for f in frames) == sum(g.generated for g in good) - len(failed)


def test_camera_mode_offline_tracks_pushed_frames(engine, face_video, wav):
    pictures = [f.image for f in iter_video_frames(face_video)]

    async def main():
        async with LipSyncSession(engine, config=SessionConfig(live=False)) as session:
            for image in pictures:
                session.push_video(image)
            session.push_audio(wav, SAMPLE_RATE)
            session.end_of_input()
            return await _collect(session.video()), session.stats()

    frames, stats = asyncio.run(main())
    assert len(frames) == len(mel_chunks(melspectrogram(wav), 25))
    # 20 pictures, 4 without a face; after the video ends the last picture repeats
    assert stats.frames_without_face == 4
    assert stats.frames_generated == len(frames) - 4
    np.testing.assert_array_equal(frames[9].image, pictures[9])           # blank frame passed through
    assert not np.array_equal(frames[0].image, pictures[0])               # generated mouth pasted


async def play_live(session, wav, chunk=160):
    """Push ``wav`` as a sound card would (each block when its last sample is recorded) and record
    when every output item arrives."""
    await session.start()
    t0 = session.clock.t0

    async def feed():
        for a in range(0, len(wav), chunk):
            await asyncio.sleep(max(0.0, t0 + (a + chunk) / SAMPLE_RATE - time.monotonic()))
            session.push_audio(wav[a:a + chunk], SAMPLE_RATE)
        session.end_of_input()

    async def timed(iterator):
        return [(item, time.monotonic() - t0) async for item in iterator]

    _, video, audio = await asyncio.gather(feed(), timed(session.video()), timed(session.audio()))
    await session.close()
    return video, audio


def test_live_session_releases_audio_and_video_together_after_d(engine, avatar, wav):
    session = LipSyncSession(engine, avatar=avatar, config=SessionConfig(live=True, overhead_ms=120))
    video, audio = asyncio.run(play_live(session, wav))
    period = 1 / 25
    assert session.delay == pytest.approx(LOOKAHEAD + 0.120)
    assert session.lookahead == pytest.approx(0.2125)
    assert [f.pts for f, _ in video] == list(range(len(mel_chunks(melspectrogram(wav), 25))))
    assert sum(a.samples.size for a, _ in audio) == len(wav) + session.stats().silence_samples
    # Each item leaves at (or just after) T0 + its media time + D: never before.
    video_delay = np.array([t - f.time for f, t in video])
    audio_delay = np.array([t - a.time for a, t in audio])
    assert video_delay.min() >= session.delay - 0.002 and audio_delay.min() >= session.delay - 0.002
    assert np.median(video_delay) == pytest.approx(session.delay, abs=period)
    # A/V offset at the sink: a frame and the audio chunk holding its time leave within one frame
    starts = np.array([a.pts for a, _ in audio])
    for frame, t in video:
        k = max(0, np.searchsorted(starts, frame.time * SAMPLE_RATE, side="right") - 1)
        assert abs((t - frame.time) - audio_delay[k]) <= period
    # where the budget D - L went: each step a frame passes is timed from its audio being due, in order
    reached = session.stats().reached_ms
    assert list(reached) == ["audio in", "engine start", "engine done", "ready"]
    p50 = [reached[step]["p50"] for step in reached]
    assert p50 == sorted(p50) and p50[-1] == session.stats().overhead_ms["p50"] < 120


def test_live_drops_video_never_audio_and_keeps_d(engine, avatar, wav):
    slow = SlowEngine(engine, 0.25)
    config = SessionConfig(live=True, overhead_ms=60, batch_size=1)
    session = LipSyncSession(slow, avatar=avatar, config=config)
    video, audio = asyncio.run(play_live(session, wav))
    stats = session.stats()
    assert stats.frames_dropped > 0
    assert stats.delay == pytest.approx(LOOKAHEAD + 0.060)
    # every slot still leaves, on time: a dropped result as a short freeze of the last generated frame
    # right after generated ones (this avatar moves, so its mouth cannot be held on the next picture),
    # else as the original picture
    frames = [f for f, _ in video]
    assert [f.pts for f in frames] == list(range(len(video)))
    assert max(t - f.time for f, t in video) < stats.delay + 0.2
    dropped = [f for f in frames if not f.generated and avatar.rows[f.pts % len(avatar)] >= 0]
    assert len(dropped) == stats.frames_dropped
    assert sum(f.held for f in frames) == stats.frames_held
    for before, frame in zip(frames, frames[1:]):
        if frame.held:
            assert before.generated or before.held
            np.testing.assert_array_equal(frame.image, before.image)
        elif frame in dropped:
            np.testing.assert_array_equal(frame.image, avatar.frames[frame.pts % len(avatar)])
    assert sum(a.samples.size for a, _ in audio) == len(wav) + stats.silence_samples


def test_live_silence_is_idle_and_costs_no_inference(engine, avatar):
    counting = FailingEngine(engine, fail=())

    async def main():
        config = SessionConfig(live=True, overhead_ms=50)
        async with LipSyncSession(counting, avatar=avatar, config=config) as session:
            calls_after_warmup = counting.calls
            await asyncio.sleep(0.8)
            session.end_of_input()
            frames = await _collect(session.video())
            return frames, session.stats(), calls_after_warmup

    frames, stats, warm = asyncio.run(main())
    assert len(frames) >= 10 and not any(f.generated for f in frames)
    assert stats.frames_idle > 0 and stats.silence_samples > 0.5 * SAMPLE_RATE
    assert counting.calls == warm


def test_close_leaves_no_tasks_or_threads(engine):
    async def main():
        session = LipSyncSession(engine, config=SessionConfig(live=True, overhead_ms=40))   # camera mode
        await session.start()
        session.push_audio(np.zeros(3200, np.float32), SAMPLE_RATE)
        await asyncio.sleep(0.3)
        await session.close()
        await session.close()                              # idempotent
        assert [f async for f in session.video()] == []    # iterators end
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return others

    assert asyncio.run(main()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith(("lipsync-", "batcher"))]


def test_camera_session_refuses_misuse(engine, avatar):
    session = LipSyncSession(engine, avatar=avatar)
    with pytest.raises(LipSyncError, match="camera mode"):
        session.push_video(np.zeros((8, 8, 3), np.uint8))
    camera = LipSyncSession(engine)
    with pytest.raises(LipSyncError, match="uint8"):
        camera.push_video(np.zeros((8, 8), np.float32))
    camera.end_of_input()
    with pytest.raises(LipSyncError, match="end_of_input"):
        camera.push_audio(np.zeros(10, np.float32), 16000)
    with pytest.raises(LipSyncError, match="blend"):
        asyncio.run(LipSyncSession(engine, avatar=avatar, config=SessionConfig(blend="nope")).start())


@pytest.mark.parametrize("offset", [-8, -15])
def test_streaming_windows_equal_offline_with_mel_offset(offset):
    from lipsync_rt.pipeline.clock import MediaClock
    from lipsync_rt.pipeline.timeline import MelFramer

    rng = np.random.default_rng(1)
    wav = (0.1 * rng.standard_normal(20_123)).astype(np.float32)
    for fps in (25, 29.97):
        framer = MelFramer(MediaClock(fps, mel_offset=offset))
        out = []
        for a in range(0, wav.size, 777):
            out += framer.push(wav[a:a + 777])
        out += framer.flush()
        assert [i for i, _ in out] == list(range(len(out)))
        expected = mel_chunks(melspectrogram(wav), fps, mel_offset=offset)
        np.testing.assert_allclose(np.stack([w for _, w in out]), expected, atol=1e-4)


def test_offline_session_with_an_earlier_window_equals_the_batch_path(avatar, wav):
    """A model trained with mel_offset -8 reads centred windows: the session feeds it exactly the
    batch path's windows for that offset, and its look-ahead is 112.5 ms instead of 212.5 ms."""
    model = seeded_generator(seed=6)
    model.mel_offset = -8
    engine = TorchEngine(model)
    frames, _, session = asyncio.run(offline(engine, avatar, wav))
    chunks = mel_chunks(melspectrogram(wav), 25, mel_offset=-8)
    assert len(chunks) > len(mel_chunks(melspectrogram(wav), 25))        # a window that ends earlier fits more often
    expected = list(lipsync_frames(avatar.frames, avatar.faces, chunks, engine, Blender("feather"), 4,
                                   lambda w: speech_weight(w, -8)))     # rest in pauses reads the same windows
    assert [f.pts for f in frames] == list(range(len(expected)))
    for frame, reference in zip(frames, expected):
        np.testing.assert_array_equal(frame.image, reference)
    assert session.lookahead == pytest.approx(0.1125) and session.stats().lookahead == pytest.approx(0.1125)

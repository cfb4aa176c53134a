"""A live session's D follows its load: it grows in pauses when frames come ready too late.

The controller alone, the pause test on the timeline, the policy moving the release clock in a pause
and not in speech, and a whole session whose engine slows down after it started (as when other
sessions join a server): it drops frames in its first sentence, grows D in the pause, and the next
sentence keeps its mouth, with audio and video still leaving together.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from lipsync_rt.audio import SAMPLE_RATE
from lipsync_rt.pipeline import LipSyncSession, SessionConfig
from lipsync_rt.pipeline.clock import MediaClock
from lipsync_rt.pipeline.messages import FrameResult
from lipsync_rt.pipeline.metrics import SessionMetrics
from lipsync_rt.pipeline.playout import HEADROOM, MARGIN, RANK, PlayoutDelay
from lipsync_rt.pipeline.policy import LivePolicy
from lipsync_rt.pipeline.queues import BackpressureQueue
from lipsync_rt.pipeline.stages import ReleaseStage
from lipsync_rt.pipeline.timeline import Timeline


def test_the_budget_asked_for_holds_a_burst_of_late_frames_with_headroom():
    playout = PlayoutDelay(0.050, cap=0.200)
    assert playout.wanted() is None                       # nothing seen yet
    for overhead in (0.020, 0.030, 0.035):
        playout.observe(overhead)
    assert playout.wanted() is None                       # 1.25 x 20 ms + 5 ms fits in 50 ms
    playout.observe(0.080)
    assert playout.wanted() is None                       # one stray late frame (concealed) is not a trend
    playout.observe(0.080)
    playout.observe(0.080)                                # three are
    assert playout.wanted() == pytest.approx(HEADROOM * 0.080 + MARGIN)
    assert playout.grow(playout.wanted()) == pytest.approx(0.105 - 0.050)
    assert playout.budget == pytest.approx(0.105) and playout.increases == 1
    assert playout.wanted() is None                       # the same frames ask for nothing more
    for _ in range(RANK):
        playout.observe(1.0)                              # a stall: the cap holds
    assert playout.wanted() == pytest.approx(0.200)


def test_small_increases_wait():
    playout = PlayoutDelay(0.050, cap=0.200)
    for _ in range(RANK):
        playout.observe(0.042)
    assert playout.wanted() is None                       # 57.5 ms: a step under 10 ms is not worth a pause


def test_old_frames_are_forgotten():
    playout = PlayoutDelay(0.050, cap=0.200)
    for _ in range(RANK):
        playout.observe(0.150)
    assert playout.wanted() is not None
    for _ in range(100):                                  # 4 s of frames in time since
        playout.observe(0.010)
    assert playout.wanted() is None


def test_quiet_means_no_block_of_10_ms_reaches_minus_40_dbfs():
    timeline = Timeline()
    assert timeline.quiet(0, 3200)                        # nothing yet
    timeline.append(np.full(1600, 0.005, np.float32))     # -46 dBFS: a quiet room
    timeline.append(np.zeros(160, np.float32), silence=True)
    tone = 0.1 * np.sin(np.arange(800) / 5).astype(np.float32)
    timeline.append(tone)                                 # speech-like level
    assert timeline.quiet(0, 1760)
    assert not timeline.quiet(0, 2560)
    assert not timeline.quiet(1700, 1800)                 # 40 samples of it in the last block
    timeline.discard_before(1600)
    assert timeline.quiet(0, 1760)                        # released samples are not asked for


def test_live_budget_follows_the_load_unless_fixed_or_uncapped():
    async def probe(frames):
        return None

    def playout_of(**config):
        policy = LivePolicy(SessionConfig(**config), MediaClock(25), 0.1)
        budget = asyncio.run(policy.processing_budget(probe))
        return policy.playout, budget

    playout, budget = playout_of()
    assert playout is not None and playout.budget == budget and playout.cap == pytest.approx(0.200)
    assert playout_of(overhead_ms=60)[0] is None            # a budget given is kept
    assert playout_of(max_overhead_ms=None)[0] is None      # so is a measured one, if asked


def _release(speech_until: int):
    """A live release stage at D = 50 ms (L = 0) over audio that is speech until ``speech_until``
    (samples), then silence, every frame pasted in time."""
    clock = MediaClock(25, delay=0.05)
    policy = LivePolicy(SessionConfig(audio_chunk=320), clock, 0.0)
    policy.playout = PlayoutDelay(0.05, cap=0.2)
    timeline = Timeline()
    t = np.arange(16000)
    timeline.append(np.where(t < speech_until, 0.2 * np.sin(t / 7), 0.0).astype(np.float32))
    timeline.close()
    metrics = SessionMetrics()
    video = policy.droppable_queue(64, metrics.output_dropped)
    release = ReleaseStage(policy, clock, timeline, video, BackpressureQueue(), lambda i: None, metrics)
    for i in range(25):
        release.submit(FrameResult(i, np.zeros((2, 2, 3), np.uint8), True, None, None, 0))
    release.finish(25)
    return clock, policy, release, video


@pytest.mark.parametrize("speech_until, grows_at", [(16000, None), (1280, 3)])
def test_d_grows_only_where_the_coming_audio_is_a_pause(speech_until, grows_at):
    async def run():
        clock, policy, release, video = _release(speech_until)
        for _ in range(RANK):
            policy.playout.observe(0.08)                  # frames came ready 80 ms after their audio
        clock.start()
        task = asyncio.ensure_future(release.run())
        delays = []
        for _ in range(8):
            frame = await video.get()
            delays.append((frame.pts, time.monotonic() - clock.t0 - frame.time))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return clock, policy, delays

    clock, policy, delays = asyncio.run(run())
    if grows_at is None:                                  # 1 s of speech: never quiet, D stays
        assert clock.delay == 0.05 and policy.playout.increases == 0
        assert max(d for _, d in delays) < 0.05 + 0.03
    else:
        # speech ends at 80 ms: when frame 3's slot comes up, what has not left yet is all pause
        assert clock.delay == pytest.approx(HEADROOM * 0.08 + MARGIN) and policy.playout.increases == 1
        before = [d for pts, d in delays if pts < grows_at]
        after = [d for pts, d in delays if pts >= grows_at]
        assert max(before) < 0.05 + 0.03 and min(after) >= clock.delay - 0.002


class SlowsDownEngine:
    """An engine that becomes ``seconds`` slower per call once ``slow`` is set: the load of sessions
    that joined after this one measured its budget."""

    name = "slows-down"

    def __init__(self, engine, seconds: float) -> None:
        self.engine, self.seconds, self.slow = engine, seconds, False

    def infer(self, mel, face):
        if self.slow:
            time.sleep(self.seconds)
        return self.engine.infer(mel, face)


def test_a_session_that_meets_more_load_than_it_measured_grows_d_in_the_pause(engine, avatar, speech):
    from lipsync_rt.audio import load_audio

    wav = load_audio(speech)[:SAMPLE_RATE * 3 // 2]
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)
    audio_in = np.concatenate([wav, pause, wav])
    slow = SlowsDownEngine(engine, 0.05)
    session = LipSyncSession(slow, avatar=avatar, config=SessionConfig(live=True, batch_size=4, max_overhead_ms=400))

    async def main():
        await session.start()
        slow.slow = True
        t0 = session.clock.t0
        for a in range(0, len(audio_in), 320):
            await asyncio.sleep(max(0.0, t0 + (a + 320) / SAMPLE_RATE - time.monotonic()))
            session.push_audio(audio_in[a:a + 320], SAMPLE_RATE)
        session.end_of_input()

    async def timed(iterator):
        return [(item, time.monotonic()) async for item in iterator]

    async def run():
        _, video, audio = await asyncio.gather(main(), timed(session.video()), timed(session.audio()))
        await session.close()
        return video, audio

    video, audio = asyncio.run(run())
    stats = session.stats()
    measured = session.lookahead + session.overhead
    assert stats.delay_increases >= 1 and stats.delay > measured + 0.03
    frames = [f for f, _ in video]
    assert [f.pts for f in frames] == list(range(len(frames)))          # every slot, in order
    second = len(wav) + len(pause)
    dropped = [f for f in frames if not f.generated and not f.idle and avatar.rows[f.pts % len(avatar)] >= 0]
    assert len(dropped) == stats.frames_dropped
    early_drops = [f for f in dropped if f.time * SAMPLE_RATE < len(wav)]
    late_in_second = [f for f in dropped if f.time * SAMPLE_RATE >= second + 1600]
    assert early_drops                                                   # the load hurt the first sentence
    assert not late_in_second                                            # and no longer the second
    # audio is never lost or retimed: the same samples, media time as pushed
    assert sum(a.samples.size for a, _ in audio) == len(audio_in) + stats.silence_samples
    t0 = session.clock.t0
    audio_delay = np.array([t - t0 - a.time for a, t in audio])
    jump = int(np.argmax(np.diff(audio_delay))) + 1
    assert audio_delay[jump] - audio_delay[jump - 1] > 0.02               # where D grew ...
    assert np.abs(audio[jump][0].samples).max() < 0.01                   # ... the audio was a pause
    for frame, t in video[-10:]:                                        # and A/V still leave together
        assert abs((t - t0 - frame.time) - stats.delay) < 1 / 25 + 0.01

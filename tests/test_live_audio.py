"""Live audio timing on a simulated clock: the audio stage driven by fake producers, every push and every
clock tick stamped with a chosen time, so what would take minutes of real time (and a quiet machine)
runs in a moment and the same way every time.

The rule under test: silence is never cut into speech that keeps real time (chunks of any size up to
100 ms, jittering by less than the grace, starting late, resuming after a pause, resampled from 24 kHz);
a producer that stops gets silence once its own pace plus the grace has passed; one slower than real
time gets silence only when the release clock would otherwise have to play samples that are not there.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lipsync_rt.pipeline.clock import MediaClock
from lipsync_rt.pipeline.config import SessionConfig
from lipsync_rt.pipeline.messages import Generation
from lipsync_rt.pipeline.policy import LivePolicy
from lipsync_rt.pipeline.queues import END, BackpressureQueue, Inbox
from lipsync_rt.pipeline.segments import Segments
from lipsync_rt.pipeline.stages.audio import AudioPush, AudioStage, SegmentEnd, Tick
from lipsync_rt.pipeline.timeline import MelFramer, Timeline

SR = 16000
DELAY = 0.25            # D of the simulated session
GRACE_MS = 20.0


def tone(n: int, rate: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / rate) + 0.01).astype(np.float32)


def producer(start: float, seconds: float, chunk_s: float, rate: int = 24000, jitter_s: float = 0.0,
             speed: float = 1.0, seed: int = 0, segment=None) -> list[tuple[float, AudioPush]]:
    """A producer of ``seconds`` of speech from ``start`` on, in ``chunk_s`` chunks, each pushed when its
    last sample is captured (``speed`` < 1: slower than real time), late by up to ``jitter_s``."""
    rng = np.random.default_rng(seed)
    n = int(round(chunk_s * rate))
    out = []
    for k in range(int(round(seconds / chunk_s))):
        at = start + (k + 1) * chunk_s / speed + float(rng.uniform(0, jitter_s))
        out.append((at, AudioPush(tone(n, rate), rate, at, segment, 0)))
    return out


def simulate(pushes: list[tuple[float, object]], until: float, grace_ms: float = GRACE_MS,
             stall: tuple[float, float] | None = None) -> Timeline:
    """Run the audio stage over ``pushes`` with a tick every 10 ms until ``until``; the timeline it wrote
    (``timeline.stage``: the stage, for its counters)."""
    clock = MediaClock(25, delay=DELAY)
    clock.start(now=0.0)
    policy = LivePolicy(SessionConfig(audio_grace_ms=grace_ms), clock, 0.2125)
    policy.tick = None                       # the ticks are ours, stamped on the simulated clock
    ticks = [(round(0.01 * k, 6), Tick(round(0.01 * k, 6))) for k in range(1, int(until / 0.01) + 1)]
    if stall is not None:       # the event loop does not run from stall[0] to stall[1]: one late tick, stamped
        a, b = stall            # when it was due, then whatever the producer pushed meanwhile
        ticks = [(t, tick) for t, tick in ticks if not a < t <= b] + [(b - 1e-6, Tick(min(t for t, _ in ticks
                                                                                        if t > a)))]
    events = sorted(ticks + pushes, key=lambda e: (e[0], isinstance(e[1], Tick)))   # a push before a tick at once

    async def run() -> Timeline:
        inbox, timeline = Inbox(), Timeline()
        stage = AudioStage(inbox, timeline, MelFramer(clock), BackpressureQueue(), policy, Generation(),
                           Segments(lambda event: None))
        for _, item in events:
            inbox.put(item)
        inbox.put(END)          # the end of input, after the last tick (end() would stop the ticks at once)
        await stage.run()
        timeline.stage = stage
        return timeline

    return asyncio.run(run())


def silence_within(timeline: Timeline, start_s: float, stop_s: float) -> int:
    """Filled-in samples strictly inside [start_s, stop_s) of the timeline."""
    a, b = int(start_s * SR), int(stop_s * SR)
    return sum(max(0, min(y, b) - max(x, a)) for x, y in timeline._silence)


def speech_span(timeline: Timeline) -> tuple[int, int]:
    """First and last sample of pushed audio on the timeline."""
    stops = [a for a, b in timeline._silence] + [timeline.end]
    starts = [b for a, b in timeline._silence] + [0]
    first = min(s for s in starts if s < timeline.end and not timeline.is_silence(s, s + 1))
    last = max(s for s in stops if s > 0 and not timeline.is_silence(s - 1, s))
    return first, last


@pytest.mark.parametrize("chunk_ms,rate,jitter_ms", [(20, 24000, 15), (10, 16000, 15), (40, 48000, 15),
                                                      (100, 24000, 15), (20, 22050, 0)])
def test_a_producer_that_keeps_real_time_never_gets_silence_cut_in(chunk_ms, rate, jitter_ms):
    """It starts late (1.3 s after the session), pauses, resumes: every stretch of its speech is whole."""
    pushes = producer(1.3, 3.0, chunk_ms / 1000, rate, jitter_ms / 1000, seed=1)
    pushes += producer(5.0, 3.0, chunk_ms / 1000, rate, jitter_ms / 1000, seed=2)
    timeline = simulate(pushes, 8.5)
    runs = [(a, b) for a, b in timeline._silence]
    speech = [(b, a2) for (a, b), (a2, b2) in zip(runs, runs[1:] + [(timeline.end, timeline.end)]) if a2 > b]
    assert len(speech) == 2, speech                 # two unbroken stretches: no silence inside either
    assert timeline.stage.silence_cuts == 0
    for (a, b), seconds in zip(speech, (3.0, 3.0)):
        assert b - a == pytest.approx(seconds * SR, abs=40)      # all of it, resampler tail included
    # each stretch starts where its first chunk arrived, less what of it fits in the grace: never before
    # it was captured, and no later than its first chunk's arrival
    for (a, b), captured in zip(speech, (1.3, 5.0)):
        arrived = captured + chunk_ms / 1000 + jitter_ms / 1000
        assert captured - 0.001 <= a / SR <= arrived - min(chunk_ms, GRACE_MS) / 1000 + 0.001


def test_speech_after_a_pause_gets_the_whole_grace_again():
    """The old rule put resumed speech at the fill point, with no slack: a push 5 ms late then cut in."""
    pushes = producer(2.0, 1.0, 0.02, 24000)
    late = producer(3.0, 1.0, 0.02, 24000)
    late[3] = (late[3][0] + 0.012, late[3][1])          # the fourth chunk after the pause comes 12 ms late
    timeline = simulate(pushes + late, 4.5)
    assert silence_within(timeline, 2.05, 2.95) == 0 and silence_within(timeline, 3.05, 3.95) == 0


def test_a_push_later_than_its_pace_and_the_grace_is_a_counted_cut():
    pushes = producer(1.0, 2.0, 0.02, 24000)
    pushes[40:] = [(at + 0.045, push) for at, push in pushes[40:]]   # a 45 ms stall: 25 ms beyond the grace
    timeline = simulate(pushes, 3.5)
    assert timeline.stage.silence_cuts == 1
    assert 0 < silence_within(timeline, 1.2, 2.9) < 1600


def test_a_stall_of_the_whole_process_is_not_taken_for_a_late_producer():
    """The event loop stops for 70 ms (a busy machine): the producer on it pushes three chunks late, at
    once, and the tick that should have come meanwhile comes late too. The speech stays whole."""
    pushes = producer(1.0, 2.0, 0.02, 24000)
    stalled = [(2.07 if 2.0 < at <= 2.07 else at, push) for at, push in pushes]
    stalled = [(at, AudioPush(p.samples, p.rate, at, p.segment, p.generation)) for at, p in stalled]
    timeline = simulate(stalled, 3.5, stall=(2.0, 2.07))
    assert timeline.stage.silence_cuts == 0 and silence_within(timeline, 1.1, 2.9) == 0


def test_a_producer_that_stops_is_filled_in_after_its_pace_and_the_grace():
    pushes = producer(0.5, 1.0, 0.04, 24000)            # 40 ms chunks; the last one arrives at 1.5 s
    timeline = simulate(pushes, 3.0)
    _, last = speech_span(timeline)
    # placed as captured less the grace's worth (the first arrived at 0.54 s, went in at 0.52 s)
    assert last / SR == pytest.approx(1.52, abs=0.002)
    # the next push was due at 1.54 s: overdue 20 ms later; the silence then runs on with the clock
    assert timeline.end / SR == pytest.approx(3.0 - GRACE_MS / 1000, abs=0.011)
    assert min(a for a, b in timeline._silence if a >= last) == last


def test_end_of_segment_means_no_more_is_coming():
    pushes = producer(0.5, 1.0, 0.04, 24000, segment="reply")
    pushes.append((1.5005, SegmentEnd("reply", 0)))
    timeline = simulate(pushes, 1.54)
    # without it the next chunk would be waited for until 1.56 s; with it, filling starts at once
    assert timeline.end / SR == pytest.approx(1.54 - GRACE_MS / 1000, abs=0.002)


def test_a_producer_slower_than_real_time_gets_silence_only_when_the_release_clock_needs_it():
    """At 0.9x real time the producer falls 100 ms behind per second; nothing is filled until it is
    about D behind (the release clock would have to play what is not there), and then only as much as
    the release needs: the producer is never cut into earlier, and the audio never runs dry."""
    pushes = producer(0.0, 4.0, 0.02, 24000, speed=0.9)
    timeline = simulate(pushes, 4.0 / 0.9)
    first = min((a for a, b in timeline._silence if a > 0), default=None)
    assert first is not None
    behind_at_first = first / SR / 0.9 - first / SR     # how far behind real time the producer was
    assert behind_at_first == pytest.approx(DELAY - 0.02 - GRACE_MS / 1000, abs=0.03)
    # and the release position (now - D) always had its next chunk written by then
    assert timeline.end >= (4.0 / 0.9 - DELAY) * SR


def test_resampler_tail_counts_as_arrived():
    """At 24 kHz FFmpeg's resampler holds back a few samples of every push: they are not missing audio."""
    pushes = producer(0.0, 2.0, 0.02, 24000)
    timeline = simulate(pushes, 2.0)
    assert timeline.silence_samples == 0

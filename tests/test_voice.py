"""Session control for voice agents: speech segments, their events, interrupt (barge-in), bad input.

The ledger, the timeline cut and the framer restart are tested on their own, without a model; then
short live sessions (a seeded lite generator, the example photo) check the whole rule: from an
``interrupt()`` call the next released frame is idle and the audio silent, nothing released is taken
back, nothing pushed after the call is lost, and each segment gets its events once. No assertion is
about speed (the benchmark measures that): timing is checked against the session's own clock.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from conftest import EXAMPLE_FACE, seeded_generator
from lipsync_rt.audio import HOP, MEL_SILENCE, SAMPLE_RATE, load_audio, mel_chunks, melspectrogram
from lipsync_rt.engine import TorchEngine
from lipsync_rt.errors import LipSyncError
from lipsync_rt.pipeline import (Avatar, LipSyncSession, PlaybackFinished, PlaybackStarted, SessionConfig)
from lipsync_rt.pipeline.clock import MediaClock
from lipsync_rt.pipeline.segments import Segments
from lipsync_rt.pipeline.timeline import MelFramer, Timeline


@pytest.fixture(scope="module")
def engine():
    return TorchEngine(seeded_generator(seed=5))


@pytest.fixture(scope="module")
def photo_avatar(engine):
    return Avatar.prepare(EXAMPLE_FACE, engine)


@pytest.fixture(scope="module")
def wav(speech):
    return load_audio(speech)


# ----------------------------------------------------------------------------------------------
# The ledger


def ledger():
    events = []
    return Segments(events.append), events


def test_segment_events_follow_the_release_position():
    segments, events = ledger()
    assert segments.accept("a")
    segments.wrote("a", 100, 400)
    segments.wrote("a", 600, 700)            # a gap of filled silence inside the reply is not part of it
    segments.released(100)
    assert events == []
    segments.released(101)
    assert events == [PlaybackStarted("a", 100)]
    assert segments.segment_at(150) == ("a", 50, 400)
    assert segments.segment_at(450) == (None, 0, 600)       # a chunk stops where the next run starts
    segments.close("a", 900)                 # closed later than its last sample: finished at that sample
    segments.released(699)
    assert len(events) == 1
    segments.released(700)
    assert events[1] == PlaybackFinished("a", 400 / SAMPLE_RATE, False, 700)
    assert segments.take_inband() == tuple(events)
    assert segments.take_inband() == ()


def test_a_segment_closed_after_its_samples_left_finishes_at_once():
    segments, events = ledger()
    segments.accept(7)
    segments.wrote(7, 0, 320)
    segments.released(640)
    segments.close(7, 640)
    assert events == [PlaybackStarted(7, 0), PlaybackFinished(7, 0.02, False, 320)]


def test_cut_finishes_every_open_segment_with_what_was_played():
    segments, events = ledger()
    segments.accept("a")
    segments.wrote("a", 0, 1600)
    segments.accept("b")                     # a new id ends "a" (input side)
    segments.close("a", 1600)
    segments.wrote("b", 1600, 3200)
    segments.accept("c")                     # still in the inbox: nothing on the timeline yet
    segments.released(800)
    segments.cut(800)
    assert events[1:] == [PlaybackFinished("a", 0.05, True, 800), PlaybackFinished("b", 0.0, True, 800),
                          PlaybackFinished("c", 0.0, True, 800)]
    assert segments.open is None
    assert not segments.accept("b")          # the rest of a cut reply is dropped, not an error


def test_segment_input_rules():
    segments, _ = ledger()
    segments.accept("a")
    assert segments.end(None) == "a"
    assert segments.end("a") is None          # ended already: a no-op
    with pytest.raises(LipSyncError, match="has ended"):
        segments.accept("a")
    with pytest.raises(LipSyncError, match="unknown segment"):
        segments.end("never")
    assert segments.end(None) is None         # nothing open: a no-op
    segments.accept("b")
    assert segments.accept(None) and segments.open is None     # audio without a segment ends it


# ----------------------------------------------------------------------------------------------
# Timeline cut and framer restart


def test_timeline_cut_keeps_what_was_released_and_forgets_the_rest():
    timeline = Timeline()
    timeline.append(np.ones(1000, np.float32))
    timeline.append(np.zeros(500, np.float32), silence=True)
    timeline.append(np.full(700, 2, np.float32))
    timeline.cut(1200)
    assert timeline.end == timeline.floor == 1200 and timeline.silence_samples == 200
    np.testing.assert_array_equal(timeline.read(900, 1300), [1] * 100 + [0] * 200)
    assert timeline.is_silence(0, 1200)       # before the cut: that speech is over
    assert timeline.is_silence(-400, 1000)
    timeline.append(np.zeros(300, np.float32), silence=True)
    timeline.append(np.ones(100, np.float32))
    assert timeline.is_silence(1000, 1500) and not timeline.is_silence(1000, 1600)


def test_framer_restart_reads_silence_before_the_new_stream():
    rng = np.random.default_rng(3)
    first = (0.1 * rng.standard_normal(9000)).astype(np.float32)
    after = (0.1 * rng.standard_normal(12000)).astype(np.float32)
    framer = MelFramer(MediaClock(25))
    windows = framer.push(first)
    resumed = framer.next_index
    start = framer.restart(8123)
    assert start == 8200 and start % HOP == 0
    windows = framer.push(after) + framer.flush()
    assert [i for i, _ in windows] == list(range(resumed, resumed + len(windows)))
    # The new stream equals the reference's mel of silence up to `start` followed by the new audio
    # (columns two past the restart: the first ones reflect-pad the new stream's start).
    reference = mel_chunks(melspectrogram(np.concatenate([np.zeros(start, np.float32), after])), 25)
    for index, window in windows[:-1]:
        first_column = int(index * 80 / 25)
        if first_column >= start // HOP + 2:
            np.testing.assert_allclose(window, reference[index], atol=1e-4)
        elif first_column + 16 <= start // HOP:
            assert (window == MEL_SILENCE).all()


# ----------------------------------------------------------------------------------------------
# Sessions


async def _collect(iterator):
    return [item async for item in iterator]


def _timed(session, into):
    async def read(iterator, key):
        async for item in iterator:
            into[key].append((time.monotonic(), item))
    return [asyncio.ensure_future(read(session.video(), "video")), asyncio.ensure_future(read(session.audio(), "audio"))]


def _int16(wav):
    return (np.clip(wav, -1, 1) * 32767).astype(np.int16)


def _stereo_at(wav, rate):
    import av

    resampler = av.AudioResampler(format="s16", layout="stereo", rate=rate)
    frame = av.AudioFrame.from_ndarray(wav.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    out = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1, 2) for f in out])


def test_offline_segments_at_any_rate_report_their_whole_length(engine, photo_avatar, wav):
    """Two replies from a TTS at 8 kHz mono and 48 kHz stereo: each plays whole, in order, with its
    events, and every audio chunk names the segment it belongs to."""
    eight = _int16(wav[::2][:8000])                             # 1 s at 8 kHz
    stereo = _stereo_at(wav[:8000], 48000)                       # 0.5 s at 48 kHz, (n, 2) int16

    async def main():
        heard = []
        session = LipSyncSession(engine, avatar=photo_avatar, config=SessionConfig(live=False),
                                 on_event=heard.append)
        async with session:
            for a in range(0, len(eight), 1000):
                session.push_audio(eight[a:a + 1000], 8000, segment="one")
            session.end_of_segment("one")
            for a in range(0, len(stereo), 4800):
                session.push_audio(stereo[a:a + 4800], 48000, segment="two")
            session.end_of_input()                               # ends "two" too
            events = asyncio.ensure_future(_collect(session.events()))
            frames, audio = await asyncio.gather(_collect(session.video()), _collect(session.audio()))
            await asyncio.sleep(0)
            return frames, audio, await events, heard

    frames, audio, events, heard = asyncio.run(main())
    assert [type(e) for e in events] == [PlaybackStarted, PlaybackFinished] * 2
    assert [e.segment for e in events] == ["one", "one", "two", "two"]
    assert events[1].position == pytest.approx(1.0, abs=0.003) and not events[1].interrupted
    assert events[3].position == pytest.approx(0.5, abs=0.003)
    assert heard == events
    # in-band: the same events, on the chunks that caused them
    assert [e for chunk in audio for e in chunk.events] == events
    one = [c for c in audio if c.segment == "one"]
    assert one[0].events == (events[0],) and events[1] in one[-1].events
    assert [c.segment_position for c in one] == list(np.cumsum([0] + [c.samples.size for c in one[:-1]]))
    assert sum(c.samples.size for c in one) == round(events[1].position * SAMPLE_RATE)
    assert len(frames) == len(mel_chunks(melspectrogram(np.concatenate([c.samples for c in audio])), 25))


def test_interrupt_cuts_at_the_release_position_and_keeps_what_follows(engine, photo_avatar, wav):
    async def main():
        seen = {"video": [], "audio": []}
        session = LipSyncSession(engine, avatar=photo_avatar, config=SessionConfig(overhead_ms=80))
        await session.start()
        readers = _timed(session, seen)
        reply = _int16(np.concatenate([wav, wav]))                       # 3.2 s, pushed in one burst
        session.push_audio(reply, SAMPLE_RATE, segment="reply")
        session.end_of_segment()
        started = asyncio.get_running_loop().create_future()
        events = []

        async def watch():
            async for event in session.events():
                events.append((time.monotonic(), event))
                if isinstance(event, PlaybackStarted) and not started.done():
                    started.set_result(None)
        watcher = asyncio.ensure_future(watch())
        await started
        await asyncio.sleep(0.6)
        release = session._stages["release"]          # what had left at the call (read by the consumer or not)
        released_before = (release.next_index, release.audio_position)
        called = time.monotonic()
        session.interrupt()
        session.push_audio(_int16(wav[:8000]), SAMPLE_RATE, segment="next")   # right after: kept whole
        session.end_of_segment("next")
        await asyncio.sleep(1.2)
        session.interrupt()                                               # nothing playing: no events
        await asyncio.sleep(0.2)
        session.end_of_input()
        await asyncio.gather(*readers)
        await watcher
        await session.close()
        return seen, events, called, released_before, session

    seen, events, called, (next_frame, next_sample), session = asyncio.run(main())
    video = [f for _, f in seen["video"]]
    audio = [c for _, c in seen["audio"]]
    # nothing released is taken back: pts run on without gaps or repeats
    assert [f.pts for f in video] == list(range(len(video)))
    assert [c.pts for c in audio] == list(np.cumsum([0] + [c.samples.size for c in audio[:-1]]))
    assert any(f.generated for f in video[:next_frame]) and any(c.segment == "reply" for c in audio)
    # from the call: the next released frame is idle, the next audio silent, until the next reply
    after_video = [f for f in video if f.pts >= next_frame]
    after_audio = [c for c in audio if c.pts >= next_sample]
    first_next = next(k for k, c in enumerate(after_audio) if c.segment == "next")
    assert all(f.idle and not f.generated for f in after_video[:5])
    assert after_audio[0].pts == next_sample and first_next > 0
    assert all(not c.samples.any() and c.segment is None for c in after_audio[:first_next])
    # the cut reply: finished once, interrupted, with exactly the seconds of it that were released
    cut = [e for _, e in events if e.segment == "reply"]
    assert [type(e) for e in cut] == [PlaybackStarted, PlaybackFinished] and cut[1].interrupted
    played = sum(c.samples.size for c in audio if c.segment == "reply")
    assert cut[1].position == played / SAMPLE_RATE and 0.3 < cut[1].position < 3.0
    # the reply pushed right after the interrupt plays whole, with the full delay to be lip-synced
    nxt = [e for _, e in events if e.segment == "next"]
    assert [type(e) for e in nxt] == [PlaybackStarted, PlaybackFinished] and not nxt[1].interrupted
    assert nxt[1].position == pytest.approx(0.5, abs=1e-9)
    assert nxt[0].time * 1 >= cut[1].time + session.delay - 0.05
    assert len(events) == 4 and session.stats().interrupts == 2


def test_interrupt_from_another_thread_and_before_start(engine, photo_avatar, wav):
    async def main():
        events = []
        session = LipSyncSession(engine, avatar=photo_avatar, config=SessionConfig(overhead_ms=80),
                                 on_event=events.append)
        session.push_audio(wav, SAMPLE_RATE, segment="early")
        session.interrupt()                         # before start: the pushed reply is dropped
        await session.start()
        seen = {"video": [], "audio": []}
        readers = _timed(session, seen)
        session.push_audio(wav, SAMPLE_RATE, segment="a")
        await asyncio.sleep(0.7)
        playing = session.playing
        called = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, session.interrupt)
        await asyncio.sleep(0.3)
        session.end_of_input()
        await asyncio.gather(*readers)
        after = session.playing
        await session.close()
        return events, seen, called, (playing, after)

    events, seen, called, playing = asyncio.run(main())
    assert playing == ("a", None)
    assert events[0] == PlaybackFinished("early", 0.0, True, 0)
    assert [(type(e), e.segment) for e in events[1:]] == [(PlaybackStarted, "a"), (PlaybackFinished, "a")]
    assert events[2].interrupted
    late = [c for t, c in seen["audio"] if t > called + 0.2]        # the cut lands at the loop's next turn (a busy CPU delays it)
    assert late and not any(c.samples.any() for c in late)
    assert not any(c.segment == "early" for _, c in seen["audio"])


def test_bad_input_is_an_error_or_a_documented_no_op(engine, photo_avatar, wav):
    async def main():
        session = LipSyncSession(engine, avatar=photo_avatar, config=SessionConfig(live=False))
        await session.start()
        session.interrupt()                                      # nothing playing: nothing happens
        session.end_of_segment()                                 # nothing open: nothing happens
        with pytest.raises(LipSyncError, match="unknown segment"):
            session.end_of_segment("nope")
        session.push_audio(wav[:4800], SAMPLE_RATE, segment=1)
        session.end_of_segment(1)
        session.end_of_segment(1)                                # twice: a no-op
        with pytest.raises(LipSyncError, match="has ended"):
            session.push_audio(wav[:4800], SAMPLE_RATE, segment=1)
        with pytest.raises(LipSyncError, match="mono"):
            session.push_audio(np.zeros((2, 3, 4), np.int16), 16000, segment=2)
        session.end_of_input()
        frames = await _collect(session.video())
        await session.close()
        with pytest.raises(LipSyncError, match="closed"):
            session.push_audio(wav[:1600], SAMPLE_RATE)
        with pytest.raises(LipSyncError, match="closed"):
            session.end_of_segment()
        session.interrupt()                                      # after close: a no-op
        return frames, session.stats()

    frames, stats = asyncio.run(main())
    assert len(frames) == len(mel_chunks(melspectrogram(wav[:4800]), 25))
    assert stats.interrupts == 1


def test_a_listener_that_fails_or_interrupts_does_not_stop_the_session(engine, photo_avatar, wav):
    async def main():
        session = None

        def listener(event):
            if isinstance(event, PlaybackStarted):
                session.interrupt()                              # re-entrant: the cut waits its turn
            raise RuntimeError("listener bug")

        session = LipSyncSession(engine, avatar=photo_avatar, config=SessionConfig(overhead_ms=80),
                                 on_event=listener)
        async with session:
            session.push_audio(wav, SAMPLE_RATE, segment="a")
            reader = asyncio.ensure_future(_collect(session.events()))
            await asyncio.sleep(0.8)
            session.end_of_input()
            video, audio = await asyncio.gather(_collect(session.video()), _collect(session.audio()))
        return await reader, video, audio

    events, video, audio = asyncio.run(main())
    assert [type(e) for e in events] == [PlaybackStarted, PlaybackFinished] and events[1].interrupted
    assert [f.pts for f in video] == list(range(len(video)))


def test_close_after_interrupts_leaves_no_tasks_or_threads(engine, photo_avatar, wav):
    async def main():
        session = LipSyncSession(engine, avatar=photo_avatar, config=SessionConfig(overhead_ms=60))
        await session.start()
        for k in range(3):
            session.push_audio(wav, SAMPLE_RATE, segment=k)
            await asyncio.sleep(0.35)
            session.interrupt()
        await session.close()
        finished = [e for e in await _collect(session.events()) if isinstance(e, PlaybackFinished)]
        assert [(e.segment, e.interrupted) for e in finished] == [(0, True), (1, True), (2, True)]
        assert await _collect(session.events()) == []           # ended: later calls end at once
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(main()) == []
    # the engine's thread may still be finishing the batch it was running when the session closed
    # (the batcher shuts its pool down without waiting): it ends, it does not linger
    for thread in [t for t in threading.enumerate() if t.name.startswith(("lipsync-", "batcher"))]:
        thread.join(timeout=5)
    assert not [t for t in threading.enumerate() if t.name.startswith(("lipsync-", "batcher"))]

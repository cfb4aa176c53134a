"""The pushed audio given back as it came (``SessionConfig(source_audio=True)``): its rate, its channels,
its samples, in step with the 16 kHz audio the model hears; silence where the session filled some in;
and what a recording (``Mp4Sink``) makes of it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lipsync_rt.io import Mp4Sink, run_sinks
from lipsync_rt.media import probe
from lipsync_rt.audio import decode_audio
from lipsync_rt.pipeline import LipSyncSession, SessionConfig
from lipsync_rt.pipeline.source_audio import SourceAudio


def stereo(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], axis=1).astype(np.float32)


async def play(session: LipSyncSession, pcm: np.ndarray, rate: int, chunk: int) -> list:
    out = []

    async def feed():
        for a in range(0, len(pcm), chunk):
            session.push_audio(pcm[a:a + chunk], rate)
            await asyncio.sleep(0)
        session.end_of_input()

    async def take():
        async for item in session.audio():
            out.append(item)

    async def frames():
        async for _ in session.video():
            pass

    await asyncio.gather(feed(), take(), frames())
    return out


def test_offline_the_pushed_audio_comes_back_sample_for_sample(engine, avatar):
    pcm = stereo(1.2, 48000)

    async def run():
        config = SessionConfig(live=False, source_audio=True)
        async with LipSyncSession(engine, avatar=avatar, config=config) as session:
            return await play(session, pcm, 48000, 960)

    chunks = asyncio.run(run())
    assert all(c.source_rate == 48000 and c.source.shape[1] == 2 for c in chunks)
    back = np.concatenate([c.source for c in chunks])
    # three source samples per 16 kHz sample, rounded on absolute positions: the lengths add up exactly
    assert len(back) == round(sum(c.samples.size for c in chunks) * 3)
    n = min(len(back), len(pcm))
    np.testing.assert_array_equal(back[:n], pcm[:n])
    # and each chunk's stretch is the one at the chunk's own time
    for chunk in chunks[:5]:
        start = chunk.pts * 3
        np.testing.assert_array_equal(chunk.source, pcm[start:start + len(chunk.source)])


def test_filled_in_silence_is_silence_in_the_source_too():
    """The ledger alone: speech, a gap the session filled, speech again at another rate."""
    source = SourceAudio()
    source.start_run()
    first = stereo(0.1, 48000)                      # 4800 samples = 1600 at 16 kHz
    source.append(first, 48000)
    source.wrote(0, 1600)
    # 800 samples of filled-in silence on the timeline: nothing is written to the ledger for them
    source.start_run()
    second = stereo(0.1, 24000)                     # resampled to 48 kHz inside
    source.append(second, 24000)
    source.wrote(2400, 4000)
    out = source.read(0, 4000)
    assert out.shape == (12000, 2)
    np.testing.assert_array_equal(out[:4800], first)
    assert not out[4800:7200].any()
    assert np.abs(out[7300:11000]).max() > 0.1       # the second stretch, at 48 kHz
    source.discard_before(3000)
    assert source.read(3000, 4000).shape == (3000, 2)


def test_a_live_recording_keeps_the_input_rate_and_channels(engine, avatar, tmp_path):
    out = tmp_path / "live.mp4"
    pcm = stereo(1.2, 44100)

    async def run():
        config = SessionConfig(live=True, overhead_ms=150, source_audio=True)
        async with LipSyncSession(engine, avatar=avatar, config=config) as session:
            sink = Mp4Sink(out, 25, audio_rate=44100, audio_channels=2)

            async def feed():
                loop = asyncio.get_running_loop()
                start = loop.time()
                for a in range(0, len(pcm), 441):              # 10 ms, on the clock (sleeps alone drift late)
                    session.push_audio(pcm[a:a + 441], 44100)
                    await asyncio.sleep(max(0.0, start + (a + 441) / 44100 - loop.time()))
                session.end_of_input()

            await asyncio.gather(feed(), run_sinks(session, [sink]))

    asyncio.run(run())
    info = probe(out)
    assert (info.audio_sample_rate, info.audio_channels) == (44100, 2)
    back = decode_audio(out, keep_source=True).source
    # both channels keep their own tone at their own level (a 16 kHz mono copy would have one mixture in
    # both). Levels are the median 10 ms peak: a silence the session had to fill in on a busy machine
    # leaves an edge that AAC rings on, which a plain maximum would read as the level.
    for channel, hz, level in ((back[:, 0], 220, 0.3), (back[:, 1], 330, 0.2)):
        blocks = np.abs(channel[: len(channel) // 441 * 441]).reshape(-1, 441).max(axis=1)
        assert np.median(blocks[blocks > 0.05]) == pytest.approx(level, abs=0.03)
        spectrum = np.abs(np.fft.rfft(channel))
        assert np.argmax(spectrum) * 44100 / len(channel) == pytest.approx(hz, abs=3)

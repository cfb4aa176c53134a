"""The LiveKit Agents adapter against the avatar protocol, in-process (skipped without livekit-agents).

No LiveKit server runs here. The generator is checked on its own (push_audio / clear_buffer /
iteration: pictures at the avatar's rate, the agent's own audio, segment ends, interrupts, any input
rate, misuse), and under the real ``AvatarRunner`` with ``QueueAudioOutput`` as the agent's side: the
runner publishes through LiveKit's native A/V synchronizer and sources (which run without a server)
into a stand-in room that only accepts the tracks, and reports playback started / finished to the
agent as it would over the data-stream RPCs.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("livekit.agents")

from livekit import rtc  # noqa: E402
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarRunner, QueueAudioOutput  # noqa: E402

from conftest import EXAMPLE_FACE, seeded_generator  # noqa: E402
from lipsync_rt.audio import load_audio  # noqa: E402
from lipsync_rt.engine import TorchEngine  # noqa: E402
from lipsync_rt.errors import LipSyncError  # noqa: E402
from lipsync_rt.integrations.livekit import LipSyncVideoGenerator  # noqa: E402
from lipsync_rt.pipeline import Avatar, SessionConfig  # noqa: E402

FPS = 25


@pytest.fixture(scope="module")
def engine():
    return TorchEngine(seeded_generator(seed=5))


@pytest.fixture(scope="module")
def avatar(engine):
    return Avatar.prepare(EXAMPLE_FACE, engine)


def at_rate(wav, rate, layout="mono"):
    import av

    resampler = av.AudioResampler(format="s16", layout=layout, rate=rate)
    frame = av.AudioFrame.from_ndarray(wav.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = 16000
    out = [f.to_ndarray() for f in resampler.resample(frame) + resampler.resample(None)]
    return np.concatenate([o.reshape(-1, 2) if layout == "stereo" else o.reshape(-1) for o in out])


def audio_frames(pcm, rate, channels=1, ms=20):
    step = rate * ms // 1000
    pcm = pcm.reshape(-1, channels)
    return [rtc.AudioFrame(pcm[a:a + step].tobytes(), rate, channels, len(pcm[a:a + step]))
            for a in range(0, len(pcm), step)]


def samples(frame: rtc.AudioFrame) -> np.ndarray:
    return np.frombuffer(bytes(frame.data.cast("B")), np.int16)


def test_generator_protocol_replies_segment_ends_and_interrupts(engine, avatar, speech):
    wav = load_audio(speech)
    reply = at_rate(wav, 24000)                                    # 1.6 s from the agent's TTS
    stereo = at_rate(wav[:16000], 48000, "stereo")                  # 1.0 s at 48 kHz stereo

    async def main():
        generator = LipSyncVideoGenerator(avatar, engine=engine, config=SessionConfig(overhead_ms=80))
        got = []

        async def read():
            async for item in generator:
                got.append((time.monotonic(), item))

        reader = asyncio.ensure_future(read())
        await generator.start()
        for frame in audio_frames(reply, 24000):
            await generator.push_audio(frame)
        await generator.push_audio(AudioSegmentEnd())
        await asyncio.sleep(generator.session.delay + 2.0)
        for frame in audio_frames(np.concatenate([reply, reply]), 24000):   # a long reply, cut
            await generator.push_audio(frame)
        await asyncio.sleep(generator.session.delay + 0.6)
        cut = time.monotonic()
        generator.clear_buffer()
        await generator.push_audio(AudioSegmentEnd())               # the receiver ends the cut stream: no-op
        await asyncio.sleep(0.5)
        for frame in audio_frames(stereo, 48000, channels=2):
            await generator.push_audio(frame)
        await generator.push_audio(AudioSegmentEnd())
        await asyncio.sleep(generator.session.delay + 1.4)
        await generator.aclose()
        await reader
        with pytest.raises(LipSyncError, match="closed"):
            await generator.push_audio(audio_frames(reply, 24000)[0])
        return got, cut, [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    got, cut, leftover = asyncio.run(main())
    assert leftover == []
    video = [(t, f) for t, f in got if isinstance(f, rtc.VideoFrame)]
    height, width = avatar.frames[0].shape[:2]
    assert all(f.width == width and f.height == height and f.type == rtc.VideoBufferType.RGBA for _, f in video)
    assert np.median(np.diff([t for t, _ in video])) == pytest.approx(1 / FPS, abs=0.01)
    # replies: audio frames at the runner's rate, segment ends after each finished one only
    kinds = ["V" if isinstance(f, rtc.VideoFrame) else "A" if isinstance(f, rtc.AudioFrame) else "E" for _, f in got]
    runs, current = [], []
    for kind, (t, item) in zip(kinds, got):
        if kind == "A":
            current.append((t, item))
        elif kind == "E":
            runs.append(current)
            current = []
    assert kinds.count("E") == 2 and len(runs) == 2
    first = np.concatenate([samples(f) for _, f in runs[0]])
    assert abs(first.size - reply.size) <= 24
    n = min(first.size, reply.size)
    np.testing.assert_array_equal(first[:n], reply[:n])             # the agent's own samples
    assert all(f.sample_rate == 24000 and f.num_channels == 1 for _, f in runs[0] + runs[1])
    cut_audio = [t for t, _ in runs[1] if t < cut + 0.06]
    after_cut = [t for t, _ in runs[1] if t >= cut + 0.06]
    third = [f for t, f in runs[1] if t >= cut + 0.3]
    assert cut_audio and after_cut == [f for f in after_cut if f >= cut + 0.3]    # nothing of the cut reply
    assert sum(f.samples_per_channel for f in third) / 24000 == pytest.approx(1.0, abs=0.01)


class _Publication:
    async def wait_for_subscription(self):
        return None


class _Participant:
    def __init__(self):
        self.tracks = []

    async def publish_track(self, track, options):
        self.tracks.append(track)
        return _Publication()


class StandInRoom:
    """The little of ``rtc.Room`` AvatarRunner uses: connected, and publishing a track succeeds."""

    def __init__(self):
        self.local_participant = _Participant()

    def isconnected(self):
        return True

    def on(self, *args):
        pass

    def off(self, *args):
        pass


def test_avatar_runner_reports_playback_to_the_agent(engine, avatar, speech):
    wav = load_audio(speech)
    reply = at_rate(wav, 24000)

    async def main():
        generator = LipSyncVideoGenerator(avatar, engine=engine, config=SessionConfig(overhead_ms=80))
        await generator.start()
        agent = QueueAudioOutput(sample_rate=24000, wait_playback_start=True)   # the agent's audio output
        events = []
        agent.on("playback_started", lambda ev: events.append((time.monotonic(), "started", ev)))
        agent.on("playback_finished", lambda ev: events.append((time.monotonic(), "finished", ev)))
        room = StandInRoom()
        runner = AvatarRunner(room, audio_recv=agent, video_gen=generator, options=generator.options())
        await runner.start()
        sent = time.monotonic()
        for frame in audio_frames(reply, 24000):
            await agent.capture_frame(frame)
        agent.flush()
        await asyncio.sleep(generator.session.delay + 2.0)
        for frame in audio_frames(np.concatenate([reply, reply]), 24000):
            await agent.capture_frame(frame)
        agent.flush()
        await asyncio.sleep(generator.session.delay + 0.8)
        cut = time.monotonic()
        agent.clear_buffer()
        await asyncio.sleep(0.5)
        fps = runner.av_sync.actual_fps
        await runner.aclose()
        await generator.aclose()
        await asyncio.sleep(0)
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return events, sent, cut, fps, room, generator.session.delay, leftover

    events, sent, cut, fps, room, delay, leftover = asyncio.run(main())
    assert [(kind, getattr(ev, "interrupted", None)) for _, kind, ev in events] == [
        ("started", None), ("finished", False), ("started", None), ("finished", True)]
    (t_start, _, _), (t_end, _, first), _, (t_cut, _, second) = events
    assert t_start - sent == pytest.approx(delay, abs=0.1)          # playback starts D after the agent sent it
    assert first.playback_position == pytest.approx(1.6, abs=0.05)
    assert 0.3 < second.playback_position < 1.2 and t_cut - cut < 0.1
    assert fps == pytest.approx(FPS, abs=1.5)
    assert len(room.local_participant.tracks) == 2                  # audio and video published
    assert leftover == []
    for thread in [t for t in threading.enumerate() if t.name.startswith(("lipsync-", "batcher"))]:
        thread.join(timeout=5)
    assert not [t for t in threading.enumerate() if t.name.startswith(("lipsync-", "batcher"))]


def test_generator_refuses_misuse(avatar, engine):
    with pytest.raises(LipSyncError, match="audio_sample_rate"):
        LipSyncVideoGenerator(avatar, engine=engine, audio_sample_rate=0)
    with pytest.raises(LipSyncError, match="live"):
        LipSyncVideoGenerator(avatar, engine=engine, config=SessionConfig(live=False))

    async def main():
        async with LipSyncVideoGenerator(avatar, engine=engine, config=SessionConfig(overhead_ms=80)) as generator:
            with pytest.raises(LipSyncError, match="rtc.AudioFrame"):
                await generator.push_audio(b"\x00\x00")
            await generator.push_audio(AudioSegmentEnd())            # nothing open: a no-op
            generator.clear_buffer()                                  # nothing playing: a no-op
            options = generator.options()
        return options

    options = asyncio.run(main())
    assert (options.video_width, options.video_height) == avatar.frames[0].shape[1::-1]
    assert options.video_fps == 25 and options.audio_sample_rate == 24000 and options.audio_channels == 1


def test_the_example_worker_dispatches_avatars_with_tokens_that_publish_for_the_agent(monkeypatch):
    """examples/livekit_avatar.py without a server: its tokens, and its dispatcher starting a worker."""
    import importlib.util

    from aiohttp.test_utils import TestClient, TestServer
    from livekit import api

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("livekit_avatar", ROOT / "examples" / "livekit_avatar.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    claims = api.TokenVerifier("devkey", "secret").verify(
        example.token(example.AVATAR_IDENTITY, "demo", on_behalf_of=example.AGENT_IDENTITY))
    assert claims.identity == example.AVATAR_IDENTITY and claims.video.room == "demo"
    assert claims.attributes == {"lk.publish_on_behalf": example.AGENT_IDENTITY}
    launched = []

    async def worker(url, room_token, avatar, engine, sender):
        launched.append((url, room_token, sender))

    monkeypatch.setattr(example, "avatar_worker", worker)

    async def main():
        async with TestClient(TestServer(example.dispatcher(avatar=None, engine=None))) as client:
            response = await client.post("/launch", json={"url": "ws://x", "token": "t", "sender": "agent"})
            await asyncio.sleep(0)
            return response.status, await response.json()

    status, body = asyncio.run(main())
    assert status == 200 and body == {"launched": example.AVATAR_IDENTITY}
    assert launched == [("ws://x", "t", "agent")]

"""RTMP out, against a real receiver on loopback (FFmpeg's listen mode through PyAV, in its own process):
frames and audio arrive and stay in sync, a dropped server is reconnected with back-off and the
losses are counted, and a push session streams to the URL given when it was made."""

from __future__ import annotations

import asyncio
import json
import time
from fractions import Fraction

import numpy as np
import pytest

from lipsync_rt.io.rtmp import RtmpSink, _redact
from lipsync_rt.pipeline import OutputAudio, OutputFrame
from rtmp_receiver import Receiver, free_port, onset

FPS = 25
RATE = 16000


def items(seconds: float, flash_at: float):
    """Frames and 20 ms audio chunks in release order: dark and silent until ``flash_at``, then a
    bright picture and a tone starting at the same media time."""
    for i in range(int(seconds * FPS)):
        t = i / FPS
        image = np.full((120, 160, 3), 230 if t >= flash_at else 20, np.uint8)
        yield OutputFrame(image, i, Fraction(1, FPS), generated=True, capture_time=None)
        for k in range(2):
            pts = i * (RATE // FPS) + k * 320
            s = (pts + np.arange(320)) / RATE
            x = np.where(s >= flash_at, 0.5 * np.sin(2 * np.pi * 440 * s), 0.0).astype(np.float32)
            yield OutputAudio(x, pts, RATE)


def play(sink: RtmpSink, seconds: float, flash_at: float) -> None:
    """Feed the sink at real time, as a live session releases."""
    began = time.monotonic()
    for item in items(seconds, flash_at):
        if isinstance(item, OutputFrame):
            time.sleep(max(0.0, began + item.pts / FPS - time.monotonic()))
            sink.write_video(item)
        else:
            sink.write_audio(item)
    sink.close()


def test_frames_and_audio_arrive_in_sync():
    url = f"rtmp://127.0.0.1:{free_port()}/live/test"
    receiver = Receiver(url).start()
    sink = RtmpSink(url, FPS, retry_s=0.2)
    play(sink, 2.4, flash_at=1.2)
    got = receiver.result()
    assert got["error"] is None, got["error"]
    stats = sink.stats
    assert stats.connects == 1 and stats.frames_sent + stats.frames_lost == 60 and stats.frames_lost <= 5
    assert len(got["video"]) >= 50
    assert {rate for *_, rate in got["audio"]} == {44100}
    seen = onset(got["video"], 128)
    heard = onset(got["audio"], 0.2)
    assert seen == pytest.approx(1.2 - stats.frames_lost / FPS, abs=0.05)   # the stream starts at its first frame
    assert heard - seen == pytest.approx(0.0, abs=0.045)        # within a frame, AAC framing included


def test_a_dropped_server_is_reconnected_and_the_losses_counted():
    url = f"rtmp://127.0.0.1:{free_port()}/live/test"
    first = Receiver(url, seconds=1.0).start()       # takes a second of video, then hangs up
    sink = RtmpSink(url, FPS, retry_s=0.2, max_retry_s=0.4, timeout_s=2.0)

    async def run():
        loop = asyncio.get_running_loop()
        feeding = loop.run_in_executor(None, play, sink, 5.0, 3.5)
        await loop.run_in_executor(None, first.result)
        second = Receiver(url).start()                 # the server comes back
        await feeding
        return second

    second = asyncio.run(run())
    got = second.result()
    stats = sink.stats
    assert got["error"] is None, got["error"]
    assert stats.connects >= 2 and stats.failures >= 1
    assert stats.frames_sent + stats.frames_lost == 125 and stats.frames_lost > 0 and stats.audio_lost_s > 0
    assert len(got["video"]) >= 15                     # the rest of the stream, after the reconnect
    assert got["video"][0][0] == pytest.approx(0.0, abs=0.05)      # a new stream starts at 0
    seen, heard = onset(got["video"], 128), onset(got["audio"], 0.2)
    assert heard - seen == pytest.approx(0.0, abs=0.045)        # still in sync after the reconnect


def test_an_unreachable_server_costs_frames_not_the_session():
    sink = RtmpSink(f"rtmp://127.0.0.1:{free_port()}/live/x", FPS, retry_s=0.1, max_retry_s=0.2, timeout_s=0.5)
    began = time.monotonic()
    for item in items(0.4, flash_at=9):
        (sink.write_video if isinstance(item, OutputFrame) else sink.write_audio)(item)
    sink.close()
    assert time.monotonic() - began < 3.0
    assert sink.stats.frames_lost == 10 and sink.stats.connects == 0 and sink.stats.failures >= 1
    assert _redact("rtmp://a.example/live/SECRET") == "rtmp://a.example/live/…"


def test_a_push_session_streams_to_its_rtmp_url():
    from conftest import EXAMPLE_FACE, seeded_generator
    from lipsync_rt.engine import TorchEngine
    from lipsync_rt.pipeline import Avatar
    from test_push import AUTH, Served, next_json, tone

    engine = TorchEngine(seeded_generator(seed=3))
    avatar = Avatar.prepare(EXAMPLE_FACE, engine, fps=FPS)
    url = f"rtmp://127.0.0.1:{free_port()}/live/session"
    receiver = Receiver(url).start()

    async def run():
        async with Served(engine, {"face": avatar}) as served:
            sid = await served.create(rtmp=url)
            async with served.socket(sid) as ws:
                await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000, "channels": 1}))
                await next_json(ws, "ready")
                await ws.send_bytes(tone(1.0, 16000))
                await ws.send_str('{"type": "end_of_segment"}')
                await next_json(ws, "playback_finished")
            sink = served.server.pushes[sid].hub.rtmp
            async with served.http.delete(f"{served.url}/sessions/{sid}", headers=AUTH) as response:
                assert response.status == 200
                answer = await response.json()
            return sink.stats, answer

    stats, answer = asyncio.run(run())
    assert answer["rtmp"]["frames_sent"] == stats.frames_sent and answer["rtmp"]["frames_lost"] == 0
    got = receiver.result()
    assert got["error"] is None, got["error"]
    assert stats.connects == 1 and stats.frames_lost == 0
    assert len(got["video"]) >= 25 and max(level for _, level, *_ in got["audio"]) > 0.1


def test_demo_streams_to_rtmp(tmp_path, face_video, speech, generator_checkpoint, capsys):
    from lipsync_rt.cli import main
    from test_demo import demo_args

    url = f"rtmp://127.0.0.1:{free_port()}/live/demo"
    receiver = Receiver(url).start()
    args = demo_args(face_video, speech, generator_checkpoint, "--output", str(tmp_path / "out.mp4"),
                     "--duration", "1", "--rtmp", url)
    assert main(args) == 0
    got = receiver.result()
    assert got["error"] is None, got["error"]
    out = capsys.readouterr().out
    assert "streamed 22 frames" in out and "lost 0 frames" in out and "0 reconnects" in out
    assert len(got["video"]) == 22 and got["audio"]
    assert main(demo_args(face_video, speech, generator_checkpoint, "--rtmp", "http://x")) == 1
    assert "--rtmp must be a URL" in capsys.readouterr().err

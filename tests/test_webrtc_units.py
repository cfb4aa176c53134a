"""WebRTC building blocks that need no peer: audio re-framing, video pts, newest-frame reading,
request validation, avatar specs and the Prometheus text."""

from __future__ import annotations

import asyncio
import json
import re
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError

from conftest import EXAMPLE_FACE
from lipsync_rt.errors import LipSyncError
from lipsync_rt.pipeline.messages import OutputAudio, OutputFrame
from lipsync_rt.webrtc import HTTPRefusal, ServerConfig, ServerMetrics, parse_avatar_specs, parse_offer, render
from lipsync_rt.webrtc.limits import check_size, check_token
from lipsync_rt.webrtc.tracks import MediaClock, SessionAudioTrack, SessionVideoTrack, read_video_newest

GOOD_SDP = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n")


async def _iterate(items):
    for item in items:
        yield item


def _drain_track(track, limit=1000):
    async def run():
        frames = []
        for _ in range(limit):
            try:
                frames.append(await track.recv())
            except MediaStreamError:
                break
        return frames

    return asyncio.run(run())


class _ReplayClock(MediaClock):
    """Never sleeps: the tests check what is sent, not when."""

    async def wait_until(self, media_time: float) -> float:
        return 0.0


def test_audio_track_recuts_any_chunks_into_20ms_frames_with_contiguous_pts():
    signal = np.linspace(-0.5, 0.5, 3000, dtype=np.float32)
    sizes = [1, 199, 640, 333, 827, 1000]
    chunks, pts = [], 0
    for n in sizes:
        chunks.append(OutputAudio(signal[pts : pts + n], pts, 16000))
        pts += n
    frames = _drain_track(SessionAudioTrack(_iterate(chunks), _ReplayClock()))
    assert [f.samples for f in frames] == [320] * 10  # 3000 samples: 9 full frames and a padded tail
    assert [f.pts for f in frames] == [320 * i for i in range(10)]
    # stereo at the signal's own level: aiortc would upmix mono at -3 dB per channel
    assert all(f.format.name == "s16" and f.layout.name == "stereo" and f.sample_rate == 16000 for f in frames)
    assert frames[0].time_base == Fraction(1, 16000)
    both = np.concatenate([f.to_ndarray().reshape(-1, 2) for f in frames])
    assert np.array_equal(both[:, 0], both[:, 1])
    pcm = both[:, 0]
    np.testing.assert_allclose(pcm[:3000] / 32767.0, signal, atol=1.5 / 32767)
    assert not pcm[3000:].any()


def test_audio_track_fills_a_gap_with_silence_and_restarts_on_a_jump():
    ones = np.ones(320, np.float32) * 0.25
    chunks = [OutputAudio(ones, 0, 16000), OutputAudio(ones, 640, 16000), OutputAudio(ones, 10 * 16000, 16000)]
    frames = _drain_track(SessionAudioTrack(_iterate(chunks), _ReplayClock()))
    assert [f.pts for f in frames] == [0, 320, 640, 160000]
    levels = [float(np.abs(f.to_ndarray()).mean()) for f in frames]
    assert levels[1] == 0 and min(levels[0], levels[2], levels[3]) > 8000


def test_video_track_converts_pts_to_the_rtp_clock_and_reports_each_frame():
    image = np.zeros((48, 64, 3), np.uint8)
    image[..., 2] = 200  # red in BGR
    items = [OutputFrame(image, i, Fraction(1, 25), i % 2 == 0, None) for i in range(3)]
    seen = []
    frames = _drain_track(SessionVideoTrack(_iterate(items), _ReplayClock(), on_frame=seen.append))
    assert [f.pts for f in frames] == [0, 3600, 7200]
    assert frames[0].time_base == Fraction(1, 90000)
    assert seen == items
    assert frames[0].to_ndarray(format="bgr24")[0, 0].tolist() == [0, 0, 200]


def test_media_clock_paces_on_the_media_time():
    async def run():
        clock = MediaClock()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await clock.wait_until(10.0)  # the first call anchors the clock: no wait
        await clock.wait_until(10.05)
        return loop.time() - start

    assert asyncio.run(run()) >= 0.045


class _QueuedTrack:
    """Stands for aiortc's remote track: frames already waiting in its queue, then the end."""

    def __init__(self, frames):
        self.queue = asyncio.Queue()
        for frame in frames:
            self.queue.put_nowait(frame)

    async def recv(self):
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


def test_newest_incoming_video_frame_wins_and_overtaken_frames_are_counted():
    import av

    frames = []
    for level in (10, 20, 30, 40):
        frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), level, np.uint8), format="bgr24")
        frames.append(frame)
    pushed, dropped = [], []

    async def run():
        track = _QueuedTrack(frames + [None])
        await read_video_newest(track, lambda image, t: pushed.append(int(image[0, 0, 0])), dropped.append)

    asyncio.run(run())
    assert pushed == [40]  # four frames waited: only the newest is converted and pushed
    assert sum(dropped) == 3


def test_offer_validation_gives_a_reason_for_each_mistake():
    names = ("face", "bob")

    def refused(body) -> str:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        with pytest.raises(HTTPRefusal) as info:
            parse_offer(raw, names, "face")
        assert info.value.status == 400 and info.value.kind == "bad_request"
        return info.value.reason

    assert "not JSON" in refused(b"{nope")
    assert "not JSON" in refused(b"\xff\xfe")
    assert "nested too deeply" in refused(b"[" * 100_000 + b"]" * 100_000)   # the decoder's RecursionError
    assert "nested too deeply" in refused(b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
    assert "not JSON" in refused(b'{"sdp": ' + b"9" * 5000 + b"}")             # int too long to convert
    assert "JSON object" in refused([1, 2])
    assert '"offer"' in refused({"sdp": GOOD_SDP, "type": "answer"})
    assert "v=0" in refused({"sdp": "hello", "type": "offer"})
    assert "v=0" in refused({"sdp": 42, "type": "offer"})
    assert "no media" in refused({"sdp": "v=0\r\ns=-\r\n", "type": "offer"})
    assert "mode" in refused({"sdp": GOOD_SDP, "type": "offer", "mode": "puppet"})
    assert "unknown avatar '../../etc/passwd'" in refused(
        {"sdp": GOOD_SDP, "type": "offer", "mode": "avatar", "avatar": "../../etc/passwd"})
    assert "face, bob" in refused({"sdp": GOOD_SDP, "type": "offer", "mode": "avatar", "avatar": "x"})
    assert "audio" in refused({"sdp": GOOD_SDP.replace("m=audio", "m=application"), "type": "offer"})
    assert "video" in refused({"sdp": GOOD_SDP.replace("m=video", "m=application"), "type": "offer"})
    ok = parse_offer(json.dumps({"sdp": GOOD_SDP, "type": "offer", "mode": "avatar"}).encode(), names, "face")
    assert (ok.mode, ok.avatar) == ("avatar", "face")
    assert parse_offer(json.dumps({"sdp": GOOD_SDP, "type": "offer"}).encode(), names, None).mode == "camera"


def test_token_and_size_checks():
    check_token(None, None)  # no token configured: open
    check_token("s3cret", "Bearer s3cret")
    check_token("s3cret", None, "s3cret")
    for header in (None, "Bearer nope", "Basic s3cret"):
        with pytest.raises(HTTPRefusal) as info:
            check_token("s3cret", header)
        assert info.value.status == 401
    check_size(100, 1000)
    check_size(None, 1000)
    with pytest.raises(HTTPRefusal) as info:
        check_size(5000, 1000)
    assert info.value.status == 413 and "5000" in info.value.reason


def test_server_config_defaults_are_safe_and_mistakes_are_refused():
    config = ServerConfig()
    assert config.host == "127.0.0.1" and config.token is None and config.ice_servers == ()
    with pytest.raises(LipSyncError, match="max-sessions"):
        ServerConfig(max_sessions=0)
    with pytest.raises(LipSyncError, match="stun:"):
        ServerConfig(ice_servers=("stun.l.google.com:19302",))


def test_avatar_specs(tmp_path):
    assert parse_avatar_specs([f"anna={EXAMPLE_FACE}"]) == {"anna": EXAMPLE_FACE}
    with pytest.raises(LipSyncError, match="NAME=PATH"):
        parse_avatar_specs([str(EXAMPLE_FACE)])
    with pytest.raises(LipSyncError, match="no such file"):
        parse_avatar_specs([f"anna={tmp_path / 'missing.jpg'}"])
    with pytest.raises(LipSyncError, match="letters"):
        parse_avatar_specs([f"a/b={EXAMPLE_FACE}"])
    with pytest.raises(LipSyncError, match="twice"):
        parse_avatar_specs([f"a={EXAMPLE_FACE}", f"a={EXAMPLE_FACE}"])


def test_idle_specs(tmp_path):
    from lipsync_rt.webrtc import parse_idle_specs

    one = {"anna": EXAMPLE_FACE}
    assert parse_idle_specs([str(EXAMPLE_FACE)], one) == {"anna": EXAMPLE_FACE}        # the only avatar
    assert parse_idle_specs([f"anna={EXAMPLE_FACE}"], one) == {"anna": EXAMPLE_FACE}
    with pytest.raises(LipSyncError, match="NAME=PATH"):
        parse_idle_specs([str(EXAMPLE_FACE)], {"anna": EXAMPLE_FACE, "bob": EXAMPLE_FACE})
    with pytest.raises(LipSyncError, match="no avatar named"):
        parse_idle_specs([f"bob={EXAMPLE_FACE}"], one)
    with pytest.raises(LipSyncError, match="no such file"):
        parse_idle_specs([f"anna={tmp_path / 'idle.mp4'}"], one)
    with pytest.raises(LipSyncError, match="two idle clips"):
        parse_idle_specs([str(EXAMPLE_FACE), str(EXAMPLE_FACE)], one)


SAMPLE_LINE = re.compile(r'^lipsync_rt_[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|NaN|\+Inf)$')


def test_metrics_text_is_valid_prometheus_exposition():
    metrics = ServerMetrics(sessions_started=3, sessions_ended=2, frames_sent=100, input_frames_dropped=4)
    metrics.rejected["busy"] += 2
    for ms in (40, 50, 60, 200):
        metrics.observe_latency(ms / 1000)
    text = render(metrics, active=1, max_sessions=4, session_fps={"abc": 24.9}, pipeline_drops_active=5,
                  engine_errors_active=0, batch_sizes={1: 2, 4: 3, 16: 1}, engine_batches=6, engine_frames=30)
    families = set()
    for line in text.strip().splitlines():
        if line.startswith("# TYPE"):
            families.add(line.split()[2])
        elif not line.startswith("# HELP"):
            assert SAMPLE_LINE.match(line), line
    assert {"lipsync_rt_sessions", "lipsync_rt_session_fps", "lipsync_rt_latency_seconds",
            "lipsync_rt_frames_dropped_total", "lipsync_rt_engine_batch_size"} <= families
    assert 'lipsync_rt_offers_rejected_total{reason="busy"} 2' in text
    assert 'lipsync_rt_session_fps{session="abc"} 24.9' in text
    assert 'lipsync_rt_frames_dropped_total{stage="pipeline"} 5' in text
    assert 'lipsync_rt_engine_batch_size_bucket{le="4"} 5' in text
    assert 'lipsync_rt_engine_batch_size_bucket{le="+Inf"} 6' in text
    assert "lipsync_rt_engine_batch_size_sum 30" in text
    assert "lipsync_rt_latency_seconds_count 4" in text


def test_serve_command_reports_mistakes_in_one_line(capsys, tmp_path):
    from lipsync_rt.cli import main

    assert main(["serve", "--avatar", "nope"]) == 1
    assert main(["serve", "--avatar", f"a={tmp_path / 'none.jpg'}"]) == 1
    assert main(["serve", "--stun", "stun.example.org"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("lipsync-rt: error: ") for line in err)
    assert "NAME=PATH" in err[0] and "no such file" in err[1] and "stun:" in err[2]
    # numbers out of range are usage errors, found when the options are parsed
    for option, value, words in (("--max-sessions", "0", "from 1 to 1024"), ("--overhead-ms", "-5", "from 0 to 10000"),
                                 ("--port", "70000", "from 0 to 65535"), ("--connect-timeout", "inf", "from 1 to 3600"),
                                 ("--fps", "0", "from 1 to 240")):
        with pytest.raises(SystemExit) as info:
            main(["serve", option, value])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {option}" in err
        assert f"expected a number {words}" in err or f"expected an integer {words}" in err


def test_freed_memory_is_handed_back_once_after_a_burst_of_sessions_ends():
    from lipsync_rt.webrtc.heap import _MALLOC_TRIM, HeapTrimmer, limit_arenas

    calls = []

    async def run():
        heap = HeapTrimmer(delay=0.05, trim=lambda pad: calls.append(pad) or 1)
        for _ in range(3):              # three sessions ending close together: one trim
            heap.soon()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.15)
        first = list(calls)
        started = asyncio.get_running_loop().time()
        for _ in range(12):             # sessions ending without a pause as long as the delay: still trimmed
            heap.soon()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.06)
        windows = (asyncio.get_running_loop().time() - started) / 0.05
        churn = (len(calls) - 1, windows)
        calls[:] = calls[:1]
        heap.trims = 1
        heap.soon()                     # one more, then the server closes before its time: none
        await heap.close()
        await asyncio.sleep(0.1)
        return first, churn, heap.trims

    first, churn, trims = asyncio.run(run())
    assert first == [0] and calls == [0] and trims == 1
    trimmed, windows = churn            # 0.3 s of endings every 20 ms: about a trim per 50 ms, not none
    assert 2 <= trimmed <= windows + 1
    # on glibc (the CI and this project's machines) the real functions are found and can be called
    if _MALLOC_TRIM is not None:
        assert _MALLOC_TRIM(0) in (0, 1)
        assert limit_arenas()


def test_talking_head_vp8_encoder_makes_a_decodable_stream_without_the_denoiser():
    import cv2
    from aiortc.codecs import get_decoder
    from aiortc.codecs.vpx import vp8_depayload
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from lipsync_rt.webrtc.shared_video import SharedVideoEncoder
    from lipsync_rt.webrtc.vp8 import TalkingHeadVp8Encoder

    shared = SharedVideoEncoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96))
    encoder = shared._encoder
    assert isinstance(encoder, TalkingHeadVp8Encoder)
    decoder = get_decoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96))
    picture = cv2.resize(cv2.imread(str(EXAMPLE_FACE)), (128, 96), interpolation=cv2.INTER_AREA)
    decoded = []
    for i in range(6):
        picture[40:60, 40:80] = 20 * i                        # a moving "mouth"
        frame = av.VideoFrame.from_ndarray(picture, format="bgr24")
        frame.pts, frame.time_base = i * 3600, VIDEO_TIME_BASE
        payloads, timestamp = encoder.encode(frame, force_keyframe=i in (0, 4))
        assert timestamp == i * 3600 and payloads
        decoded += decoder.decode(JitterFrame(b"".join(vp8_depayload(p) for p in payloads), timestamp))
        assert encoder.codec.options == {}, encoder.codec.options     # libvpx took every option
    assert len(decoded) == 6 and (decoded[0].width, decoded[0].height) == (128, 96)
    got = decoded[-1].to_ndarray(format="bgr24").astype(float)
    assert np.abs(got - picture).mean() < 6                   # a faithful picture

    def follows(estimate: int) -> bool:
        """The receiver's estimate becomes ``estimate``: whether the next frame reopens the encoder at it."""
        before = encoder.codec
        encoder.target_bitrate = estimate
        frame = av.VideoFrame.from_ndarray(picture, format="bgr24")
        frame.pts, frame.time_base = 6 * 3600, VIDEO_TIME_BASE
        encoder.encode(frame)
        assert encoder.codec.bit_rate == (estimate if encoder.codec is not before else before.bit_rate)
        return encoder.codec is not before

    assert encoder.codec.bit_rate == 500_000
    assert not follows(700_000)            # a climbing estimate (aiortc would reopen at 550,000) ...
    assert follows(800_000)                # ... is followed at 1.5 times the rate: a key frame each time
    assert not follows(700_000)            # a falling one at 15% below
    assert follows(650_000)


def test_the_encoder_pool_has_few_threads_below_the_process_priority():
    import os
    import threading

    from lipsync_rt.webrtc import encode_pool

    async def run():
        loop = asyncio.get_running_loop()
        pool = encode_pool.install(loop, threads=1, nice=5)
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        # what aiortc's senders do with every frame: run_in_executor(None, encoder.encode, ...)
        names = await asyncio.gather(*(loop.run_in_executor(
            None, lambda: (threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
            for _ in range(4)))
        return pool, mine, set(names)

    pool, mine, names = asyncio.run(run())
    assert pool._max_workers == 1
    assert names == {("lipsync-encode_0", min(19, mine + 5))}
    assert encode_pool.default_threads() >= 1
    with pytest.raises(LipSyncError, match="encode_nice"):
        ServerConfig(encode_nice=20)
    with pytest.raises(LipSyncError, match="encode_threads"):
        ServerConfig(encode_threads=0)

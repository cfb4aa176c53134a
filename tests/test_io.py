"""Sources and sinks: files in real time, the webcam reader on a file, a microphone through a
PortAudio device that needs no sound card, an mp4 sink and a fake virtual camera backend."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import seeded_generator
from lipsync_rt.audio import SAMPLE_RATE, load_audio
from lipsync_rt.engine import TorchEngine
from lipsync_rt.errors import LipSyncError, MediaError
from lipsync_rt.io import FileSource, Mp4Sink, VirtualCamera, Webcam, run_sinks
from lipsync_rt.media import probe
from lipsync_rt.pipeline import Avatar, LipSyncSession, OutputFrame, SessionConfig


@pytest.fixture(scope="module")
def engine():
    return TorchEngine(seeded_generator(seed=6))


class Recorder:
    """A session stand-in that records what a source pushes."""

    avatar = None

    def __init__(self) -> None:
        self.audio, self.video, self.ended = [], [], 0

    def push_audio(self, pcm, rate):
        self.audio.append((np.array(pcm), rate))

    def push_video(self, image, capture_time=None):
        self.video.append(image)

    def end_of_input(self):
        self.ended += 1


def test_file_source_plays_audio_and_video_then_ends(face_video):
    source = FileSource(face_video, realtime=True)
    recorder = Recorder()
    asyncio.run(source.run(recorder))
    pushed = np.concatenate([pcm for pcm, _ in recorder.audio])
    np.testing.assert_array_equal(pushed, load_audio(face_video))
    assert {rate for _, rate in recorder.audio} == {SAMPLE_RATE}
    assert len(recorder.video) == 20 and recorder.ended == 1


def test_file_source_loops_to_a_duration(speech):
    source = FileSource(speech, realtime=False, seconds=2.5, loop=True)
    recorder = Recorder()
    recorder.avatar = object()                 # avatar mode: audio only
    asyncio.run(source.run(recorder))
    assert sum(pcm.size for pcm, _ in recorder.audio) == int(2.5 * SAMPLE_RATE)
    assert recorder.video == [] and recorder.ended == 1


def test_mp4_sink_records_a_session(tmp_path, engine, face_video, speech):
    out = tmp_path / "out.mp4"

    async def main():
        avatar = Avatar.prepare(face_video)
        async with LipSyncSession(engine, avatar=avatar, config=SessionConfig(live=False)) as session:
            feeder = asyncio.create_task(FileSource(speech, realtime=False).run(session))
            await run_sinks(session, [Mp4Sink(out, 25)])
            await feeder
            return session.stats()

    stats = asyncio.run(main())
    info = probe(out)
    assert info.frame_count == stats.frames_out == 37          # mel_chunks count for 1.6 s
    assert info.audio_duration_s == pytest.approx(1.6, abs=0.07)


def test_webcam_reader_on_a_file_and_a_missing_device(face_video):
    camera = Webcam(str(face_video), format=None)
    assert (camera.width, camera.height) == (320, 288)
    frames, done = [], asyncio.Event()

    async def main():
        loop = asyncio.get_running_loop()
        camera.start(lambda image, t: frames.append(image), on_end=lambda: loop.call_soon_threadsafe(done.set))
        await asyncio.wait_for(done.wait(), 20)
        camera.stop()

    asyncio.run(main())
    assert len(frames) == 20 and frames[0].shape == (288, 320, 3)
    with pytest.raises(MediaError, match="cannot open the camera /dev/no-such-camera.*--camera"):
        Webcam("/dev/no-such-camera", format="v4l2" if sys.platform == "linux" else None)


def test_microphone_missing_is_one_line(tmp_path):
    code = textwrap.dedent("""
        from lipsync_rt.io import Microphone
        from lipsync_rt.errors import MediaError
        try:
            Microphone("no-such-microphone")
        except MediaError as e:
            print("ERR", e)
    """)
    env = dict(os.environ, HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("ERR no microphone 'no-such-microphone'") and "--audio FILE" in out
    assert out.count("\n") == 1


def test_microphone_through_an_alsa_file_device(tmp_path):
    """PortAudio lists custom-named ALSA PCMs from ~/.asoundrc: a `type file` PCM reads a raw s16 file
    (unpaced), so the data path from sounddevice's callback to push() is exercised without a card."""
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 32767).astype("<i2")
    raw = tmp_path / "in.raw"
    raw.write_bytes(tone.tobytes() * 4)
    (tmp_path / ".asoundrc").write_text(textwrap.dedent(f"""
        pcm.nullslave {{ type null }}
        pcm.lipsyncmic {{
            type file
            slave.pcm "nullslave"
            file "/dev/null"
            infile "{raw}"
            format "raw"
        }}
    """))
    code = textwrap.dedent("""
        import time, numpy as np
        from lipsync_rt.io import Microphone
        got = []
        mic = Microphone("lipsyncmic", samplerate=16000, dtype="int16")
        mic.start(lambda pcm, rate: got.append((pcm, rate)))
        deadline = time.monotonic() + 10
        while sum(p.size for p, _ in got) < 8000 and time.monotonic() < deadline:
            time.sleep(0.01)
        mic.stop()
        pcm = np.concatenate([p for p, _ in got])[:8000]
        np.save("%s", pcm)
        print("rates", sorted({r for _, r in got}))
    """ % (tmp_path / "got.npy"))
    env = dict(os.environ, HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    if "lipsyncmic" in result.stderr and "Error querying device" in result.stderr:
        pytest.skip("this ALSA build does not list ~/.asoundrc devices")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rates [16000]" in result.stdout
    got = np.load(tmp_path / "got.npy")
    np.testing.assert_array_equal(got, tone[:8000])


def test_virtual_camera_sends_frames_to_the_backend():
    import pyvirtualcam

    FakeCamera.sent.clear()
    pyvirtualcam.register_backend("lipsync-fake", FakeCamera)
    sink = VirtualCamera(25, backend="lipsync-fake")
    image = np.random.default_rng(0).integers(0, 255, (31, 40, 3), dtype=np.uint8)     # odd height
    for i in range(3):
        sink.write_video(OutputFrame(image, i, None, True, None))
    sink.close()
    assert FakeCamera.opened == [(40, 32)]
    assert len(FakeCamera.sent) == 3
    sent = FakeCamera.sent[0]
    assert sent.ndim == 1 and sent.size == 40 * 32 * 3                  # flattened BGR, padded to even
    np.testing.assert_array_equal(sent.reshape(32, 40, 3)[:31], image)
    assert FakeCamera.closed == 1


def test_missing_virtual_camera_says_how_to_make_one():
    with pytest.raises(LipSyncError, match="exclusive_caps=1") as info:
        VirtualCamera(25, device="/dev/video-none", width=64, height=64,
                      backend="v4l2loopback" if sys.platform == "linux" else None)
    assert "\n" not in str(info.value)


class FakeCamera:
    """A pyvirtualcam backend that records what it is sent."""

    opened: list = []
    sent: list = []
    closed = 0

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        FakeCamera.opened = [(width, height)]
        FakeCamera.closed = 0
        self._device = device or "fake0"

    def send(self, frame):
        FakeCamera.sent.append(np.array(frame))

    def close(self):
        FakeCamera.closed += 1

    def device(self):
        return self._device

    def native_fourcc(self):
        return None

"""``lipsync-rt demo``: dry runs (avatar + audio file in real time) to an mp4 and to a fake virtual
camera, Ctrl-C finalising the file, and one-line errors for missing devices."""

from __future__ import annotations

import gc

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyvirtualcam
import pytest

from lipsync_rt.cli import main
from lipsync_rt.media import probe

ROOT = Path(__file__).resolve().parents[1]


def demo_args(face, audio, checkpoint, *extra):
    return ["demo", "--face", str(face), "--audio", str(audio), "--engine", "torch",
            "--checkpoint_path", str(checkpoint), "--quiet", *extra]


def test_dry_run_to_an_mp4(tmp_path, face_video, speech, generator_checkpoint, capsys):
    out = tmp_path / "demo.mp4"
    assert main(demo_args(face_video, speech, generator_checkpoint, "--output", str(out), "--duration", "1")) == 0
    assert gc.get_freeze_count() == 0                           # start-up objects frozen while live, then not
    info = probe(out)
    assert info.has_audio and info.frame_count == 22            # mel_chunks count for 1.0 s at 25 fps
    assert info.audio_duration_s == pytest.approx(1.0, abs=0.07)
    line = capsys.readouterr().out
    assert f"sent 22 frames to {out}" in line and "delay" in line


def test_dry_run_with_an_idle_clip_idles_after_the_reply(tmp_path, face_video, speech, generator_checkpoint, capsys):
    """--duration longer than --audio: the reply plays, then the avatar shows its idle clip."""
    idle = tmp_path / "idle.png"
    import cv2
    from lipsync_rt.media import iter_video_frames

    first = next(iter_video_frames(face_video)).image
    cv2.imwrite(str(idle), first[:, ::-1])                     # a mirrored still: easy to tell apart
    out = tmp_path / "idle.mp4"
    args = demo_args(face_video, speech, generator_checkpoint, "--idle", str(idle), "--output", str(out),
                     "--duration", "2.2")
    assert main(args) == 0
    info = probe(out)
    assert info.frame_count >= 50                              # 1.6 s of speech, then idling to 2.2 s
    frames = [f.image for f in iter_video_frames(out)]
    mirrored = [float(np.abs(f.astype(int) - first[:, ::-1].astype(int)).mean()) < 6 for f in frames]
    assert mirrored[-1] and not all(mirrored)
    assert main(["demo", "--idle", str(idle), "--audio", str(speech), "--output", str(out)]) == 1
    assert "--idle needs an avatar" in capsys.readouterr().err


class RecordingCamera:
    """A pyvirtualcam backend that records the frames it is sent."""

    frames: list = []
    size = None

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        RecordingCamera.size = (width, height)
        RecordingCamera.frames = []

    def send(self, frame):
        RecordingCamera.frames.append(np.array(frame))

    def close(self):
        pass

    def device(self):
        return "recording"

    def native_fourcc(self):
        return None


def test_dry_run_to_a_virtual_camera(tmp_path, face_video, speech, generator_checkpoint, capsys):
    """Also recorded (--record): the same frames and the delayed audio, in one file in the folder."""
    pyvirtualcam.register_backend("lipsync-recording", RecordingCamera)
    args = demo_args(face_video, speech, generator_checkpoint, "--output", "virtualcam",
                     "--vcam_backend", "lipsync-recording", "--duration", "1", "--record", str(tmp_path / "rec"))
    assert main(args) == 0
    assert RecordingCamera.size == (320, 288)
    assert len(RecordingCamera.frames) == 22 and RecordingCamera.frames[0].size == 320 * 288 * 3
    out = capsys.readouterr().out
    assert "to recording" in out
    [recorded] = list((tmp_path / "rec").iterdir())
    assert recorded.name.startswith("demo-") and f"recorded to {recorded}" in out
    info = probe(recorded)
    assert info.frame_count == 22 and info.has_audio and info.audio_duration_s == pytest.approx(1.0, abs=0.07)
    (tmp_path / "file").write_text("")
    assert main(demo_args(face_video, speech, generator_checkpoint, "--record", str(tmp_path / "file"))) == 1
    assert "--record" in capsys.readouterr().err


def test_missing_devices_are_one_line_errors(tmp_path, speech, face_video, generator_checkpoint, capsys):
    args = ["demo", "--audio", str(speech), "--camera", "/dev/no-such-camera", "--output", str(tmp_path / "x.mp4"),
            "--engine", "torch", "--checkpoint_path", str(generator_checkpoint)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lipsync-rt: error: cannot open the camera") and "\n" not in err
    assert main(["demo", "--face", str(face_video), "--output", "out.avi", "--audio", str(speech)]) == 1
    assert "--output must be" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_ctrl_c_stops_quickly_and_finalises_the_file(tmp_path, face_video, generator_checkpoint):
    out = tmp_path / "long.mp4"
    speech = ROOT / "examples" / "speech.wav"              # 8 s: still playing when interrupted
    args = [sys.executable, "-m", "lipsync_rt"] + demo_args(face_video, speech, generator_checkpoint,
                                                           "--output", str(out), "--record", "rec")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60

        def written() -> int:                                # bytes of output so far (frames encoded)
            return sum(p.stat().st_size for p in tmp_path.glob(".long.mp4.tmp-*"))

        while written() < 20_000 and time.monotonic() < deadline:     # ~1 s of output, however busy the machine
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        stopped = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert stopped < 5.0                                     # generous: the machine is shared while testing
    info = probe(out)
    assert info.frame_count and info.frame_count >= 5 and info.has_audio
    assert not list(tmp_path.glob(".long.mp4.tmp-*"))
    [recorded] = list((tmp_path / "rec").iterdir())            # --record is finalised too
    assert probe(recorded).frame_count >= 5

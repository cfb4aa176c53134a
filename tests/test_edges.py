"""Input at the edges, as a new user or an attacker would give it: many-channel audio, option values at
the ends of their ranges, outputs that cannot be written, engine folders and metadata that are wrong.
Every case ends in success or one line and exit code 1 (2 for a usage error), never a traceback, and
nothing half-written is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import EXAMPLE_FACE, ROOT
from lipsync_rt.audio import decode_audio, load_audio
from lipsync_rt.cli import main
from lipsync_rt.errors import LipSyncError
from lipsync_rt.media import Mp4Writer, h264_size_warning, probe


def write_pcm_wav(path: Path, channels: int, rate: int = 48000, seconds: float = 0.6) -> Path:
    """A tone in every channel, plain PCM (what Python's wave module writes for any channel count)."""
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    pcm = (np.repeat(tone[:, None], channels, axis=1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return path


def write_surround(path: Path, layout: str = "7.1", rate: int = 48000, seconds: float = 0.6) -> Path:
    """A film soundtrack's layout, written by FFmpeg (WAVE_FORMAT_EXTENSIBLE with a channel mask)."""
    channels = len(av.AudioLayout(layout).channels)
    n = int(rate * seconds)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / rate) * 32767).astype(np.int16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone[:, None], channels, axis=1).reshape(1, -1), format="s16",
                                           layout=layout)
        frame.sample_rate, frame.pts = rate, 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


# ----------------------------------------------------------------------------------------------
# Audio with many channels


@pytest.mark.parametrize("channels", [1, 2, 3, 6, 8, 9, 12, 16])
def test_any_channel_count_decodes(tmp_path, channels):
    """8 or more planar channels used to crash the process (PyAV reads at most 8 planes)."""
    path = write_pcm_wav(tmp_path / f"c{channels}.wav", channels)
    decoded = decode_audio(path, keep_source=True)
    assert decoded.channels == channels and decoded.rate == 48000 and decoded.source.shape[1] == channels
    assert len(decoded.mono16k) == pytest.approx(0.6 * 16000, abs=2)
    assert np.abs(decoded.mono16k).max() == pytest.approx(0.3, abs=0.01)


def test_a_71_film_soundtrack_decodes_and_keeps_its_layout_in_the_output(tmp_path, generator_checkpoint):
    audio = write_surround(tmp_path / "film.wav")
    assert decode_audio(audio).layout == "7.1"
    out = tmp_path / "film.mp4"
    assert main(["infer", "--quiet", "--engine", "torch", "--checkpoint_path", str(generator_checkpoint),
                 "--face", str(EXAMPLE_FACE), "--audio", str(audio), "--outfile", str(out)]) == 0
    info = probe(out)
    assert (info.audio_sample_rate, info.audio_channels) == (48000, 8)


@pytest.mark.parametrize("rate,channels,expected", [(48000, 2, (48000, 2)), (44100, 1, (44100, 1)),
                                                    (192000, 2, (96000, 2)), (8000, 1, (8000, 1))])
def test_infer_writes_the_input_audio_at_its_own_rate_and_channels(tmp_path, generator_checkpoint, rate, channels,
                                                                   expected):
    """The model hears 16 kHz mono; the user gets their audio back (resampled only where AAC must)."""
    audio = write_pcm_wav(tmp_path / "in.wav", channels, rate)
    out = tmp_path / "out.mp4"
    assert main(["infer", "--quiet", "--engine", "torch", "--checkpoint_path", str(generator_checkpoint),
                 "--face", str(EXAMPLE_FACE), "--audio", str(audio), "--outfile", str(out)]) == 0
    info = probe(out)
    assert (info.audio_sample_rate, info.audio_channels) == expected
    back = decode_audio(out, keep_source=True)
    assert len(back.source) / back.rate == pytest.approx(0.6, abs=0.05)
    # the tone at its own level, not a 16 kHz copy: a 220 Hz sine of amplitude 0.3 in every channel
    middle = back.source[len(back.source) // 4:3 * len(back.source) // 4]
    assert np.abs(middle).max(axis=0) == pytest.approx([0.3] * expected[1], abs=0.03)


# ----------------------------------------------------------------------------------------------
# Option values at the edges


@pytest.mark.parametrize("option,value", [("--fps", "0"), ("--fps", "0.00001"), ("--fps", "inf"), ("--fps", "nan"),
                                          ("--fps", "1e12"), ("--wav2lip_batch_size", "0"),
                                          ("--wav2lip_batch_size", "100000000"), ("--resize_factor", "0"),
                                          ("--face_det_batch_size", "-1")])
def test_numbers_out_of_range_are_usage_errors_at_parse_time(option, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["infer", "--face", "f.jpg", "--audio", "a.wav", option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lipsync-rt infer: error: argument ") and "expected" in err


@pytest.mark.parametrize("args", [["demo", "--fps", "inf"], ["demo", "--duration", "1e30"],
                                  ["demo", "--overhead_ms", "-1"], ["serve", "--max-batch", "0"],
                                  ["serve", "--connect-timeout", "0"], ["build-engine", "--max_batch", "1e3"],
                                  ["bench", "pipeline", "--seconds", "nan"], ["bench", "webrtc", "--sessions", "0"],
                                  ["bench", "engine", "--batch-sizes", "0,2"]])
def test_every_command_checks_its_numbers(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_pads_that_leave_no_face_box_are_one_line(tmp_path, speech, generator_checkpoint, capsys):
    out = tmp_path / "pads.mp4"
    assert main(["infer", "--quiet", "--engine", "torch", "--checkpoint_path", str(generator_checkpoint),
                 "--face", str(EXAMPLE_FACE), "--audio", str(speech), "--outfile", str(out),
                 "--pads", "0", "-600", "0", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--pads 0 -600 0 0" in err and "no face box" in err
    assert not out.exists()


def test_a_frame_rate_is_checked_in_the_library_too():
    from lipsync_rt.pipeline import SessionConfig
    from lipsync_rt.timebase import as_rate

    for bad in (0, 1e-5, float("inf"), float("nan"), 1e12):
        with pytest.raises(ValueError):
            as_rate(bad)
        with pytest.raises(LipSyncError):
            SessionConfig(fps=bad)


# ----------------------------------------------------------------------------------------------
# Outputs


@pytest.mark.parametrize("name", ["out.avi", "out", "out.webm"])
def test_an_output_extension_that_cannot_be_written_is_refused_before_the_work(tmp_path, speech, name, capsys):
    out = tmp_path / name
    assert main(["infer", "--quiet", "--face", str(EXAMPLE_FACE), "--audio", str(speech), "--outfile", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot write a video file" in err and ".mp4" in err
    assert main(["demo", "--face", str(EXAMPLE_FACE), "--audio", str(speech), "--output", str(out)]) == 1
    assert "--output must be 'virtualcam' or a video file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.mov", "out.mkv"])
def test_other_containers_are_written_as_their_extension_says(tmp_path, speech, generator_checkpoint, name):
    out = tmp_path / name
    assert main(["infer", "--quiet", "--engine", "torch", "--checkpoint_path", str(generator_checkpoint),
                 "--face", str(EXAMPLE_FACE), "--audio", str(speech), "--outfile", str(out)]) == 0
    with av.open(str(out)) as container:
        assert {"mov": "mov", "mkv": "matroska"}[name[-3:]] in container.format.name
        assert container.streams.video[0].codec_context.name == "h264"


def test_an_output_that_cannot_be_written_fails_at_once(tmp_path, speech, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    for option, value in (("--outfile", blocker / "out.mp4"), ("--outfile", tmp_path)):
        assert main(["infer", "--quiet", "--face", str(EXAMPLE_FACE), "--audio", str(speech), option, str(value)]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--outfile" in err
    assert main(["bench", "pipeline", "--seconds", "1", "--json", str(blocker / "r.json")]) == 1
    assert "--json" in capsys.readouterr().err
    assert main(["bench", "engine", "--plot", str(blocker / "r.png")]) == 1
    assert "--plot" in capsys.readouterr().err


def test_a_frame_size_over_what_players_decode_is_warned_about(tmp_path, caplog):
    assert h264_size_warning(3840, 2160) is None and h264_size_warning(4096, 2304) is None
    warning = h264_size_warning(8000, 8000)
    assert "8000x8000" in warning and "--resize_factor 3" in warning      # 4000x4000 would still be over
    writer = Mp4Writer(tmp_path / "big.mp4", 25, width=8000, height=8000, audio=False)
    writer.abort()
    assert any("8000x8000" in record.getMessage() for record in caplog.records)


# ----------------------------------------------------------------------------------------------
# Engine folders, metadata, a read-only working directory


def test_an_engine_folder_that_cannot_be_used_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for folder in (blocker, blocker / "sub"):
        assert main(["build-engine", "--engine", "onnx", "--engine_dir", str(folder), "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "cannot write an engine into" in err


def test_a_read_only_engine_folder_is_one_line(tmp_path, generator_checkpoint, monkeypatch):
    """As root a folder cannot be made read-only; the build's first write into it is refused instead."""
    import tempfile

    from lipsync_rt.engine.artifact import build_engine

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == tmp_path:
            raise PermissionError(13, "Permission denied", str(tmp_path))
        return real(*args, dir=dir, **kwargs)

    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(LipSyncError) as info:
        build_engine(str(generator_checkpoint), "onnx", tmp_path)
    assert "\n" not in str(info.value) and "Permission denied" in str(info.value)


BAD_METADATA = [
    ("not an object", lambda m: [1, 2]),
    ("files is a list", lambda m: {**m, "files": [1]}),
    ("versions missing", lambda m: {k: v for k, v in m.items() if k != "versions"}),
    ("a file without a hash", lambda m: {**m, "files": {"whole": {"name": "x.onnx", "bytes": 3}}}),
    ("a file outside the folder", lambda m: {**m, "files": {"whole": {**m["files"]["whole"], "name": "../x.onnx"}}}),
    ("mel_offset a string", lambda m: {**m, "mel_offset": "-8"}),
    ("batch a float", lambda m: {**m, "max_batch": 1.5}),
    ("deeply nested", None),
]


@pytest.fixture(scope="module")
def onnx_engine_dir(tmp_path_factory, generator_checkpoint):
    from lipsync_rt.engine.artifact import build_engine

    folder = tmp_path_factory.mktemp("engine")
    return build_engine(str(generator_checkpoint), "onnx", folder)


@pytest.mark.parametrize("case,change", BAD_METADATA, ids=[c[0] for c in BAD_METADATA])
def test_engine_metadata_of_the_wrong_shape_is_refused_in_one_line(tmp_path, onnx_engine_dir, generator_checkpoint,
                                                                   case, change):
    from lipsync_rt.engine.artifact import load_engine, metadata_path

    folder = tmp_path / "copy"
    folder.mkdir()
    for path in onnx_engine_dir.parent.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    artifact = folder / onnx_engine_dir.name
    meta = metadata_path(artifact)
    data = json.loads(meta.read_text())
    meta.write_text("[" * 100_000 + "]" * 100_000 if change is None else json.dumps(change(data)))
    with pytest.raises(LipSyncError) as info:
        load_engine(artifact, generator_checkpoint)
    assert "\n" not in str(info.value) and "rebuild" in str(info.value)


def test_a_damaged_cached_engine_is_rebuilt_with_a_warning(tmp_path, generator_checkpoint, monkeypatch, caplog):
    from lipsync_rt.engine.artifact import metadata_path
    from lipsync_rt.engine.cache import open_engine

    monkeypatch.setenv("LIPSYNC_RT_CACHE", str(tmp_path))
    first = open_engine("onnx", generator_checkpoint)
    meta = metadata_path(first.artifact)
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "files": ["nonsense"]}))
    again = open_engine("onnx", generator_checkpoint)
    assert again.build_seconds > 0 and any("rebuilding" in r.getMessage() for r in caplog.records)


READ_ONLY_CWD = textwrap.dedent('''
    """Run lipsync-rt with the working directory read-only: any write, folder or rename in it fails."""
    import os, sys
    cwd = os.getcwd()

    def inside(path):
        return os.path.abspath(os.fsdecode(path)).startswith(cwd + os.sep)

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)) and inside(args[0]):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                raise PermissionError(13, "Permission denied (read-only working directory)", args[0])
        elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir") and args:
            dir_fd = args[-1] if event in ("os.mkdir", "os.remove", "os.rmdir") else None
            if dir_fd in (None, -1) and isinstance(args[0], (str, bytes, os.PathLike)) and inside(args[0]):
                raise PermissionError(13, "Permission denied (read-only working directory)", args[0])

    sys.addaudithook(hook)
    from lipsync_rt.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def test_a_read_only_working_directory(tmp_path, speech):
    """The default --outfile (results/...) cannot be made there: one line, before any work. With an
    output elsewhere, the default engine (int8, built on first use) runs without writing a byte there."""
    script = tmp_path / "read_only_cwd.py"
    script.write_text(READ_ONLY_CWD)
    cwd = tmp_path / "ro"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, str(script), "infer", "--quiet", "--face", str(EXAMPLE_FACE), "--audio", str(speech)]
    result = subprocess.run(base, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("lipsync-rt: error: cannot write the --outfile results")
    out = tmp_path / "ok.mp4"
    result = subprocess.run(base + ["--engine", "int8", "--outfile", str(out)], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and list(cwd.iterdir()) == []


def test_load_audio_is_unchanged_for_ordinary_files(tmp_path):
    """Decoding through packed frames gives the same samples as before for mono and stereo."""
    path = write_pcm_wav(tmp_path / "s.wav", 2, 16000)
    wav = load_audio(path)
    with wave.open(str(path)) as handle:
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), "<i2").reshape(-1, 2) / 32768.0
    np.testing.assert_allclose(wav, pcm.mean(axis=1), atol=1e-6)

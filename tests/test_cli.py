"""The command line: help that teaches, a summary on success, one-line errors without traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import EXAMPLE_FACE, ROOT, write_wav
from lipsync_rt.cli import main
from lipsync_rt.models import SyncNet, save_checkpoint

REFERENCE_OPTIONS = [
    "--checkpoint_path", "--face", "--audio", "--outfile", "--static", "--fps", "--pads", "--face_det_batch_size",
    "--wav2lip_batch_size", "--resize_factor", "--crop", "--box", "--rotate", "--nosmooth", "--device", "--blend",
]


def test_help_lists_every_reference_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["infer", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in REFERENCE_OPTIONS:
        assert option in text
    assert "examples:" in text


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "infer" in capsys.readouterr().err


def test_success_prints_a_summary(tmp_path, speech, generator_checkpoint, capsys):
    out = tmp_path / "ok.mp4"
    code = main(["infer", "--quiet", "--checkpoint_path", str(generator_checkpoint), "--face", str(EXAMPLE_FACE),
                 "--audio", str(speech), "--outfile", str(out), "--wav2lip_batch_size", "32"])
    assert code == 0 and out.is_file()
    assert capsys.readouterr().out.startswith(f"wrote {out}: ")


def test_bundled_default_model_is_used_without_a_checkpoint(tmp_path, speech, capsys):
    out = tmp_path / "default.mp4"
    assert main(["infer", "--quiet", "--face", str(EXAMPLE_FACE), "--audio", str(speech), "--outfile", str(out)]) == 0
    # The default engine (auto) is the int8 one on the CPU, built from the bundled model.
    engine = "torch" if torch.cuda.is_available() else "int8"
    assert f"model: {engine} engine of bundled lite model (wav2lip_lite.pth)" in capsys.readouterr().out


def test_missing_bundled_model_is_a_clear_error(tmp_path, speech, capsys, monkeypatch):
    from lipsync_rt import default_model

    monkeypatch.setattr(default_model, "DEFAULT_GENERATOR", tmp_path / "gone.pth")
    out = tmp_path / "x.mp4"
    assert main(["infer", "--quiet", "--face", str(EXAMPLE_FACE), "--audio", str(speech), "--outfile", str(out)]) == 1
    assert "bundled default model is missing" in capsys.readouterr().err and not out.exists()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, face_video, silent_video):
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.mp4").write_text("this is not a video\n")
    (d / "notes.pth").write_text("this is not a checkpoint\n")
    blank = d / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((200, 200, 3), 90, np.uint8))
    truncated = d / "truncated.mp4"
    truncated.write_bytes(face_video.read_bytes()[:600])
    expert = save_checkpoint(d / "expert.pth", SyncNet(width=0.125))
    return {"dir": d, "notes_mp4": d / "notes.mp4", "notes_pth": d / "notes.pth", "blank_png": blank,
            "truncated_mp4": truncated, "expert_pth": expert, "silent_mp4": silent_video}


# (case, arguments after the defaults are filled in, words the message must contain)
CASES = [
    ("missing face", {"--face": "{dir}/nope.mp4"}, "not found"),
    ("missing audio", {"--audio": "{dir}/nope.wav"}, "not found"),
    ("unreadable face", {"--face": "{notes_mp4}"}, "notes.mp4"),
    ("unreadable audio", {"--audio": "{notes_mp4}"}, "notes.mp4"),
    ("truncated audio", {"--audio": "{truncated_mp4}"}, "truncated.mp4"),
    ("no audio stream", {"--audio": "{silent_mp4}"}, "no audio stream"),
    ("no face at all", {"--face": "{blank_png}"}, "no face"),
    ("wrong checkpoint", {"--checkpoint_path": "{expert_pth}"}, "not a generator"),
    ("not a checkpoint", {"--checkpoint_path": "{notes_pth}"}, "not a PyTorch checkpoint"),
    ("box outside the frame", {"--box": ["10", "900", "10", "100"]}, "box"),
    ("no CUDA", {"--device": "cuda"}, "CUDA"),
]


@pytest.mark.parametrize("case,changes,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_no_file(case, changes, words, bad_inputs, speech, generator_checkpoint, capsys):
    if case == "no CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = bad_inputs["dir"] / f"{case.replace(' ', '_')}.mp4"
    out.write_bytes(b"an older result that must survive")
    args = {"--checkpoint_path": str(generator_checkpoint), "--face": str(EXAMPLE_FACE), "--audio": str(speech),
            "--outfile": str(out)}
    for key, value in changes.items():
        args[key] = value if isinstance(value, list) else value.format(**{k: v for k, v in bad_inputs.items()})
    argv = ["infer", "--quiet"]
    for key, value in args.items():
        argv += [key, *value] if isinstance(value, list) else [key, value]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lipsync-rt: error: ")
    assert words.lower() in err[0].lower()
    assert out.read_bytes() == b"an older result that must survive"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_real_process_exit_code_and_no_traceback(tmp_path, speech):
    result = subprocess.run(
        [sys.executable, "-m", "lipsync_rt", "infer", "--face", str(tmp_path / "missing.jpg"), "--audio", str(speech),
         "--outfile", str(tmp_path / "x.mp4")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"lipsync-rt: error: face file not found: {tmp_path / 'missing.jpg'}"
    assert not (tmp_path / "x.mp4").exists()


def test_silence_via_cli(tmp_path, generator_checkpoint):
    silence = write_wav(tmp_path / "silence.wav", np.zeros(8000))
    out = tmp_path / "silence.mp4"
    argv = ["infer", "--quiet", "--checkpoint_path", str(generator_checkpoint), "--face", str(EXAMPLE_FACE),
            "--audio", str(silence), "--outfile", str(out)]
    assert main(argv) == 0 and out.is_file()


@pytest.mark.parametrize("value", ["3", "-0.5", "lots"])
def test_detail_outside_zero_to_one_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--face", "f.jpg", "--audio", "a.wav", "--detail", value])
    assert exit_info.value.code == 2
    assert "--detail: expected a number from 0 to 1" in capsys.readouterr().err

"""``lipsync-rt eval`` end to end: offsets follow shifted audio (both judges), mismatched audio scores
worse than matched audio on a synthetic test split, look against a reference, tables, JSON and plots,
and one-line errors for bad input.

SyncNet v2's real weights cannot be downloaded here, so its path is driven through the whole pipeline
(face track, 224x224 crops, MFCCs, windows, padding, scores) by a stand-in network with the same two
methods, whose "embeddings" are the crop's brightness and the audio's energy per frame: with a video
whose brightness follows its speech, sync is known by construction. Seeded real weights check the
architecture's path through the command. The expert is the bundled one; no test assumes its scores,
only their order.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync_rt.audio import SAMPLE_RATE, load_audio
from lipsync_rt.cli import main
from lipsync_rt.evaluation.inputs import open_clip
from lipsync_rt.evaluation.judges import SyncNetJudge
from lipsync_rt.evaluation.run import Judges, evaluate_clip
from lipsync_rt.media import Mp4Writer
from tests.conftest import EXAMPLE_SPEECH, face_frames, write_wav

SPF = SAMPLE_RATE // 25


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["eval", "--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lipsync-rt: error:"), err
    for word in words:
        assert word in lines[0], lines[0]


def shifted(wav: np.ndarray, frames: int) -> np.ndarray:
    """Audio delayed by ``frames`` (silence in front) or, for a negative count, advanced (start cut)."""
    if frames >= 0:
        return np.concatenate([np.zeros(frames * SPF, np.float32), wav])
    return wav[-frames * SPF:]


# ---- SyncNet's pipeline, with a stand-in network ------------------------------------------------------------

class BrightnessSyncNet(torch.nn.Module):
    """forward_lip: minus the mean brightness of each of the 5 crops; forward_aud: the mean log energy
    (MFCC coefficient 0) of each video frame's 4 MFCC frames; both centred and scaled to unit length."""

    @staticmethod
    def _unit(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=1, keepdim=True)
        return x / (x.norm(dim=1, keepdim=True) + 1e-6)

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:       # [B, 3, 5, 224, 224], 0-255
        return self._unit(-x.mean(dim=(1, 3, 4)))

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:       # [B, 1, 13, 20]
        return self._unit(x[:, 0, 0, :].reshape(len(x), 5, 4).mean(dim=2))


def bright_frames(photo, wav: np.ndarray, fps: int) -> list:
    """Face frames at ``fps`` whose brightness falls with the loudness of each frame's own audio."""
    spf = SAMPLE_RATE / fps
    n = len(wav) * fps // SAMPLE_RATE
    level = np.array([10 * np.log10(np.mean(wav[int(i * spf):int((i + 1) * spf)] ** 2) + 1e-8) for i in range(n)])
    gains = 1 - 0.5 * np.clip((level + 60) / 50, 0, 1)
    return [(frame * g).astype(np.uint8) for frame, g in zip(face_frames(photo, n, blank=()), gains)]


@pytest.fixture(scope="module")
def bright_talk(tmp_path_factory, photo) -> tuple[Path, np.ndarray]:
    """3 s of the face whose picture darkens with the loudness of each frame's own audio."""
    wav = load_audio(EXAMPLE_SPEECH)[: 3 * SAMPLE_RATE]
    path = tmp_path_factory.mktemp("bright") / "bright.mp4"
    with Mp4Writer(path, 25) as writer:
        for frame in bright_frames(photo, wav, 25):
            writer.write_video(frame)
        writer.write_audio(wav)
    return path, wav


@pytest.mark.parametrize("frames", [0, 3, -2])
def test_syncnet_offset_follows_shifted_audio(bright_talk, tmp_path, frames):
    path, wav = bright_talk
    audio = write_wav(tmp_path / "shifted.wav", shifted(wav, frames))
    judges = Judges([SyncNetJudge(BrightnessSyncNet(), "stand-in", torch.device("cpu"))])
    result = evaluate_clip(open_clip(path, audio), judges)["syncnet"]
    assert result["offset"] == -frames                           # delayed audio: a negative offset
    assert abs(result["av_offset_ms"] + 40 * frames) <= 20
    assert result["lse_c"] > 0.1


def test_a_video_with_its_own_soundtrack_is_judged_in_sync_by_the_track_crop(bright_talk):
    path, _ = bright_talk
    judges = Judges([SyncNetJudge(BrightnessSyncNet(), "stand-in", torch.device("cpu"))])
    result = evaluate_clip(open_clip(path), judges)
    assert result["crop"] == "track" and result["frames_without_face"] == 0 and result["frames"] == 75
    assert result["windows"] == 70 and result["syncnet"]["offset"] == 0
    assert result["syncnet"]["offsync_acc"] > 0.2       # chance: 1 in 31


def test_other_frame_rates_are_judged_at_25_fps(bright_talk, tmp_path, photo):
    _, wav = bright_talk
    path = tmp_path / "talk30.mp4"
    with Mp4Writer(path, 30) as writer:
        for frame in bright_frames(photo, wav, 30):
            writer.write_video(frame)
        writer.write_audio(wav)
    judges = Judges([SyncNetJudge(BrightnessSyncNet(), "stand-in", torch.device("cpu"))])
    result = evaluate_clip(open_clip(path), judges)
    assert result["source_fps"] == 30 and result["frames"] == 75 and result["syncnet"]["offset"] == 0


def test_a_soundtrack_that_starts_late_is_placed_where_a_player_plays_it(bright_talk, tmp_path, photo):
    """The audio stream's first timestamp is 120 ms after the video's: the judged offset is -3 frames."""
    import av

    _, wav = bright_talk
    path = tmp_path / "late.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 320, 288, "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        for i, image in enumerate(bright_frames(photo, wav, 25)):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i
            container.mux(video.encode(frame))
        pcm = (wav * 32767).astype(np.int16)[None]
        for start in range(0, pcm.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(pcm[:, start:start + 1024], format="s16", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, 3 * SPF + start
            container.mux(audio.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode())
    judges = Judges([SyncNetJudge(BrightnessSyncNet(), "stand-in", torch.device("cpu"))])
    result = evaluate_clip(open_clip(path), judges)
    assert result["audio_shift_ms"] > 0 and result["syncnet"]["offset"] == -3
    assert abs(result["syncnet"]["av_offset_ms"] + 120) <= 20


def test_seeded_syncnet_v2_runs_through_the_command(tmp_path, capsys, photo, speech):
    from tests.test_eval_scoring import seeded_syncnet

    torch.save(seeded_syncnet(4).state_dict(), tmp_path / "syncnet_v2.model")
    video = tmp_path / "talk.mp4"
    wav = load_audio(speech)[: SAMPLE_RATE]
    with Mp4Writer(video, 25) as writer:
        for frame in face_frames(photo, 25, blank=()):
            writer.write_video(frame)
        writer.write_audio(wav)
    code, out, err = run_cli(capsys, video, "--syncnet", tmp_path / "syncnet_v2.model", "--expert", "none",
                             "--json", tmp_path / "s.json", "--plot", tmp_path / "s.png")
    assert code == 0, err
    doc = json.loads((tmp_path / "s.json").read_text())
    s = doc["clips"][0]["syncnet"]
    assert doc["judges"] == {"syncnet": "syncnet_v2.model"} and doc["clips"][0]["windows"] == 20
    assert len(s["mdist"]) == 31 and s["lse_d"] == min(s["mdist"]) and np.isfinite(s["lse_c"])
    assert s["lse_c"] == pytest.approx(np.median(s["mdist"]) - s["lse_d"])
    assert len(s["frame_conf"]) == 20 and len(s["fine_dist"]) == 121
    assert "SyncNet v2 (syncnet_v2.model)" in out and (tmp_path / "s.png").stat().st_size > 10000


# ---- the bundled expert on a synthetic test split -------------------------------------------------------------

@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """A tiny synthetic corpus (train/synthetic_corpus.py) whose test split is 4 clips of 4 identities of
    the held-out person, 2.5-3.5 s each."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from train.corpus import build

    out = tmp_path_factory.mktemp("split") / "synth"
    settings = build.Settings(clips=8, seconds=(2.5, 3.5), seed=3, val_fraction=0.0, test_fraction=0.5, size=128,
                              clips_per_identity=1)
    build.build_corpus(out, settings, workers=1, previews=0, progress=False)
    assert len((out / "filelists" / "test.txt").read_text().split()) == 4
    return out


@pytest.fixture(scope="module")
def judged(split, tmp_path_factory) -> dict:
    """The test split judged by the bundled expert with each clip's own audio and with the next clip's."""
    out = tmp_path_factory.mktemp("judged")
    filelist = split / "filelists" / "test.txt"
    docs = {}
    for name, extra in (("matched", ()), ("mismatched", ("--mismatch",))):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(["eval", "--quiet", "--filelist", str(filelist), "--json", str(out / f"{name}.json"), *extra])
        assert code == 0
        docs[name] = json.loads((out / f"{name}.json").read_text())
        docs[name]["printed"] = printed.getvalue()
    return docs


def test_mismatched_audio_scores_clearly_worse_than_matched(judged):
    good, bad = judged["matched"]["summary"]["expert"], judged["mismatched"]["summary"]["expert"]
    assert judged["matched"]["clips"][0]["crop"] == "none" and judged["mismatched"]["mismatch"]
    assert good["lse_c"] > 1.3 * bad["lse_c"]
    assert good["lse_d"] < bad["lse_d"] and good["p_sync"] > bad["p_sync"]
    assert good["offset_zero"] >= 0.5 > bad["offset_zero"]


def test_expert_offset_follows_shifted_audio(split, judged, tmp_path, capsys):
    """On the clip the expert is surest about (highest LSE-C with its own audio), audio delayed or
    advanced by 3 frames moves the offset by 3 frames and the A/V offset by 120 ms (within a mel column)."""
    best = max(judged["matched"]["clips"], key=lambda c: c["expert"]["lse_c"])
    clip = split / best["name"]
    wav = load_audio(clip / "audio.wav")
    for frames in (3, -3):
        audio = write_wav(tmp_path / f"a{frames}.wav", shifted(wav, frames))
        code, _, err = run_cli(capsys, clip, "--audio", audio, "--json", tmp_path / f"{frames}.json")
        assert code == 0, err
        moved = json.loads((tmp_path / f"{frames}.json").read_text())["clips"][0]["expert"]
        assert moved["offset"] - best["expert"]["offset"] == -frames
        assert abs(moved["av_offset_ms"] - best["expert"]["av_offset_ms"] + 40 * frames) <= 12.5 + 1e-6


def test_filelist_prints_a_table_with_means(split, judged, capsys):
    clips = (split / "filelists" / "test.txt").read_text().split()
    out = judged["matched"]["printed"]
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["clip", "s"] and [row.split()[0] for row in lines[2:6]] == clips
    assert lines[6].startswith("mean") and "over 4 clips" in out and "wrote" in lines[-1]
    assert [c["name"] for c in judged["matched"]["clips"]] == clips and not judged["matched"]["skipped"]
    code, out, err = run_cli(capsys, "--filelist", split / "filelists" / "test.txt", "--expert", "none",
                             "--syncnet", "missing.model")
    one_line_error(code, err, "missing.model")


def test_filelist_takes_lrs2_videos_and_skips_a_missing_entry_in_one_line(bright_talk, tmp_path, capsys):
    """An LRS2-layout list of generated videos: ``<set>/<clip>`` is ``<root>/<set>/<clip>.mp4``; an entry
    that is not there is skipped with its reason, the rest is judged."""
    path, _ = bright_talk
    (tmp_path / "results" / "5535").mkdir(parents=True)
    shutil.copy(path, tmp_path / "results" / "5535" / "00001.mp4")
    filelist = tmp_path / "list.txt"
    filelist.write_text("# generated\n5535/00001 extra tokens\n\n5535/00002\n")
    code, out, err = run_cli(capsys, "--filelist", filelist, "--data_root", tmp_path / "results",
                             "--json", tmp_path / "l.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "l.json").read_text())
    assert [c["name"] for c in doc["clips"]] == ["5535/00001"] and doc["clips"][0]["crop"] == "none"
    assert doc["skipped"] == [{"name": "5535/00002", "reason": doc["skipped"][0]["reason"]}]
    assert "00002.mp4" in doc["skipped"][0]["reason"] and "skipped 1 clip(s)" in out


# ---- look ---------------------------------------------------------------------------------------------------

def test_reference_adds_the_look_of_an_unchanged_face(tmp_path, capsys, photo, speech):
    import cv2

    cv2.imwrite(str(tmp_path / "face.png"), photo)
    video = tmp_path / "same.mp4"
    with Mp4Writer(video, 25, crf=0) as writer:
        for _ in range(30):
            writer.write_video(photo)
        writer.write_audio(load_audio(speech)[: int(1.2 * SAMPLE_RATE)])
    code, out, err = run_cli(capsys, video, "--reference", tmp_path / "face.png", "--json", tmp_path / "l.json")
    assert code == 0, err
    look = json.loads((tmp_path / "l.json").read_text())["clips"][0]["look"]
    assert look["ssim"] > 0.95 and 0.8 < look["sharpness"] < 1.2 and look["frames_without_face"] == 0
    assert "look vs face.png" in out


# ---- bad input --------------------------------------------------------------------------------------------------

def _video(path: Path, frames: list, wav) -> Path:
    with Mp4Writer(path, 25, audio=wav is not None) as writer:
        for frame in frames:
            writer.write_video(frame)
        if wav is not None:
            writer.write_audio(wav)
    return path


def test_bad_input_is_one_line_and_exit_1(tmp_path, capsys, photo, speech, silent_video, generator_checkpoint):
    wav = load_audio(speech)
    faceless = _video(tmp_path / "wall.mp4", [np.full((120, 160, 3), 90, np.uint8)] * 20, wav[: 20 * SPF])
    hush = _video(tmp_path / "hush.mp4", face_frames(photo, 20, blank=()), np.zeros(20 * SPF, np.float32))
    short = _video(tmp_path / "short.mp4", face_frames(photo, 5, blank=()), wav[: 5 * SPF])
    cases = [
        ((faceless, "--json", tmp_path / "x.json"), ("no face",)),
        ((hush,), ("silent",)),
        ((short,), ("too short", "6 frames")),
        ((silent_video,), ("no audio stream", "--audio")),
        ((tmp_path / "absent.mp4",), ("no such file",)),
        ((short, "--syncnet", generator_checkpoint), ("not a SyncNet v2 weights file",)),
        ((short, "--expert", generator_checkpoint), ("generator",)),
        ((short, "--expert", "none"), ("nothing to judge",)),
        (("--filelist", tmp_path / "none.txt"), ("filelist not found",)),
        ((short, "--json", tmp_path), ("is a folder",)),
    ]
    for argv, words in cases:
        code, out, err = run_cli(capsys, *argv)
        one_line_error(code, err, *words)
        assert out == ""
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*"))


def test_judging_leaves_torch_grad_mode_alone(bright_talk):
    """A training script that reports eval scores (report_default.py) must still be able to train after."""
    from lipsync_rt.evaluation.run import load_judges

    assert torch.is_grad_enabled()
    judges = load_judges(None, None, "cpu")
    evaluate_clip(open_clip(bright_talk[0]), judges)
    assert torch.is_grad_enabled()


def test_help_teaches_the_numbers(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    for words in ("LSE-D", "LSE-C", "syncnet_v2.model", "audio leads", "--filelist", "--reference", "6.386",
                  "--mismatch measures that floor", "exit 1"):
        assert words in text


def test_eval_split_scores_ground_truth_and_generated_videos(split, generator_checkpoint, tmp_path):
    """train/eval_split.py (the training report's video sync scores): generation by infer, judged by eval."""
    from train import eval_split

    doc = eval_split.run(str(split), "test", str(generator_checkpoint), clips=2,
                         conditions=("ground_truth", "generated_dubbed"), progress=False)
    for condition in ("ground_truth", "generated_dubbed"):
        body = doc["conditions"][condition]
        assert body["summary"]["clips"] == 2 and not body["skipped"]
        assert "mdist" not in body["per_clip"][0]["expert"] and body["per_clip"][0]["crop"] == "none"
    table = eval_split.table(doc).splitlines()
    assert table[0].startswith("| condition | judge") and len(table) == 4 and "| generated_dubbed |" in table[3]
    from lipsync_rt.engine.artifact import file_sha256

    assert doc["models"]["generator"] == {"file": "generator.pth", "bundled": False,
                                          "sha256": file_sha256(generator_checkpoint)}
    assert doc["models"]["expert"]["bundled"] and doc["machine"]["seconds"] > 0


def test_eval_split_record_rewrites_only_the_marked_block(tmp_path):
    """``--record``: a re-run replaces the figures between the markers and keeps every word around them."""
    from train import eval_split

    def doc(lse_d: float) -> dict:
        m = {"lse_d": lse_d, "lse_c": 0.5, "offset_zero": 1.0, "mean_abs_offset": 0.0, "av_offset_ms_median": -12.5,
             "offsync_acc": 0.25, "p_sync": 0.4}
        return {"data_root": "data/synth2", "split": "test", "clips": 3, "judges": {"expert": "e.pth"},
                "models": {"generator": {"file": "g.pth", "bundled": True, "sha256": "ab" * 32}},
                "machine": {"date_utc": "2026-11-30 10:00", "device": "cpu", "torch": "2", "seconds": 120.0},
                "conditions": {"ground_truth": {"summary": {"clips": 3, "expert": m}, "skipped": []}}}

    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nintro\n")
    eval_split.record(results, doc(0.7), "python train/eval_split.py --data_root data/synth2")
    first = results.read_text()
    assert first.startswith("# Results\n\nintro\n\n## Sync scores") and first.count(eval_split.BEGIN) == 1
    assert "| ground_truth | e.pth | 3 | 0.700 | 0.500 | 100% | 0.00 | -12.5 ms | 25% | 0.40 |" in first
    assert "bundled `g.pth`, sha256 `abababababababab`" in first and "2 min" in first
    results.write_text(first.replace("intro", "intro, edited") + "\nnotes after the block\n")
    eval_split.record(results, doc(0.9), "python train/eval_split.py --data_root data/synth2")
    second = results.read_text()
    assert "| 0.900 |" in second and "| 0.700 |" not in second and second.count(eval_split.END) == 1
    assert "intro, edited" in second and second.endswith("notes after the block\n")

"""Training data and scripts on a tiny corpus made here: alignment, sampling, bad data, learning, resume, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lipsync_rt.models import SyncNet, Wav2Lip, load_checkpoint, load_training_state, save_checkpoint  # noqa: E402
from train import common, train_expert, train_generator  # noqa: E402
from train.dataset import (  # noqa: E402
    T,
    Corpus,
    GeneratorDataset,
    SyncDataset,
    MEL_OFFSET,
    frame_mel_windows,
    mel_start,
    mel_window,
)

SR, FPS, FRAMES, CLIPS = 16000, 25, 40, 4
TINY = ["--width", "0.0625", "--num_workers", "0", "--device", "cpu", "--log_interval", "1"]


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SR)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def make_corpus(root: Path, clips: int = CLIPS, frames: int = FRAMES, size: int = 48, seed: int = 0) -> Path:
    """Clips whose 'mouth' brightness follows the audio energy of each frame: sync is learnable."""
    rng = np.random.default_rng(seed)
    names = []
    for c in range(clips):
        name = f"set0/clip{c}"
        clip = root / name
        clip.mkdir(parents=True)
        energy = np.clip(np.convolve(rng.random(frames + 4), np.ones(3) / 3, "same")[:frames] * 1.4 - 0.2, 0, 1)
        t = np.arange(frames * SR // FPS) / SR
        tone = 0.5 * np.sin(2 * np.pi * 220 * t) + 0.3 * np.sin(2 * np.pi * 1500 * t)
        write_wav(clip / "audio.wav", tone * np.repeat(energy, SR // FPS) + 0.002 * rng.standard_normal(t.size))
        face = rng.integers(60, 200, (size, size, 3), dtype=np.uint8)
        for f in range(frames):
            img = np.clip(face.astype(int) + rng.integers(-8, 8, face.shape), 0, 255).astype(np.uint8)
            img[30:42, 14:34] = int(30 + 220 * energy[f])
            cv2.imwrite(str(clip / f"{f}.jpg"), img)
        names.append(name)
    lists = root / "filelists"
    lists.mkdir()
    (lists / "train.txt").write_text("\n".join(names[:-1]) + "\n")
    (lists / "val.txt").write_text(names[-1] + " extra tokens are ignored\n")
    (lists / "test.txt").write_text(names[-1] + "\n")
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny; one thread avoids OpenMP spinning against other jobs on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def expert_run(corpus_root, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("expert")
    summary = train_expert.main([
        "--data_root", str(corpus_root), "--checkpoint_dir", str(out), *TINY, "--batch_size", "4",
        "--steps", "3", "--eval_interval", "2", "--checkpoint_interval", "2", "--eval_samples", "8",
        "--offsync_windows", "4", "--lr", "1e-3",
    ])
    return out, summary


# ----------------------------------------------------------------------------------------------
# Alignment (docs/architecture.md, "Timing": training's windows start one frame earlier)


def test_mel_window_alignment_and_bounds():
    mel = np.tile(np.arange(100, dtype=np.float32), (80, 1))  # column c holds the value c
    for f in range(40):
        assert mel_start(f) == int(80 * f / 25)
        w = mel_window(mel, f)
        if int(80 * f / 25) + 16 <= 100:
            assert w.shape == (80, 16) and w[0, 0] == int(80 * f / 25)
        else:
            assert w is None  # runs off the end: rejected, never a short window
    assert mel_window(mel, 26) is not None and mel_window(mel, 27) is None  # 83 + 16 = 99 fits, 86 + 16 does not
    assert mel_window(mel, -1) is None


@pytest.mark.parametrize("offset", [0, -8])
def test_generator_per_frame_mels_are_the_inference_windows(offset):
    from lipsync_rt.audio import MEL_SILENCE, mel_chunks

    mel = np.tile(np.arange(200, dtype=np.float32), (80, 1))
    windows = frame_mel_windows(mel, 10, offset)
    assert windows.shape == (T, 1, 80, 16)
    assert [windows[k, 0, 0, 0] for k in range(T)] == [int(80 * (10 + k) / 25) + offset for k in range(T)]
    # exactly what inference gives a model with this mel_offset, silence before the audio included
    np.testing.assert_array_equal(frame_mel_windows(mel, 0, offset)[:, 0], mel_chunks(mel, 25, offset)[:T])
    if offset:
        assert frame_mel_windows(mel, 0, offset)[0, 0, 0, 0] == MEL_SILENCE
    assert frame_mel_windows(mel, 60, offset) is None  # runs off the end: rejected


def test_samples_take_their_mels_from_the_right_columns(corpus_root):
    corpus = Corpus(corpus_root, "train")
    sample = SyncDataset(corpus, 10, seed=1)[3]
    c, s = int(sample["clip"]), int(sample["start"])
    full = corpus.mel(c)
    assert sample["mel"].shape == (1, 80, 16) and sample["faces"].shape == (15, 48, 96)
    assert np.array_equal(sample["mel"][0].numpy(), full[:, int(80 * s / 25) : int(80 * s / 25) + 16])

    g = GeneratorDataset(corpus, 10, seed=1)[5]
    c, s, r = int(g["clip"]), int(g["start"]), int(g["ref_at"])
    full = corpus.mel(c)
    assert g["x"].shape == (6, T, 96, 96) and g["gt"].shape == (3, T, 96, 96) and g["indiv_mels"].shape == (T, 1, 80, 16)
    for k in range(T):
        a = int(80 * (s + k) / 25) + MEL_OFFSET          # the inference window of frame s + k
        if a >= 0:
            assert np.array_equal(g["indiv_mels"][k, 0].numpy(), full[:, a : a + 16])
    assert np.array_equal(g["mel"][0].numpy(), full[:, int(80 * s / 25) : int(80 * s / 25) + 16])
    assert g["x"][:3, :, 48:].abs().sum() == 0 and torch.equal(g["x"][:3, :, :48], g["gt"][:, :, :48])
    reference = torch.from_numpy(corpus.window(c, r)).permute(3, 0, 1, 2).float() / 255
    assert r != s and torch.allclose(g["x"][3:], reference)


# ----------------------------------------------------------------------------------------------
# Sampling


def test_negatives_obey_min_offset_and_sampling_is_deterministic(corpus_root):
    corpus = Corpus(corpus_root, "train")
    data = SyncDataset(corpus, 200, seed=7, min_offset=4)
    labels = []
    for i in range(80):
        s = data[i]
        start, at = int(s["start"]), int(s["frames_at"])
        labels.append(float(s["label"]))
        if s["label"] == 1:
            assert at == start
        else:
            assert abs(at - start) >= 4
    assert 20 < sum(labels) < 60  # about half positives
    again = SyncDataset(Corpus(corpus_root, "train"), 200, seed=7, min_offset=4)
    for i in (0, 17, 99):
        assert all(torch.equal(data[i][k], again[i][k]) for k in data[i])
    other = SyncDataset(corpus, 200, seed=8, min_offset=4)
    assert any(int(other[i]["start"]) != int(data[i]["start"]) for i in range(10))


def test_bad_frames_are_skipped_and_counted(corpus_root, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(corpus_root, root)
    (root / "set0/clip0/10.jpg").write_bytes(b"not a jpeg at all")  # corrupt
    (root / "set0/clip1/20.jpg").unlink()  # missing index: a gap in the numbering
    short = root / "set0/short"
    short.mkdir()
    for f in range(3 * T):
        shutil.copy(root / "set0/clip2/0.jpg", short / f"{f}.jpg")
    (root / "filelists/train.txt").write_text("set0/clip0\nset0/clip1\nset0/short\nset0/nowhere\n")
    corpus = Corpus(root, "train")
    assert [c.name for c in corpus.clips] == ["set0/clip0", "set0/clip1"]  # <= 3T frames and missing dir skipped
    data = GeneratorDataset(corpus, 300, seed=3)
    skipped = torch.zeros(4, dtype=torch.long)
    for i in range(80):
        s = data[i]
        skipped += s["skipped"]
        c = int(s["clip"])
        bad = 10 if c == 0 else 20
        for at in (int(s["start"]), int(s["ref_at"])):
            assert not at <= bad < at + T
    assert corpus.counts["unreadable"] > 0 and corpus.counts["gap"] > 0
    assert skipped.tolist() == [corpus.counts[k] for k in ("gap", "unreadable", "audio_range", "bad_audio")]


# ----------------------------------------------------------------------------------------------
# Learning


def test_a_few_steps_lower_the_expert_loss(corpus_root):
    torch.manual_seed(0)
    batch = default_collate([SyncDataset(Corpus(corpus_root, "train"), 8, seed=2)[i] for i in range(8)])
    model = SyncNet(0.0625).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = train_expert.expert_loss(model, batch, torch.device("cpu"), amp=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses


def test_a_few_steps_lower_the_generator_loss(corpus_root):
    torch.manual_seed(0)
    batch = default_collate([GeneratorDataset(Corpus(corpus_root, "train"), 2, seed=2)[i] for i in range(2)])
    generator, expert = Wav2Lip(0.0625).train(), SyncNet(0.0625).eval().requires_grad_(False)
    opt = torch.optim.Adam(generator.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss, parts, _, _ = train_generator.generator_losses(generator, expert, None, batch, 0.01, 0.0, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["loss"])
    assert "sync" in parts and losses[-1] < losses[0] * 0.9 and losses == sorted(losses, reverse=True), losses


# ----------------------------------------------------------------------------------------------
# Scripts: checkpoints, plots, resume, HQ, DDP


def test_expert_script_writes_public_checkpoints_plots_and_metrics(expert_run):
    out, summary = expert_run
    assert summary["step"] == 3
    for step in (1, 2, 3):
        path = common.checkpoint_path(out, step)
        raw = torch.load(path, map_location="cpu", weights_only=True)
        assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"} and raw["global_step"] == step
    assert isinstance(load_checkpoint(out / "checkpoint_step000000003.pth", "expert"), SyncNet)
    assert (out / "loss.png").stat().st_size > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 3]
    assert {"loss", "acc", "offsync_acc", "offsync_acc1"} <= set(evals[-1]) and evals[-1]["offsync_n"] == 4
    assert all(set(r["skipped"]) == {"gap", "unreadable", "audio_range", "bad_audio"} for r in records if r["kind"] == "train")
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*tmp*"))


def test_expert_resume_continues_from_the_saved_step(corpus_root, expert_run, tmp_path):
    out, _ = expert_run
    resumed = tmp_path / "resumed"
    summary = train_expert.main([
        "--data_root", str(corpus_root), "--checkpoint_dir", str(resumed), *TINY, "--batch_size", "4",
        "--steps", "5", "--eval_interval", "100", "--checkpoint_interval", "100", "--offsync_windows", "0",
        "--eval_samples", "4", "--resume", str(common.checkpoint_path(out, 2)), "--lr", "5e-5",
    ])
    assert summary["step"] == 5
    state = load_training_state(common.checkpoint_path(resumed, 5))
    assert state["global_step"] == 5
    # Adam counts its own steps: 5 means the 2 saved ones were restored, not restarted from zero.
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {5}
    assert state["optimizer"]["param_groups"][0]["lr"] == 5e-5  # the --lr given now, not the saved one
    assert not common.checkpoint_path(resumed, 1).exists()  # no "step 1" checkpoint: it did not restart


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = SyncNet(0.0625)
    path = save_checkpoint(common.checkpoint_path(tmp_path, 7), model, None, 7, 0)

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, SyncNet(0.0625), None, 8, 0)
    monkeypatch.undo()
    assert load_training_state(path)["global_step"] == 7  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # and no temporary file is left


def test_generator_trains_saves_grids_and_restores_sync_weight_on_resume(corpus_root, expert_run, tmp_path):
    expert = str(common.checkpoint_path(expert_run[0], 3))
    base = ["--data_root", str(corpus_root), "--expert_checkpoint", expert, *TINY, "--batch_size", "2",
            "--eval_samples", "2", "--grid_samples", "2", "--sync_threshold", "10"]
    out = tmp_path / "gen"
    summary = train_generator.main([*base, "--checkpoint_dir", str(out), "--steps", "2", "--checkpoint_interval", "2"])
    assert summary["syncnet_wt"] == 0.01  # the first eval's sync loss is below the (test) threshold
    ckpt = common.checkpoint_path(out, 2)
    assert isinstance(load_checkpoint(ckpt, "generator"), Wav2Lip)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict", "optimizer", "global_step", "global_epoch", "mel_offset"}
    assert saved["mel_offset"] == MEL_OFFSET == load_checkpoint(ckpt).mel_offset    # inference reads the same windows
    assert json.loads(ckpt.with_suffix(".json").read_text())["syncnet_wt"] == 0.01
    for png in ("loss.png", "samples_step000000001.png", "samples_step000000002.png"):
        assert (out / png).stat().st_size > 0
    grid = cv2.imread(str(out / "samples_step000000002.png"))
    assert grid.shape == (2 * 3 * 96, T * 96, 3)  # 2 samples x (reference, generated, ground truth) rows
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert {"l1", "sync", "l1_copy_ref", "sync_gt"} <= set(evals[0])

    # Resume with a threshold the sync loss cannot meet: the weight comes back from the sidecar anyway.
    resumed = train_generator.main([*base[:-1], "0.0", "--checkpoint_dir", str(out), "--steps", "3",
                                    "--checkpoint_interval", "100", "--resume", str(ckpt)])
    assert resumed["step"] == 3 and resumed["syncnet_wt"] == 0.01
    trains = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert trains[-1]["step"] == 3 and "sync" in trains[-1]


def test_hq_step_trains_the_discriminator_and_resumes_it(corpus_root, expert_run, tmp_path):
    expert = str(common.checkpoint_path(expert_run[0], 3))
    out = tmp_path / "hq"
    base = ["--data_root", str(corpus_root), "--expert_checkpoint", expert, "--checkpoint_dir", str(out), *TINY,
            "--batch_size", "2", "--eval_samples", "2", "--grid_samples", "1", "--hq"]
    train_generator.main([*base, "--steps", "1"])
    disc = common.checkpoint_path(out, 1, "disc_")
    assert disc.name == "disc_checkpoint_step000000001.pth"
    assert type(load_checkpoint(disc, "disc")).__name__ == "QualityDiscriminator"
    first = load_training_state(disc)
    summary = train_generator.main([*base, "--steps", "2", "--resume", str(common.checkpoint_path(out, 1))])
    assert summary["step"] == 2
    second = load_training_state(common.checkpoint_path(out, 2, "disc_"))
    assert {int(s["step"]) for s in second["optimizer"]["state"].values()} == {2}  # D's Adam state was restored
    assert not torch.equal(first["state_dict"]["binary_pred.0.weight"], second["state_dict"]["binary_pred.0.weight"])
    record = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x][-1]
    assert {"adv", "disc", "l1"} <= set(record)


def test_ddp_smoke_run_with_two_cpu_processes(corpus_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train" / "train_expert.py"), "--data_root", str(corpus_root), "--checkpoint_dir", str(out),
           *TINY, "--batch_size", "4", "--steps", "3", "--eval_interval", "3", "--eval_samples", "4",
           "--offsync_windows", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = load_training_state(common.checkpoint_path(out, 3))
    assert state["global_step"] == 3 and not any(k.startswith("module.") for k in state["state_dict"])
    assert (out / "loss.png").stat().st_size > 0
    assert "r1]" not in result.stdout  # only rank 0 logs progress


def test_help_documents_the_settings(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_expert.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--min_offset" in text and "--batch_size" in text and "default: 64" in text
    with pytest.raises(SystemExit):
        train_generator.main(["--help"])
    assert "--expert_bn" in capsys.readouterr().out


def test_standalone_eval_reports_expert_and_offsync_metrics(corpus_root, expert_run, capsys):
    from train import eval_sync

    out = eval_sync.main(["--data_root", str(corpus_root), "--expert", str(common.checkpoint_path(expert_run[0], 3)),
                          "--samples", "8", "--offsync_windows", "4", "--num_workers", "0", "--device", "cpu"])
    assert {"expert_loss", "expert_acc", "offsync_acc", "offsync_acc1"} <= set(out) and out["offsync_n"] == 4
    assert json.loads(capsys.readouterr().out)["expert_loss"] == out["expert_loss"]


def test_eval_look_scores_a_perfect_copy_as_perfect_and_a_blur_as_blurred(tmp_path):
    from lipsync_rt.media import Mp4Writer
    from train import eval_look

    photo = cv2.imread(str(ROOT / "examples" / "face.jpg"))
    rng = np.random.default_rng(0)
    wav = np.concatenate([np.zeros(8000), 0.3 * rng.standard_normal(8000)]).astype(np.float32)
    write_wav(tmp_path / "speech.wav", wav)
    blurred = cv2.GaussianBlur(photo, (0, 0), 3)
    for name, frame in (("same", photo), ("blur", blurred)):
        with Mp4Writer(tmp_path / f"{name}.mp4", 25, audio=False, crf=0) as w:
            for _ in range(25):
                w.write_video(frame)
    same = eval_look.evaluate(str(tmp_path / "same.mp4"), str(ROOT / "examples" / "face.jpg"), str(tmp_path / "speech.wav"))
    blur = eval_look.evaluate(str(tmp_path / "blur.mp4"), str(ROOT / "examples" / "face.jpg"), str(tmp_path / "speech.wav"))
    assert same["pause_frames"] == 12 and same["ssim_pause"] > 0.95 and same["colour_shift"] < 1.0
    assert 0.8 < same["sharpness"] < 1.2 and blur["sharpness"] < 0.3 and blur["ssim_pause"] < same["ssim_pause"]
    assert 0.8 < same["sharpness_speech"] < 1.2 and blur["sharpness_speech"] < 0.3
    # sharp in the pause, blurred while talking: the speech figure shows the blur the pause hides
    half = tmp_path / "half.mp4"
    with Mp4Writer(half, 25, audio=False, crf=0) as w:
        for k in range(25):
            w.write_video(photo if k < 12 else blurred)
    mixed = eval_look.evaluate(str(half), str(ROOT / "examples" / "face.jpg"), str(tmp_path / "speech.wav"))
    assert mixed["sharpness_speech"] < 0.3 < mixed["sharpness"]

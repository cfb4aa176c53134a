"""Offline ``infer`` throughput for the full-size generator on this machine's CPU.

Three figures from one run over the same frames:
  * baseline: a plain eager PyTorch loop, ``model(mel, face)`` under ``no_grad`` in batches, as the
    reference inference.py runs it (model time only: inputs are prepared beforehand);
  * engine: the project's torch CPU engine (BatchNorm folded, inference mode) on the same batches;
  * infer: the whole ``lipsync-rt infer`` job (decode, face tracking, model, blending, H.264/AAC encode),
    once with the torch engine (the default) and once with the int8 engine (``--engine int8``).
Speed does not depend on the weight values, so a seeded full-size network stands in for wav2lip.pth.
Results are ratios against the baseline measured in the same run; the machine is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipsync_rt.audio import load_audio, mel_chunks, melspectrogram  # noqa: E402
from lipsync_rt.bench.common import cpu_name  # noqa: E402
from lipsync_rt.engine import TorchEngine, build_engine, load_engine  # noqa: E402
from lipsync_rt.face import analyse_clip  # noqa: E402
from lipsync_rt.infer import InferOptions, run_inference  # noqa: E402
from lipsync_rt.lipsync import crop_face, face_input, mel_input  # noqa: E402
from lipsync_rt.media import Mp4Writer, read_face_source  # noqa: E402
from lipsync_rt.models import Wav2Lip, save_checkpoint  # noqa: E402


def make_clip(path: Path, seconds: float, fps: int = 25) -> None:
    """A talking-head-sized clip: the example photo drifting slowly, so the tracker has work to do."""
    photo = read_face_source(ROOT / "examples" / "face.jpg").frames[0]
    canvas = np.zeros((544, 640, 3), np.uint8)
    with Mp4Writer(path, fps, audio=False) as writer:
        for i in range(int(seconds * fps)):
            dx, dy = int(40 + 20 * np.sin(i / 15)), int(16 + 8 * np.cos(i / 20))
            frame = canvas.copy()
            frame[dy : dy + 512, dx : dx + 512] = photo
            writer.write_video(frame)


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", default=str(ROOT / "examples" / "speech.wav"), help="speech to sync to")
    parser.add_argument("--batch", type=int, default=128, help="model batch, as --wav2lip_batch_size")
    parser.add_argument("--repeats", type=int, default=2, help="best of N for the model loops")
    parser.add_argument("--width", type=float, default=1.0, help="generator width (1.0 = public model)")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Wav2Lip(width=args.width).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip, ckpt = tmp / "clip.mp4", tmp / "generator.pth"
        wav = load_audio(args.audio)
        make_clip(clip, len(wav) / 16000)  # as long as the speech: every frame is used once
        save_checkpoint(ckpt, model)

        source = read_face_source(clip)
        chunks = mel_chunks(melspectrogram(wav), source.fps)
        count = min(len(chunks), len(source.frames))
        faces = analyse_clip(source.frames[:count])
        crops = np.stack([crop_face(f, b) for f, b in zip(source.frames[:count], faces.boxes[:count])])
        batches = [
            (mel_input(chunks[s : s + args.batch]), face_input(crops[s : s + args.batch]))
            for s in range(0, count, args.batch)
        ]

        def eager() -> None:
            with torch.no_grad():
                for mel, face in batches:
                    model(torch.from_numpy(mel), torch.from_numpy(face)).numpy()

        engine = TorchEngine(model, device="cpu")

        def engined() -> None:
            for mel, face in batches:
                engine.infer(mel, face)

        eager_s = timed(eager, args.repeats)
        engine_s = timed(engined, args.repeats)
        options = InferOptions(
            face=str(clip), audio=args.audio, outfile=str(tmp / "out.mp4"),
            checkpoint_path=str(ckpt), wav2lip_batch_size=args.batch, device="cpu",
        )
        report = run_inference(options, progress=False)
        # The same job on the int8 engine, built beforehand (building is a one-off, not part of a job).
        int8 = load_engine(build_engine(str(ckpt), "int8", tmp / "engines"), str(ckpt))
        int8_report = run_inference(options, engine=int8, progress=False)

    results = {
        "machine": machine(),
        "model": f"Wav2Lip width {args.width} ({sum(p.numel() for p in model.parameters()):,} parameters)",
        "frames": count,
        "batch": args.batch,
        "baseline_eager_fps": count / eager_s,
        "engine_fps": count / engine_s,
        "infer_fps": report.frames / report.seconds,
        "infer_int8_fps": int8_report.frames / int8_report.seconds,
        "engine_vs_baseline": eager_s / engine_s,
        "infer_vs_baseline": (report.frames / report.seconds) / (count / eager_s),
        "infer_int8_vs_baseline": (int8_report.frames / int8_report.seconds) / (count / eager_s),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

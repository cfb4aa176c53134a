"""Offline ``lipsync-rt infer`` with the full-size generator: the default command against the reference.

One run measures, on the same clip (the example face drifting in 640x544 frames, as long as the example
speech) and the same full-size seeded checkpoint in the public format (speed does not depend on the
weight values):

  * reference: a reference-style job in its own process, as ``python inference.py`` runs one: decode
    the clip, face boxes smoothed over 5 frames, crops, the untouched model under ``torch.no_grad`` in
    batches of 128, the hard paste and the H.264/AAC encode. Its face boxes come from MediaPipe, the
    project's detector (the reference's S3FD costs more on a CPU, so this baseline, if anything, is fast);
  * infer: ``lipsync-rt infer`` with its defaults (``--engine auto``) in its own process, starting from
    an empty engine cache: the first run builds the int8 engine, and that build is reported apart;
    later runs reuse the cached engine;
  * infer --engine torch: the reference network untouched (the reference's frames);
  * model only: the eager model loop alone, in this process, as the older figures were quoted.

Times are wall clock of whole processes (interpreter start, imports and model load included), the best
of ``--repeats``, with the runs interleaved so that a busy machine slows each of them alike. Ratios are
against the reference job of the same run; the machine and its load average are recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 128  # the reference's --wav2lip_batch_size


def make_clip(path: Path, seconds: float, fps: int = 25) -> None:
    """A talking-head-sized clip: the example photo drifting slowly, so the tracker has work to do."""
    from lipsync_rt.media import Mp4Writer, read_face_source

    photo = read_face_source(ROOT / "examples" / "face.jpg").frames[0]
    canvas = np.zeros((544, 640, 3), np.uint8)
    with Mp4Writer(path, fps, audio=False) as writer:
        for i in range(int(seconds * fps)):
            dx, dy = int(40 + 20 * np.sin(i / 15)), int(16 + 8 * np.cos(i / 20))
            frame = canvas.copy()
            frame[dy : dy + 512, dx : dx + 512] = photo
            writer.write_video(frame)


def reference_job(face: str, audio: str, checkpoint: str, outfile: str, batch: int = BATCH) -> None:
    """What the reference inference.py does for a video, step by step (model in fp32, untouched)."""
    import cv2
    import torch

    from lipsync_rt.audio import load_audio, mel_chunks, melspectrogram
    from lipsync_rt.face import analyse_clip
    from lipsync_rt.media import Mp4Writer, read_face_source
    from lipsync_rt.models import load_checkpoint

    source = read_face_source(face)
    wav = load_audio(audio)
    chunks = mel_chunks(melspectrogram(wav), source.fps)
    frames = source.frames[: len(chunks)]
    boxes = analyse_clip(frames).boxes
    model = load_checkpoint(checkpoint).eval()
    with Mp4Writer(outfile, source.rate) as writer:
        for start in range(0, len(chunks), batch):
            ids = range(start, min(len(chunks), start + batch))
            crops = np.asarray([cv2.resize(frames[i % len(frames)][y1:y2, x1:x2], (96, 96))
                                for i in ids for x1, y1, x2, y2 in [boxes[i % len(frames)]]])
            masked = crops.copy()
            masked[:, 48:] = 0
            img = np.concatenate((masked, crops), axis=3) / 255.0
            mel = np.asarray([chunks[i] for i in ids])[..., None]
            with torch.no_grad():
                pred = model(torch.FloatTensor(np.transpose(mel, (0, 3, 1, 2))),
                             torch.FloatTensor(np.transpose(img, (0, 3, 1, 2))))
            pred = pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0
            for p, i in zip(pred, ids):
                frame = frames[i % len(frames)].copy()
                x1, y1, x2, y2 = boxes[i % len(frames)]
                frame[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
                writer.write_video(frame)
        writer.write_audio(wav)


def model_only_eager(clip: Path, audio: str, checkpoint: Path) -> tuple[int, float]:
    """Frames and seconds of the eager model loop alone over the clip's real inputs (prepared beforehand)."""
    import torch

    from lipsync_rt.audio import load_audio, mel_chunks, melspectrogram
    from lipsync_rt.face import analyse_clip
    from lipsync_rt.lipsync import crop_face, face_input, mel_input
    from lipsync_rt.media import read_face_source
    from lipsync_rt.models import load_checkpoint

    source = read_face_source(clip)
    chunks = mel_chunks(melspectrogram(load_audio(audio)), source.fps)
    count = min(len(chunks), len(source.frames))
    faces = analyse_clip(source.frames[:count])
    crops = np.stack([crop_face(f, b) for f, b in zip(source.frames[:count], faces.boxes[:count])])
    batches = [(mel_input(chunks[s : s + BATCH]), face_input(crops[s : s + BATCH])) for s in range(0, count, BATCH)]
    model = load_checkpoint(checkpoint).eval()
    started = time.perf_counter()
    with torch.no_grad():
        for mel, face in batches:
            model(torch.from_numpy(mel), torch.from_numpy(face)).numpy()
    return count, time.perf_counter() - started


def machine() -> str:
    import onnxruntime
    import torch

    from lipsync_rt.bench.common import cpu_name
    from lipsync_rt.engine.quantize import int8_arithmetic

    cpu = cpu_name()

    return (f"{cpu}, {os.cpu_count()} cores ({int8_arithmetic()} int8), torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")


def timed_process(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall-clock seconds of a whole process, and its standard output (it must succeed)."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def parse_summary(stdout: str) -> dict[str, float]:
    """The job's own seconds and the build seconds from ``lipsync-rt infer``'s summary line."""
    line = next(line for line in stdout.splitlines() if line.startswith("wrote "))
    job = float(re.search(r"; ([\d.]+) s \(", line).group(1))
    build = re.search(r"\(\+ ([\d.]+) s building", line)
    model = re.search(r"model: (.*?); ", line).group(1)
    return {"job_s": job, "build_s": float(build.group(1)) if build else 0.0, "model": model}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", default=str(ROOT / "examples" / "speech.wav"), help="speech to sync to")
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each timed process (default: 2)")
    parser.add_argument("--width", type=float, default=1.0, help="generator width (1.0 = the public model)")
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--reference-job", nargs=4, metavar=("FACE", "AUDIO", "CHECKPOINT", "OUT"),
                        help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args()
    if args.reference_job:
        reference_job(*args.reference_job)
        return 0

    import torch

    from lipsync_rt.audio import load_audio
    from lipsync_rt.models import Wav2Lip, save_checkpoint

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        tmp = Path(tmp)
        clip, checkpoint = tmp / "clip.mp4", tmp / "wav2lip_seeded.pth"
        make_clip(clip, len(load_audio(args.audio)) / 16000)  # as long as the speech: every frame used once
        torch.manual_seed(0)
        model = Wav2Lip(width=args.width).eval()
        params = sum(p.numel() for p in model.parameters())
        save_checkpoint(checkpoint, model)
        del model
        env = {**os.environ, "LIPSYNC_RT_CACHE": str(tmp / "cache"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        infer = [sys.executable, "-m", "lipsync_rt", "infer", "--face", str(clip), "--audio", args.audio,
                 "--checkpoint_path", str(checkpoint), "--quiet"]
        reference = [sys.executable, __file__, "--reference-job", str(clip), args.audio, str(checkpoint),
                     str(tmp / "reference.mp4")]

        count, eager_s = model_only_eager(clip, args.audio, checkpoint)
        print(f"model only, eager: {count} frames in {eager_s:.1f} s", flush=True)
        first_s, first_out = timed_process(infer + ["--outfile", str(tmp / "first.mp4")], env)
        first = parse_summary(first_out)
        print(f"infer (auto), first use: {first_s:.1f} s, of which building the engine {first['build_s']:.1f} s",
              flush=True)
        runs: dict[str, list[float]] = {"reference": [], "auto": [], "torch": []}
        jobs: dict[str, list[float]] = {"auto": [], "torch": []}
        models = {}
        for _ in range(args.repeats):
            seconds, _out = timed_process(reference, env)
            runs["reference"].append(seconds)
            for name, extra in (("auto", []), ("torch", ["--engine", "torch"])):
                seconds, out = timed_process(infer + extra + ["--outfile", str(tmp / f"{name}.mp4")], env)
                summary = parse_summary(out)
                if summary["build_s"]:
                    raise SystemExit(f"infer {name} rebuilt its engine: the cache did not hold")
                runs[name].append(seconds)
                jobs[name].append(summary["job_s"])
                models[name] = summary["model"]
            print("  " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in runs.items()), flush=True)

    best = {name: min(values) for name, values in runs.items()}
    results = {
        "machine": machine(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "model": f"Wav2Lip width {args.width:g}, seeded, public checkpoint format ({params:,} parameters)",
        "frames": count,
        "batch": BATCH,
        "repeats": args.repeats,
        "engines": models,
        "seconds": {
            "reference_job": best["reference"],
            "infer_default_auto": best["auto"],
            "infer_engine_torch": best["torch"],
            "infer_first_use_total": first_s,
            "first_use_engine_build": first["build_s"],
            "infer_first_use_without_build": first_s - first["build_s"],
            "model_only_eager_loop": eager_s,
        },
        "all_runs_seconds": runs,
        "job_seconds_reported_by_infer": {k: min(v) for k, v in jobs.items()},
        "speedup_vs_reference_job": {
            "infer_default_auto": best["reference"] / best["auto"],
            "infer_engine_torch": best["reference"] / best["torch"],
            "infer_first_use_without_build": best["reference"] / (first_s - first["build_s"]),
        },
        "fps": {
            "reference_job": count / best["reference"],
            "infer_default_auto": count / best["auto"],
            "infer_engine_torch": count / best["torch"],
            "model_only_eager_loop": count / eager_s,
        },
    }
    print(json.dumps(results, indent=2))
    if args.json:
        from lipsync_rt.atomic import write_json_atomic

        write_json_atomic(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

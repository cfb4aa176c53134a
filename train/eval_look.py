"""How a lip-synced video looks next to its input: the figures of the bundled model's card.

For an output video (what ``lipsync-rt infer`` wrote), its input face (photo or video) and the speech:

- ``sharpness``: variance of the Laplacian of the lower half of the face box, output / input (1.0:
  as crisp as the input; a blurred lower face scores low);
- ``ssim_pause``: SSIM of the lower face with the input's on frames whose own 40 ms of audio is silent
  (below -45 dBFS), where the mouth should simply be the input's;
- ``colour_shift``: distance between the mean Lab (a, b) of the output's and the input's lower face
  (a tint or a teal cast shows here);
- ``opening_r``: Pearson r between each output frame's mouth opening (inner-lip gap / mouth width,
  from the project's face mesh on the output frame) and the loudness (dBFS) of that frame's audio.

    python train/eval_look.py --video results/demo.mp4 --face examples/face.jpg --audio examples/speech.wav
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from lipsync_rt.audio import SAMPLE_RATE, load_audio
from lipsync_rt.face import FaceDetector, analyse_clip
from lipsync_rt.media import iter_video_frames, read_face_source

SILENT_DB = -45.0
INNER_GAP = (13, 14)          # inner upper and lower lip, mid-mouth
MOUTH_CORNERS = (78, 308)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two grey images (Gaussian window, sigma 1.5, the usual constants)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)   # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def frame_levels(wav: np.ndarray, n: int, fps: float) -> np.ndarray:
    """RMS level (dBFS) of each output frame's own audio span."""
    spf = SAMPLE_RATE / fps
    out = np.full(n, -120.0)
    for i in range(n):
        seg = wav[int(round(i * spf)):int(round((i + 1) * spf))]
        if seg.size:
            out[i] = 10 * np.log10(np.mean(seg.astype(np.float64) ** 2) + 1e-12)
    return out


def evaluate(video: str, face: str, audio: str) -> dict:
    source = read_face_source(face)
    outputs = [f.image for f in iter_video_frames(video)]
    n = len(outputs)
    inputs = source.frames[:1] * n if source.is_image else [source.frames[i % len(source.frames)] for i in range(n)]
    faces = analyse_clip(source.frames[:1] if source.is_image else source.frames[:n], static=source.is_image)
    levels = frame_levels(load_audio(audio), n, source.fps)

    sharp_out, sharp_in, pause_ssim, shift, openings = [], [], [], [], []
    with FaceDetector() as detector:
        for i, (out, inp) in enumerate(zip(outputs, inputs)):
            j = 0 if source.is_image else i % len(faces.boxes)
            if not faces.has_face[j]:
                continue
            x1, y1, x2, y2 = faces.boxes[j]
            lower = (slice(y1 + (y2 - y1) // 2, y2), slice(x1, x2))
            o, p = out[lower], inp[lower]
            sharp_out.append(sharpness(o))
            sharp_in.append(sharpness(p))
            if levels[i] < SILENT_DB:
                pause_ssim.append(ssim(cv2.cvtColor(o, cv2.COLOR_BGR2GRAY), cv2.cvtColor(p, cv2.COLOR_BGR2GRAY)))
            lab_o = cv2.cvtColor(o, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64).mean(axis=0)
            lab_p = cv2.cvtColor(p, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64).mean(axis=0)
            shift.append(float(np.hypot(*(lab_o[1:] - lab_p[1:]))))
            found = detector.detect(out)
            if found is not None and found.landmarks is not None:
                lm = found.landmarks
                gap = np.linalg.norm(lm[INNER_GAP[0]] - lm[INNER_GAP[1]])
                width = max(np.linalg.norm(lm[MOUTH_CORNERS[0]] - lm[MOUTH_CORNERS[1]]), 1e-6)
                openings.append((i, gap / width))
    idx = np.array([i for i, _ in openings], int)
    gaps = np.array([g for _, g in openings])
    r = float(np.corrcoef(gaps, levels[idx])[0, 1]) if len(idx) > 2 and gaps.std() > 0 else float("nan")
    return {
        "frames": n,
        "sharpness": float(np.mean(sharp_out) / max(np.mean(sharp_in), 1e-9)) if sharp_in else float("nan"),
        "ssim_pause": float(np.mean(pause_ssim)) if pause_ssim else float("nan"),
        "pause_frames": len(pause_ssim),
        "colour_shift": float(np.mean(shift)) if shift else float("nan"),
        "opening_r": r,
    }


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True, help="the lip-synced output")
    p.add_argument("--face", required=True, help="its input face, photo or video")
    p.add_argument("--audio", required=True, help="its speech")
    p.add_argument("--json", default="", help="also write the figures here")
    args = p.parse_args(argv)
    result = evaluate(args.video, args.face, args.audio)
    print(json.dumps(result, indent=1))
    if args.json:
        from lipsync_rt.atomic import write_json_atomic

        write_json_atomic(args.json, result)
    return result


if __name__ == "__main__":
    main()

"""How a lip-synced video looks next to its input: the figures of the bundled model's card.

For an output video (what ``lipsync-rt infer`` wrote), its input face (photo or video, the
*reference*) and the speech, on the lower half of the reference's face box:

- ``sharpness``: variance of the Laplacian, output / input (1.0: as crisp as the input; a blurred lower
  face scores low), over every frame, and ``sharpness_speech`` over the frames whose own audio is not
  silent (the mouth the model draws while talking: pauses that show the input do not lift it);
- ``ssim``: SSIM (grey, Gaussian window) with the input on every frame with a face, and ``ssim_pause``
  on frames whose own 40 ms of audio is silent (below -45 dBFS), where the mouth should simply be the
  input's (``pause_frames`` counts them);
- ``colour_shift``: distance between the mean Lab (a, b) of the output's and the input's lower face
  (a tint or a teal cast shows here);
- ``opening_r``: Pearson r between each output frame's mouth opening (inner-lip gap / mouth width,
  from the project's face mesh on the output frame) and the loudness (dBFS) of that frame's audio;
- ``frames_without_face``: output frames (among those whose reference frame has a face) where the face
  detector finds no face at all: a broken face, or one pasted somewhere else.

A photo reference is every frame's input; a video reference loops as ``infer`` loops it.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from ..audio import SAMPLE_RATE, load_audio
from ..face import FaceDetector, analyse_clip
from ..media import iter_video_frames, read_face_source

SILENT_DB = -45.0
INNER_GAP = (13, 14)          # face-mesh points: inner upper and lower lip, mid-mouth
MOUTH_CORNERS = (78, 308)

__all__ = ["SILENT_DB", "ssim", "sharpness", "frame_levels", "evaluate"]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two grey images (Gaussian window, sigma 1.5, the usual constants)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of a BGR image's grey version: high for crisp detail, low for blur."""
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


def _nan_mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")


def _ratio(out: list, inp: list) -> float:
    return float(np.mean(out) / max(np.mean(inp), 1e-9)) if inp else float("nan")


def evaluate(video: str, face: str, audio: Optional[str] = None, progress: bool = False) -> dict:
    """The look figures of ``video`` against its input ``face``; ``audio`` defaults to the video's own."""
    source = read_face_source(face)
    outputs = [f.image for f in iter_video_frames(video)]
    n = len(outputs)
    inputs = source.frames[:1] * n if source.is_image else [source.frames[i % len(source.frames)] for i in range(n)]
    faces = analyse_clip(source.frames[:1] if source.is_image else source.frames[:n], static=source.is_image,
                         progress=progress, name=source.name)
    levels = frame_levels(load_audio(audio or video), n, source.fps)

    sharp_out, sharp_in, all_ssim, pause_ssim, shift, openings = [], [], [], [], [], []
    talking = []                                  # indices into sharp_out / sharp_in of non-silent frames
    without_face = 0
    with FaceDetector() as detector:
        for i, (out, inp) in enumerate(zip(outputs, inputs)):
            j = 0 if source.is_image else i % len(faces.boxes)
            if not faces.has_face[j]:
                continue
            if out.shape != inp.shape:
                out = cv2.resize(out, (inp.shape[1], inp.shape[0]))
            x1, y1, x2, y2 = faces.boxes[j]
            lower = (slice(y1 + (y2 - y1) // 2, y2), slice(x1, x2))
            o, p = out[lower], inp[lower]
            sharp_out.append(sharpness(o))
            sharp_in.append(sharpness(p))
            value = ssim(cv2.cvtColor(o, cv2.COLOR_BGR2GRAY), cv2.cvtColor(p, cv2.COLOR_BGR2GRAY))
            all_ssim.append(value)
            if levels[i] < SILENT_DB:
                pause_ssim.append(value)
            else:
                talking.append(len(sharp_out) - 1)
            lab_o = cv2.cvtColor(o, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64).mean(axis=0)
            lab_p = cv2.cvtColor(p, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64).mean(axis=0)
            shift.append(float(np.hypot(*(lab_o[1:] - lab_p[1:]))))
            found = detector.detect(out)
            if found is None:
                without_face += 1
            elif found.landmarks is not None:
                lm = found.landmarks
                gap = np.linalg.norm(lm[INNER_GAP[0]] - lm[INNER_GAP[1]])
                width = max(np.linalg.norm(lm[MOUTH_CORNERS[0]] - lm[MOUTH_CORNERS[1]]), 1e-6)
                openings.append((i, gap / width))
    idx = np.array([i for i, _ in openings], int)
    gaps = np.array([g for _, g in openings])
    r = float(np.corrcoef(gaps, levels[idx])[0, 1]) if len(idx) > 2 and gaps.std() > 0 else float("nan")
    return {
        "frames": n,
        "sharpness": _ratio(sharp_out, sharp_in),
        "sharpness_speech": _ratio([sharp_out[k] for k in talking], [sharp_in[k] for k in talking]),
        "ssim": _nan_mean(all_ssim),
        "ssim_pause": _nan_mean(pause_ssim),
        "pause_frames": len(pause_ssim),
        "colour_shift": _nan_mean(shift),
        "opening_r": r,
        "frames_without_face": without_face,
        "judged_frames": len(sharp_in),
    }

"""The inputs that int8 calibration measures activation ranges on: real mel windows and real face crops.

Activation ranges must be measured on what the generator really sees. Random tensors would calibrate
the wrong ranges (speech mels are mostly negative, faces are smooth and skin-coloured), and the
quantized model would lose precision exactly where it matters.

The default set needs nothing outside the installed package, because ``auto`` builds an int8 engine
wherever lipsync-rt runs, including a plain ``pip install`` that has no ``examples/`` folder. It comes
from ``lipsync_rt/assets/calibration.npz`` (225 KB): the example face photo (its JPEG bytes), the padded
face box the detector found in it, and the mel spectrogram of the example speech. Mel windows of that
speech are paired with crops around the box with random shifts, scales, brightness, contrast, white
balance and mirroring, so the ranges cover more than one photo's exposure. Storing the box and the mel
(rather than detecting and computing them at build time) keeps a build free of the face detector and
makes it give the same graphs as the calibration from ``examples/`` did before the asset existed.

``source`` adds more: a corpus directory in the training layout (``<set>/<clip>/<n>.jpg`` face crops and
``audio.wav``, e.g. the synthetic corpus ``data/synth``), or a video or photo file with a face.

The asset is made from the repository's examples by ``python -m lipsync_rt.engine.calibration``.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from ..errors import LipSyncError, MediaError, NoFaceError
from ..lipsync import IMG_SIZE, face_input, mel_input

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ASSET = Path(__file__).resolve().parents[1] / "assets" / "calibration.npz"
ASSET_LABEL = "the bundled calibration face"
FPS = 25.0


@dataclass(frozen=True)
class CalibrationSet:
    """Real generator inputs for calibration, and a line saying where they came from (for metadata)."""

    mel: np.ndarray   # [N, 1, 80, 16] float32
    face: np.ndarray  # [N, 6, 96, 96] float32
    description: str

    def __len__(self) -> int:
        return len(self.mel)


@dataclass(frozen=True)
class BundledSample:
    """The contents of the calibration asset: one face photo with its padded box, and a speech mel."""

    image: np.ndarray                 # BGR uint8
    box: tuple[int, int, int, int]    # x1, y1, x2, y2 with the default pads
    mel: np.ndarray                   # [80, T] float32, ``audio.melspectrogram`` of 16 kHz speech


# -- the bundled asset ---------------------------------------------------------------------------------


def load_bundled(path: PathLike = ASSET) -> BundledSample:
    """The calibration asset, or a one-line LipSyncError when the installation lacks it or it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as data:
            jpeg, box, mel = data["face_jpeg"], data["face_box"], data["mel"]
    except FileNotFoundError:
        raise LipSyncError(f"the int8 calibration data is missing ({path}); reinstall lipsync-rt") from None
    except (OSError, ValueError, KeyError) as exc:
        raise LipSyncError(f"the int8 calibration data {path} is damaged ({type(exc).__name__}); reinstall lipsync-rt") from None
    image = cv2.imdecode(np.asarray(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None or mel.ndim != 2 or mel.shape[0] != 80 or box.shape != (4,):
        raise LipSyncError(f"the int8 calibration data {path} is damaged; reinstall lipsync-rt")
    return BundledSample(image, tuple(int(v) for v in box), np.asarray(mel, np.float32))


def write_bundled(face: PathLike, speech: PathLike, out: PathLike = ASSET) -> Path:
    """Make the calibration asset from a face photo and a speech file (detects the face once, here)."""
    from ..atomic import atomic_path
    from ..audio import load_audio, melspectrogram

    jpeg = np.frombuffer(Path(face).read_bytes(), np.uint8)
    image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    if image is None:
        raise LipSyncError(f"cannot read the face photo {face}")
    box = np.asarray(_face_box(image, str(face)), np.int32)
    mel = melspectrogram(load_audio(speech)).astype(np.float32)
    with atomic_path(out, suffix=".npz") as tmp:
        np.savez_compressed(tmp, face_jpeg=jpeg, face_box=box, mel=mel)
    return Path(out)


# -- where the inputs come from ----------------------------------------------------------------------


def _mel_windows(mel: np.ndarray) -> np.ndarray:
    from ..audio import mel_chunks

    return mel_chunks(mel, FPS)


def _wav_windows(path: PathLike) -> np.ndarray:
    from ..audio import load_audio, melspectrogram

    return _mel_windows(melspectrogram(load_audio(path)))


def _jittered_crops(image: np.ndarray, box: Sequence[int], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` 96x96 crops around ``box`` with the shifts, scales and exposure a tracker and a camera give."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    crops = []
    for _ in range(count):
        scale = rng.uniform(0.88, 1.12)
        bw, bh = (x2 - x1) * scale, (y2 - y1) * scale
        cx = (x1 + x2) / 2 + rng.uniform(-0.08, 0.08) * (x2 - x1)
        cy = (y1 + y2) / 2 + rng.uniform(-0.08, 0.08) * (y2 - y1)
        a, b = int(max(0, cx - bw / 2)), int(max(0, cy - bh / 2))
        c, d = int(min(w, cx + bw / 2)), int(min(h, cy + bh / 2))
        crop = cv2.resize(image[b:d, a:c], (IMG_SIZE, IMG_SIZE)).astype(np.float32)
        crop = (crop - 128.0) * rng.uniform(0.8, 1.2) + 128.0 + rng.uniform(-30, 30)  # contrast, brightness
        crop = crop * rng.uniform(0.9, 1.1, size=3)  # white balance
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(np.clip(crop, 0, 255).astype(np.uint8))
    return np.stack(crops)


def _face_box(image: np.ndarray, name: str) -> tuple[int, int, int, int]:
    from ..face import DEFAULT_PADS, FaceDetector, apply_pads

    with FaceDetector() as detector:
        found = detector.detect(image)
    if found is None:
        raise NoFaceError(f"no face found in {name}, so it cannot calibrate the int8 engine")
    return apply_pads(found.box, DEFAULT_PADS, image.shape)


def _pairs(crops: np.ndarray, windows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Inference pairs each crop with itself as the reference; a fifth get another crop as reference,
    # as training and avatar clips do.
    references = crops.copy()
    swap = rng.random(len(crops)) < 0.2
    references[swap] = crops[rng.permutation(len(crops))[swap]]
    mel = windows[rng.integers(0, len(windows), len(crops))]
    return np.ascontiguousarray(mel_input(mel)), np.ascontiguousarray(face_input(crops, references))


def bundled_inputs(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mel windows of the bundled speech with jittered crops of the bundled face."""
    sample = load_bundled()
    rng = np.random.default_rng(seed)
    crops = _jittered_crops(sample.image, sample.box, count, rng)
    return _pairs(crops, _mel_windows(sample.mel), rng)


def _corpus_clips(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("audio.wav") if any(p.parent.glob("*.jpg"))})


def corpus_inputs(root: PathLike, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (mel window, face crop) pairs from a corpus in the training layout."""
    root = Path(root)
    clips = _corpus_clips(root)
    if not clips:
        raise LipSyncError(f"{root} holds no clips (<set>/<clip>/<n>.jpg with audio.wav), so it cannot calibrate")
    rng = np.random.default_rng(seed)
    picked = [clips[i] for i in rng.permutation(len(clips))[: max(1, min(len(clips), count // 4))]]
    per_clip = -(-count // len(picked))
    mels, crops = [], []
    for clip in picked:
        frames = sorted((int(p.stem), p) for p in clip.glob("*.jpg") if p.stem.isdigit())
        try:
            windows_mel = _wav_windows(clip / "audio.wav")
        except MediaError as exc:
            log.warning("calibration: skipping %s (%s)", clip, exc)
            continue
        usable = [(k, p) for k, p in frames if k < len(windows_mel)]
        for k, p in random.Random(int(rng.integers(1 << 30))).sample(usable, min(per_clip, len(usable))):
            image = cv2.imread(str(p))
            if image is None:
                continue
            crops.append(cv2.resize(image, (IMG_SIZE, IMG_SIZE)))
            mels.append(windows_mel[k])
    if not crops:
        raise LipSyncError(f"no readable frames with audio in {root}, so it cannot calibrate")
    crops_arr, mel_arr = np.stack(crops)[:count], np.stack(mels)[:count]
    return np.ascontiguousarray(mel_input(mel_arr)), np.ascontiguousarray(face_input(crops_arr))


def video_inputs(path: PathLike, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the tracked face in a video (or photo) with its own speech (the bundled speech if it has none)."""
    from ..face import analyse_clip
    from ..media import is_image, iter_video_frames, read_face_source

    if is_image(path):
        frames = read_face_source(path).frames
    else:  # only the frames we need are decoded: a long video never has to fit in memory
        frames = [f.image for f in itertools.islice(iter_video_frames(path), max(count, 1) * 4)]
    faces = analyse_clip(frames, name=str(path), static=len(frames) == 1)
    rng = np.random.default_rng(seed)
    idx = [i for i in range(len(faces.has_face)) if faces.has_face[i]]
    crops = np.concatenate([
        _jittered_crops(frames[i], faces.boxes[i], 1, rng) for i in rng.choice(idx, count, replace=True)
    ])
    try:
        windows = _wav_windows(path)
    except MediaError:
        windows = _mel_windows(load_bundled().mel)
    return _pairs(crops, windows, rng)


def calibration_set(source: Optional[PathLike] = None, count: int = 64, seed: int = 0) -> CalibrationSet:
    """``count`` real input pairs: from the bundled sample, plus half from ``source`` when given."""
    if count < 1:
        raise LipSyncError(f"calibration needs at least one sample, got {count}")
    if source is None:
        mel, face = bundled_inputs(count, seed)
        return CalibrationSet(mel, face, f"{count} jittered crops of {ASSET_LABEL} with its speech's mel windows")
    path = Path(source)
    if not path.exists():
        raise LipSyncError(f"calibration source not found: {path}")
    extra = count // 2
    mel_a, face_a = bundled_inputs(count - extra, seed)
    if path.is_dir():
        mel_b, face_b = corpus_inputs(path, extra, seed)
    else:
        mel_b, face_b = video_inputs(path, extra, seed)
    return CalibrationSet(
        np.concatenate([mel_a, mel_b]), np.concatenate([face_a, face_b]),
        f"{len(mel_a)} jittered crops of {ASSET_LABEL} + {len(mel_b)} from {path}",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lipsync_rt.engine.calibration [FACE SPEECH]``: remake the asset (default: examples/)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    examples = Path(__file__).resolve().parents[2] / "examples"
    face, speech = args if len(args) == 2 else (examples / "face.jpg", examples / "speech.wav")
    out = write_bundled(face, speech)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB) from {face} and {speech}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

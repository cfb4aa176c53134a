"""Static int8 quantization of the exported graphs, calibrated on real inputs.

Activation ranges are measured on what the generator really sees: mel windows of speech and 96x96
face crops. Random tensors would calibrate the wrong ranges (speech mels are mostly negative, faces
are smooth and skin-coloured), and the quantized model would lose precision exactly where it matters.

The default calibration set needs nothing but the repository's examples: mel windows of
``examples/speech.wav`` paired with crops of ``examples/face.jpg`` around its detected face, with
random shifts, scales, brightness and contrast, so the ranges cover more than one photo's exposure.
``source`` adds more: a corpus directory in the training layout (``<set>/<clip>/<n>.jpg`` face crops and
``audio.wav``, e.g. the synthetic corpus ``data/synth``), or a video or photo file with a face.

Format: QOperator (QLinearConv, QLinearAdd, QLinearConcat), per-channel int8 weights and uint8
activations. onnxruntime runs these as NHWC int8 kernels (VNNI where the CPU has it); the residual
Add+ReLU and the decoder's Concat stay in int8, so no float tensor appears between the first and last
layer. QDQ measured no faster here; QOperator needs no graph fusions at load time.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import cv2
import numpy as np

from ..errors import LipSyncError, MediaError, NoFaceError
from ..lipsync import IMG_SIZE, face_input, mel_input

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FACE = EXAMPLES / "face.jpg"
EXAMPLE_SPEECH = EXAMPLES / "speech.wav"
FPS = 25.0
MEL_STEP = 16
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class CalibrationSet:
    """Real generator inputs for calibration, and a line saying where they came from (for metadata)."""

    mel: np.ndarray   # [N, 1, 80, 16] float32
    face: np.ndarray  # [N, 6, 96, 96] float32
    description: str

    def __len__(self) -> int:
        return len(self.mel)


# -- where the inputs come from ----------------------------------------------------------------------


def _mel_windows(wav: np.ndarray) -> np.ndarray:
    from ..audio import mel_chunks, melspectrogram

    return mel_chunks(melspectrogram(wav), FPS)


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

    detector = FaceDetector()
    try:
        found = detector.detect(image)
    finally:
        detector.close()
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


def example_inputs(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mel windows of ``examples/speech.wav`` with jittered crops of the face in ``examples/face.jpg``."""
    from ..audio import load_audio

    if not (EXAMPLE_FACE.is_file() and EXAMPLE_SPEECH.is_file()):
        raise LipSyncError(
            f"the calibration examples are missing ({EXAMPLE_FACE}, {EXAMPLE_SPEECH}); "
            "pass --calibration with a corpus directory or a face video"
        )
    rng = np.random.default_rng(seed)
    image = cv2.imread(str(EXAMPLE_FACE))
    crops = _jittered_crops(image, _face_box(image, str(EXAMPLE_FACE)), count, rng)
    return _pairs(crops, _mel_windows(load_audio(EXAMPLE_SPEECH)), rng)


def _corpus_clips(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("audio.wav") if any(p.parent.glob("*.jpg"))})


def corpus_inputs(root: PathLike, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (mel window, face crop) pairs from a corpus in the training layout."""
    from ..audio import load_audio

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
            windows_mel = _mel_windows(load_audio(clip / "audio.wav"))
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
    """Crops of the tracked face in a video (or photo) with its own speech (the example's if it has none)."""
    from ..audio import load_audio
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
        wav = load_audio(path)
    except MediaError:
        wav = load_audio(EXAMPLE_SPEECH)
    return _pairs(crops, _mel_windows(wav), rng)


def calibration_set(source: Optional[PathLike] = None, count: int = 64, seed: int = 0) -> CalibrationSet:
    """``count`` real input pairs: from the examples, plus half from ``source`` when given."""
    if count < 1:
        raise LipSyncError(f"calibration needs at least one sample, got {count}")
    if source is None:
        mel, face = example_inputs(count, seed)
        return CalibrationSet(mel, face, f"{count} jittered crops of examples/face.jpg with examples/speech.wav mels")
    path = Path(source)
    if not path.exists():
        raise LipSyncError(f"calibration source not found: {path}")
    extra = count // 2
    mel_a, face_a = example_inputs(count - extra, seed)
    if path.is_dir():
        mel_b, face_b = corpus_inputs(path, extra, seed)
    else:
        mel_b, face_b = video_inputs(path, extra, seed)
    return CalibrationSet(
        np.concatenate([mel_a, mel_b]), np.concatenate([face_a, face_b]),
        f"{len(mel_a)} jittered crops of examples/face.jpg + {len(mel_b)} from {path}",
    )


# -- quantization --------------------------------------------------------------------------------------


def _reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self):  # noqa: ANN201 - onnxruntime's interface
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

    return _Feeds()


def batched_feeds(arrays: dict[str, np.ndarray], batch: int = CALIBRATION_BATCH) -> list[dict[str, np.ndarray]]:
    """Split named arrays of equal length into calibration batches."""
    n = len(next(iter(arrays.values())))
    return [{k: np.ascontiguousarray(v[i : i + batch]) for k, v in arrays.items()} for i in range(0, n, batch)]


def int8_arithmetic() -> str:
    """``vnni`` when this x86 CPU has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI), else
    ``plain``. Without them onnxruntime's u8 x s8 kernels add pairs of products in 16 bits, which can
    saturate on full-range weights: such CPUs need 7-bit ranges (``reduce_range``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "plain"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "vnni" if {"avx512_vnni", "avx_vnni"} & set(flags) else "plain"


def quantize_graph(fp32_path: PathLike, int8_path: PathLike, feeds: Iterable[dict[str, np.ndarray]]) -> None:
    """Static int8 quantization (QOperator, per-channel weights, MinMax ranges) of one exported graph;
    7-bit ranges on CPUs without VNNI (see ``int8_arithmetic``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feeds = list(feeds)
    with tempfile.TemporaryDirectory(prefix="lipsync-quant-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # No onnxruntime optimisation here: its constant sharing merges equal initializers (the four
        # equal biases of a sub-pixel layer), and the quantizer would then scale one bias for four convs.
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            _reader(feeds),
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=int8_arithmetic() != "vnni",
            extra_options={"CalibTensorRangeSymmetric": False},
        )

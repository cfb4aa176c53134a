"""The LipSync stage's arithmetic: face crops and mel windows in, the generator's input tensors out.

Kept apart from any engine so that the offline path, the live pipeline and the training data loader
build exactly the same inputs as the reference: a 96x96 BGR crop, its lower half zeroed (rows 48..95)
as the target, the unmasked crop as the reference, both scaled to [0, 1].

The arrays are also laid out in memory as the reference's are: NHWC data viewed as NCHW (the
reference transposes numpy arrays and hands them to torch without a copy). oneDNN picks its CPU
convolution algorithm by memory layout, and the last bits of the output, hence the uint8 pixels
after truncation, depend on it; with the same layout the public checkpoints give the reference's
frames bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

IMG_SIZE = 96

Box = tuple[int, int, int, int]

# uint8 -> float32 exactly as the reference computes it (divide in float64, round once to float32),
# as a lookup so a batch costs no float64 temporary.
_UNIT = (np.arange(256) / 255.0).astype(np.float32)


def crop_face(frame: np.ndarray, box: Box) -> np.ndarray:
    """The 96x96 crop of ``frame[y1:y2, x1:x2]``, resized bilinearly as the reference does."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return cv2.resize(frame[y1:y2, x1:x2], (IMG_SIZE, IMG_SIZE))


def face_input(crops: np.ndarray, references: np.ndarray | None = None) -> np.ndarray:
    """``B x 6 x 96 x 96`` float32 (reference layout): masked targets, then references (default: the same)."""
    crops = np.asarray(crops)
    references = crops if references is None else np.asarray(references)
    masked = crops.copy()
    masked[:, IMG_SIZE // 2 :] = 0
    stacked = _UNIT[np.concatenate((masked, references), axis=3)]
    return stacked.transpose(0, 3, 1, 2)


def mel_input(windows: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``B x 1 x 80 x 16`` float32 from a stack of ``80 x 16`` mel windows (reference layout)."""
    stacked = np.asarray(windows, dtype=np.float32)
    return stacked.reshape(*stacked.shape, 1).transpose(0, 3, 1, 2)


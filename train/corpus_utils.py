"""Pieces both corpus writers share: the LRS2 preprocessed layout and writing it safely.

The layout is what the reference training scripts read (docs/architecture.md, "Models and training")::

    <root>/<set_id>/<clip_id>/<frame_index>.jpg   face crops, frame indices from 0 at 25 fps (gaps allowed)
    <root>/<set_id>/<clip_id>/audio.wav           the clip's audio (here: 16 kHz mono s16)
    <root>/filelists/{train,val,test}.txt         one ``<set_id>/<clip_id>`` per line

A clip folder only ever appears complete: it is written under a hidden temporary name next to its
final place and renamed in one step, so an interrupted run leaves no half-written clip that a later
run (or a training job) would mistake for a finished one. Leftover temporary folders are swept
before a clip is written again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import wave
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import cv2
import numpy as np

from lipsync_rt.atomic import write_text_atomic

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS      # 640: video frame t is samples [640 t, 640 (t + 1))
#: cv2.imwrite's default, which the reference preprocess.py used.
JPEG_QUALITY = 95
SPLITS = ("train", "val", "test")
_TMP_PREFIX = ".tmp-"


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float [-1, 1] to s16 PCM with rounding, so that ``from_int16(to_int16(x))`` is what a reader gets."""
    x = np.clip(np.asarray(samples, dtype=np.float64), -1.0, 32767 / 32768)
    return np.round(x * 32768.0).astype(np.int16)


def from_int16(pcm: np.ndarray) -> np.ndarray:
    return (np.asarray(pcm, dtype=np.float32) / 32768.0).astype(np.float32)


def write_wav(path: str | os.PathLike, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Mono s16 wav. Float input is quantised with :func:`to_int16`; int16 is written as it is.

    The ``wave`` module writes a fixed 44-byte header with no timestamps, so equal samples give equal
    bytes, which the corpus's determinism promise depends on.
    """
    pcm = samples if np.asarray(samples).dtype == np.int16 else to_int16(samples)
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float32 mono samples, rate) of a s16 wav written by :func:`write_wav`."""
    with wave.open(os.fspath(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        channels, rate = w.getnchannels(), w.getframerate()
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    return from_int16(pcm), rate


def write_jpg(path: str | os.PathLike, image: np.ndarray, quality: int = JPEG_QUALITY) -> None:
    """Baseline JPEG via cv2 with a fixed quality: libjpeg has no randomness, so bytes are repeatable."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError(f"could not encode {path}")
    with open(path, "wb") as f:
        f.write(data.tobytes())


def clip_dir(root: str | os.PathLike, set_id: str, clip_id: str) -> Path:
    return Path(root) / set_id / clip_id


def sweep_stale(final: Path) -> None:
    """Remove temporary folders a killed run left for this clip."""
    parent = final.parent
    if not parent.is_dir():
        return
    for leftover in parent.glob(f"{_TMP_PREFIX}{final.name}.*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``final`` when the block succeeds.

    On an exception the temporary folder is deleted and ``final`` is untouched. ``final`` must not
    exist (callers skip finished clips first); the rename is atomic on one file system.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}.", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)          # mkdtemp makes it 0700; finished clips are ordinary folders
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_temp_name(name: str) -> bool:
    return name.startswith(_TMP_PREFIX)




def write_filelists(root: str | os.PathLike, splits: Mapping[str, Iterable[str]]) -> None:
    """``filelists/<split>.txt`` with sorted ``set/clip`` lines (sorted so output never depends on
    the order workers finished in); every split file is written, empty ones too."""
    for split in SPLITS:
        lines = sorted(splits.get(split, ()))
        write_text_atomic(Path(root) / "filelists" / f"{split}.txt", "".join(f"{x}\n" for x in lines))


def read_filelist(path: str | os.PathLike) -> list[str]:
    """Entries of a file list; like the reference, only the first whitespace token of a line counts."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            out.append(parts[0])
    return out

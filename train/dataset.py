"""Training samples for the lip-sync expert and the generator, from LRS2-layout data.

Layout: ``<root>/<set>/<clip>/<frame_index>.jpg`` (face crops of any size) and ``audio.wav`` per clip;
``<filelists>/{train,val,test}.txt`` list ``<set>/<clip>`` (first whitespace token of each line).
Frame numbering may have gaps where the face detector found nothing.

The samples are the reference's (docs/architecture.md, "Models and training"); where this file differs,
it is for a reason:

- A sample is a pure function of ``(seed, idx)``. Runs are reproducible whatever the number of loader
  workers or DDP ranks, an eval set is fixed by its seed, and a resumed run draws fresh samples instead
  of replaying old ones. (The reference ignores ``idx`` and uses the global RNG.)
- ``__len__`` is the number of samples per epoch, chosen by the caller, not the number of clips.
- Each clip's mel is computed once per process and kept (LRU), not recomputed on every access.
- Bad data (a gap in the frame numbers, an unreadable jpg, a mel window outside the audio, unreadable
  audio) makes the draw start over and is counted. Each sample carries the counts of what was skipped
  to produce it, so the training loop can add them up across workers and ranks.
- The expert's negatives are at least ``min_offset`` frames away from the positive (the reference only
  asks for a different frame, so one frame, which is barely off-sync).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from lipsync_rt.audio import MEL_SILENCE, MEL_STEP, MELS_PER_SECOND, N_MELS, load_audio, melspectrogram

log = logging.getLogger(__name__)

T = 5                 # frames per sample (syncnet_T)
FPS = 25              # LRS2 frame rate; the mel index of frame f is int(80 f / FPS)
IMG_SIZE = 96
MIN_FRAMES = 3 * T + 1  # clips with <= 3T frames are skipped, as in the reference
MAX_TRIES = 1000      # draws per sample before we conclude the data itself is broken

# Where frame k's own mel window starts, in mel columns relative to the reference inference's
# int(80 k / 25): the model's ``mel_offset``, saved in its checkpoint so inference uses the very same
# windows. -8 centres the 200 ms window on the frame (L = 112.5 ms live); 0 is the reference's
# inference alignment (L = 212.5 ms). The reference *trained* one frame earlier than it inferred
# (get_segmented_mels: int(80 (k - 1) / 25), about -3 here); this project trains and infers alike.
MEL_OFFSET = -8
# Expert negatives: the default distance, in frames, between a negative's frames and the audio.
MIN_OFFSET = 2

SKIP_KINDS = ("gap", "unreadable", "audio_range", "bad_audio")


# ----------------------------------------------------------------------------------------------
# Frame <-> mel alignment (docs/architecture.md, "Timing"). Everything that indexes the mel goes through these functions.


def mel_start(frame: int) -> int:
    """First mel column of ``frame``: int(80 * frame / 25), in exact integer arithmetic."""
    return (MELS_PER_SECOND * frame) // FPS


def mel_window(mel: np.ndarray, frame: int) -> Optional[np.ndarray]:
    """The ``80 x 16`` window that spans frames ``frame .. frame+4`` (the reference's crop_audio_window).

    This is the expert's input and the generator's sync-loss mel. None when it would start before
    the audio or run off its end: the reference rejects windows that are not exactly 16 columns.
    """
    if frame < 0:
        return None
    start = mel_start(frame)
    if start + MEL_STEP > mel.shape[1]:
        return None
    return mel[:, start : start + MEL_STEP]


def frame_mel_windows(mel: np.ndarray, start: int, mel_offset: int = MEL_OFFSET) -> Optional[np.ndarray]:
    """The generator's per-frame mels, ``T x 1 x 80 x 16``, for frames ``start .. start+T-1``.

    Frame k gets columns ``[int(80 k / 25) + mel_offset, +16)``, exactly the window inference gives a
    model with that ``mel_offset`` (``lipsync_rt.audio.mel_chunks``): columns before the audio's start
    are silence, as they are at inference. None when a window runs past the audio's end.
    """
    out = np.empty((T, 1, N_MELS, MEL_STEP), np.float32)
    for i, k in enumerate(range(start, start + T)):
        first = mel_start(k) + int(mel_offset)
        if first + MEL_STEP > mel.shape[1] or k < 0:
            return None
        if first < 0:
            out[i, 0, :, :-first] = MEL_SILENCE
            out[i, 0, :, -first:] = mel[:, :MEL_STEP + first]
        else:
            out[i, 0] = mel[:, first:first + MEL_STEP]
    return out


def expert_faces(frames: torch.Tensor) -> torch.Tensor:
    """``B x 3 x T x H x W`` frames -> the expert's ``B x 3T x H/2 x W`` input: lower halves, frame-major.

    Channels ``3t .. 3t+2`` are frame t (BGR). The dataset and the generator's sync loss both use this,
    so the expert always sees real and generated faces laid out the same way.
    """
    b, c, t, h, w = frames.shape
    return frames[:, :, :, h // 2 :].permute(0, 2, 1, 3, 4).reshape(b, c * t, h - h // 2, w)


# ----------------------------------------------------------------------------------------------
# The corpus: the clips of one filelist, their frames and mels


@dataclass(frozen=True)
class Clip:
    name: str            # "<set>/<clip>", as in the filelist
    path: Path
    frames: np.ndarray   # sorted frame indices found at scan time
    starts: np.ndarray   # frames that can start a T-frame window without running off the last frame

    def has_window(self, start: int) -> bool:
        """Frames ``start .. start+T-1`` all exist (no detection gap). A sorted-array count, not a set:
        sets of ints for tens of thousands of clips would cost every loader worker hundreds of MB."""
        lo, hi = np.searchsorted(self.frames, (start, start + T))
        return int(hi - lo) == T


def read_filelist(path: Path) -> list[str]:
    """Clip names of a filelist: the first whitespace token of each non-blank line."""
    names = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if parts:
            names.append(parts[0])
    return names


def _frame_indices(path: Path) -> list[int]:
    indices = []
    with os.scandir(path) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() == ".jpg" and stem.isdigit():
                indices.append(int(stem))
    return sorted(indices)


class Corpus:
    """The usable clips of one split, with a per-process mel cache and counters of skipped data."""

    def __init__(
        self,
        data_root: str | os.PathLike,
        split: str,
        filelists: str | os.PathLike | None = None,
        mel_cache_clips: int = 4096,
    ):
        self.root = Path(data_root)
        listdir = Path(filelists) if filelists else self.root / "filelists"
        listfile = listdir / f"{split}.txt"
        if not listfile.is_file():
            raise FileNotFoundError(f"no filelist {listfile} (use --filelists to point elsewhere)")
        self.split = split
        self.clips: list[Clip] = []
        missing, short = 0, 0
        for name in read_filelist(listfile):
            path = self.root / name
            if not path.is_dir():
                missing += 1
                continue
            frames = np.asarray(_frame_indices(path), dtype=np.int64)
            if len(frames) < MIN_FRAMES:
                short += 1
                continue
            starts = frames[frames <= frames[-1] - (T - 1)]
            self.clips.append(Clip(name, path, frames, starts))
        if not self.clips:
            raise ValueError(
                f"{listfile}: no usable clips under {self.root} ({missing} missing, {short} with <= {3 * T} frames)"
            )
        self.scan_report = f"{split}: {len(self.clips)} clips ({missing} missing, {short} too short, skipped)"
        self.counts = {kind: 0 for kind in SKIP_KINDS}
        self._mels: OrderedDict[int, Optional[np.ndarray]] = OrderedDict()
        self._mel_cache_clips = mel_cache_clips

    def __len__(self) -> int:
        return len(self.clips)

    def mel(self, index: int) -> Optional[np.ndarray]:
        """The clip's ``80 x T_mel`` mel, computed at the first request in this process; None if unreadable."""
        if index in self._mels:
            self._mels.move_to_end(index)
            mel = self._mels[index]
        else:
            try:
                mel = melspectrogram(load_audio(self.clips[index].path / "audio.wav"))
                if not np.isfinite(mel).all():
                    raise ValueError("non-finite mel")
            except Exception as exc:  # any broken audio means: skip this clip's samples, count them
                log.debug("%s: unreadable audio (%s)", self.clips[index].name, exc)
                mel = None
            self._mels[index] = mel
            if len(self._mels) > self._mel_cache_clips:
                self._mels.popitem(last=False)
        if mel is None:
            self.counts["bad_audio"] += 1
        return mel

    def mel_window(self, index: int, frame: int, mel_offset: Optional[int] = None) -> Optional[np.ndarray]:
        """``mel_window`` (or, with ``mel_offset``, ``frame_mel_windows``) of a clip, counting failures."""
        mel = self.mel(index)
        if mel is None:
            return None
        out = mel_window(mel, frame) if mel_offset is None else frame_mel_windows(mel, frame, mel_offset)
        if out is None:
            self.counts["audio_range"] += 1
        return out

    def window(self, index: int, start: int) -> Optional[np.ndarray]:
        """Frames ``start .. start+T-1`` as ``T x 96 x 96 x 3`` uint8 BGR; None (counted) on a gap or bad jpg."""
        clip = self.clips[index]
        if not clip.has_window(start):
            self.counts["gap"] += 1
            return None
        images = []
        for f in range(start, start + T):
            image = cv2.imread(str(clip.path / f"{f}.jpg"), cv2.IMREAD_COLOR)
            if image is None:  # corrupt, or deleted since the scan
                self.counts["unreadable"] += 1
                return None
            if image.shape[:2] != (IMG_SIZE, IMG_SIZE):
                image = cv2.resize(image, (IMG_SIZE, IMG_SIZE))
            images.append(image)
        return np.stack(images)


def _to_tensor(window: np.ndarray) -> torch.Tensor:
    """``T x H x W x 3`` uint8 -> ``3 x T x H x W`` float in [0, 1] (BGR, no normalisation, as the reference)."""
    return torch.from_numpy(window).permute(3, 0, 1, 2).float().div_(255.0)


def _far_from(frames: np.ndarray, frame: int, min_offset: int) -> np.ndarray:
    return frames[np.abs(frames - frame) >= max(1, min_offset)]


class _Samples(Dataset):
    """Shared machinery: ``idx`` seeds the draw; failed draws start over; skip counts travel with the sample."""

    def __init__(self, corpus: Corpus, length: int, seed: int):
        if length < 1:
            raise ValueError("length must be >= 1")
        self.corpus, self.length, self.seed = corpus, int(length), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(idx)])
        before = dict(self.corpus.counts)
        for _ in range(MAX_TRIES):
            sample = self._draw(rng)
            if sample is not None:
                sample["skipped"] = torch.tensor([self.corpus.counts[k] - before[k] for k in SKIP_KINDS])
                return sample
        raise RuntimeError(
            f"no valid sample in {MAX_TRIES} draws from {self.corpus.split} "
            f"(skipped: {dict((k, self.corpus.counts[k] - before[k]) for k in SKIP_KINDS)}); is the data broken?"
        )

    def _draw(self, rng: np.random.Generator) -> Optional[dict[str, torch.Tensor]]:
        raise NotImplementedError


class SyncDataset(_Samples):
    """Expert samples: 5 lower halves (``15 x 48 x 96``), the mel window at the positive start, a label.

    Half the samples are positives (frames and audio from the same start frame s), half negatives
    (frames from a start w of the same clip, |w - s| >= min_offset, with the audio still at s).
    """

    def __init__(self, corpus: Corpus, length: int, seed: int = 0, min_offset: int = MIN_OFFSET):
        super().__init__(corpus, length, seed)
        self.min_offset = int(min_offset)

    def _draw(self, rng: np.random.Generator) -> Optional[dict[str, torch.Tensor]]:
        index = int(rng.integers(len(self.corpus)))
        clip = self.corpus.clips[index]
        start = int(rng.choice(clip.starts))
        others = _far_from(clip.starts, start, self.min_offset)
        if others.size == 0:
            return None
        wrong = int(rng.choice(others))
        positive = bool(rng.random() < 0.5)
        frames_at = start if positive else wrong
        mel = self.corpus.mel_window(index, start)
        if mel is None:
            return None
        window = self.corpus.window(index, frames_at)
        if window is None:
            return None
        return {
            "faces": expert_faces(_to_tensor(window)[None])[0],
            "mel": torch.from_numpy(np.ascontiguousarray(mel))[None],
            "label": torch.tensor([1.0 if positive else 0.0]),
            "clip": torch.tensor(index),
            "start": torch.tensor(start),
            "frames_at": torch.tensor(frames_at),
        }


class GeneratorDataset(_Samples):
    """Generator samples (docs/architecture.md, "Models and training"): masked GT window + reference
    window, GT, per-frame mels, sync mel.

    ``x`` is ``6 x T x 96 x 96`` (channels 0-2 the GT frames with rows 48.. zeroed, 3-5 the reference
    window: T frames from another start of the same clip, unmasked); ``indiv_mels`` ``T x 1 x 80 x 16``
    (see ``frame_mel_windows``); ``mel`` ``1 x 80 x 16`` at the start frame, for the sync loss.
    """

    def __init__(
        self,
        corpus: Corpus,
        length: int,
        seed: int = 0,
        mel_offset: int = MEL_OFFSET,
        ref_min_offset: int = 1,
    ):
        super().__init__(corpus, length, seed)
        self.mel_offset = int(mel_offset)
        self.ref_min_offset = int(ref_min_offset)

    def _draw(self, rng: np.random.Generator) -> Optional[dict[str, torch.Tensor]]:
        index = int(rng.integers(len(self.corpus)))
        clip = self.corpus.clips[index]
        start = int(rng.choice(clip.starts))
        others = _far_from(clip.starts, start, self.ref_min_offset)
        if others.size == 0:
            return None
        ref_at = int(rng.choice(others))
        mel = self.corpus.mel_window(index, start)
        if mel is None:
            return None
        indiv = self.corpus.mel_window(index, start, mel_offset=self.mel_offset)
        if indiv is None:
            return None
        window = self.corpus.window(index, start)
        if window is None:
            return None
        reference = self.corpus.window(index, ref_at)
        if reference is None:
            return None
        gt = _to_tensor(window)
        masked = gt.clone()
        masked[:, :, IMG_SIZE // 2 :] = 0
        return {
            "x": torch.cat((masked, _to_tensor(reference)), dim=0),
            "indiv_mels": torch.from_numpy(np.ascontiguousarray(indiv)),
            "mel": torch.from_numpy(np.ascontiguousarray(mel))[None],
            "gt": gt,
            "clip": torch.tensor(index),
            "start": torch.tensor(start),
            "ref_at": torch.tensor(ref_at),
        }


# ----------------------------------------------------------------------------------------------
# Off-sync detection: can the expert pick the true audio offset among +-max_shift frames?


def offsync_pairs(corpus: Corpus, count: int, max_shift: int = 15, seed: int = 0) -> list[tuple[int, int]]:
    """Up to ``count`` (clip, start) pairs whose frames exist and whose every shifted mel window fits.

    Chosen by ``seed`` alone, so the metric is computed on the same windows at every eval.
    """
    pairs = []
    for index, clip in enumerate(corpus.clips):
        mel = corpus.mel(index)
        if mel is None:
            continue
        for s in clip.starts.tolist():
            if s - max_shift < 0 or mel_window(mel, s + max_shift) is None:
                continue
            if clip.has_window(s):
                pairs.append((index, s))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))[:count]
    return sorted(pairs[i] for i in order)


class OffsyncDataset(Dataset):
    """For each pair: the 5 frames' expert input and the mel windows shifted by ``-max_shift .. +max_shift``."""

    def __init__(self, corpus: Corpus, pairs: Sequence[tuple[int, int]], max_shift: int = 15):
        self.corpus, self.pairs, self.max_shift = corpus, list(pairs), int(max_shift)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index, start = self.pairs[i]
        window = self.corpus.window(index, start)
        mels = [self.corpus.mel_window(index, start + o) for o in range(-self.max_shift, self.max_shift + 1)]
        ok = window is not None and all(m is not None for m in mels)
        faces = expert_faces(_to_tensor(window)[None])[0] if window is not None else torch.zeros(3 * T, IMG_SIZE // 2, IMG_SIZE)
        stacked = np.stack(mels)[:, None] if ok else np.zeros((2 * self.max_shift + 1, 1, 80, MEL_STEP), np.float32)
        return {"faces": faces, "mels": torch.from_numpy(np.ascontiguousarray(stacked)), "ok": torch.tensor(ok)}

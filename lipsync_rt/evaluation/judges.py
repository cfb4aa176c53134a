"""The two judges of sync: SyncNet v2 (the papers' LSE-D / LSE-C) and the project's own expert.

Each turns a clip's face crops and audio into per-window embeddings (:class:`WindowEmbedder` takes
crops one frame at a time, so no clip is held in memory as full frames), then into
:class:`~lipsync_rt.evaluation.scoring.SyncScores` with the same arithmetic:

==================  ====================================  ========================================
                    SyncNet v2 (``--syncnet``)            expert (``--expert``, bundled default)
==================  ====================================  ========================================
video window        5 frames, 224x224 BGR, 0-255          5 lower halves of 96x96 faces, BGR, 0-1
audio window        20 MFCC frames, from 4 i              16 mel columns, from int(80 i / 25)
embedding           1024, raw (not normalised)            512 x width, L2-normalised
distance            Euclidean (+1e-6, pairwise_distance)  the same, on unit vectors (0 .. 1.41)
outside the clip    zero vectors (the reference)          left out of the means
fine A/V offset     every MFCC column: 10 ms              every mel column: 12.5 ms
==================  ====================================  ========================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Optional

import numpy as np
import torch
from torch.nn import functional as F

from ..audio import MELS_PER_SECOND, MEL_STEP, melspectrogram
from . import mfcc as mfcc_mod
from .scoring import FPS, PAD_SKIP, PAD_ZERO, SyncScores, build_scores, distance_matrix, fine_curve, frame_index

WINDOW = 5                                    # video frames per window, both networks
MFCC_PER_FRAME = mfcc_mod.PER_SECOND // FPS   # 4
MFCC_WINDOW = 20
MFCC_MS = 1000.0 / mfcc_mod.PER_SECOND        # 10 ms
MEL_MS = 1000.0 / MELS_PER_SECOND             # 12.5 ms


def mel_start(frame: int) -> int:
    """The first mel column of 25 fps frame ``frame``: ``int(80 frame / 25)``, exactly (as training does)."""
    return (MELS_PER_SECOND * frame) // FPS


class WindowEmbedder:
    """Embeds every 5-frame window of a stream of crops, in batches; a window with a missing crop is NaN.

    ``prepare`` turns 5 crops (uint8 HxWx3) into one network input; ``embed`` runs a batch of them.
    """

    def __init__(self, prepare: Callable[[np.ndarray], np.ndarray], embed: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int, tick: Optional[Callable[[int], None]] = None):
        self.prepare, self.embed, self.batch_size, self.tick = prepare, embed, max(1, int(batch_size)), tick
        self.recent: list[Optional[np.ndarray]] = []
        self.inputs: list[np.ndarray] = []
        self.slots: list[int] = []          # window index of each pending input
        self.windows = 0
        self.out: dict[int, np.ndarray] = {}

    def push(self, crop: Optional[np.ndarray]) -> None:
        self.recent.append(crop)
        if len(self.recent) > WINDOW:
            self.recent.pop(0)
        if len(self.recent) == WINDOW:
            if all(c is not None for c in self.recent):
                self.inputs.append(self.prepare(np.stack(self.recent)))
                self.slots.append(self.windows)
                if len(self.inputs) >= self.batch_size:
                    self._flush()
            self.windows += 1

    def _flush(self) -> None:
        if not self.inputs:
            return
        with torch.no_grad():
            result = self.embed(torch.from_numpy(np.stack(self.inputs))).float().cpu().numpy()
        for slot, row in zip(self.slots, result):
            self.out[slot] = row
        if self.tick is not None:
            self.tick(len(self.inputs))
        self.inputs, self.slots = [], []

    def result(self, windows: int) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings [windows, D], valid [windows])`` for the first ``windows`` windows."""
        self._flush()
        dim = len(next(iter(self.out.values()))) if self.out else 1
        emb = np.full((windows, dim), np.nan, np.float32)
        valid = np.zeros(windows, bool)
        for slot, row in self.out.items():
            if slot < windows:
                emb[slot], valid[slot] = row, True
        return emb, valid


def _batched(embed: Callable[[torch.Tensor], torch.Tensor], inputs: np.ndarray, batch_size: int,
             tick: Optional[Callable[[int], None]] = None) -> np.ndarray:
    rows = []
    with torch.no_grad():
        for a in range(0, len(inputs), batch_size):
            chunk = inputs[a:a + batch_size]
            rows.append(embed(torch.from_numpy(np.ascontiguousarray(chunk))).float().cpu().numpy())
            if tick is not None:
                tick(len(chunk))
    return np.concatenate(rows) if rows else np.zeros((0, 1), np.float32)


@dataclass
class _Judge:
    """What both judges hold: the network, the name it is reported under, where it runs, its batch."""

    model: torch.nn.Module
    name: str
    device: torch.device
    batch_size: int = 20


@dataclass
class SyncNetJudge(_Judge):
    """SyncNet v2 with the LSE scripts' inputs: 224x224 crops, raw pixel values, MFCC windows."""

    key: ClassVar[str] = "syncnet"
    crop_size: ClassVar[int] = 224

    def embedder(self, tick=None) -> WindowEmbedder:
        def prepare(crops: np.ndarray) -> np.ndarray:      # [5, 224, 224, 3] -> [3, 5, 224, 224], 0-255
            return np.ascontiguousarray(crops.transpose(3, 0, 1, 2)).astype(np.float32)

        return WindowEmbedder(prepare, lambda x: self.model.forward_lip(x.to(self.device)), self.batch_size, tick)

    def audio_count(self, wav: np.ndarray) -> int:
        return max(mfcc_mod.frame_count(len(wav)) - MFCC_WINDOW + 1, 0)

    def score(self, video: np.ndarray, valid: np.ndarray, wav: np.ndarray, windows: int, vshift: int,
              tick=None) -> SyncScores:
        feats = mfcc_mod.mfcc(mfcc_mod.pcm16(wav)).T.astype(np.float32)           # [13, M]
        starts = np.arange(feats.shape[1] - MFCC_WINDOW + 1)
        inputs = np.stack([feats[:, m:m + MFCC_WINDOW] for m in starts])[:, None]  # [A, 1, 13, 20]
        audio = _batched(lambda x: self.model.forward_aud(x.to(self.device)), inputs, self.batch_size * 4, tick)
        # The reference's audio windows are those of frames 0 .. windows-1 (m = 4 u), zero beyond.
        frames = frame_index(windows, vshift)
        index = np.where(frames >= 0, frames * MFCC_PER_FRAME, -1)
        dists = distance_matrix(video, audio, index, PAD_ZERO)
        dists[~valid] = np.nan
        full = valid & (frame_index(windows, vshift) >= 0).all(axis=1)
        lags = np.arange(-vshift * MFCC_PER_FRAME, vshift * MFCC_PER_FRAME + 1)
        return _finish(dists, full, video, audio, np.arange(windows) * MFCC_PER_FRAME, lags, MFCC_MS, valid)


@dataclass
class ExpertJudge(_Judge):
    """The project's lip-sync expert (Wav2Lip's SyncNet_color): lower halves of 96x96 faces, mel windows."""

    key: ClassVar[str] = "expert"
    crop_size: ClassVar[int] = 96

    def embedder(self, tick=None) -> WindowEmbedder:
        def prepare(crops: np.ndarray) -> np.ndarray:      # [5, 96, 96, 3] -> [15, 48, 96] in [0, 1]
            lower = crops[:, crops.shape[1] // 2:].transpose(0, 3, 1, 2)           # [5, 3, 48, 96]
            return (lower.reshape(-1, *lower.shape[2:]) / 255.0).astype(np.float32)

        def embed(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.model.face_encoder(x.to(self.device)).flatten(1), p=2, dim=1)

        return WindowEmbedder(prepare, embed, self.batch_size, tick)

    def audio_count(self, wav: np.ndarray) -> int:
        return max(1 + len(wav) // 200 - MEL_STEP + 1, 0)

    def score(self, video: np.ndarray, valid: np.ndarray, wav: np.ndarray, windows: int, vshift: int,
              tick=None) -> SyncScores:
        mel = melspectrogram(wav)                                                 # [80, C]
        count = mel.shape[1] - MEL_STEP + 1
        inputs = np.stack([mel[:, c:c + MEL_STEP] for c in range(count)])[:, None]  # [A, 1, 80, 16]

        def embed(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.model.audio_encoder(x.to(self.device)).flatten(1), p=2, dim=1)

        audio = _batched(embed, inputs, self.batch_size * 4, tick)
        offset = int(getattr(self.model, "mel_offset", 0))
        frames = np.arange(windows)[:, None] + np.arange(-vshift, vshift + 1)[None, :]
        cols = (MELS_PER_SECOND * frames) // FPS + offset
        index = np.where((frames >= 0) & (cols >= 0) & (cols < count), cols, -1)
        dists = distance_matrix(video, audio, index, PAD_SKIP)
        dists[~valid] = np.nan
        base = np.array([mel_start(i) + offset for i in range(windows)])
        steps = int(np.ceil(vshift * MELS_PER_SECOND / FPS))
        scores = _finish(dists, None, video, audio, base, np.arange(-steps, steps + 1), MEL_MS, valid)
        at_zero = index[:, vshift]
        ok = valid & (at_zero >= 0)
        p_sync = float(np.mean(np.sum(video[ok] * audio[at_zero[ok]], axis=1))) if ok.any() else None
        return _with(scores, p_sync=p_sync)


def _finish(dists, full, video, audio, base, lags, step_ms, valid) -> SyncScores:
    fine = fine_curve(video, audio, base, lags, valid)
    lag_ms = -lags * step_ms                 # audio found later (lag > 0) = audio behind the mouth: negative
    order = np.argsort(lag_ms)
    return build_scores(dists, full, lag_ms[order], fine[order])


def _with(scores: SyncScores, **changes) -> SyncScores:
    return replace(scores, **changes)

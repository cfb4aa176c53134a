"""The sync scores' arithmetic, shared by SyncNet v2 (LSE-D, LSE-C) and the project's own expert.

Wav2Lip's ``scores_LSE`` (syncnet_python's ``calc_pdist`` and ``evaluate``), on embeddings that are
already computed:

- Window i is video frames ``[i, i+5)``; for every offset k in ``-vshift..+vshift`` frames, the
  distance between window i's video embedding and the audio embedding of window ``i + k`` (Euclidean,
  ``torch.pairwise_distance`` with its ``eps`` of 1e-6). Where ``i + k`` falls outside the clip the
  reference pads the audio embeddings with zero vectors: the distance is then the video embedding's
  own norm. That is kept for SyncNet (:data:`PAD_ZERO`); the expert's scores instead average only the
  pairs that exist (:data:`PAD_SKIP`), because a normalised embedding's distance to zero means nothing.
- ``mdist[k]`` is the mean over windows; **LSE-D** = ``min(mdist)``, **LSE-C** = ``median(mdist) -
  min(mdist)``, and the **AV offset** = ``vshift - argmin``, in frames, SyncNet's sign: positive when
  the sound comes *before* the mouth (audio leads), negative when it comes after.
- Per-window confidence: ``median(mdist)`` minus the window's distance at the best offset, median
  filtered over 9 windows (scipy's ``medfilt``, which pads with zeros), as syncnet_python prints it.

Beyond the reference, for the same embeddings:

- off-sync accuracy: the share of windows whose *own* nearest audio window, among all 2 vshift + 1,
  is offset 0 (and within +-1 frame), over the windows where all of them exist; chance is 1/31;
- a fine offset curve over audio-feature columns (10 ms for MFCCs, 12.5 ms for mel columns), whose
  minimum gives the A/V offset in milliseconds, same sign as the frame offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

VSHIFT = 15           # frames each way, syncnet_python's --vshift in the LSE scripts
FPS = 25              # the papers' frame rate; everything here counts 25 fps frames
PAIRWISE_EPS = 1e-6   # torch.nn.functional.pairwise_distance's eps, added to the difference
CONF_FILTER = 9       # syncnet_python's median filter over the per-window confidence
PAD_ZERO = "zero"     # invalid audio windows are zero vectors (the reference)
PAD_SKIP = "skip"     # invalid pairs are left out of the means

__all__ = [
    "VSHIFT", "FPS", "PAD_ZERO", "PAD_SKIP", "SyncScores", "distance_matrix", "medfilt_zero",
    "score_matrix", "fine_curve", "frame_index",
]


def medfilt_zero(x: np.ndarray, kernel: int) -> np.ndarray:
    """``scipy.signal.medfilt(x, kernel)``: a sliding median with zero padding at both ends.

    NaNs (windows that have no value) are ignored inside a window and stay NaN in the output.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    half = kernel // 2
    padded = np.concatenate([np.zeros(half), x, np.zeros(half)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel)
    out = np.full(x.size, np.nan)
    ok = ~np.isnan(windows).all(axis=1)
    if ok.any():
        out[ok] = np.nanmedian(windows[ok], axis=1)
    out[np.isnan(x)] = np.nan
    return out


def frame_index(windows: int, vshift: int = VSHIFT) -> np.ndarray:
    """``[windows, 2 vshift + 1]``: the audio window compared with video window i at offset column j
    (``i + j - vshift``), -1 where it is outside ``[0, windows)``, as the reference pads it."""
    idx = np.arange(windows)[:, None] + np.arange(-vshift, vshift + 1)[None, :]
    return np.where((idx >= 0) & (idx < windows), idx, -1)


def distance_matrix(video: np.ndarray, audio: np.ndarray, index: np.ndarray, pad: str = PAD_ZERO) -> np.ndarray:
    """Distances between ``video[i]`` and ``audio[index[i, j]]``; ``index`` -1 means no audio window.

    ``video`` is ``[N, D]``, ``audio`` ``[M, D]``, ``index`` ``[N, S]`` int. A missing audio window is a
    zero vector with ``pad`` "zero" (the reference's padding) and NaN with "skip". A video row that is
    all NaN (a window without a face) stays NaN.
    """
    video = np.asarray(video, dtype=np.float64)
    audio = np.asarray(audio, dtype=np.float64)
    index = np.asarray(index)
    out = np.empty(index.shape)
    for j in range(index.shape[1]):
        col = index[:, j]
        ok = col >= 0
        other = np.zeros_like(video)
        other[ok] = audio[col[ok]]
        out[:, j] = np.linalg.norm(video - other + PAIRWISE_EPS, axis=1)
        if pad == PAD_SKIP:
            out[~ok, j] = np.nan
    return out


@dataclass(frozen=True)
class SyncScores:
    """One clip's scores from one network. Offsets use SyncNet's sign (positive: audio leads)."""

    lse_d: float                     # min over offsets of the mean distance ("min dist")
    lse_c: float                     # median minus min of the mean distances ("confidence")
    offset: int                      # frames: vshift - argmin
    av_offset_ms: float              # from the fine curve; nan without one
    offsync_acc: Optional[float]     # share of windows whose own best offset is 0; None if none qualify
    offsync_acc1: Optional[float]    # ... within +-1 frame
    offsync_windows: int
    windows: int
    mdist: tuple[float, ...]         # mean distance per audio shift k = -vshift..+vshift (the reference's order)
    frame_conf: tuple[float, ...]    # per-window confidence, median filtered
    fine_lag_ms: tuple[float, ...] = ()
    fine_dist: tuple[float, ...] = ()
    p_sync: Optional[float] = None   # the expert only: mean cosine similarity at offset 0 (its P(in sync))

    @property
    def vshift(self) -> int:
        return len(self.mdist) // 2

    def to_json(self, curves: bool = True) -> dict:
        out = {
            "lse_d": self.lse_d, "lse_c": self.lse_c, "offset": self.offset, "av_offset_ms": self.av_offset_ms,
            "offsync_acc": self.offsync_acc, "offsync_acc1": self.offsync_acc1,
            "offsync_windows": self.offsync_windows, "windows": self.windows,
        }
        if self.p_sync is not None:
            out["p_sync"] = self.p_sync
        if curves:   # by offset (= -shift), so the curve's minimum sits at the reported offset
            out["offsets"] = list(range(-self.vshift, self.vshift + 1))
            out["mdist"] = list(reversed(self.mdist))
            out["frame_conf"] = list(self.frame_conf)
            out["fine_lag_ms"] = list(self.fine_lag_ms)
            out["fine_dist"] = list(self.fine_dist)
        return out


def score_matrix(dists: np.ndarray, full_rows: Optional[np.ndarray] = None) -> dict:
    """LSE-D, LSE-C, the offset, the per-window confidence and the off-sync accuracy of a distance matrix.

    ``dists`` is ``[windows, 2 vshift + 1]`` (NaN: a pair left out). ``full_rows`` marks the windows
    whose every offset is a real audio window (the off-sync accuracy counts only those); by default
    the rows without NaN.
    """
    dists = np.asarray(dists, dtype=np.float64)
    vshift = dists.shape[1] // 2
    with np.errstate(all="ignore"):
        counts = np.sum(~np.isnan(dists), axis=0)
        mdist = np.where(counts > 0, np.nansum(dists, axis=0) / np.maximum(counts, 1), np.nan)
    if np.isnan(mdist).all():
        raise ValueError("no pair of video and audio windows to compare")
    best = int(np.nanargmin(mdist))        # the first minimum, as torch.min returns
    minval = float(mdist[best])
    median = float(np.nanmedian(mdist))
    fconf = medfilt_zero(median - dists[:, best], CONF_FILTER)
    if full_rows is None:
        full_rows = ~np.isnan(dists).any(axis=1)
    rows = dists[np.asarray(full_rows, bool)]
    rows = rows[~np.isnan(rows).any(axis=1)]
    if len(rows):
        own = np.argmin(rows, axis=1) - vshift
        acc, acc1 = float(np.mean(own == 0)), float(np.mean(np.abs(own) <= 1))
    else:
        acc = acc1 = None
    return {"lse_d": minval, "lse_c": median - minval, "offset": vshift - best, "mdist": mdist,
            "frame_conf": fconf, "offsync_acc": acc, "offsync_acc1": acc1, "offsync_windows": int(len(rows))}


def fine_curve(video: np.ndarray, audio: np.ndarray, base: np.ndarray, lags: np.ndarray,
               valid_video: Optional[np.ndarray] = None) -> np.ndarray:
    """Mean distance per lag: video window i against audio window ``base[i] + lag`` (those that exist).

    ``audio`` holds one embedding per audio-feature column (every MFCC or mel column a window can
    start at), so lags are in columns: finer than a video frame.
    """
    video = np.asarray(video, dtype=np.float64)
    audio = np.asarray(audio, dtype=np.float64)
    base = np.asarray(base, dtype=np.int64)
    keep = np.ones(len(video), bool) if valid_video is None else np.asarray(valid_video, bool)
    out = np.full(len(lags), np.nan)
    for n, lag in enumerate(np.asarray(lags, dtype=np.int64)):
        col = base + lag
        ok = keep & (col >= 0) & (col < len(audio))
        if ok.any():
            out[n] = float(np.mean(np.linalg.norm(video[ok] - audio[col[ok]] + PAIRWISE_EPS, axis=1)))
    return out


def build_scores(dists: np.ndarray, full_rows: Optional[np.ndarray], fine_lags_ms: np.ndarray,
                 fine: np.ndarray, p_sync: Optional[float] = None) -> SyncScores:
    """:class:`SyncScores` from a distance matrix and a fine curve (lags in ms, already sign-flipped).

    The A/V offset refines the frame offset: the fine curve's minimum within one frame of it, so the
    two never disagree (at the edges the reference's zero padding can move the frame curve's minimum
    away from where the fine curve, which uses only real audio, would put it).
    """
    s = score_matrix(dists, full_rows)
    frame_ms = 1000.0 / FPS
    near = np.abs(np.asarray(fine_lags_ms) - s["offset"] * frame_ms) <= frame_ms + 1e-9
    candidates = np.where(near, fine, np.nan)
    if len(fine) and not np.isnan(candidates).all():
        av_ms = float(fine_lags_ms[int(np.nanargmin(candidates))])
    else:
        av_ms = float(s["offset"] * frame_ms)
    return SyncScores(
        lse_d=s["lse_d"], lse_c=s["lse_c"], offset=int(s["offset"]), av_offset_ms=av_ms,
        offsync_acc=s["offsync_acc"], offsync_acc1=s["offsync_acc1"], offsync_windows=s["offsync_windows"],
        windows=int(dists.shape[0]), mdist=tuple(float(v) for v in s["mdist"]),
        frame_conf=tuple(float(v) for v in s["frame_conf"]),
        fine_lag_ms=tuple(float(v) for v in fine_lags_ms), fine_dist=tuple(float(v) for v in fine), p_sync=p_sync,
    )

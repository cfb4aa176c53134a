"""Judging clips: the judges loaded once, each clip read in two passes (faces, then crops), scored.

A clip goes through at most two decodes: the first finds the face in every frame (skipped when the
frames are face crops already), the second cuts each judge's crop and feeds its window embedder, so
memory holds embeddings, not frames. The audio is cut to the face's span as ``run_pipeline.py`` cuts
it to the track's, then both judges score the same windows: the reference's ``min(frames,
samples // 640) - 5`` of them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import LipSyncError, NoFaceError
from .crop import expert_crop, interpolate_track, syncnet_crop, syncnet_track, whole_frame
from .inputs import FPS, SAMPLES_PER_FRAME, Clip
from .judges import WINDOW
from .scoring import VSHIFT

CROPS = ("auto", "track", "none")
SILENT_PEAK = 1e-3        # -60 dBFS: below this the soundtrack is silence (or dither)


@dataclass
class Judges:
    """The networks that judge, loaded once for many clips."""

    items: list = field(default_factory=list)     # SyncNetJudge and/or ExpertJudge
    vshift: int = VSHIFT

    @property
    def names(self) -> dict[str, str]:
        return {j.key: j.name for j in self.items}


def load_judges(expert: Optional[str], syncnet: Optional[str], device: str = "auto", batch_size: int = 20,
                vshift: int = VSHIFT) -> Judges:
    """``expert``: a checkpoint path, None for the bundled expert, or "none"; ``syncnet``: a path or None.

    Wrong files fail here, in a second, before any video is decoded. Torch's grad mode is left alone
    (the judges embed under ``no_grad``), so a training script that evaluates can go on training.
    """
    from ..default_model import DEFAULT_EXPERT
    from ..engine.torch_engine import resolve_device
    from ..models import load_checkpoint
    from ..models.syncnet_v2 import load_syncnet_v2
    from .judges import ExpertJudge, SyncNetJudge

    dev = resolve_device(device)
    judges = Judges(vshift=int(vshift))
    if syncnet:
        model = load_syncnet_v2(syncnet).to(dev)
        judges.items.append(SyncNetJudge(model, Path(syncnet).name, dev, batch_size))
    if (expert or "").lower() != "none":
        path = Path(expert) if expert else DEFAULT_EXPERT
        model = load_checkpoint(path, "expert").to(dev).eval()
        judges.items.append(ExpertJudge(model, path.name, dev, batch_size))
    if not judges.items:
        raise LipSyncError("nothing to judge with: --expert none needs --syncnet PATH")
    return judges


def check_audio(clip: Clip) -> None:
    """Silence cannot be in or out of sync with anything: say so instead of scoring noise."""
    peak = float(np.max(np.abs(clip.wav))) if clip.wav.size else 0.0
    if peak < SILENT_PEAK:
        level = "-inf" if peak == 0 else f"{20 * math.log10(peak):.0f}"
        raise LipSyncError(f"{clip.name}: the audio ({clip.audio_path.name}) is silent (peak {level} dBFS); "
                           "sync can only be judged against speech")


def evaluate_clip(clip: Clip, judges: Judges, crop: str = "auto", progress: bool = False) -> dict:
    """Every judge's scores for one clip, and what was judged (frames, span, crop rule, windows)."""
    check_audio(clip)
    mode = ("none" if clip.face_crops else "track") if crop == "auto" else crop
    if mode not in ("track", "none"):
        raise LipSyncError(f"unknown crop rule {crop!r}; use one of {', '.join(CROPS)}")
    tracks = _face_track(clip, progress) if mode == "track" else None
    first = tracks["first"] if tracks else 0
    last = tracks["last"] if tracks else None

    span_wav = clip.wav[first * SAMPLES_PER_FRAME:]
    total = None
    if last is not None:
        total = sum(max(last - first + 1 - (WINDOW - 1), 0) + j.audio_count(span_wav) for j in judges.items)
    bar = _bar(progress, f"judging {clip.name}", total)
    tick = bar.update if bar is not None else None
    embedders = {j.key: j.embedder(tick) for j in judges.items}
    sizes = {j.key: j.crop_size for j in judges.items}
    frames = missing = 0
    try:
        for i, image in enumerate(clip.frames()):
            if i < first:
                continue
            if last is not None and i > last:
                break
            frames += 1
            if image is None:
                missing += 1
            for key, embedder in embedders.items():
                embedder.push(None if image is None else _crop(image, key, sizes[key], tracks, i - first))
        used = min(frames, len(span_wav) // SAMPLES_PER_FRAME)
        windows = used - WINDOW
        if windows < 1:
            raise LipSyncError(
                f"{clip.name}: too short to judge: {used} frame(s) of face with audio ({used / FPS:.2f} s); "
                f"a sync score needs at least {WINDOW + 1} frames ({(WINDOW + 1) / FPS:.2f} s) at 25 fps")
        result = {
            "name": clip.name, "path": str(clip.path), "audio": str(clip.audio_path),
            "source_fps": round(clip.source_fps, 3), "frames": (tracks["frames"] if tracks else frames),
            "seconds": round((tracks["frames"] if tracks else frames) / FPS, 3), "crop": mode,
            "frames_without_face": (tracks["without_face"] if tracks else missing),
            "span": [first, first + frames - 1], "windows": windows, "audio_shift_ms": clip.audio_shift_ms,
        }
        for judge in judges.items:
            video, valid = embedders[judge.key].result(windows)
            if not valid.any():
                raise LipSyncError(f"{clip.name}: no 5-frame window with a face in every frame")
            scores = judge.score(video, valid, span_wav, windows, judges.vshift, tick)
            result[judge.key] = scores.to_json()
    finally:
        if bar is not None:
            bar.close()
    return result


def _face_track(clip: Clip, progress: bool) -> dict:
    from ..face import analyse_clip

    blank: list[Optional[np.ndarray]] = [None]

    def images() -> Iterator[np.ndarray]:
        for image in clip.frames():
            if image is None:       # a missing crop in a folder: a frame without a face
                image = blank[0] if blank[0] is not None else np.zeros((64, 64, 3), np.uint8)
            else:
                blank[0] = np.zeros_like(image)
            yield image

    try:
        faces = analyse_clip(images(), pads=(0, 0, 0, 0), smooth=False, progress=progress, name=clip.name)
    except NoFaceError:
        raise NoFaceError(f"no face found in {clip.name}: sync is judged on a visible mouth (a video that is a face "
                          "crop already, like LRS2's, needs --crop none)") from None
    first, last, boxes = interpolate_track(faces.raw_boxes, faces.has_face)
    return {"first": first, "last": last, "boxes": boxes, "syncnet": syncnet_track(boxes),
            "frames": len(faces), "without_face": faces.frames_without_face}


def _crop(image: np.ndarray, key: str, size: int, tracks: Optional[dict], k: int) -> np.ndarray:
    if tracks is None:
        return whole_frame(image, size)
    if key == "syncnet":
        s, x, y = tracks["syncnet"][k]
        return syncnet_crop(image, s, x, y)
    return expert_crop(image, tracks["boxes"][k])


def _bar(progress: bool, desc: str, total: Optional[int] = None):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(desc=desc, total=total, unit="window", leave=False)


# ------------------------------------------------------------------------------------------------
# Many clips


def read_filelist(path: str | os.PathLike) -> list[str]:
    """Entries of an LRS2-style list: the first whitespace token of each non-blank, non-# line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LipSyncError(f"filelist not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LipSyncError(f"cannot read filelist {path} ({exc})") from None
    names = [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise LipSyncError(f"filelist {path} lists no clips")
    return names


def resolve_entry(data_root: Path, entry: str) -> Path:
    """``<root>/<entry>`` as a clip folder, or ``<root>/<entry>.mp4`` (LRS2's main/ and generated videos)."""
    base = data_root / entry
    for candidate in (base, base.with_name(base.name + ".mp4")):
        if candidate.exists():
            return candidate
    raise LipSyncError(f"{entry}: neither {base}/ nor {base}.mp4 exists")


MEAN_KEYS = ("lse_d", "lse_c", "offsync_acc", "offsync_acc1", "p_sync")


def summarise(results: Sequence[dict], keys: Sequence[str]) -> dict:
    """Means over clips, as ``calculate_scores_LRS.py`` averages LSE-D and LSE-C over videos."""
    out: dict = {"clips": len(results)}
    for key in keys:
        rows = [r[key] for r in results if key in r]
        if not rows:
            continue
        summary = {}
        for name in MEAN_KEYS:
            values = [row[name] for row in rows if row.get(name) is not None]
            if values:
                summary[name] = float(np.mean(values))
        offsets = np.array([row["offset"] for row in rows])
        summary["offset_zero"] = float(np.mean(offsets == 0))
        summary["mean_abs_offset"] = float(np.mean(np.abs(offsets)))
        summary["av_offset_ms_median"] = float(np.nanmedian([row["av_offset_ms"] for row in rows]))
        summary["mdist"] = np.mean([row["mdist"] for row in rows], axis=0).tolist()
        out[key] = summary
    return out

"""The synthetic corpus: plan identities and clips, render each clip, write the LRS2 layout.

Every target frame is a photograph whose own lips and jaw move with the speech (``portrait``), seen
through a per-clip camera (``look``); there are no drawn faces. Identities are the openly licensed
portraits the project can ship, each restyled into many appearances (skin tone, hair, clothes and
background colours, face width, mirror image, gamma, blur):

- ``nasa``: ``examples/face.jpg``, NASA's portrait of astronaut Eileen Collins (public domain, a work
  of NASA). Identity 0 is this photo unchanged: the face ``make demo`` shows; always trained on.
- ``hopper``: ``grace_hopper.jpg`` from matplotlib's sample data, the U.S. Navy portrait of Grace
  Hopper (public domain, a work of the U.S. government). Every identity made from it goes to the
  test split, so test measures a person the model has never seen.

Validation identities are restyled ``nasa`` identities that training never sees. Determinism: the same
settings and seed give byte-identical jpgs, wavs, file lists and manifest, whatever ``--workers`` is
(each clip has its own RNG stream; cv2 runs single-threaded; JPEG quality is fixed; names carry no
time), within one environment (espeak-ng, FFmpeg, OpenCV and the face models fix the bytes).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from lipsync_rt.atomic import write_text_atomic
from lipsync_rt.face.boxes import box_from_landmarks
from train import corpus_utils as cu

from .geometry import affine, similarity
from .look import HeadMotion, Look
from .mouth import MouthTrack, mouth_track
from .portrait import CANON_BOX, CANON_SIZE, Portrait
from .speech import VARIANTS, VOICES, SpeechError, Voice, check_espeak, clip_audio

#: Bumped whenever the same seed would give a different corpus; stored in the manifest.
CORPUS_VERSION = 2
FPS = cu.FPS
SAMPLE_RATE = cu.SAMPLE_RATE
SPF = cu.SAMPLES_PER_FRAME

OUT = "data/synthetic"
CLIPS = 200
SECONDS = (2.0, 6.0)        # per clip, drawn uniformly from [MIN, MAX]
SEED = 0
WORKERS = 1
VAL_FRACTION = 0.08         # share of identities held out for validation (restyled nasa)
TEST_FRACTION = 0.1         # share of identities for test (all of them hopper when hopper is here)
SIZE = 128                  # crop side written; the training loader resizes to 96 anyway
CLIPS_PER_IDENTITY = 4
ORIGINAL_SHARE = 0.06       # share of clips given to identity 0 (the unchanged demo photo), on top
STILL_SHARE = 0.25          # share of clips with no head motion, like a photo avatar
PREVIEWS = 0
FACE_PX = (84, 180)         # face box side in the video frame, drawn per clip
FRAME_MARGIN = 2.0          # video frame side = FRAME_MARGIN x face box side

HELD_OUT = "hopper"         # the photo whose every identity is test

NASA_PHOTO = Path(__file__).resolve().parents[2] / "examples" / "face.jpg"


def _matplotlib_photo() -> Optional[Path]:
    """Grace Hopper's portrait from matplotlib's sample data, if this matplotlib ships it."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    except Exception:  # noqa: BLE001 - optional extra identity
        return None
    return path if path.is_file() else None


@dataclass(frozen=True)
class Settings:
    """Everything that decides the corpus's content (two builds with equal settings are identical)."""

    clips: int = CLIPS
    seconds: tuple[float, float] = SECONDS
    seed: int = SEED
    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION
    size: int = SIZE
    clips_per_identity: int = CLIPS_PER_IDENTITY
    face_px: tuple[int, int] = FACE_PX
    jpeg_quality: int = cu.JPEG_QUALITY
    version: int = CORPUS_VERSION


@dataclass(frozen=True)
class Identity:
    index: int
    set_id: str
    split: str
    photo: str                # "nasa" or "hopper"
    original: bool            # the unchanged photo (no restyling)
    voice: Voice
    seed: int


@dataclass(frozen=True)
class ClipPlan:
    index: int
    set_id: str
    clip_id: str
    identity: Identity
    frames: int

    @property
    def name(self) -> str:
        return f"{self.set_id}/{self.clip_id}"


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent RNG per (purpose, item): results never depend on order or on worker count."""
    return np.random.default_rng([int(seed), stream, int(index)])


_STREAM_IDENTITY, _STREAM_FACE, _STREAM_CLIP, _STREAM_LENGTH, _STREAM_SPLIT, _STREAM_OWNER = 1, 2, 3, 4, 5, 6


def _check(settings: Settings) -> None:
    if settings.clips < 1:
        raise ValueError("--clips must be at least 1")
    lo, hi = settings.seconds
    if not 0 < lo <= hi:
        raise ValueError(f"--seconds must be positive and MIN <= MAX, got {lo}:{hi}")
    if not (0 <= settings.val_fraction < 1 and 0 <= settings.test_fraction < 1
            and settings.val_fraction + settings.test_fraction < 1):
        raise ValueError("--val-fraction and --test-fraction must be >= 0 and sum to less than 1")
    if not 8 <= settings.face_px[0] <= settings.face_px[1]:
        raise ValueError(f"--face-px must be MIN:MAX with 8 <= MIN <= MAX, got {settings.face_px}")


def plan_corpus(settings: Settings, photos: Sequence[str]) -> tuple[list[Identity], list[ClipPlan]]:
    """Identities (with their split) and clips.

    Identity 0 is the unchanged first photo (train). When the held-out photo is available, identity 1
    is it unchanged and every test identity is made from it; val identities are restyled first-photo
    identities. Clips go to identities round-robin, plus ``ORIGINAL_SHARE`` of them to identity 0.
    """
    _check(settings)
    n = settings.clips
    n_id = max(1, math.ceil(n / max(1, settings.clips_per_identity)))
    held_out = HELD_OUT in photos[1:]
    wanted = [s for s, f in (("test", settings.test_fraction), ("val", settings.val_fraction)) if f > 0]
    n_id = min(n, max(n_id, 1 + len(wanted)))
    counts = {"test": 0, "val": 0}
    free = n_id - 1
    for split in wanted:                                  # test first: it matters most
        frac = settings.test_fraction if split == "test" else settings.val_fraction
        counts[split] = min(free, max(1, round(n_id * frac)))
        free -= counts[split]
    first = 2 if held_out else 1
    order = [int(i) for i in _rng(settings.seed, _STREAM_SPLIT, 0).permutation(np.arange(first, n_id))]
    if held_out and counts["test"]:
        order = [1] + order                               # the unchanged held-out photo is a test identity
    split_of = {0: "train"}
    for i in order[:counts["test"]]:
        split_of[i] = "test"
    for i in order[counts["test"]:counts["test"] + counts["val"]]:
        split_of[i] = "val"

    identities = []
    for i in range(n_id):
        rng = _rng(settings.seed, _STREAM_IDENTITY, i)
        split = split_of.get(i, "train")
        photo = HELD_OUT if (held_out and split == "test") else photos[0]
        name, lang = VOICES[rng.integers(len(VOICES))]
        voice = Voice(name, VARIANTS[rng.integers(len(VARIANTS))], lang,
                      pitch=int(rng.integers(20, 81)), rate=int(rng.integers(130, 186)))
        original = i == 0 or (i == 1 and held_out and split == "test")
        identities.append(Identity(i, f"id{i:04d}", split, photo, original, voice, settings.seed))
    clips = []
    lo, hi = settings.seconds
    for j in range(n):
        owner_rng = _rng(settings.seed, _STREAM_OWNER, j)
        ident = identities[0] if owner_rng.random() < ORIGINAL_SHARE else identities[j % n_id]
        seconds = _rng(settings.seed, _STREAM_LENGTH, j).uniform(lo, hi) if hi > lo else lo
        clips.append(ClipPlan(j, ident.set_id, f"{j:05d}", ident, max(1, int(round(seconds * FPS)))))
    return identities, clips


# ------------------------------------------------------------------------------------------------
# Rendering and writing one clip

_PHOTOS: dict[str, tuple[str, np.ndarray]] = {}      # name -> (path, landmarks), set per process


def _init_process(photos: dict[str, tuple[str, np.ndarray]]) -> None:
    """Per worker: the photo landmarks found once by the parent, and single-threaded OpenCV (the
    pool is the parallelism; it also keeps results independent of thread scheduling)."""
    _PHOTOS.clear()
    _PHOTOS.update(photos)
    cv2.setNumThreads(1)


@functools.lru_cache(maxsize=8)
def portrait_of(identity: Identity) -> Portrait:
    rng = _rng(identity.seed, _STREAM_FACE, identity.index)
    path, landmarks = _PHOTOS[identity.photo]
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read photo {path}")
    return Portrait(image, landmarks, rng, identity.original)


@dataclass
class RenderedClip:
    """One clip in memory: crops [T] (size x size BGR), video frames [T], boxes [T, 4], audio, mouth."""

    crops: list[np.ndarray]
    frames: list[np.ndarray]
    boxes: np.ndarray
    audio: np.ndarray
    mouth: MouthTrack
    meta: dict = field(default_factory=dict)


def render_clip(plan: ClipPlan, settings: Settings, workdir: Path, keep_frames: bool = False) -> RenderedClip:
    """Speech, mouth track, camera, head motion and crops of one clip (deterministic in its plan)."""
    rng = _rng(settings.seed, _STREAM_CLIP, plan.index)
    n = plan.frames
    audio, texts, rate, pitch = clip_audio(n * SPF, plan.identity.voice, rng, workdir)
    mouth = mouth_track(audio, n)
    portrait = portrait_of(plan.identity)

    face_px = rng.uniform(*settings.face_px)
    side = int(round(face_px * FRAME_MARGIN / 2)) * 2
    scale = face_px / CANON_BOX
    still = rng.random() < STILL_SHARE
    look = Look.draw(rng, plain=plan.identity.original and still)
    motion = HeadMotion.draw(n, face_px, rng, still=still)
    off = rng.uniform(-0.06, 0.06, 2) * side
    noise_rng = _rng(settings.seed, _STREAM_CLIP, 1_000_000 + plan.index)

    centre = (CANON_SIZE / 2, CANON_SIZE / 2)
    crops, frames, boxes = [], [], np.zeros((n, 4), np.int32)
    for t in range(n):
        canvas, _ = portrait.render(float(mouth.opening[t]), float(mouth.spread[t]))
        s_t = scale * (1.0 + motion.scale[t])
        m = similarity(centre, (side / 2 + off[0] + motion.dx[t], side / 2 + off[1] + motion.dy[t]),
                       motion.roll[t], s_t, s_t)
        frame = cv2.warpAffine(canvas, m, (side, side), flags=cv2.INTER_AREA if s_t < 1 else cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)
        frame = look.apply(frame, noise_rng)
        # the box of the face at rest (a detector on a still photo, or a smoothed track): the jaw
        # drops inside it, as it does at inference on an avatar
        x1, y1, x2, y2 = box_from_landmarks(affine(portrait.landmarks, m))
        bw, bh = x2 - x1, y2 - y1
        jitter = motion.box_noise[t] * (bw, bh, bw, bh)
        x1, y1, x2, y2 = (int(round(v)) for v in np.array((x1, y1, x2, y2)) + jitter)
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(side, x2), min(side, y2)
        if x2 - x1 < 8 or y2 - y1 < 8:
            raise RuntimeError(f"{plan.name}: degenerate face box {(x1, y1, x2, y2)} at frame {t}")
        crop = frame[y1:y2, x1:x2]
        interp = cv2.INTER_AREA if (x2 - x1) > settings.size else cv2.INTER_CUBIC
        crops.append(cv2.resize(crop, (settings.size, settings.size), interpolation=interp))
        boxes[t] = (x1, y1, x2, y2)
        if keep_frames:
            frames.append(frame)
    meta = {"clip": plan.name, "identity": plan.identity.index, "split": plan.identity.split,
            "photo": plan.identity.photo, "frames": n, "voice": plan.identity.voice.espeak, "rate": rate,
            "pitch": pitch, "face_px": round(float(face_px), 2), "still": bool(still), "look": asdict(look),
            "text": texts}
    return RenderedClip(crops, frames, boxes, audio, mouth, meta)


def _preview_frame(frame: np.ndarray, crop: np.ndarray, box: Sequence[int]) -> np.ndarray:
    h = frame.shape[0]
    left = frame.copy()
    cv2.rectangle(left, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), (0, 255, 0), 1)
    return np.hstack([left, cv2.resize(crop, (h, h), interpolation=cv2.INTER_LINEAR)])


@dataclass(frozen=True)
class ClipJob:
    plan: ClipPlan
    settings: Settings
    out: str
    preview: bool


def build_clip(job: ClipJob) -> dict:
    """Render one clip and write it atomically; a finished clip folder is left alone (resume).

    Besides the frames and ``audio.wav``, ``meta/<set>_<clip>.json`` keeps the clip's mouth track
    (opening per frame), which evaluation uses as the ground truth of how far the mouth should open."""
    plan, out = job.plan, Path(job.out)
    final = cu.clip_dir(out, plan.set_id, plan.clip_id)
    meta_path = out / "meta" / f"{plan.set_id}_{plan.clip_id}.json"
    if final.is_dir() and meta_path.is_file():
        return {"clip": plan.name, "frames": plan.frames, "built": False}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="synth-speech-") as work:
        clip = render_clip(plan, job.settings, Path(work), keep_frames=job.preview)
    if final.is_dir():                                    # folder without meta: an older partial run
        shutil.rmtree(final)
    with cu.atomic_dir(final) as tmp:
        for i, crop in enumerate(clip.crops):
            cu.write_jpg(tmp / f"{i}.jpg", crop, job.settings.jpeg_quality)
        cu.write_wav(tmp / "audio.wav", clip.audio)
        meta = dict(clip.meta, opening=[round(float(v), 4) for v in clip.mouth.opening])
        write_text_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if job.preview:
        from lipsync_rt.media import Mp4Writer

        path = out / "previews" / f"{plan.set_id}_{plan.clip_id}.mp4"
        with Mp4Writer(path, FPS, audio=True, audio_rate=SAMPLE_RATE) as writer:
            for frame, crop, box in zip(clip.frames, clip.crops, clip.boxes):
                writer.write_video(_preview_frame(frame, crop, box))
            writer.write_audio(clip.audio)
    return {"clip": plan.name, "frames": plan.frames, "built": True,
            "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------------------------
# The whole corpus


def find_photos() -> dict[str, str]:
    """Photographs available here, by name, the base photo first (the NASA photo is required)."""
    if not NASA_PHOTO.is_file():
        raise FileNotFoundError(f"{NASA_PHOTO} is missing; it is the corpus's base photograph")
    photos = {"nasa": str(NASA_PHOTO)}
    hopper = _matplotlib_photo()
    if hopper is not None:
        photos["hopper"] = str(hopper)
    return photos


@functools.lru_cache(maxsize=4)
def _landmarks_of(path: str, mtime: float) -> np.ndarray:
    from lipsync_rt.face import FaceDetector

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read photo {path}")
    with FaceDetector() as detector:
        found = detector.detect(image)
    if found is None or found.landmarks is None:
        raise RuntimeError(f"the face mesh found no face in {path}")
    return np.asarray(found.landmarks, dtype=np.float32)


def photo_landmarks(photos: dict[str, str]) -> dict[str, tuple[str, np.ndarray]]:
    """Face-mesh landmarks of each photo, found once with the project's own face tracker."""
    return {name: (path, _landmarks_of(path, os.path.getmtime(path))) for name, path in photos.items()}


def _manifest(settings: Settings, photos: dict[str, str], identities: list[Identity],
              clips: list[ClipPlan]) -> str:
    doc = {
        "format": "lrs2-preprocessed",
        "fps": FPS, "sample_rate": SAMPLE_RATE,
        "settings": asdict(settings),
        "photos": {name: Path(path).name for name, path in sorted(photos.items())},
        "held_out": HELD_OUT if HELD_OUT in photos else None,
        "mouth_rule": "frame t <- samples [640(t-1), 640(t+2)) of audio.wav, see train/corpus/mouth.py",
        "identities": [{"set": i.set_id, "split": i.split, "photo": i.photo, "original": i.original,
                        "voice": i.voice.espeak, "pitch": i.voice.pitch, "rate": i.voice.rate}
                       for i in identities],
        "clips": [{"clip": c.name, "split": c.identity.split, "frames": c.frames} for c in clips],
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def build_corpus(out: str | os.PathLike, settings: Settings, workers: int = WORKERS, previews: int = PREVIEWS,
                 progress: bool = True) -> dict:
    """Build (or finish building) a corpus; returns a summary with counts and timing."""
    check_espeak()
    out = Path(out)
    photos = find_photos()
    identities, clips = plan_corpus(settings, list(photos))   # "nasa" first: identity 0
    manifest = _manifest(settings, photos, identities, clips)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and manifest_path.read_text(encoding="utf-8") != manifest:
        raise ValueError(f"{out} holds a corpus built with other settings (see its manifest.json); "
                         "use another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(manifest_path, manifest)
    used = {i.photo for i in identities}
    landmarks = photo_landmarks({k: v for k, v in photos.items() if k in used})

    jobs = [ClipJob(c, settings, str(out), c.index < previews) for c in clips]
    started = time.perf_counter()
    results = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(c.frames for c in clips), unit="frame", desc="synthetic corpus", smoothing=0.1)
    workers = max(1, int(workers))
    if workers == 1:
        threads = cv2.getNumThreads()
        _init_process(landmarks)
        try:
            for job in jobs:
                results.append(build_clip(job))
                if bar is not None:
                    bar.update(job.plan.frames)
        finally:
            cv2.setNumThreads(threads)
            portrait_of.cache_clear()
    else:
        import multiprocessing as mp

        # spawn: children must not inherit the face tracker's threads from the parent's landmark pass
        with mp.get_context("spawn").Pool(workers, initializer=_init_process, initargs=(landmarks,)) as pool:
            for result in pool.imap_unordered(build_clip, jobs, chunksize=1):
                results.append(result)
                if bar is not None:
                    bar.update(result["frames"])
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - started
    cu.write_filelists(out, {s: [c.name for c in clips if c.identity.split == s] for s in cu.SPLITS})
    built = [r for r in results if r["built"]]
    frames = sum(r["frames"] for r in built)
    return {"clips": len(clips), "built": len(built), "resumed": len(clips) - len(built), "frames": frames,
            "seconds": elapsed, "workers": workers,
            "splits": {s: sum(c.identity.split == s for c in clips) for s in cu.SPLITS},
            "identities": {s: sum(i.split == s for i in identities) for s in cu.SPLITS}}


__all__ = ["Settings", "Identity", "ClipPlan", "RenderedClip", "ClipJob", "SpeechError", "plan_corpus",
           "render_clip", "build_clip", "build_corpus", "find_photos", "photo_landmarks", "portrait_of"]

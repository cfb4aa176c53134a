"""Turn LRS2-layout videos into the preprocessed layout the Wav2Lip training scripts read.

Input (LRS2's ``main`` folder, or anything shaped like it)::

    <data_root>/<set_id>/<clip_id>.mp4

Output, as the reference ``preprocess.py`` writes it (docs/architecture.md, "Models and training")::

    <preprocessed_root>/<set_id>/<clip_id>/<i>.jpg    the raw face box of frame i: no pads, no smoothing,
                                                      no resizing (the loaders resize to 96x96)
    <preprocessed_root>/<set_id>/<clip_id>/audio.wav  the clip's audio, 16 kHz mono s16
    <preprocessed_root>/skipped.txt                   "<set_id>/<clip_id><TAB>reason" per skipped video

Frames are numbered by their position in the video; a frame without a face is simply not written, so
the numbering has gaps where the face was lost, and the loaders reject windows across a gap. Faces come
from the project's :class:`~lipsync_rt.face.FaceTracker` (MediaPipe detection on key frames, face-mesh
tracking in between; boxes by :func:`~lipsync_rt.face.box_from_landmarks`, the S3FD-like convention
inference uses), not S3FD, so no detector weights are needed. Audio is decoded with PyAV
(:func:`lipsync_rt.audio.load_audio`) instead of an ``ffmpeg`` subprocess, and written at 16 kHz so the
loaders need not resample it.

Skipped, with the reason, and never a crash: unreadable or damaged files, no video or audio stream,
a frame rate other than 25 fps (training maps frames to mel windows at 25 fps, docs/architecture.md, "Timing"), and videos in
which no face was found. File lists are not written: LRS2 ships its own ``train/val/test.txt``; put them
in ``<preprocessed_root>/filelists/``.

Resumable: each clip is written into a hidden temporary folder and renamed when complete, so a clip
folder that exists is finished and is not redone, and a killed run leaves nothing half-written.
Videos listed in ``skipped.txt`` are not retried unless ``--retry_skipped`` is given.

Example::

    python train/preprocess_lrs2.py --data_root mvlrs_v1/main --preprocessed_root lrs2_preprocessed --workers 4
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import corpus_utils as cu

from lipsync_rt.atomic import write_text_atomic
from lipsync_rt.errors import MediaError
from lipsync_rt.face import KEYFRAME_INTERVAL

# Settings (each is a command-line flag; see --help)
DATA_ROOT = "mvlrs_v1/main"
PREPROCESSED_ROOT = "lrs2_preprocessed"
WORKERS = 1
EXPECTED_FPS = 25.0
SKIPPED_FILE = "skipped.txt"


@dataclass(frozen=True)
class Outcome:
    """What happened to one video: ``done`` (written now), ``exists`` (written by an earlier run),
    ``skipped`` (with a reason), or ``known_skip`` (skipped by an earlier run, not retried).

    A reason reads ``"<kind>: <detail>"``; kinds are ``unreadable``, ``no video``, ``no audio``,
    ``frame rate``, ``no face`` and ``error`` (a bug, reported rather than raised)."""

    name: str
    status: str
    reason: str = ""
    frames: int = 0
    faces: int = 0


class _Skip(Exception):
    pass


def find_videos(data_root: str | Path) -> list[Path]:
    """``data_root/*/*.mp4`` sorted, as the reference globs it (only one level of set folders)."""
    return sorted(p for p in Path(data_root).glob("*/*.mp4") if p.is_file())


def clip_name(video: Path) -> str:
    return f"{video.parent.name}/{video.stem}"


def process_video(video: Path, out_root: Path, detector, keyframe_interval: int = KEYFRAME_INTERVAL) -> Outcome:
    """Write one video's face crops and audio, or say why not. ``detector`` is a FaceDetector that
    outlives the call (one per worker: building MediaPipe graphs costs more than a short clip)."""
    name = clip_name(video)
    final = cu.clip_dir(out_root, video.parent.name, video.stem)
    if final.is_dir():
        return Outcome(name, "exists")
    try:
        return _process(video, final, detector, keyframe_interval)
    except _Skip as why:
        return Outcome(name, "skipped", str(why))
    except MediaError as e:
        return Outcome(name, "skipped", f"unreadable: {_one_line(e)}")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _process(video: Path, final: Path, detector, keyframe_interval: int) -> Outcome:
    from lipsync_rt.audio import load_audio
    from lipsync_rt.face import FaceTracker
    from lipsync_rt.media import iter_video_frames, probe

    try:
        info = probe(video)
    except MediaError as e:
        raise _Skip(f"unreadable: {_one_line(e)}") from None
    if not info.has_video:
        raise _Skip("no video: the file has no video stream")
    if not info.has_audio:
        raise _Skip("no audio: the file has no audio stream")
    if info.fps is not None and abs(info.fps - EXPECTED_FPS) > 0.01:
        raise _Skip(f"frame rate: {info.fps:g} fps, expected {EXPECTED_FPS:g} (training windows assume 25 fps)")
    try:
        audio = load_audio(video)
    except MediaError as e:
        raise _Skip(f"no audio: {_one_line(e)}") from None

    frames = faces = 0
    with cu.atomic_dir(final) as tmp:
        # raw boxes, as the reference writes them: no pads, no smoothing
        tracker = FaceTracker(keyframe_interval=keyframe_interval, pads=(0, 0, 0, 0), smoothing=0.0,
                              detector=detector)
        try:
            for frame in iter_video_frames(video):
                frames += 1
                track = tracker.update(frame.image)
                if track is None:
                    continue
                x1, y1, x2, y2 = track.raw_box
                if x2 - x1 < 2 or y2 - y1 < 2:
                    continue
                cu.write_jpg(tmp / f"{frame.index}.jpg", frame.image[y1:y2, x1:x2])
                faces += 1
        except MediaError as e:
            raise _Skip(f"unreadable: {_one_line(e)}") from None
        finally:
            tracker.close()
        if frames == 0:
            raise _Skip("unreadable: no video frames decoded")
        if faces == 0:
            raise _Skip(f"no face: none found in any of {frames} frames")
        cu.write_wav(tmp / "audio.wav", audio)
    return Outcome(clip_name(video), "done", frames=frames, faces=faces)


# ------------------------------------------------------------------------------------------------
# Workers

_DETECTOR = None


def _init_worker() -> None:
    global _DETECTOR
    import cv2

    from lipsync_rt.face import FaceDetector

    cv2.setNumThreads(1)
    _DETECTOR = FaceDetector()


def _work(task: tuple[str, str, int]) -> Outcome:
    video, out_root, keyframe_interval = task
    try:
        return process_video(Path(video), Path(out_root), _DETECTOR, keyframe_interval)
    except Exception as e:  # noqa: BLE001 - one bad video must not stop a day-long run
        return Outcome(clip_name(Path(video)), "skipped", f"error: {type(e).__name__}: {_one_line(e)}")


def read_skipped(out_root: Path) -> dict[str, str]:
    path = out_root / SKIPPED_FILE
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, reason = line.partition("\t")
        if name.strip():
            out[name.strip()] = reason.strip()
    return out


def preprocess(data_root: str | Path, out_root: str | Path, workers: int = WORKERS, limit: Optional[int] = None,
               keyframe_interval: int = KEYFRAME_INTERVAL, retry_skipped: bool = False,
               progress: bool = True) -> list[Outcome]:
    """Process every video (or the first ``limit``); returns one Outcome per video, in sorted order.
    ``skipped.txt`` is rewritten with every skip known so far, earlier runs' included."""
    videos = find_videos(data_root)
    if limit is not None:
        videos = videos[:max(0, int(limit))]
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    known = read_skipped(out_root)
    if retry_skipped:
        known = {}
    outcomes: dict[str, Outcome] = {}
    todo = []
    for v in videos:
        name = clip_name(v)
        if cu.clip_dir(out_root, v.parent.name, v.stem).is_dir():
            outcomes[name] = Outcome(name, "exists")
        elif name in known:
            outcomes[name] = Outcome(name, "known_skip", known[name])
        else:
            todo.append((str(v), str(out_root), int(keyframe_interval)))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="video", desc="preprocess")
    try:
        for outcome in _run(todo, workers):
            outcomes[outcome.name] = outcome
            if bar is not None:
                bar.update(1)
                bar.set_postfix(skipped=sum(o.status == "skipped" for o in outcomes.values()), refresh=False)
    finally:
        if bar is not None:
            bar.close()
        skipped = dict(known)
        skipped.update({o.name: o.reason for o in outcomes.values() if o.status == "skipped"})
        for o in outcomes.values():                       # a retried video that now worked
            if o.status in ("done", "exists"):
                skipped.pop(o.name, None)
        write_text_atomic(out_root / SKIPPED_FILE,
                             "".join(f"{k}\t{v}\n" for k, v in sorted(skipped.items())))
    return [outcomes[clip_name(v)] for v in videos]


def _run(tasks: list[tuple[str, str, int]], workers: int) -> Iterable[Outcome]:
    if not tasks:
        return
    workers = max(1, min(int(workers), len(tasks)))
    if workers == 1:
        import cv2

        from lipsync_rt.face import FaceDetector

        threads = cv2.getNumThreads()
        global _DETECTOR
        try:
            with FaceDetector() as detector:
                _DETECTOR = detector
                for task in tasks:
                    yield _work(task)
        finally:
            _DETECTOR = None
            cv2.setNumThreads(threads)
        return
    import multiprocessing as mp

    # spawn, not fork: MediaPipe's graphs and threads do not survive a fork
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_work, tasks, chunksize=1)


def report(outcomes: Sequence[Outcome], out_root: Path, seconds: float) -> str:
    counts = Counter(o.status for o in outcomes)
    lines = [f"{len(outcomes)} videos in {seconds:.1f} s: {counts['done']} preprocessed, "
             f"{counts['exists']} already done, {counts['skipped']} skipped now, "
             f"{counts['known_skip']} skipped before (not retried)"]
    done = [o for o in outcomes if o.status == "done"]
    if done:
        frames = sum(o.frames for o in done)
        faces = sum(o.faces for o in done)
        lines.append(f"  {frames} frames read, {faces} face crops written "
                     f"({frames - faces} frames without a face)")
    skipped = [o for o in outcomes if o.status in ("skipped", "known_skip")]
    if skipped:
        reasons = Counter(o.reason.split(":")[0] for o in skipped)
        lines.append("  skipped by reason: " + ", ".join(f"{r}: {n}" for r, n in reasons.most_common()))
        for o in skipped[:20]:
            lines.append(f"    {o.name}: {o.reason}")
        if len(skipped) > 20:
            lines.append(f"    ... {len(skipped) - 20} more")
        lines.append(f"  full list: {out_root / SKIPPED_FILE}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="preprocess_lrs2.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default=DATA_ROOT,
                   help="folder holding <set>/<clip>.mp4 (default: %(default)s)")
    p.add_argument("--preprocessed_root", default=PREPROCESSED_ROOT,
                   help="output folder (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS,
                   help="processes, each with its own face detector (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N videos (sorted), for a trial run")
    p.add_argument("--keyframe_interval", type=int, default=KEYFRAME_INTERVAL,
                   help="full face detection every N frames, mesh tracking in between; 1 detects every "
                        "frame like the reference (slower) (default: %(default)s)")
    p.add_argument("--retry_skipped", action="store_true", help="retry videos an earlier run skipped")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not Path(args.data_root).is_dir():
        print(f"error: --data_root {args.data_root} is not a folder", file=sys.stderr)
        return 2
    if not find_videos(args.data_root):
        print(f"error: no videos matching {args.data_root}/*/*.mp4 (the LRS2 layout <set>/<clip>.mp4)",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    outcomes = preprocess(args.data_root, args.preprocessed_root, args.workers, args.limit,
                          args.keyframe_interval, args.retry_skipped, progress=not args.quiet)
    print(report(outcomes, Path(args.preprocessed_root), time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())

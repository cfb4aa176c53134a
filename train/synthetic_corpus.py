"""Build a synthetic talking-face corpus in the LRS2 preprocessed layout, from photographs and espeak-ng.

No talking-face dataset can be downloaded here, so the project makes one. Every clip is a real
photograph that says a generated sentence in an espeak-ng voice, its lips and jaw moved by that very
audio through a warp over its face mesh, with the mouth's interior rendered from the face's colours;
the lip sync is exact by construction and a model can learn it. The output is what the reference
``preprocess.py`` would have written for LRS2, so the training scripts read it unchanged::

    <out>/<set_id>/<clip_id>/<i>.jpg        face crops, i = 0, 1, ... at 25 fps, --size x --size
    <out>/<set_id>/<clip_id>/audio.wav      16 kHz mono s16, exactly frames / 25 seconds long
    <out>/filelists/{train,val,test}.txt    "<set_id>/<clip_id>" per line (written last: the corpus
                                            is complete once they exist)
    <out>/manifest.json                     settings, identities, and per clip voice/text/frames
    <out>/meta/<set_id>_<clip_id>.json      per clip: voice, camera look, mouth opening per frame
    <out>/previews/<set_id>_<clip_id>.mp4   with --previews N: frame + crop, with the audio

The pieces live in ``train/corpus/``: ``speech`` (espeak-ng voices and sentences), ``mouth`` (the
audio -> mouth rule), ``portrait`` (the mesh warp and the mouth interior), ``look`` (per-clip camera
and head motion) and ``build`` (identities, splits, clips, the layout). Identities and licences are
listed in ``build``'s docstring: the test split is a person the model never sees.

Example::

    python train/synthetic_corpus.py --out data/synth --clips 600 --seconds 2:6 --workers 2 --previews 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import corpus_utils as cu  # noqa: E402
from train.corpus.build import (CLIPS, CLIPS_PER_IDENTITY, FACE_PX, FPS, OUT, PREVIEWS, SECONDS,  # noqa: E402
                                SEED, SIZE, TEST_FRACTION, VAL_FRACTION, WORKERS, Settings, build_corpus)
from train.corpus.speech import SpeechError  # noqa: E402


def _range(text: str, kind=float) -> tuple:
    parts = text.replace(",", ":").split(":")
    if len(parts) == 1:
        v = kind(parts[0])
        return (v, v)
    if len(parts) == 2:
        return (kind(parts[0]), kind(parts[1]))
    raise argparse.ArgumentTypeError(f"expected VALUE or MIN:MAX, got {text!r}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="synthetic_corpus.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=OUT, help="corpus folder (default: %(default)s)")
    p.add_argument("--clips", type=int, default=CLIPS, help="number of clips (default: %(default)s)")
    p.add_argument("--seconds", type=_range, default=SECONDS,
                   help="clip length in seconds, VALUE or MIN:MAX drawn per clip (default: %g:%g)" % SECONDS)
    p.add_argument("--seed", type=int, default=SEED,
                   help="same seed, same corpus, byte for byte (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS,
                   help="processes; the output does not depend on it (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help="share of identities held out for validation (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=TEST_FRACTION,
                   help="share of identities held out for test; with Grace Hopper's photo available they are "
                        "all made from it, a person training never sees (default: %(default)s)")
    p.add_argument("--size", type=int, default=SIZE,
                   help="side of the face crops written (default: %(default)s)")
    p.add_argument("--clips-per-identity", type=int, default=CLIPS_PER_IDENTITY,
                   help="clips per appearance; identities = clips / this (default: %(default)s)")
    p.add_argument("--face-px", type=lambda s: _range(s, int), default=FACE_PX,
                   help="face box side in the video frame, MIN:MAX per clip, before the crop is resized "
                        "to --size (default: %s:%s)" % FACE_PX)
    p.add_argument("--jpeg-quality", type=int, default=cu.JPEG_QUALITY,
                   help="quality of the crops written (each clip's camera also compresses; default: %(default)s)")
    p.add_argument("--previews", type=int, default=PREVIEWS,
                   help="write previews/<set>_<clip>.mp4 (frame with box | crop, with audio) for the first N "
                        "clips, to check the sync by eye (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    settings = Settings(clips=args.clips, seconds=tuple(float(v) for v in args.seconds), seed=args.seed,
                        val_fraction=args.val_fraction, test_fraction=args.test_fraction, size=args.size,
                        clips_per_identity=args.clips_per_identity,
                        face_px=tuple(int(v) for v in args.face_px), jpeg_quality=args.jpeg_quality)
    if settings.seconds[0] * FPS <= 15:
        print(f"warning: clips of {settings.seconds[0]} s have <= 15 frames; the Wav2Lip loaders skip those",
              file=sys.stderr)
    try:
        summary = build_corpus(args.out, settings, args.workers, args.previews, progress=not args.quiet)
    except (SpeechError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rate = summary["frames"] / max(summary["seconds"], 1e-9)
    print(f"{args.out}: {summary['clips']} clips ({summary['built']} built, "
          f"{summary['resumed']} already there), splits {summary['splits']} "
          f"over identities {summary['identities']}")
    if summary["built"]:
        print(f"built {summary['frames']} frames in {summary['seconds']:.1f} s: {rate:.0f} frames/s, "
              f"{rate / summary['workers']:.0f} frames/s per worker "
              f"({rate / FPS / summary['workers']:.1f}x real time per worker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

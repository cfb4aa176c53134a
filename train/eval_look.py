"""How a lip-synced video looks next to its input: the figures of the bundled model's card.

The measures live in the package (:mod:`lipsync_rt.evaluation.look`, also ``lipsync-rt eval
--reference``); this script keeps the command line the training reports have always used:

- ``sharpness``: variance of the Laplacian of the lower half of the face box, output / input;
- ``ssim`` and ``ssim_pause``: SSIM of the lower face with the input's, on every frame and on frames
  whose own 40 ms of audio is silent (below -45 dBFS);
- ``colour_shift``: distance between the mean Lab (a, b) of the output's and the input's lower face;
- ``opening_r``: Pearson r between each output frame's mouth opening and that frame's loudness;
- ``frames_without_face``: output frames where no face is found.

    python train/eval_look.py --video results/demo.mp4 --face examples/face.jpg --audio examples/speech.wav
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipsync_rt.evaluation.look import SILENT_DB, evaluate, frame_levels, sharpness, ssim

__all__ = ["SILENT_DB", "evaluate", "frame_levels", "sharpness", "ssim", "main"]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True, help="the lip-synced output")
    p.add_argument("--face", required=True, help="its input face, photo or video")
    p.add_argument("--audio", required=True, help="its speech")
    p.add_argument("--json", default="", help="also write the figures here")
    args = p.parse_args(argv)
    result = evaluate(args.video, args.face, args.audio)
    print(json.dumps(result, indent=1))
    if args.json:
        from lipsync_rt.atomic import write_json_atomic

        write_json_atomic(args.json, result)
    return result


if __name__ == "__main__":
    main()

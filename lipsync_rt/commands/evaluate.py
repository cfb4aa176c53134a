"""``lipsync-rt eval``: how in sync (and how sharp) a talking-face video is, in the papers' numbers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DESCRIPTION = """\
Judge lip sync in any talking-face video (a lip-synced output, a recording of a live session, a WebRTC
capture) or in a list of clips, with the numbers lip-sync papers report.

  LSE-D  mean distance between mouth and sound embeddings at the best offset (lower is better)
  LSE-C  confidence: how much better that offset is than the median one (higher is better)
  offset the audio shift, in frames of 40 ms, that best aligns mouth and sound; positive when the
         sound comes before the mouth (audio leads), negative when it comes after; 0 is in sync
  A/V offset  the same in milliseconds, on every audio-feature column (10 or 12.5 ms steps)
  off-sync acc  share of 5-frame windows whose own best offset is 0 (within +-1 in brackets);
         chance is 3%

Two judges compute them the same way (5-frame windows at 25 fps, offsets of +-15 frames, distances
averaged over time, LSE-D the minimum, LSE-C the median minus the minimum):

  --syncnet syncnet_v2.model  SyncNet v2 from joonson/syncnet_python with its MFCC features: the
         LSE-D / LSE-C of the Wav2Lip paper and its successors (Wav2Lip on LRS2: 6.386 / 7.781)
  --expert  the project's lip-sync expert (default: the bundled one), the judge the generator was
         trained against; its distances are between unit vectors (0 to 1.41) and are not comparable
         with SyncNet's, only with themselves; it also reports P(sync), its mean probability that
         the audio at offset 0 matches the mouth

Reading them: a video in sync has offset 0 (+-1 at most) and an LSE-C clearly above what the same
judge gives speech that does not belong to the face (--mismatch measures that floor over a list).
LSE-D alone says little across faces and judges: compare figures of one judge, on the same kind of
video, with ground truth judged the same way.

Face crops: 'track' finds the face in every frame and cuts SyncNet's crop by syncnet_python's
face-track rule (and the expert's by the raw face box); 'none' treats each frame as a face crop
already (LRS2 videos and preprocessed clip folders, as calculate_scores_LRS.py does). 'auto' (the
default) uses 'track' for a video given on the command line and 'none' for clip folders and for the
entries of --filelist.

--reference adds the look of a lip-synced output against its input face (photo or video): lower-face
sharpness relative to the input, SSIM (on all frames and in pauses), colour shift, mouth opening
against loudness, and frames where no face is found."""

EPILOG = """\
examples:
  lipsync-rt eval results/demo.mp4                                  # the bundled expert's scores
  lipsync-rt eval out.mp4 --syncnet syncnet_v2.model --json scores.json --plot scores.png
  lipsync-rt eval capture.webm --expert none --syncnet syncnet_v2.model   # A/V offset of a recording
  lipsync-rt eval results/demo.mp4 --reference examples/face.jpg    # + sharpness, SSIM, colour
  lipsync-rt eval --filelist data/synth/filelists/test.txt          # a table over a split
  lipsync-rt eval --filelist lrs2_test.txt --data_root results/lrs2 --syncnet syncnet_v2.model
  lipsync-rt eval --filelist data/synth/filelists/test.txt --mismatch   # each clip vs the next one's audio

Offsets use SyncNet's sign: +2 means the sound is 80 ms early; delay the audio by that much to fix it.
Errors (no face, silent audio, a clip under 6 frames, a wrong weights file) are one line and exit 1.
The bundled model's and ground truth's scores on the synthetic test split: benchmarks/RESULTS.md.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", nargs="?", help="the video to judge (any format FFmpeg reads), or a clip folder "
                   "(<i>.jpg face crops + audio.wav)")
    p.add_argument("--audio", help="judge the video against this audio instead of its own soundtrack")
    p.add_argument("--filelist", help="judge every clip of an LRS2-style list (first token of each line: "
                   "<set>/<clip>, a folder or <set>/<clip>.mp4 under --data_root) and print a table")
    p.add_argument("--data_root", help="where --filelist's entries are (default: the folder that holds the "
                   "list, or its parent when that folder is called 'filelists')")
    p.add_argument("--mismatch", action="store_true", help="with --filelist: judge each clip against the next "
                   "clip's audio, the scores of speech that does not belong to the face (a baseline)")
    p.add_argument("--syncnet", metavar="PATH", help="syncnet_v2.model from joonson/syncnet_python: also "
                   "compute the papers' LSE-D and LSE-C (slow on a CPU: about 2 s per second of video)")
    p.add_argument("--expert", metavar="PATH", help="lip-sync expert checkpoint (Wav2Lip's SyncNet_color, any "
                   "width); default: the bundled one; 'none' to skip it")
    p.add_argument("--reference", metavar="PATH", help="the input face (photo or video) the judged video was "
                   "made from: adds sharpness, SSIM, colour shift and mouth opening against it")
    p.add_argument("--crop", choices=("auto", "track", "none"), default="auto",
                   help="how faces are cut from frames (see above; default: %(default)s)")
    p.add_argument("--vshift", type=_vshift, default=15, help="offsets tried each way, in frames "
                   "(default: %(default)s, as the papers)")
    p.add_argument("--batch_size", type=_positive, default=20, help="windows per network batch (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--json", metavar="PATH", help="write every figure, per clip and per offset, as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: distance against offset and per-window confidence")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _vshift(text: str) -> int:
    value = _positive(text)
    if value > 50:
        raise argparse.ArgumentTypeError(f"--vshift is in frames each way, 1 to 50; got {text!r}")
    return value


def _check_output(path: str, what: str) -> None:
    """Fail before the work, not after it, when an output cannot be written."""
    from lipsync_rt.errors import LipSyncError

    target = Path(path)
    if target.is_dir():
        raise LipSyncError(f"{what} {path} is a folder; give a file name")
    parent = target.parent if str(target.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise LipSyncError(f"cannot write {what} {path}: {existing} is not a writable folder")


def _default_root(filelist: Path) -> Path:
    folder = filelist.resolve().parent
    return folder.parent if folder.name == "filelists" else folder


def run(args: argparse.Namespace) -> int:
    from lipsync_rt.errors import LipSyncError

    if bool(args.video) == bool(args.filelist):
        raise LipSyncError("give one video (or clip folder) to judge, or --filelist, not both and not neither")
    if args.filelist and (args.audio or args.reference):
        raise LipSyncError("--audio and --reference apply to one video, not to --filelist")
    if args.mismatch and not args.filelist:
        raise LipSyncError("--mismatch pairs each clip of --filelist with the next one's audio; it needs --filelist")
    for path, what in ((args.json, "--json"), (args.plot, "--plot")):
        if path:
            _check_output(path, what)

    from lipsync_rt.atomic import write_json_atomic
    from lipsync_rt.evaluation.report import clip_text, list_text, plot
    from lipsync_rt.evaluation.run import load_judges

    judges = load_judges(args.expert, args.syncnet, args.device, args.batch_size, args.vshift)
    document = {"tool": "lipsync-rt eval", "judges": judges.names,
                "settings": {"vshift": args.vshift, "crop": args.crop, "fps": 25, "batch_size": args.batch_size}}
    if args.filelist:
        results, summary, skipped = _run_list(args, judges)
        document.update(clips=results, summary=summary, skipped=skipped, filelist=str(args.filelist),
                        mismatch=bool(args.mismatch))
        text = list_text(results, summary, skipped, judges.names)
    else:
        results, summary = [_run_one(args, judges)], None
        document.update(clips=results)
        text = clip_text(results[0], judges.names)
    if args.json:
        write_json_atomic(args.json, document)
    if args.plot:
        plot(args.plot, results, judges.names, summary)
    print(text)
    outputs = [p for p in (args.json, args.plot) if p]
    if outputs:
        print("wrote " + ", ".join(outputs))
    return 0


def _run_one(args: argparse.Namespace, judges) -> dict:
    from lipsync_rt.evaluation.inputs import open_clip
    from lipsync_rt.evaluation.look import evaluate as look
    from lipsync_rt.evaluation.run import evaluate_clip

    clip = open_clip(args.video, args.audio)
    result = evaluate_clip(clip, judges, args.crop, progress=not args.quiet)
    if args.reference:
        if clip.face_crops:
            from lipsync_rt.errors import LipSyncError

            raise LipSyncError("--reference compares a video file with its input face; a clip folder has no video")
        result["reference"] = str(args.reference)
        result["look"] = look(str(args.video), str(args.reference), args.audio, progress=not args.quiet)
    return result


def _run_list(args: argparse.Namespace, judges):
    from lipsync_rt.errors import LipSyncError
    from lipsync_rt.evaluation.inputs import open_clip
    from lipsync_rt.evaluation.run import evaluate_clip, read_filelist, resolve_entry, summarise

    filelist = Path(args.filelist)
    entries = read_filelist(filelist)
    root = Path(args.data_root) if args.data_root else _default_root(filelist)
    if not root.is_dir():
        raise LipSyncError(f"--data_root {root} is not a folder")
    crop = "none" if args.crop == "auto" else args.crop
    results, skipped = [], []
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), desc="clips", unit="clip")
    try:
        for n, entry in enumerate(entries):
            try:
                path = resolve_entry(root, entry)
                audio = None
                if args.mismatch:
                    other = resolve_entry(root, entries[(n + 1) % len(entries)])
                    audio = other / "audio.wav" if other.is_dir() else other
                results.append(evaluate_clip(open_clip(path, audio, name=entry), judges, crop))
            except LipSyncError as error:
                skipped.append({"name": entry, "reason": str(error)})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if not results:
        first = skipped[0]["reason"] if skipped else "empty list"
        raise LipSyncError(f"no clip of {filelist} could be judged ({len(skipped)} skipped; first: {first})")
    return results, summarise(results, list(judges.names)), skipped

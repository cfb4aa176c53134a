"""``lipsync-rt infer``: Wav2Lip's ``inference.py`` as a command, with the same options and defaults."""

from __future__ import annotations

import argparse

from lipsync_rt.commands import DEFAULT_ENGINE, ENGINE_CHOICES, ENGINE_HELP, ranges

DESCRIPTION = (
    "Lip-sync a face video or photo to any audio (wav, mp3, m4a, or the audio of a video) and write "
    "an mp4 (H.264 + AAC). The options are those of Wav2Lip's inference.py, with the same names and "
    "defaults, plus --device, --blend, --detail, --no-rest and --engine."
)
EPILOG = """\
examples:
  lipsync-rt infer --face examples/face.jpg --audio examples/speech.wav
  lipsync-rt infer --checkpoint_path wav2lip_gan.pth --face talk.mp4 --audio dub.m4a --outfile out.mp4
  lipsync-rt infer --face clip.mp4 --audio speech.mp3 --box 120 380 200 420 --blend none
"""


def _truthy(text: str) -> bool:
    """``--static`` takes an optional value; unlike the reference's ``type=bool``, 'False' means False."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on", "y", "t"):
        return True
    if value in ("0", "false", "no", "off", "n", "f", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint_path", help="generator checkpoint (public wav2lip.pth / wav2lip_gan.pth, or one "
                   "trained by train/); default: the bundled default model")
    p.add_argument("--face", required=True, help="video or image (jpg, png, ...) with a face")
    p.add_argument("--audio", required=True, help="any audio FFmpeg reads, including the audio of a video file")
    p.add_argument("--outfile", default="results/result_voice.mp4",
                   help="output video: .mp4 (default: %(default)s), .mov or .mkv; H.264 + AAC, the audio at the input's "
                   "own sample rate and channels")
    p.add_argument("--static", type=_truthy, nargs="?", const=True, default=False,
                   help="use only the first video frame (always on for an image)")
    p.add_argument("--fps", type=ranges.fps, default=25.0, help="frame rate for an image face, 1 to 240 "
                   "(default: %(default)s)")
    p.add_argument("--pads", nargs=4, type=ranges.pixels, default=[0, 10, 0, 0], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="pixels added to the detected face box; raise BOTTOM to include the chin (default: 0 10 0 0)")
    p.add_argument("--face_det_batch_size", type=ranges.batch, default=16,
                   help="accepted for compatibility; faces are detected one frame at a time")
    p.add_argument("--wav2lip_batch_size", type=ranges.batch, default=128, help="frames per model batch, 1 to 4096 "
                   "(default: %(default)s)")
    p.add_argument("--resize_factor", type=ranges.number(1, 1000, integer=True), default=1,
                   help="divide the frame size by this first; faster, and often better for 1080p+ input")
    p.add_argument("--crop", nargs=4, type=ranges.pixels, default=[0, -1, 0, -1], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="crop the frame after resize/rotate; -1 means the full extent (default: 0 -1 0 -1)")
    p.add_argument("--box", nargs=4, type=ranges.pixels, default=[-1, -1, -1, -1], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="fixed face box for every frame, skipping detection (default: detect)")
    p.add_argument("--rotate", action="store_true", help="rotate frames 90 degrees clockwise (phone videos)")
    p.add_argument("--nosmooth", action="store_true", help="do not smooth face boxes over 5 frames")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--blend", choices=("feather", "none"), default="feather",
                   help="feather: soft lower-face mask with colour matching (default); none: the reference's "
                   "hard rectangular paste, for comparisons")
    p.add_argument("--detail", type=_fraction, default=1.0,
                   help="feather only: put back the frame's own fine detail (skin, lip lines) that a 96x96 model "
                   "cannot draw, wherever the model kept the face as it was; 0 shows the model's own pixels "
                   "(default: %(default)s)")
    p.add_argument("--no-rest", "--no_rest", dest="rest", action="store_false",
                   help="feather only: keep the model's mouth in pauses of the speech too; by default the lower "
                   "face eases back to the picture as it is wherever the speech pauses")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default=DEFAULT_ENGINE,
                   help=f"{ENGINE_HELP} (with --blend none and the same face boxes, the whole frames are "
                   "inference.py's) (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def run(args: argparse.Namespace) -> int:
    from lipsync_rt.infer import InferOptions, run_inference  # heavy imports only when needed

    options = InferOptions(
        face=args.face,
        audio=args.audio,
        outfile=args.outfile,
        checkpoint_path=args.checkpoint_path,
        static=args.static,
        fps=args.fps,
        pads=tuple(args.pads),
        face_det_batch_size=args.face_det_batch_size,
        wav2lip_batch_size=args.wav2lip_batch_size,
        resize_factor=args.resize_factor,
        crop=tuple(args.crop),
        box=tuple(args.box),
        rotate=args.rotate,
        nosmooth=args.nosmooth,
        device=args.device,
        blend=args.blend,
        detail=args.detail,
        rest_in_pauses=args.rest,
        engine=args.engine,
    )
    report = run_inference(options, progress=not args.quiet)
    note = f", {report.frames_without_face} without a face (passed through)" if report.frames_without_face else ""
    built = f" (+ {report.build_seconds:.1f} s building the engine once; cached)" if report.build_seconds else ""
    print(
        f"wrote {report.outfile}: {report.frames} frames at {report.fps:g} fps{note}; "
        f"model: {report.model}; {report.seconds:.1f} s ({report.frames / report.seconds:.1f} frames/s){built}"
    )
    return 0

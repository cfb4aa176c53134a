"""``lipsync-rt build-engine``: export a checkpoint to an ONNX, int8 or TensorRT engine with its metadata."""

from __future__ import annotations

import argparse

from lipsync_rt.commands import ranges

DESCRIPTION = """\
Build an inference engine from a generator checkpoint and write it, with a metadata file (checkpoint
hash, precision, shapes, batch range, library versions, mel_offset), into the per-user engine cache
($LIPSYNC_RT_CACHE/engines, else ~/.cache/lipsync-rt/engines), or into --engine_dir.

  onnx      fp32 ONNX graphs run by onnxruntime on the CPU (the whole generator, plus its face encoder
            and decoder apart for avatar mode); outputs match PyTorch to ~1e-6
  int8      the same graphs statically quantized to int8, calibrated on real inputs (mel windows of
            the bundled speech sample and jittered crops of the bundled face photo, plus
            --calibration); the fastest CPU engine, and what --engine auto uses on the CPU
  tensorrt  an fp16 TensorRT plan for this GPU and TensorRT version (needs CUDA and tensorrt)

The commands (--engine auto, the default, or a named kind) build the engine they need into the cache
on first use and reuse it after, so this command is needed only to build ahead of time, to calibrate
int8 on your own data (--calibration; the cached engine is replaced and then used by every command),
or to write the files elsewhere (--engine_dir). An engine built from another checkpoint, or by another
onnxruntime or TensorRT version, is refused with the reason and rebuilt."""

EPILOG = """\
examples:
  lipsync-rt build-engine --engine int8
  lipsync-rt build-engine --checkpoint_path wav2lip_gan.pth --engine onnx
  lipsync-rt build-engine --checkpoint_path wav2lip_gan.pth --engine int8 --calibration data/synth
  lipsync-rt build-engine --checkpoint_path wav2lip_gan.pth --engine tensorrt --max_batch 32
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint_path", help="generator checkpoint; default: the bundled default model")
    parser.add_argument("--engine", choices=("onnx", "int8", "tensorrt"), default="int8",
                        help="what to build (default: %(default)s)")
    parser.add_argument("--engine_dir", help="write the engine files into this folder instead of the engine cache "
                        "(default: the cache, where every command finds them)")
    parser.add_argument("--calibration", metavar="PATH",
                        help="int8 only: more calibration inputs besides the bundled sample: a corpus directory in the "
                        "training layout (e.g. data/synth) or a video or photo with a face")
    parser.add_argument("--min_batch", type=ranges.batch, default=1, help="smallest batch (TensorRT profile; default: 1)")
    parser.add_argument("--opt_batch", type=ranges.batch, default=4, help="batch to tune for (TensorRT; default: 4)")
    parser.add_argument("--max_batch", type=ranges.batch, default=64, help="largest batch (TensorRT profile; default: 64)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..engine.artifact import build_engine, metadata_path, read_metadata

    artifact = build_engine(
        args.checkpoint_path,
        args.engine,
        args.engine_dir,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        calibration=args.calibration,
        progress=not args.quiet,
    )
    metadata = read_metadata(artifact)
    extra = [artifact.parent / entry["name"] for role, entry in metadata.files.items() if entry["name"] != artifact.name]
    size = sum(entry["bytes"] for entry in metadata.files.values()) / 1e6
    print(f"wrote {artifact} ({metadata.precision}, {size:.1f} MB in all)")
    for path in extra:
        print(f"  with {path}")
    print(f"  metadata {metadata_path(artifact)}")
    return 0

"""The ``lipsync-rt`` command.

User mistakes (a missing file, a wrong checkpoint, a face that is never found) end with one line on
stderr and exit code 1, never a traceback; Ctrl-C exits 130. Outputs are written atomically, so no
failed run leaves a half-written file behind.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from . import __version__
from .errors import LipSyncError

# One module per command. Each is cheap to import (heavy imports happen inside ``run``) and offers
# ``DESCRIPTION``, ``EPILOG`` (optional), ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS = (
    ("infer", "lipsync_rt.commands.infer", "lip-sync a face video or photo to an audio file, writing an mp4"),
    ("build-engine", "lipsync_rt.commands.build_engine", "build an ONNX, int8 or TensorRT engine from a checkpoint"),
    ("demo", "lipsync_rt.commands.demo", "live lip sync: webcam or avatar + microphone (or a file) to a virtual camera"),
    ("serve", "lipsync_rt.commands.serve", "WebRTC server and browser page: camera or avatar mode"),
    ("eval", "lipsync_rt.commands.evaluate", "lip-sync scores of a video or a list: LSE-D, LSE-C, A/V offset, look"),
)
BENCHMARKS = (
    ("engine", "lipsync_rt.bench.engine", "frames/s and latency per engine and batch size, against eager PyTorch"),
    ("pipeline", "lipsync_rt.bench.pipeline", "end-to-end latency, A/V offset and drops of the live pipeline"),
    ("webrtc", "lipsync_rt.bench.webrtc", "concurrent WebRTC sessions over loopback: fps, latency, drops, CPU"),
)


def _add_module_command(subparsers: argparse._SubParsersAction, name: str, module_name: str, summary: str) -> None:
    module = importlib.import_module(module_name)
    p = subparsers.add_parser(
        name,
        help=summary,
        description=getattr(module, "DESCRIPTION", summary),
        epilog=getattr(module, "EPILOG", None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(p)
    p.set_defaults(run=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lipsync-rt",
        description="Streaming, real-time Wav2Lip lip sync.",
        epilog="Run 'lipsync-rt COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (and tracebacks) to stderr")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, module, summary in COMMANDS:
        _add_module_command(subparsers, name, module, summary)
    bench = subparsers.add_parser(
        "bench",
        help="measure engines, the live pipeline or WebRTC sessions (JSON + PNG plot)",
        description="Benchmarks. Every figure comes with a baseline measured in the same run and the machine.",
    )
    bench_commands = bench.add_subparsers(title="benchmarks", metavar="BENCHMARK")
    for name, module, summary in BENCHMARKS:
        _add_module_command(bench_commands, name, module, summary)
    bench.set_defaults(run=lambda args: (bench.print_help(sys.stderr), 2)[1])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.run(args)
    except LipSyncError as error:
        if args.verbose:
            logging.exception("failed")
        print(f"lipsync-rt: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lipsync-rt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

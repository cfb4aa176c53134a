"""``lipsync-rt bench webrtc``: how many concurrent 25 fps WebRTC sessions one engine holds.

For each session count, the server and that many loopback clients (aiortc, in this process) run for a
while; per session we record the received frame rate, the server's end-to-end latency (newest input
that drove a frame -> the frame's send), the pipeline overhead (the session's p99 of: last needed
sample due -> frame ready, the part of D beyond the model's look-ahead L), dropped
frames, and the process CPU. A step "holds" when every session gets >= 95% of the frame rate with no
drops. The clients share the machine with the server, so the figures are conservative.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lipsync_rt.commands import DEFAULT_ENGINE, ENGINE_CHOICES, ENGINE_HELP, ranges

if TYPE_CHECKING:
    import numpy as np

    from lipsync_rt.engine import Engine
    from lipsync_rt.pipeline import Avatar

DESCRIPTION = __doc__.split("\n\n")[0].replace("``", "")
EPILOG = """\
examples:
  lipsync-rt bench webrtc --json results/webrtc.json --plot results/webrtc.png   # 1, 2, 4 sessions
  lipsync-rt bench webrtc --sessions 1 2 4 8 16 32 64 100 --engine auto --device cuda
  lipsync-rt bench webrtc --mode camera --sessions 1 2 --seconds 10
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=ranges.number(1, 256, integer=True), nargs="+", default=[1, 2, 4],
                        help="session counts to try "
                        "(default: 1 2 4)")
    parser.add_argument("--seconds", type=ranges.seconds, default=8.0, help="measured time per step (default: %(default)s)")
    parser.add_argument("--warmup", type=ranges.number(0, 3600, unit="s"), default=2.0,
                        help="unmeasured start of each step (default: %(default)s)")
    parser.add_argument("--mode", choices=("avatar", "camera"), default="avatar", help="session mode (default: avatar)")
    parser.add_argument("--fps", type=ranges.fps, default=25.0, help="frame rate per session (default: %(default)s)")
    parser.add_argument("--overhead-ms", "--overhead_ms", type=ranges.milliseconds,
                        help="processing budget D - L of every session (default: "
                        "measured as each session starts)")
    parser.add_argument("--checkpoint_path", help="generator checkpoint (default: the bundled lite model)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINE_CHOICES,
                        help=f"{ENGINE_HELP} (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--max-batch", type=ranges.batch, default=32, help="most frames per shared engine call "
                        "(default: %(default)s)")
    parser.add_argument("--keep-going", action="store_true", help="try every count even after one fails to hold")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG plot: frames/s and latency per session count")


async def _step(engine: "Engine", avatar: "Avatar", frame: "np.ndarray", speech: "np.ndarray",
                args: argparse.Namespace, count: int) -> dict:
    import asyncio
    import os
    import time

    import aiohttp
    import numpy as np

    from ..engine.batcher import MicroBatcher
    from ..pipeline import SessionConfig
    from ..webrtc import LipSyncServer, ServerConfig
    from ..webrtc.loopback import LoopbackClient
    from ..webrtc.server import listening
    from lipsync_rt.pipeline.metrics import percentiles

    batcher = MicroBatcher(engine, max_batch=args.max_batch)
    server = LipSyncServer(batcher, {"face": avatar}, ServerConfig(max_sessions=count),
                           session_config=SessionConfig(fps=args.fps, overhead_ms=args.overhead_ms))
    try:
        async with listening(server) as url, aiohttp.ClientSession() as http:
            clients = [LoopbackClient(url, mode=args.mode, avatar="face", frames=[frame], speech=speech, fps=args.fps)
                       for _ in range(count)]
            await asyncio.gather(*(c.connect(http) for c in clients))
            await asyncio.sleep(args.warmup)
            peers = list(server.peers.values())
            drops0 = [p.session.stats().frames_dropped for p in peers]
            input0 = server.metrics.input_frames_dropped
            sizes0 = dict(batcher.stats().sizes)
            server.metrics.latencies.clear()
            marks = [len(c.received.video_times) for c in clients]
            cpu0, t0 = os.times(), time.monotonic()
            await asyncio.sleep(args.seconds)
            cpu1, t1 = os.times(), time.monotonic()
            fps = [(len(c.received.video_times) - m) / (t1 - t0) for c, m in zip(clients, marks)]
            drops = sum(p.session.stats().frames_dropped - d for p, d in zip(peers, drops0))
            drops += server.metrics.input_frames_dropped - input0
            latency = [1000 * s for s in server.metrics.latencies]
            lookahead = peers[0].session.lookahead * 1000 if peers else float("nan")
            delays = [p.session.delay * 1000 for p in peers]
            overhead = max((p.session.stats().overhead_ms["p99"] for p in peers), default=float("nan"))
            sizes = {k: v - sizes0.get(k, 0) for k, v in batcher.stats().sizes.items() if v - sizes0.get(k, 0)}
            for client in clients:
                await client.close(http)
    finally:
        await server.close()
        await batcher.close()
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0)
    holds = min(fps) >= 0.95 * args.fps and drops == 0
    return {
        "sessions": count, "holds": bool(holds),
        "fps": {"min": min(fps), "mean": float(np.mean(fps)), "per_session": fps},
        "latency_ms": percentiles(latency), "overhead_ms": {"p99": overhead},
        "lookahead_ms": lookahead, "delay_ms": {"min": min(delays), "max": max(delays)},
        "drops": int(drops), "cpu_cores": cpu,
        "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
    }


def run(args: argparse.Namespace) -> int:
    import asyncio

    import cv2

    from ..audio import load_audio
    from ..engine.factory import create_engine
    from ..errors import LipSyncError
    from ..pipeline import Avatar
    from ..assets import example_face, example_speech
    from ..atomic import write_json_atomic
    from .common import check_outputs, machine

    check_outputs(args)
    face_path, speech_path = example_face(), example_speech()
    if not face_path.is_file():
        raise LipSyncError(f"the benchmark needs the example face ({face_path})")
    engine = create_engine(args.engine, args.checkpoint_path, device=args.device, progress=True)
    avatar = Avatar.prepare(face_path, engine, fps=args.fps)
    photo = cv2.resize(cv2.imread(str(face_path)), (256, 256), interpolation=cv2.INTER_AREA)
    frame = cv2.copyMakeBorder(photo, 16, 16, 32, 32, cv2.BORDER_CONSTANT, value=(40, 40, 40))
    speech = load_audio(speech_path)

    steps = []
    for count in args.sessions:
        step = asyncio.run(_step(engine, avatar, frame, speech, args, count))
        steps.append(step)
        print(f"{count:4d} sessions: fps min {step['fps']['min']:.1f} mean {step['fps']['mean']:.1f}, "
              f"latency p99 {step['latency_ms']['p99']:.0f} ms (overhead {step['overhead_ms']['p99']:.0f} ms), "
              f"drops {step['drops']}, CPU {step['cpu_cores']:.2f} cores -> {'holds' if step['holds'] else 'FAILS'}",
              flush=True)
        if not step["holds"] and not args.keep_going:
            break
    held = [s["sessions"] for s in steps if s["holds"] and s["overhead_ms"]["p99"] <= 50]
    payload = {
        "benchmark": "webrtc", "machine": machine(), "engine": getattr(engine, "name", "?"), "mode": args.mode,
        "fps_target": args.fps, "seconds": args.seconds, "note": "clients run in the same process as the server",
        "max_sessions_held_with_p99_overhead_le_50ms": max(held) if held else 0, "steps": steps,
    }
    if args.json:
        print(f"wrote {write_json_atomic(args.json, payload)}")
    if args.plot:
        print(f"wrote {plot(payload, args.plot)}")
    return 0


def plot(payload: dict, path: str | os.PathLike) -> Path:
    """Frames/s and latency against the number of concurrent sessions."""
    from .common import pyplot, save_figure

    steps, fps, title = payload["steps"], payload["fps_target"], f"{payload['mode']} mode, {payload['engine']}"
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [s["sessions"] for s in steps]
    ax1.plot(xs, [s["fps"]["min"] for s in steps], "o-", label="min per session")
    ax1.plot(xs, [s["fps"]["mean"] for s in steps], "s--", label="mean")
    ax1.axhline(fps, color="grey", lw=0.8)
    ax1.set(xlabel="concurrent sessions", ylabel="frames/s received", title="frame rate")
    ax1.legend()
    ax2.plot(xs, [s["latency_ms"]["p99"] for s in steps], "o-", label="p99 latency")
    ax2.plot(xs, [s["overhead_ms"]["p99"] for s in steps], "s--", label="p99 pipeline overhead")
    ax2.axhline(50, color="grey", lw=0.8)
    ax2.set(xlabel="concurrent sessions", ylabel="ms", title="end-to-end latency")
    ax2.legend()
    fig.suptitle(f"lipsync-rt WebRTC, {title}")
    return save_figure(fig, path)

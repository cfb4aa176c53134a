"""``lipsync-rt bench webrtc``: how many concurrent 25 fps WebRTC sessions one engine holds.

For each session count, the server and that many loopback clients (aiortc, in this process) run for a
while; per session we record the received frame rate, the server's end-to-end latency (newest input
that drove a frame -> the frame's send), the pipeline overhead (the session's p99 of: last needed
sample due -> frame ready, the part of D beyond the model's look-ahead L), dropped
frames, and CPU. A step "holds" when every session gets >= 95% of the frame rate with no drops.

By default (``--clients process``) the clients run in a process of their own, so the server's CPU
(this process's, per session too) is the server's own cost and its event loop is not shared with
the clients'; ``--clients inline`` runs them in the server's process and loop, as before. Either way
they share the machine's cores with the server, so the figures are conservative.
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
    parser.add_argument("--stagger", type=ranges.number(0, 600, unit="s"), default=0.0,
                        help="connect the clients one every this many seconds instead of at once (within each "
                        "client process), as sessions join a real server; the measured window starts when all "
                        "are in (default: %(default)s)")
    parser.add_argument("--mode", choices=("avatar", "camera"), default="avatar", help="session mode (default: avatar)")
    parser.add_argument("--fps", type=ranges.fps, default=25.0, help="frame rate per session (default: %(default)s)")
    parser.add_argument("--overhead-ms", "--overhead_ms", type=ranges.milliseconds,
                        help="processing budget D - L of every session, fixed (default: "
                        "measured as each session starts, then grown with the load in pauses)")
    parser.add_argument("--max-overhead-ms", "--max_overhead_ms", type=ranges.milliseconds, default=200.0,
                        help="how far a measured budget may grow with the load; 0: never (default: %(default)s)")
    parser.add_argument("--checkpoint_path", help="generator checkpoint (default: the bundled lite model)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINE_CHOICES,
                        help=f"{ENGINE_HELP} (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--max-batch", type=ranges.batch, default=32, help="most frames per shared engine call "
                        "(default: %(default)s)")
    parser.add_argument("--clients", choices=("process", "inline"), default="process",
                        help="where the loopback clients run: a separate process, so the figures are the server's "
                        "own, or the server's own process and event loop (default: %(default)s)")
    parser.add_argument("--client-processes", type=ranges.number(1, 64, integer=True), default=1,
                        help="with --clients process: how many processes share the clients (a machine serving "
                        "dozens of sessions needs several to decode them all; default: %(default)s)")
    parser.add_argument("--profile", action="store_true",
                        help="also report where the server's time goes: CPU used and time spent waiting for a "
                        "core, by thread (event loop, engine, blending, encoders, ...), and when a frame "
                        "reached each step after its audio was due (window cut, engine start and end, pasted) "
                        "against the budget D - L; with --plot, a plot of all three")
    parser.add_argument("--keep-going", action="store_true", help="try every count even after one fails to hold")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG plot: frames/s and latency per session count")


async def _connect_all(clients: list, http, stagger: float) -> None:
    """Connect the clients at once, or (``stagger`` > 0) one every ``stagger`` seconds: a server whose
    sessions join one after another, each measuring its budget under the load of those before it."""
    import asyncio

    if stagger <= 0:
        await asyncio.gather(*(c.connect(http) for c in clients))
        return
    for k, client in enumerate(clients):
        if k:
            await asyncio.sleep(stagger)
        await client.connect(http)


def _client_process(url: str, count: int, mode: str, fps: float, frame, speech, commands, results,
                    stagger: float = 0.0) -> None:
    """The clients of one step, in a process of their own: connect, tell the server's process, take the
    measurement window it sends (monotonic times: one clock for every process), report, hang up."""
    import asyncio
    import os
    import time

    import aiohttp

    from ..gc_tuning import freeze_startup_objects
    from ..webrtc.loopback import LoopbackClient

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            clients = [LoopbackClient(url, mode=mode, avatar="face", frames=[frame], speech=speech, fps=fps)
                       for _ in range(count)]
            await _connect_all(clients, http, stagger)
            # stand-ins for browsers: their own full collections would stall every stream's audio at once
            freeze_startup_objects()
            results.put("connected")
            loop = asyncio.get_running_loop()
            t0, t1 = await loop.run_in_executor(None, commands.get)
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            cpu0 = os.times()
            await asyncio.sleep(max(0.0, t1 - time.monotonic()))
            cpu1 = os.times()
            await asyncio.sleep(0.1)
            fps_each = [sum(1 for t in c.received.video_times if t0 <= t < t1) / (t1 - t0) for c in clients]
            results.put({"fps": fps_each, "cpu_cores": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0)})
            for client in clients:
                await client.close(http)

    try:
        asyncio.run(main())
    except Exception as error:  # noqa: BLE001 - the parent reports it
        results.put({"error": f"{type(error).__name__}: {error}"})


class _Clients:
    """Loopback clients, inline (this loop) or in ``--client-processes`` separate processes (the
    clients dealt out in turn); ``finish()`` gives the frame rate each received in the measured window,
    and the CPU the client processes used (None inline: it is in the server's)."""

    def __init__(self, url: str, http, count: int, args: argparse.Namespace, frame, speech) -> None:
        self.url, self.http, self.count, self.args = url, http, count, args
        self.frame, self.speech = frame, speech
        self.clients: list = []
        self.processes: list = []           # (process, commands, results)

    async def connect(self) -> None:
        import asyncio

        if self.args.clients == "inline":
            from ..webrtc.loopback import LoopbackClient

            self.clients = [LoopbackClient(self.url, mode=self.args.mode, avatar="face", frames=[self.frame],
                                           speech=self.speech, fps=self.args.fps) for _ in range(self.count)]
            await _connect_all(self.clients, self.http, self.args.stagger)
            return
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        processes = min(self.count, self.args.client_processes)
        for k in range(processes):
            share = len(range(k, self.count, processes))
            commands, results = ctx.Queue(), ctx.Queue()
            process = ctx.Process(target=_client_process, daemon=True, args=(
                self.url, share, self.args.mode, self.args.fps, self.frame, self.speech, commands, results,
                self.args.stagger))
            process.start()
            self.processes.append((process, commands, results))
        timeout = 120.0 + self.args.stagger * self.count
        for reply in await asyncio.gather(*(self._result(results, timeout) for _, _, results in self.processes)):
            if reply != "connected":
                raise RuntimeError(f"a client process failed: {reply}")

    @staticmethod
    async def _result(results, timeout: float):
        import asyncio
        import queue

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, lambda: results.get(timeout=timeout))
        except queue.Empty:
            raise RuntimeError("a client process did not answer") from None

    def start_window(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1
        for _, commands, _ in self.processes:
            commands.put((t0, t1))

    async def finish(self) -> tuple[list[float], "float | None"]:
        import asyncio

        if not self.processes:
            fps = [sum(1 for t in c.received.video_times if self.t0 <= t < self.t1) / (self.t1 - self.t0)
                   for c in self.clients]
            for client in self.clients:
                await client.close(self.http)
            return fps, None
        replies = await asyncio.gather(*(self._result(results, 60.0) for _, _, results in self.processes))
        fps, cpu = [], 0.0
        for reply in replies:
            if "error" in reply:
                raise RuntimeError(f"a client process failed: {reply['error']}")
            fps += reply["fps"]
            cpu += reply["cpu_cores"]
        return fps, cpu

    def stop(self) -> None:
        for process, _, _ in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


async def _steal_peak(until: float, every: float = 0.1) -> "float | None":
    """Sleep until ``until`` (monotonic), reading the hypervisor's steal every ``every`` s; the most
    cores it took in one such interval (None where the kernel does not say)."""
    import asyncio
    import time

    from .threads import stolen_seconds

    peak, last, at = 0.0, stolen_seconds(), time.monotonic()
    while (now := time.monotonic()) < until:
        await asyncio.sleep(min(every, until - now))
        stolen, now = stolen_seconds(), time.monotonic()
        if stolen is None or last is None:
            return None
        peak = max(peak, (stolen - last) / max(now - at, 1e-3))
        last, at = stolen, now
    return peak


async def _step(engine: "Engine", avatar: "Avatar", frame: "np.ndarray", speech: "np.ndarray",
                args: argparse.Namespace, count: int) -> dict:
    import asyncio
    import os
    import time

    import aiohttp
    import numpy as np

    from ..engine.batcher import MicroBatcher
    from ..gc_tuning import freeze_startup_objects, thaw
    from ..pipeline import SessionConfig
    from ..webrtc import LipSyncServer, ServerConfig
    from ..webrtc.server import listening
    from lipsync_rt.pipeline.metrics import MILESTONES, percentiles

    from .threads import cores_by_group, stolen_seconds, thread_times

    batcher = MicroBatcher(engine, max_batch=args.max_batch)
    server = LipSyncServer(batcher, {"face": avatar}, ServerConfig(max_sessions=count),
                           session_config=SessionConfig(fps=args.fps, overhead_ms=args.overhead_ms,
                                                        max_overhead_ms=args.max_overhead_ms))
    clients = None
    try:
        async with listening(server) as url, aiohttp.ClientSession() as http:
            freeze_startup_objects()        # as serve does once it is up (gc_tuning.py)
            clients = _Clients(url, http, count, args, frame, speech)
            await clients.connect()
            t0 = time.monotonic() + args.warmup
            t1 = t0 + args.seconds
            clients.start_window(t0, t1)
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            peers = list(server.peers.values())
            drops0 = [p.session.stats().frames_dropped for p in peers]
            input0 = server.metrics.input_frames_dropped
            sizes0 = dict(batcher.stats().sizes)
            server.metrics.latencies.clear()
            for peer in peers:
                peer.session.metrics.restart_timings()
            cpu0, threads0, stolen0 = os.times(), thread_times(), stolen_seconds()
            stolen_peak = await _steal_peak(t1)
            cpu1, threads1, stolen1 = os.times(), thread_times(), stolen_seconds()
            drops_each = [p.session.stats().frames_dropped - d for p, d in zip(peers, drops0)]
            drops = sum(drops_each) + server.metrics.input_frames_dropped - input0
            latency = [1000 * s for s in server.metrics.latencies]
            lookahead = peers[0].session.lookahead * 1000 if peers else float("nan")
            delays = [p.session.delay * 1000 for p in peers]
            measured = [(p.session.lookahead + p.session.overhead) * 1000 for p in peers]
            stats = [p.session.stats() for p in peers]
            overhead_each = [s.overhead_ms["p99"] for s in stats]
            reached = {step: {"p50": float(np.mean([s.reached_ms[step]["p50"] for s in stats])),
                              "p99": max(s.reached_ms[step]["p99"] for s in stats)}
                       for step in MILESTONES if stats and all(step in s.reached_ms for s in stats)}
            overhead = max(overhead_each, default=float("nan"))
            sizes = {k: v - sizes0.get(k, 0) for k, v in batcher.stats().sizes.items() if v - sizes0.get(k, 0)}
            fps, client_cpu = await clients.finish()
    finally:
        if clients is not None:
            clients.stop()
        await server.close()
        await batcher.close()
        thaw()
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0)
    holds = len(fps) == count and min(fps) >= 0.95 * args.fps and drops == 0
    return {
        "sessions": count, "holds": bool(holds), "clients": args.clients,
        "fps": {"min": min(fps), "mean": float(np.mean(fps)), "per_session": fps},
        "latency_ms": percentiles(latency), "overhead_ms": {"p99": overhead, "per_session_p99": overhead_each},
        "lookahead_ms": lookahead,
        "delay_ms": {"min": min(delays), "max": max(delays), "at_start_min": min(measured), "at_start_max": max(measured)},
        "delay_increases": sum(s.delay_increases for s in stats),
        "drops": int(drops), "drops_per_session": drops_each, "drops_warmup": int(sum(drops0)),
        "cpu_cores": cpu, "server_cpu_per_session": cpu / count, "client_cpu_cores": client_cpu,
        "stolen_cores": None if stolen0 is None or stolen1 is None else (stolen1 - stolen0) / (t1 - t0),
        "stolen_peak_cores": stolen_peak,
        "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "server_cpu_by_thread": cores_by_group(threads0, threads1, t1 - t0),
        "server_waiting_by_thread": cores_by_group(threads0, threads1, t1 - t0, waiting=True),
        "reached_ms": reached,
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
              f"drops {step['drops']} ({step['drops_warmup']} in the warm-up), "
              f"D {step['delay_ms']['at_start_max']:.0f} -> {step['delay_ms']['max']:.0f} ms, "
              f"server CPU {step['cpu_cores']:.2f} cores ({step['server_cpu_per_session']:.2f} per session)"
              + (f", stolen by the hypervisor {step['stolen_cores']:.2f} cores (at most {step['stolen_peak_cores']:.1f} "
                 "in 100 ms)" if step["stolen_cores"] is not None else "")
              + f" -> {'holds' if step['holds'] else 'FAILS'}",
              flush=True)
        if args.profile:
            _print_profile(step)
        if not step["holds"] and not args.keep_going:
            break
    held = [s["sessions"] for s in steps if s["holds"] and s["overhead_ms"]["p99"] <= 50]
    payload = {
        "benchmark": "webrtc", "machine": machine(), "engine": getattr(engine, "name", "?"), "mode": args.mode,
        "fps_target": args.fps, "seconds": args.seconds, "clients": args.clients,
        "note": ("clients run in a separate process; CPU is the server's own" if args.clients == "process"
                 else "clients run in the same process and event loop as the server"),
        "max_sessions_held_with_p99_overhead_le_50ms": max(held) if held else 0, "steps": steps,
    }
    if args.json:
        print(f"wrote {write_json_atomic(args.json, payload)}")
    if args.plot:
        print(f"wrote {plot(payload, args.plot)}")
        if args.profile:
            print(f"wrote {plot_profile(payload, _profile_path(args.plot))}")
    return 0


def _profile_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.stem + "_cpu" + path.suffix)


def _print_profile(step: dict) -> None:
    for key, what in (("server_cpu_by_thread", "server CPU by thread (cores)"),
                      ("server_waiting_by_thread", "ready but waiting for a core (cores)")):
        print(f"       {what}: " + ", ".join(f"{k} {v:.2f}" for k, v in step[key].items()), flush=True)
    if step["reached_ms"]:
        budget = step["delay_ms"]["min"] - step["lookahead_ms"]
        print("       ms after the audio was due, p50/p99: " + ", ".join(
            f"{k} {v['p50']:.0f}/{v['p99']:.0f}" for k, v in step["reached_ms"].items())
            + f" (budget D - L {budget:.0f})", flush=True)


def plot_profile(payload: dict, path: str | os.PathLike) -> Path:
    """Where the time goes, per session count: CPU used by thread group, time those threads waited
    for a core, and how long after its audio was due a frame reached each step (p99), against D - L."""
    from .common import pyplot, save_figure

    steps = payload["steps"]
    labels: list[str] = []
    for step in steps:
        for key in ("server_cpu_by_thread", "server_waiting_by_thread"):
            labels += [k for k in step.get(key, {}) if k not in labels]
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    xs = [str(s["sessions"]) for s in steps]
    for ax, key, ylabel, title in (
            (axes[0], "server_cpu_by_thread", "CPU cores (server process)", "CPU used"),
            (axes[1], "server_waiting_by_thread", "cores' worth of waiting", "ready to run, waiting for a core")):
        bottom = [0.0] * len(steps)
        for label in labels:
            values = [s.get(key, {}).get(label, 0.0) for s in steps]
            if any(values):
                ax.bar(xs, values, bottom=bottom, label=label, color=colours[label])
                bottom = [b + v for b, v in zip(bottom, values)]
        ax.set(xlabel="concurrent sessions", ylabel=ylabel, title=title)
    for x, step, top in zip(xs, steps, [sum(s.get("server_cpu_by_thread", {}).values()) for s in steps]):
        axes[0].annotate(f"{step['fps']['min']:.0f} fps, {step['drops']} drops", (x, top), ha="center",
                         va="bottom", fontsize=8)
    axes[0].margins(y=0.15)
    axes[0].legend(fontsize=7, loc="upper left")
    ax = axes[2]
    milestones: list[str] = []
    for step in steps:
        milestones += [k for k in step.get("reached_ms", {}) if k not in milestones]
    for i, name in enumerate(milestones):
        ax.plot(xs, [s.get("reached_ms", {}).get(name, {}).get("p99", float("nan")) for s in steps], "o-",
                color=f"C{i}", label=f"{name} (p99)")
        ax.plot(xs, [s.get("reached_ms", {}).get(name, {}).get("p50", float("nan")) for s in steps], ":",
                color=f"C{i}")
    ax.plot(xs, [s["delay_ms"]["min"] - s["lookahead_ms"] for s in steps], "k--", label="budget D - L (at the end)")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set(xlabel="concurrent sessions", ylabel="ms after the frame's audio was due",
           title="a frame's path (p99 solid, p50 dotted)")
    ax.legend(fontsize=7)
    fig.suptitle(f"where the server's time goes ({payload['engine']}, {payload['mode']} mode, "
                 f"{payload['machine'].get('cores', '?')} cores)")
    return save_figure(fig, path)


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
    for s in steps:
        ax1.annotate(f"{s['drops']} drops", (s["sessions"], s["fps"]["min"]), textcoords="offset points",
                     xytext=(0, -14), ha="center", fontsize=8)
    ax1.margins(y=0.15)
    ax1.set(xlabel="concurrent sessions", ylabel="frames/s received", title="frame rate (and lip-sync drops)")
    ax1.legend()
    ax2.plot(xs, [s["latency_ms"]["p99"] for s in steps], "o-", label="p99 latency")
    ax2.plot(xs, [s["overhead_ms"]["p99"] for s in steps], "s--", label="p99 pipeline overhead")
    if all("delay_ms" in s for s in steps):
        ax2.plot(xs, [s["delay_ms"]["max"] for s in steps], "^:", label="D (at the end)")
    ax2.axhline(50, color="grey", lw=0.8)
    ax2.set(xlabel="concurrent sessions", ylabel="ms", title="end-to-end latency")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xticks(xs)
    fig.suptitle(f"lipsync-rt WebRTC, {title}")
    return save_figure(fig, path)

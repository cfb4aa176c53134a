"""``lipsync-rt bench pipeline``: a clip played through the live graph in real time, measured.

A face clip with speech is played as a live source (its frames pushed as a webcam would push them,
its audio in 10 ms blocks as a sound card would deliver them) into one live ``LipSyncSession``; the
session's paced output goes to a sink that records when each frame and audio chunk arrived. Reported:

- end-to-end latency, media time to sink (frame i's picture and the audio at t_i are captured at
  T0 + t_i): about D by design; and processing latency, newest input to sink;
- the pipeline's overhead: D - L as configured, and per generated frame the time from its last
  needed audio sample being due to the frame being ready (what D - L must cover);
- A/V offset at the sink (video frame vs the audio chunk holding its time), dropped frames and how
  many of them were concealed (a held mouth instead of the original picture);
- flicker: the lower-face change between consecutive frames (mean absolute difference in grey levels
  over the lower half of the face box, at 48x48), over all frames and where a frame was dropped;
- silence cut into the speech (short stretches filled in between two pushes: clicks);
- per-stage times (tracking, input preparation, engine, blending), event-loop lag (a probe task
  that sleeps 5 ms and records how late it wakes), process CPU use as cores per live session.

The baseline, measured in the same run, is the engine alone: one-frame calls, as a live stream
makes them. Targets on a 2-core CPU at 25 fps with the bundled lite model: overhead p99 <= 60 ms,
A/V offset <= 40 ms, no drops over 60 s; on a GPU: overhead p99 <= 15 ms.

``--interrupt`` measures a voice agent instead (``bench/interrupt.py``): replies pushed as segments,
some cut by ``interrupt()``, an avatar idling between them; barge-in latency (call to the first idle
frame and silent audio at the sink, target p99 <= 60 ms on a 2-core CPU), segment event timing, and
the step on screen where idle and speech take over from each other.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from lipsync_rt.commands import DEFAULT_ENGINE, ENGINE_CHOICES, ENGINE_HELP, ranges
from lipsync_rt.gc_tuning import freeze_startup_objects, thaw

if TYPE_CHECKING:
    from lipsync_rt.engine import Engine

DESCRIPTION = __doc__.split("\n\n", 1)[1].strip()
EPILOG = """\
examples:
  lipsync-rt bench pipeline --json results/pipeline.json --plot results/pipeline.png
  lipsync-rt bench pipeline --seconds 10 --engine int8
  lipsync-rt bench pipeline --face examples/face.jpg       # avatar mode instead of a camera clip
  lipsync-rt bench pipeline --interrupt --json results/interrupt.json --plot results/interrupt.png
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=ranges.seconds, default=60.0, help="how long to play (default: %(default)s)")
    parser.add_argument("--clip", help="face video with speech played as the live camera + microphone "
                        "(default: the example face moving in a 320x288 frame, with the example speech)")
    parser.add_argument("--face", help="avatar mode: this avatar with the clip's (or example) speech")
    parser.add_argument("--interrupt", action="store_true", help="a voice agent instead: replies as segments, "
                        "barge-in, idling; reports barge-in latency, segment events and clip transitions")
    parser.add_argument("--idle", help="with --interrupt and --face: the avatar's idle clip (default: with "
                        "no --face, a generated speaking and idle clip of the example face)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINE_CHOICES,
                        help=f"{ENGINE_HELP} (default: %(default)s)")
    parser.add_argument("--checkpoint_path", help="generator checkpoint (default: the bundled lite model)")
    parser.add_argument("--fps", type=ranges.fps, default=25.0, help="frame rate (default: %(default)s)")
    parser.add_argument("--overhead_ms", "--overhead-ms", type=ranges.milliseconds,
                        help="processing budget D - L (default: measured at start)")
    parser.add_argument("--batch_size", type=ranges.batch, default=4, help="session batch size (default: %(default)s)")
    parser.add_argument("--push-ms", "--push_ms", type=ranges.number(1, 1000, unit="ms"), default=10.0,
                        help="the speech is pushed in chunks of this many ms, each when its last sample is "
                        "due, as a sound card (10 ms) or a TTS stream (20 ms) delivers it (default: %(default)s)")
    parser.add_argument("--push-rate", "--push_rate", type=ranges.number(8000, 192000, integer=True), default=16000,
                        help="the speech's sample rate as pushed, e.g. 24000 for a TTS (default: %(default)s)")
    parser.add_argument("--conceal", choices=("on", "off"), default="on",
                        help="conceal dropped frames with the last generated mouth (default), or show the original "
                        "picture (for comparison)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG plot")


def run(args: argparse.Namespace) -> int:
    from lipsync_rt.errors import LipSyncError

    if not args.seconds > 0:
        raise LipSyncError(f"--seconds must be > 0, got {args.seconds}")
    if args.idle and not (args.interrupt and args.face):
        raise LipSyncError("--idle goes with --interrupt and --face")
    from .common import check_outputs

    check_outputs(args)
    if args.interrupt:
        from . import interrupt

        result = asyncio.run(interrupt.measure(args))
        interrupt.report(result)
        _write(result, args, interrupt.plot)
        return 0
    with tempfile.TemporaryDirectory(prefix="lipsync-bench-") as tmp:
        rate = getattr(args, "push_rate", 16000)
        clip = args.clip or str(make_clip(Path(tmp) / "clip.mp4", fps=args.fps, audio_rate=rate))
        result = asyncio.run(measure(args, clip))
    _print(result)
    _write(result, args, plot)
    return 0


def _write(result: dict, args: argparse.Namespace, plotter) -> None:
    if args.json:
        from lipsync_rt.atomic import write_json_atomic

        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    if args.plot:
        plotter(result, args.plot)
        print(f"wrote {args.plot}")


def make_clip(path: Path, fps: float = 25.0, seconds: float = 8.0, audio_rate: int = 16000) -> Path:
    """The example face drifting slowly in a 320x288 frame, with the example speech (at ``audio_rate``)."""
    import cv2

    from lipsync_rt.assets import example_face, example_speech
    from lipsync_rt.audio import load_audio
    from lipsync_rt.media import Mp4Writer

    photo = cv2.resize(cv2.imread(str(example_face())), (256, 256), interpolation=cv2.INTER_AREA)
    wav = load_audio(example_speech())
    seconds = min(seconds, len(wav) / 16000)
    with Mp4Writer(path, fps, audio_rate=audio_rate) as writer:
        for i in range(int(seconds * fps)):
            frame = np.full((288, 320, 3), 40, np.uint8)
            dx, dy = 20 + int(8 * np.sin(i / 20)), 12 + int(6 * np.cos(i / 25))
            frame[dy:dy + 256, dx:dx + 256] = photo
            writer.write_video(frame)
        writer.write_audio(wav[: int(seconds * 16000)], rate=16000)
    return path


async def measure(args: argparse.Namespace, clip: str) -> dict:
    from lipsync_rt.engine.factory import create_engine
    from lipsync_rt.io import FileSource
    from lipsync_rt.pipeline import Avatar, LipSyncSession, SessionConfig
    from lipsync_rt.pipeline.metrics import percentiles

    from .common import machine
    from .loop_lag import LoopLagProbe

    loop = asyncio.get_running_loop()
    engine = await loop.run_in_executor(None, lambda: create_engine(args.engine, args.checkpoint_path, progress=True))
    avatar = await loop.run_in_executor(None, lambda: Avatar.prepare(args.face, engine, fps=args.fps)) \
        if args.face else None
    baseline = _engine_baseline(engine)

    config = SessionConfig(fps=args.fps, live=True, overhead_ms=args.overhead_ms, batch_size=args.batch_size,
                           conceal_drops=getattr(args, "conceal", "on") == "on")
    session = LipSyncSession(engine, avatar=avatar, config=config)
    push_rate = getattr(args, "push_rate", 16000)
    source = FileSource(clip, realtime=True, seconds=args.seconds, loop=True, video=avatar is None,
                        chunk_ms=getattr(args, "push_ms", 10.0), source_audio=push_rate != 16000)
    first = None
    if avatar is None:
        from lipsync_rt.media import iter_video_frames

        frames = iter_video_frames(clip)
        first = next(frames, None)
        frames.close()                     # the file is not read on: close it now
    faces = LowerFaces(avatar, first.image if first is not None else None)
    freeze_startup_objects()               # as the demo and serve do (gc_tuning.py)
    await session.start()                  # setup (imports, warm-up) is not the steady state
    probe = LoopLagProbe().start()
    t0 = session.clock.t0
    cpu0, wall0 = _cpu(), time.monotonic()
    video, audio = [], []

    async def take_video():
        async for f in session.video():
            video.append((f.pts, time.monotonic(), f.capture_time, f.generated))
            faces.add(f)

    async def take_audio():
        async for a in session.audio():
            audio.append((a.pts, time.monotonic(), a.samples.size))

    feeder = loop.create_task(source.run(session))
    try:
        await asyncio.gather(take_video(), take_audio())
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await probe.stop()
        await session.close()
        thaw()
    cpu = (_cpu() - cpu0) / (time.monotonic() - wall0)
    stats = session.stats()

    period = 1 / args.fps
    v = np.array([(pts * period, sink, cap if cap is not None else np.nan, gen) for pts, sink, cap, gen in video])
    a = np.array([(pts / 16000, sink) for pts, sink, _ in audio])
    e2e = (v[:, 1] - t0 - v[:, 0]) * 1000
    processing = (v[:, 1] - v[:, 2])[(v[:, 3] > 0) & ~np.isnan(v[:, 2])] * 1000
    # A/V offset: the frame's delay to the sink minus the delay of the audio chunk holding its time
    idx = np.clip(np.searchsorted(a[:, 0], v[:, 0], side="right") - 1, 0, len(a) - 1)
    av = ((v[:, 1] - v[:, 0]) - (a[idx, 1] - a[idx, 0])) * 1000
    lags = list(probe.lags_ms)
    wall = time.monotonic() - wall0
    return {
        "benchmark": "pipeline",
        "machine": machine(),
        "engine": getattr(engine, "name", type(engine).__name__),
        "mode": "avatar" if avatar is not None else "camera",
        "seconds": args.seconds,
        "fps": args.fps,
        "batch_size": args.batch_size,
        "push": {"chunk_ms": getattr(args, "push_ms", 10.0), "rate": source.rate},
        "baseline_engine_ms": baseline,
        "delay_ms": stats.delay * 1000,
        "lookahead_ms": stats.lookahead * 1000,
        "overhead_configured_ms": (stats.delay - stats.lookahead) * 1000,
        "overhead_ms": stats.overhead_ms,
        "end_to_end_ms": percentiles(e2e),
        "processing_latency_ms": percentiles(processing),
        "av_offset_ms": {**percentiles(np.abs(av)), "max": float(np.max(np.abs(av))) if av.size else float("nan")},
        "frames_out": stats.frames_out,
        "frames_generated": stats.frames_generated,
        "frames_dropped": stats.frames_dropped,
        "frames_held": stats.frames_held,
        "frames_without_face": stats.frames_without_face,
        "engine_errors": stats.engine_errors,
        "silence_cuts": stats.silence_cuts,
        "silence_samples": stats.silence_samples,
        "conceal": config.conceal_drops,
        "flicker": faces.flicker(),
        "stage_ms": stats.stage_ms,
        "loop_lag_ms": {**percentiles(lags), "max": max(lags) if lags else float("nan")},
        "cpu_percent": cpu * 100,
        "cores": cpu,
        "wall_s": wall,
        "load_average": list(os.getloadavg()),
        "series": {"t": v[:, 0].round(4).tolist(), "end_to_end_ms": e2e.round(2).tolist(),
                   "av_offset_ms": av.round(2).tolist(), "generated": v[:, 3].astype(int).tolist()},
    }


class LowerFaces:
    """The lower half of the face box of every output frame, small and grey, for the flicker figures.

    The box is the avatar's own for its frame (loop order), or, in camera mode, the one the face
    detector finds in ``first_frame`` (the clip's), widened by the clip's drift. The detection runs
    here, before the session starts: at the first output frame it would stall the event loop the
    measured session runs on (tens of ms), and show up as an A/V offset at the sinks.
    """

    SIZE = 48

    def __init__(self, avatar, first_frame: Optional[np.ndarray] = None) -> None:
        self.avatar = avatar
        self.crops: list[np.ndarray] = []
        self.dropped: list[bool] = []
        self.held: list[bool] = []
        self._box = None
        if avatar is None and first_frame is not None:
            from lipsync_rt.face import FaceDetector

            with FaceDetector() as detector:
                found = detector.detect(first_frame)
            if found is not None:
                x1, y1, x2, y2 = found.box
                h, w = first_frame.shape[:2]
                self._box = (max(0, x1 - 12), max(0, y1 - 12), min(w, x2 + 12), min(h, y2 + 12))

    def _box_for(self, frame) -> Optional[tuple[int, int, int, int]]:
        if self.avatar is not None:
            j = frame.pts % len(self.avatar)
            return tuple(int(v) for v in self.avatar.faces.boxes[j % len(self.avatar.faces)]) \
                if self.avatar.rows[j] >= 0 else None
        return self._box

    def add(self, frame) -> None:
        import cv2

        box = self._box_for(frame)
        if box is None:
            return
        x1, y1, x2, y2 = box
        lower = frame.image[(y1 + y2) // 2:y2, x1:x2]
        if lower.size == 0:
            return
        grey = cv2.cvtColor(cv2.resize(lower, (self.SIZE, self.SIZE), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        self.crops.append(grey.astype(np.int16))
        self.dropped.append(not frame.generated and not frame.idle)
        self.held.append(frame.held)

    def flicker(self) -> dict:
        from lipsync_rt.pipeline.metrics import percentiles

        if len(self.crops) < 2:
            return {"all": percentiles([]), "at_drops": percentiles([]), "spikes": 0}
        change = np.array([np.abs(b - a).mean() for a, b in zip(self.crops, self.crops[1:])])
        drops = np.array(self.dropped)
        at_drops = change[drops[1:] | drops[:-1]]
        calm = float(np.percentile(change, 50))
        return {"all": {**percentiles(change), "max": float(change.max())},
                "at_drops": {**percentiles(at_drops), "max": float(at_drops.max()) if at_drops.size else float("nan")},
                # a jump of more than three times the usual change (and 4 grey levels): a visible flicker
                "spikes": int(np.count_nonzero(change > max(3 * calm, 4.0))),
                "held": int(sum(self.held))}


def _engine_baseline(engine: "Engine") -> dict:
    """One-frame engine calls on zeros, after two warm-ups: the cost a live stream pays per frame."""
    from lipsync_rt.pipeline.metrics import percentiles

    mel, face = np.zeros((1, 1, 80, 16), np.float32), np.zeros((1, 6, 96, 96), np.float32)
    for _ in range(2):
        engine.infer(mel, face)
    times = []
    for _ in range(20):
        started = time.perf_counter()
        engine.infer(mel, face)
        times.append((time.perf_counter() - started) * 1000)
    return percentiles(times)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _print(r: dict) -> None:
    print(f"{r['engine']} ({r['mode']} mode), {r['seconds']:g} s at {r['fps']:g} fps on {r['machine']['cpu']}:")
    print(f"  delay D {r['delay_ms']:.0f} ms = look-ahead {r['lookahead_ms']:.1f} + overhead "
          f"{r['overhead_configured_ms']:.0f} ms; measured overhead p50/p99 {r['overhead_ms']['p50']:.1f}/"
          f"{r['overhead_ms']['p99']:.1f} ms (engine alone p50 {r['baseline_engine_ms']['p50']:.1f} ms)")
    e = r["end_to_end_ms"]
    print(f"  end to end p50/p95/p99 {e['p50']:.0f}/{e['p95']:.0f}/{e['p99']:.0f} ms; A/V offset p99 "
          f"{r['av_offset_ms']['p99']:.1f} ms; loop lag p99/max {r['loop_lag_ms']['p99']:.1f}/"
          f"{r['loop_lag_ms']['max']:.1f} ms; CPU {r['cpu_percent']:.0f} %")
    print(f"  frames {r['frames_out']} out, {r['frames_generated']} generated, {r['frames_dropped']} dropped "
          f"({r['frames_held']} concealed), {r['frames_without_face']} without a face, {r['engine_errors']} engine errors")
    f = r["flicker"]
    print(f"  flicker (lower-face change, grey levels) p50/p99/max {f['all']['p50']:.2f}/{f['all']['p99']:.2f}/"
          f"{f['all']['max']:.2f}, at drops p50/max {f['at_drops']['p50']:.2f}/{f['at_drops']['max']:.2f}, "
          f"{f['spikes']} spikes; silence cut into speech {r['silence_cuts']} times; {r['cores']:.2f} cores "
          f"(load average {r['load_average'][0]:.1f})")


def plot(r: dict, path: str) -> None:
    from .common import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    s = r["series"]
    axes[0].plot(s["t"], s["end_to_end_ms"], lw=0.8, label="end to end (media time -> sink)")
    axes[0].axhline(r["delay_ms"], color="k", ls="--", lw=0.8, label=f"D = {r['delay_ms']:.0f} ms")
    axes[0].axhline(r["lookahead_ms"], color="grey", ls=":", lw=0.8, label=f"L = {r['lookahead_ms']:.0f} ms")
    axes[0].set(xlabel="media time (s)", ylabel="ms", title="latency")
    axes[0].legend(fontsize=8)
    axes[1].plot(s["t"], s["av_offset_ms"], lw=0.8)
    axes[1].axhspan(-1000 / r["fps"], 1000 / r["fps"], color="g", alpha=0.1, label="one frame")
    axes[1].set(xlabel="media time (s)", ylabel="ms", title="A/V offset at the sink")
    axes[1].legend(fontsize=8)
    stages = {k: v["p50"] for k, v in r["stage_ms"].items() if v["p50"] == v["p50"]}
    stages["loop lag p99"] = r["loop_lag_ms"]["p99"]
    stages["overhead p99"] = r["overhead_ms"]["p99"]
    axes[2].barh(list(stages), list(stages.values()))
    axes[2].set(xlabel="ms", title=f"stages (p50); dropped {r['frames_dropped']}")
    fig.suptitle(f"lipsync-rt pipeline: {r['engine']}, {r['mode']} mode, {r['machine']['cpu']}", fontsize=9)
    save_figure(fig, path)

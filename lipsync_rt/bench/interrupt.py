"""``lipsync-rt bench pipeline --interrupt``: a voice agent's conversation, measured at the sinks.

An avatar with an idle clip (by default the example face made into a speaking clip and an idle clip
of the same person: the poses the two share are what a real pair of recordings shares) is driven as a
voice agent drives it: replies cut from the example speech, resampled to 24 kHz as a TTS sends them
and pushed three times faster than real time, one segment each; between replies the avatar idles. Some
replies play to their end; the others are interrupted at a random moment (barge-in). Reported:

- barge-in latency: from the ``interrupt()`` call to the first frame at the sink that left after it
  (idle, by the rule) and to the first audio chunk that left after it (silence); per call, the later
  of the two; p50 / p99 next to the delay D and the loop's lag;
- whether the rule held: every frame after a cut idle and every sample silent until the next reply;
- segment event timing: how long after the reply's first push ``PlaybackStarted`` came (about D), and
  how late each event reached its listener after its audio left the session (started: the first
  sample; finished: the last sample, or the interrupt call); the played ``position`` against what
  the sink received of that segment;
- the step on screen where idle and speech take over from each other (mean absolute pixel
  difference between consecutive frames at the sink), with the nearest-frame transition and, in a
  second, shorter run, with a plain cut, against the clips' own frame-to-frame step.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lipsync_rt.assets import example_face, example_speech

if TYPE_CHECKING:
    from lipsync_rt.pipeline import Avatar

TTS_RATE = 24000          # a typical TTS output rate; the session resamples
TTS_SPEED = 3.0           # replies arrive this many times faster than real time


def make_avatar_clips(folder: Path, fps: float = 25.0) -> tuple[Path, Path]:
    """A speaking clip (the example face nodding and turning a little, 4 s) and an idle clip (a slow
    sway, 3 s, that ends where it starts) at 320x288: two recordings of one person."""
    import cv2

    from lipsync_rt.media import Mp4Writer

    photo = cv2.resize(cv2.imread(str(example_face())), (256, 256), interpolation=cv2.INTER_AREA)

    def frame(dx: float, dy: float) -> np.ndarray:
        canvas = np.full((288, 320, 3), 40, np.uint8)
        x, y = 32 + int(round(dx)), 16 + int(round(dy))
        canvas[y:y + 256, x:x + 256] = photo
        return canvas

    speaking, idle = folder / "speaking.mp4", folder / "idle.mp4"
    with Mp4Writer(speaking, fps, audio=False) as writer:
        for i in range(int(4 * fps)):
            writer.write_video(frame(10 * np.sin(i / 5.0), 6 * np.sin(i / 3.1)))
    with Mp4Writer(idle, fps, audio=False) as writer:
        n = int(3 * fps)
        for k in range(n):
            writer.write_video(frame(8 * np.sin(2 * np.pi * k / n), 3 * np.sin(4 * np.pi * k / n)))
    return speaking, idle


def replies(rng: random.Random, wav: np.ndarray):
    """Replies of 1.2 to 2.6 s cut from the example speech, at the TTS rate, as int16, for ever."""
    while True:
        length = int(rng.uniform(1.2, 2.6) * 16000)
        start = rng.randrange(0, max(1, len(wav) - length))
        yield (np.clip(_to_rate(wav[start:start + length], TTS_RATE), -1, 1) * 32767).astype(np.int16)


def _to_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
    frame.sample_rate = 16000
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame) + resampler.resample(None)]
    return np.concatenate(parts)


async def conversation(engine, avatar: "Avatar", config, seconds: float, seed: int) -> dict:
    """One session driven as a voice agent for ``seconds``; everything the sinks saw, timed."""
    from lipsync_rt.audio import load_audio
    from lipsync_rt.pipeline import LipSyncSession, PlaybackFinished, PlaybackStarted

    from .loop_lag import LoopLagProbe

    rng = random.Random(seed)
    wav = load_audio(example_speech())
    session = LipSyncSession(engine, avatar=avatar, config=config)
    await session.start()
    probe = LoopLagProbe().start()
    release = session._stages["release"]        # what had left at each call: the release position
    video, audio, events, calls, pushes = [], [], [], [], {}
    waiters: dict[tuple, asyncio.Future] = {}

    async def take_video():
        async for f in session.video():
            video.append((time.monotonic(), f.pts, f.idle, f.generated, f.image))

    async def take_audio():
        async for a in session.audio():
            audio.append((time.monotonic(), a.pts, a.samples.size, a.segment, bool(a.samples.any())))

    async def take_events():
        async for e in session.events():
            events.append((time.monotonic(), e))
            waiter = waiters.pop((type(e), e.segment), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(e)

    def wait_for(kind, segment) -> asyncio.Future:
        return waiters.setdefault((kind, segment), asyncio.get_running_loop().create_future())

    async def speak(k: int, pcm: np.ndarray) -> None:
        chunk = TTS_RATE // 10
        pushes[k] = time.monotonic()
        for a in range(0, len(pcm), chunk):
            session.push_audio(pcm[a:a + chunk], TTS_RATE, segment=k)
            await asyncio.sleep(0.1 / TTS_SPEED)
        session.end_of_segment(k)

    readers = [asyncio.ensure_future(c()) for c in (take_video, take_audio, take_events)]
    end = time.monotonic() + seconds
    k = 0
    try:
        await asyncio.sleep(0.6)                               # idle first
        for pcm in replies(rng, wav):
            if time.monotonic() > end - 3.0:
                break
            started, finished = wait_for(PlaybackStarted, k), wait_for(PlaybackFinished, k)
            tts = asyncio.ensure_future(speak(k, pcm))
            await started
            if rng.random() < 0.6:                            # barge-in, somewhere in the reply
                await asyncio.sleep(rng.uniform(0.15, 0.8 * len(pcm) / TTS_RATE))
                calls.append((time.monotonic(), release.next_index, release.audio_position, k))
                session.interrupt()
            await finished
            await tts
            await asyncio.sleep(rng.uniform(0.4, 1.2))        # the user speaks; the avatar idles
            k += 1
        await asyncio.sleep(0.5)
        session.end_of_input()
        await asyncio.gather(*readers)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await probe.stop()
        await session.close()
    return {"video": video, "audio": audio, "events": events, "calls": calls, "pushes": pushes,
            "t0": session.clock.t0, "delay": session.delay, "lookahead": session.lookahead,
            "stats": session.stats(), "lags": list(probe.lags_ms), "replies": k}


def barge_in(run: dict, fps: float) -> dict:
    """Per interrupt call: time to the first frame and the first audio chunk that left after it, and
    whether everything after it was idle / silent until the next reply (frames: until the next reply's
    audio comes within their window's reach)."""
    video, audio = run["video"], run["audio"]
    per_frame, reach = 16000 / fps, 16000 * (run["lookahead"] + 2 / fps)
    next_start = sorted(e.pts for _, e in run["events"] if type(e).__name__ == "PlaybackStarted")
    latencies, violations = {"video": [], "audio": [], "both": []}, 0
    for called, frame, sample, _k in run["calls"]:
        first_v = next(((t, idle) for t, pts, idle, *_ in video if pts >= frame), None)
        first_a = next(((t, loud) for t, pts, _n, _s, loud in audio if pts >= sample), None)
        if first_v is None or first_a is None:
            continue
        lv, la = (first_v[0] - called) * 1000, (first_a[0] - called) * 1000
        latencies["video"].append(lv)
        latencies["audio"].append(la)
        latencies["both"].append(max(lv, la))
        resume = next((p for p in next_start if p > sample), 1 << 62)
        violations += sum(1 for _t, pts, _n, seg, loud in audio if sample <= pts < resume and (loud or seg is not None))
        violations += sum(1 for _t, pts, idle, *_ in video if pts >= frame and pts * per_frame < resume - reach
                          and not idle)
    return {"latencies": latencies, "violations": violations}


def event_timing(run: dict) -> dict:
    """When the events reached their listener, against when the audio they mark left the session."""
    t0, delay = run["t0"], run["delay"]
    calls = {k: called for called, _f, _s, k in run["calls"]}
    received = {}
    for _t, pts, n, seg, _loud in run["audio"]:
        if seg is not None:
            received[seg] = received.get(seg, 0) + n
    start_after_push, started_lag, finished_lag, position_error = [], [], [], []
    for t, e in run["events"]:
        if type(e).__name__ == "PlaybackStarted":
            start_after_push.append((t - run["pushes"][e.segment]) * 1000)
            started_lag.append((t - (t0 + delay + e.pts / 16000)) * 1000)
        else:
            left = calls[e.segment] if e.interrupted else t0 + delay + e.pts / 16000
            finished_lag.append((t - left) * 1000)
            position_error.append(abs(e.position - received.get(e.segment, 0) / 16000) * 1000)
    return {"start_after_push": start_after_push, "started_lag": started_lag, "finished_lag": finished_lag,
            "position_error": position_error}


def transition_steps(run: dict) -> dict:
    """Mean absolute pixel difference between consecutive frames at the sink, where the picture changes
    between idle and speech, and elsewhere (the clips' own motion and the mouth)."""
    frames = run["video"]
    to_speech, to_idle, within = [], [], []
    for (_, p0, idle0, _, img0), (_, p1, idle1, _, img1) in zip(frames, frames[1:]):
        if p1 != p0 + 1:
            continue
        d = float(np.abs(img1.astype(np.int16) - img0.astype(np.int16)).mean())
        (to_speech if idle0 and not idle1 else to_idle if idle1 and not idle0 else within).append(d)
    return {"to_speech": to_speech, "to_idle": to_idle, "within": within}


async def measure(args: argparse.Namespace) -> dict:
    import tempfile

    from lipsync_rt.engine.factory import create_engine
    from lipsync_rt.pipeline import Avatar, SessionConfig
    from lipsync_rt.pipeline.metrics import percentiles

    from .common import machine

    loop = asyncio.get_running_loop()
    engine = await loop.run_in_executor(None, create_engine, args.engine, args.checkpoint_path)
    with tempfile.TemporaryDirectory(prefix="lipsync-bench-") as tmp:
        face, idle = (args.face, args.idle) if args.face else make_avatar_clips(Path(tmp), args.fps)
        avatar = await loop.run_in_executor(None, lambda: Avatar.prepare(face, engine, fps=args.fps, idle=idle))
    base = dict(fps=args.fps, live=True, overhead_ms=args.overhead_ms, batch_size=args.batch_size)
    main = await conversation(engine, avatar, SessionConfig(**base), args.seconds, seed=1)
    cut = await conversation(engine, avatar, SessionConfig(**base, idle_transition="cut"),
                             min(args.seconds, max(12.0, args.seconds / 4)), seed=2) if avatar.idle is not None else None

    bi, ev, steps = barge_in(main, args.fps), event_timing(main), transition_steps(main)
    cut_steps = transition_steps(cut) if cut is not None else {"to_speech": [], "to_idle": [], "within": []}
    stats = main["stats"]
    lat = bi["latencies"]
    summary = lambda xs: {**percentiles(xs), "max": max(xs) if xs else float("nan"), "n": len(xs)}  # noqa: E731
    return {
        "benchmark": "pipeline --interrupt",
        "machine": machine(),
        "engine": getattr(engine, "name", type(engine).__name__),
        "avatar": {"face": str(args.face or "generated speaking clip"), "idle": str(args.idle or "generated idle clip"),
                   "idle_mode": avatar.idle.mode if avatar.idle is not None else None},
        "seconds": args.seconds,
        "fps": args.fps,
        "tts": {"rate": TTS_RATE, "speed": TTS_SPEED},
        "delay_ms": main["delay"] * 1000,
        "lookahead_ms": main["lookahead"] * 1000,
        "replies": main["replies"],
        "interrupts": len(main["calls"]),
        "barge_in_ms": {"video": summary(lat["video"]), "audio": summary(lat["audio"]), "both": summary(lat["both"])},
        "barge_in_violations": bi["violations"],
        "events_ms": {"started_after_first_push": summary(ev["start_after_push"]),
                      "started_after_first_sample_left": summary(ev["started_lag"]),
                      "finished_after_last_sample_or_call": summary(ev["finished_lag"]),
                      "position_error": summary(ev["position_error"])},
        "transition_step": {
            "nearest": {k: summary(v) for k, v in steps.items()},
            "cut": {k: summary(v) for k, v in cut_steps.items()},
        },
        "frames_out": stats.frames_out, "frames_generated": stats.frames_generated,
        "frames_dropped": stats.frames_dropped, "frames_idle": stats.frames_idle,
        "overhead_ms": stats.overhead_ms,
        "loop_lag_ms": {**percentiles(main["lags"]), "max": max(main["lags"]) if main["lags"] else float("nan")},
        "series": {"barge_in_video_ms": [round(x, 2) for x in lat["video"]],
                   "barge_in_audio_ms": [round(x, 2) for x in lat["audio"]],
                   "started_after_first_push_ms": [round(x, 2) for x in ev["start_after_push"]],
                   "step_nearest": [round(x, 2) for x in steps["to_speech"] + steps["to_idle"]],
                   "step_cut": [round(x, 2) for x in cut_steps["to_speech"] + cut_steps["to_idle"]],
                   "step_within_p50": percentiles(steps["within"])["p50"]},
    }


def report(r: dict) -> None:
    b, e, s = r["barge_in_ms"], r["events_ms"], r["transition_step"]
    print(f"{r['engine']}, voice agent for {r['seconds']:g} s at {r['fps']:g} fps on {r['machine']['cpu']}: "
          f"{r['replies']} replies, {r['interrupts']} interrupted; D {r['delay_ms']:.0f} ms (L {r['lookahead_ms']:.1f})")
    print(f"  barge-in p50/p99: video {b['video']['p50']:.1f}/{b['video']['p99']:.1f} ms, audio "
          f"{b['audio']['p50']:.1f}/{b['audio']['p99']:.1f} ms, both {b['both']['p50']:.1f}/{b['both']['p99']:.1f} ms "
          f"(max {b['both']['max']:.1f}); rule broken {r['barge_in_violations']} times")
    print(f"  PlaybackStarted {e['started_after_first_push']['p50']:.0f} ms after the first push (p50); events reach "
          f"the listener p99 {e['started_after_first_sample_left']['p99']:.1f} / "
          f"{e['finished_after_last_sample_or_call']['p99']:.1f} ms after their audio left (started / finished); "
          f"position error max {e['position_error']['max']:.2f} ms")
    print(f"  step at a change of clip, p50 (max): nearest {_both(s['nearest'])}; plain cut {_both(s['cut'])}; "
          f"within the clips {s['nearest']['within']['p50']:.1f}")
    print(f"  frames {r['frames_out']} out, {r['frames_generated']} generated, {r['frames_dropped']} dropped, "
          f"{r['frames_idle']} idle; loop lag p99 {r['loop_lag_ms']['p99']:.1f} ms")


def _both(steps: dict) -> str:
    return (f"to speech {steps['to_speech']['p50']:.1f} ({steps['to_speech']['max']:.1f}), "
            f"to idle {steps['to_idle']['p50']:.1f} ({steps['to_idle']['max']:.1f})")


def plot(r: dict, path: str) -> None:
    from .common import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    s = r["series"]
    bins = np.linspace(0, max([60.0] + s["barge_in_video_ms"] + s["barge_in_audio_ms"]) + 5, 30)
    axes[0].hist(s["barge_in_video_ms"], bins=bins, alpha=0.6, label="first frame after the call")
    axes[0].hist(s["barge_in_audio_ms"], bins=bins, alpha=0.6, label="first audio after the call")
    axes[0].axvline(60, color="r", ls="--", lw=0.8, label="60 ms")
    axes[0].axvline(1000 / r["fps"], color="k", ls=":", lw=0.8, label="one frame")
    axes[0].set(xlabel="ms", ylabel="interrupts", title=f"barge-in ({r['interrupts']} calls), D = {r['delay_ms']:.0f} ms")
    axes[0].legend(fontsize=8)
    axes[1].plot(s["started_after_first_push_ms"], "o", ms=3)
    axes[1].axhline(r["delay_ms"], color="k", ls="--", lw=0.8, label=f"D = {r['delay_ms']:.0f} ms")
    axes[1].set(xlabel="reply", ylabel="ms", title="PlaybackStarted after the reply's first push")
    axes[1].legend(fontsize=8)
    groups = [s["step_nearest"], s["step_cut"]]
    axes[2].boxplot([g if g else [float("nan")] for g in groups])
    axes[2].set_xticks([1, 2], ["nearest frame", "plain cut"])
    axes[2].axhline(s["step_within_p50"], color="g", ls=":", lw=0.8, label="clips' own step (p50)")
    axes[2].set(ylabel="mean |pixel difference|", title="step on screen at idle <-> speech")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"lipsync-rt voice agent: {r['engine']}, {r['machine']['cpu']}", fontsize=9)
    save_figure(fig, path)

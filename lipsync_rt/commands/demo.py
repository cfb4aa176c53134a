"""``lipsync-rt demo``: live lip sync on this machine.

Webcam + microphone in, virtual camera out, by default; ``--face avatar.mp4`` replaces the webcam
with a prepared avatar, ``--audio FILE`` replaces the microphone with a file played in real time
(a dry run that needs no sound card), and ``--output FILE.mp4`` records instead of (or without) a
virtual camera. ``--idle CLIP`` gives the avatar an idle clip for when nobody speaks; with ``--audio``,
the file is played as one reply and a ``--duration`` longer than it leaves the avatar idling after it.
All of them are wirings of one ``LipSyncSession``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING

from lipsync_rt.commands import DEFAULT_ENGINE, ENGINE_CHOICES, ENGINE_HELP, ranges

if TYPE_CHECKING:
    from lipsync_rt.io import Sink
    from lipsync_rt.pipeline import LipSyncSession, OutputFrame

DESCRIPTION = (
    "Live lip sync: a webcam (or an avatar clip/photo with --face) and a microphone (or an audio file "
    "played in real time with --audio) in; a virtual camera (or an mp4 file) out. Shows fps, latency and "
    "dropped frames while it runs; Ctrl-C stops it (an mp4 being written is finalised)."
)
EPILOG = """\
examples:
  lipsync-rt demo                                      # webcam + microphone -> virtual camera
  lipsync-rt demo --face examples/face.jpg             # avatar + microphone -> virtual camera
  lipsync-rt demo --face examples/face.jpg --audio examples/speech.wav --output out.mp4   # dry run
  lipsync-rt demo --face talk.mp4 --idle idle.mp4 --audio reply.wav --duration 12 --output out.mp4

The virtual camera on Linux is a v4l2loopback device:
  sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=lipsync-rt exclusive_caps=1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--face", help="avatar video or photo (default: the webcam)")
    parser.add_argument("--idle", help="idle clip (or photo) the avatar shows when nobody speaks (needs --face)")
    parser.add_argument("--camera", help="webcam device (default: /dev/video0 on Linux, 0 on macOS, "
                        "'video=Integrated Camera' on Windows)")
    parser.add_argument("--audio", help="play this audio file in real time instead of the microphone (dry run)")
    parser.add_argument("--mic", help="microphone device name or index (default: the system default)")
    parser.add_argument("--output", default="virtualcam",
                        help="'virtualcam' (default) or a video file to record to (.mp4, .mov or .mkv; the audio as it "
                        "came in: the file's or the microphone's rate and channels)")
    parser.add_argument("--record", metavar="DIR",
                        help="also record what is sent (video and the delayed audio) into DIR/demo-<time>.mp4, "
                        "finalised at the end, also on Ctrl-C")
    parser.add_argument("--rtmp", metavar="URL",
                        help="also stream what is sent to this RTMP server (rtmp://HOST/APP/KEY; H.264 + AAC in FLV), "
                        "reconnecting with back-off if it drops")
    parser.add_argument("--vcam_device", help="virtual camera device, e.g. /dev/video10 (default: the first one)")
    parser.add_argument("--vcam_backend", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINE_CHOICES,
                        help=f"{ENGINE_HELP} (default: %(default)s)")
    parser.add_argument("--checkpoint_path", help="generator checkpoint (default: the bundled model)")
    parser.add_argument("--fps", type=ranges.fps, default=25.0, help="output frame rate, 1 to 240 (default: %(default)s)")
    parser.add_argument("--duration", type=ranges.seconds, help="stop after this many seconds (default: until Ctrl-C, "
                        "or the end of --audio)")
    parser.add_argument("--overhead_ms", "--overhead-ms", type=ranges.milliseconds,
                        help="processing budget D - L in ms, 0 to 10000, fixed (default: measured at start, "
                        "then grown in pauses of the speech if frames come ready too late)")
    parser.add_argument("--quiet", action="store_true", help="no status line")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    from lipsync_rt.engine.factory import create_engine
    from lipsync_rt.errors import LipSyncError, MediaError
    from lipsync_rt.gc_tuning import freeze_startup_objects, thaw
    from lipsync_rt.io import FileSource, Microphone, Mp4Sink, VirtualCamera, Webcam, run_sinks
    from lipsync_rt.media import CONTAINERS, check_folder, check_output, output_format
    from lipsync_rt.pipeline import Avatar, LipSyncSession, SessionConfig

    record = args.output != "virtualcam"
    if record:
        try:
            output_format(args.output)
        except MediaError:
            raise LipSyncError(f"--output must be 'virtualcam' or a video file ending in "
                               f"{', '.join(sorted(CONTAINERS))}, got {args.output!r}") from None
        check_output(args.output, "--output")
    record_path = None
    if args.record:
        record_path = check_folder(args.record, "--record") / time.strftime("demo-%Y%m%d-%H%M%S.mp4")
    if args.rtmp is not None and not args.rtmp.startswith(("rtmp://", "rtmps://")):
        raise LipSyncError(f"--rtmp must be a URL starting with rtmp:// or rtmps://, got {args.rtmp!r}")
    keep_source = record or record_path is not None      # files keep the input's own audio format
    if args.duration is not None and args.duration <= 0:
        raise LipSyncError(f"--duration must be > 0, got {args.duration}")
    if args.idle and not args.face:
        raise LipSyncError("--idle needs an avatar (--face): a webcam shows what it sees")
    loop = asyncio.get_running_loop()
    engine = await loop.run_in_executor(
        None, lambda: create_engine(args.engine, args.checkpoint_path, progress=not args.quiet))
    avatar = None
    if args.face:
        avatar = await loop.run_in_executor(
            None, lambda: Avatar.prepare(args.face, engine, fps=args.fps, idle=args.idle))

    # Open every device before starting, so a missing one is an error before anything runs.
    camera = microphone = None
    opened = []
    try:
        if avatar is None:
            camera = Webcam(args.camera, fps=args.fps)
            opened.append(camera.stop)
        size = (avatar.frames[0].shape[1], avatar.frames[0].shape[0]) if avatar else (camera.width, camera.height)
        source = None
        if args.audio:
            # a recording keeps the file's own audio (rate, channels); the model hears it at 16 kHz mono
            source = FileSource(args.audio, realtime=True, video=False, seconds=args.duration,
                                segment="audio" if avatar is not None else None, source_audio=keep_source)
            audio_format = (source.rate, source.decoded.channels, source.decoded.layout)
        else:
            microphone = Microphone(args.mic)
            audio_format = (microphone.samplerate, 1, "mono")
        if not record:
            sink = VirtualCamera(args.fps, device=args.vcam_device, backend=args.vcam_backend,
                                 width=size[0], height=size[1])
        else:
            rate, channels, layout = audio_format
            sink = Mp4Sink(args.output, args.fps, audio_rate=rate, audio_channels=channels, audio_layout=layout)
        sinks = [sink]
        if record_path is not None:
            rate, channels, layout = audio_format
            sinks.append(Mp4Sink(record_path, args.fps, audio_rate=rate, audio_channels=channels, audio_layout=layout))
        rtmp = None
        if args.rtmp:
            from lipsync_rt.io.rtmp import RtmpSink

            rtmp = RtmpSink(args.rtmp, args.fps)
            sinks.append(rtmp)

        config = SessionConfig(fps=args.fps, live=True, overhead_ms=args.overhead_ms, source_audio=keep_source)
        session = LipSyncSession(engine, avatar=avatar, config=config)
        freeze_startup_objects()           # before the clock starts: the collection takes a while
        await session.start()
        status = _Status(session, sink, quiet=args.quiet)
        tasks = []
        # a --duration longer than the --audio file: the avatar goes on (idles) until it is up
        idle_after = source is not None and args.duration is not None and args.duration > source.duration
        if source is not None:
            tasks.append(loop.create_task(source.run(session, end_input=not idle_after)))
        else:
            microphone.start(session.push_audio)
            opened.append(microphone.stop)
        if camera is not None:
            camera.start(session.push_video, on_end=session.end_of_input)
        if args.duration is not None and (source is None or idle_after):
            loop.call_later(args.duration, session.end_of_input)
        try:
            await run_sinks(session, sinks, on_frame=status.frame)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()
            status.done()
    finally:
        thaw()
        for stop in reversed(opened):
            stop()
    stats = session.stats()
    where = sink.name if isinstance(sink, VirtualCamera) else args.output
    held = f", {stats.frames_held} of them with the last mouth held" if stats.frames_held else ""
    print(f"sent {stats.frames_out} frames to {where} ({stats.frames_generated} lip-synced, "
          f"{stats.frames_dropped} dropped{held}, {stats.engine_errors} engine errors); "
          f"delay {stats.delay * 1000:.0f} ms (look-ahead {stats.lookahead * 1000:.0f} ms)")
    if record_path is not None and record_path.exists():
        print(f"recorded to {record_path}")
    if rtmp is not None:
        s = rtmp.stats
        print(f"streamed {s.frames_sent} frames and {s.audio_sent_s:.1f} s of audio over RTMP; lost {s.frames_lost} "
              f"frames and {s.audio_lost_s:.1f} s of audio; {s.reconnects} reconnects")
    return 0


class _Status:
    """The one-line status refreshed in the terminal: fps, latency, drops."""

    def __init__(self, session: "LipSyncSession", sink: "Sink", quiet: bool) -> None:
        self.session, self.sink = session, sink
        self.enabled = not quiet and sys.stderr.isatty()
        self.times: list[float] = []
        self.last = 0.0

    def frame(self, frame: "OutputFrame") -> None:
        now = time.monotonic()
        self.times.append(now)
        if len(self.times) > 50:
            del self.times[:-50]
        if self.enabled and now - self.last > 0.5:
            self.last = now
            fps = (len(self.times) - 1) / (self.times[-1] - self.times[0]) if len(self.times) > 1 else 0.0
            st = self.session.stats()
            print(f"\r{fps:5.1f} fps | delay {st.delay * 1000:4.0f} ms | processing p95 "
                  f"{st.latency_ms['p95']:4.0f} ms | dropped {st.frames_dropped} | no face "
                  f"{st.frames_without_face}   ", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled:
            print(file=sys.stderr)

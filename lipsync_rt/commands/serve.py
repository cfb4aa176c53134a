"""``lipsync-rt serve``: the WebRTC server and its browser page."""

from __future__ import annotations

import argparse
import os

from lipsync_rt.commands import DEFAULT_ENGINE, ENGINE_CHOICES, ENGINE_HELP, ranges

DESCRIPTION = (
    "Serve lip sync over WebRTC: open the printed address in a browser. Camera mode sends your webcam and "
    "microphone and returns your face lip-synced to your voice; avatar mode sends the microphone (or an audio "
    "file) and returns a prepared avatar speaking it. An audio-push API (POST /sessions, a WebSocket of PCM) lets "
    "a TTS or any program drive an avatar that browsers watch; --record keeps every session as an mp4. Many "
    "sessions share one engine through a micro-batcher."
)
EPILOG = """\
examples:
  lipsync-rt serve                                   # http://127.0.0.1:8080, avatar 'face' = examples/face.jpg
  lipsync-rt serve --avatar anna=anna.mp4 --avatar bob=bob.jpg --max-sessions 8
  lipsync-rt serve --avatar anna=anna.mp4 --idle anna=anna_idle.mp4   # idles while no speech comes
  lipsync-rt serve --token s3cret --record recordings/    # every session into recordings/<session>.mp4
    python examples/push_tts.py --token s3cret "Hello."  # speech pushed over the audio-push API (README)
  lipsync-rt serve --host 0.0.0.0 --token s3cret --stun stun:stun.example.org:3478
    (then open http://HOST:8080/?token=s3cret; browsers allow the camera only on https or localhost)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=ranges.port, default=8080, help="port, 0 for any free one (default: %(default)s)")
    parser.add_argument("--token", default=os.environ.get("LIPSYNC_RT_TOKEN"),
                        help="require this token on /offer, /close and /metrics (default: $LIPSYNC_RT_TOKEN, "
                        "else none)")
    parser.add_argument("--avatar", action="append", default=[], metavar="NAME=PATH",
                        help="an avatar photo or clip, offered by NAME (repeatable; default: face=examples/face.jpg)")
    parser.add_argument("--idle", action="append", default=[], metavar="[NAME=]PATH",
                        help="an idle clip (or photo) for avatar NAME, shown while no speech comes (repeatable; "
                        "a bare PATH when there is one avatar)")
    parser.add_argument("--checkpoint_path", help="generator checkpoint (default: the bundled lite model)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINE_CHOICES,
                        help=f"{ENGINE_HELP} (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--max-sessions", type=ranges.number(1, 1024, integer=True), default=4,
                        help="sessions served at once; more get a 503 "
                        "(default: %(default)s)")
    parser.add_argument("--max-batch", type=ranges.batch, default=16, help="most frames per engine call across sessions "
                        "(default: %(default)s)")
    parser.add_argument("--fps", type=ranges.fps, default=25.0, help="output frame rate, 1 to 240 (default: %(default)s)")
    parser.add_argument("--overhead-ms", "--overhead_ms", type=ranges.milliseconds,
                        help="processing budget D - L of every session, in ms, fixed (default: measured as each "
                        "session starts, then grown in pauses of its speech, up to 200 ms, when its frames come "
                        "ready too close to their release time: sessions that join later slow the others)")
    parser.add_argument("--max-overhead-ms", "--max_overhead_ms", type=ranges.milliseconds, default=200.0,
                        help="how far a measured budget may grow with the load, in ms; 0 keeps each session's D "
                        "as measured at its start (default: %(default)s)")
    parser.add_argument("--blend", choices=("feather", "none"), default="feather", help="paste-back mode")
    parser.add_argument("--stun", action="append", default=[], metavar="URL",
                        help="STUN/TURN server for ICE, e.g. stun:stun.example.org:3478 (repeatable; default: "
                        "none, so no outside server is contacted; needed only across NATs)")
    parser.add_argument("--max-body", type=ranges.number(1024, 64 << 20, integer=True), default=128 * 1024,
                        help="largest request body in bytes, 1024 to 64 MiB (default: %(default)s)")
    parser.add_argument("--record", metavar="DIR",
                        help="record every session's output (video and the delayed audio, what a viewer gets) into "
                        "DIR/<session>.mp4, finalised when the session ends, also on Ctrl-C or a peer that vanished")
    parser.add_argument("--push-idle-timeout", type=ranges.number(1, 86400, unit="s"), default=300.0,
                        help="an audio-push session with no audio socket and no viewer for this long ends "
                        "(default: %(default)s)")
    parser.add_argument("--connect-timeout", "--connect_timeout", type=ranges.number(1, 3600, unit="s"), default=20.0,
                        help="seconds a client has to connect after its offer was answered; one that has not is "
                        "closed, and its session freed (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..engine.factory import create_engine
    from ..errors import LipSyncError
    from ..media import check_folder
    from ..webrtc import ServerConfig, default_avatar_specs, parse_avatar_specs, parse_idle_specs
    from ..webrtc.heap import limit_arenas
    from ..webrtc.server import serve_forever

    record = check_folder(args.record, "--record") if args.record else None
    config = ServerConfig(host=args.host, port=args.port, token=args.token or None, max_sessions=args.max_sessions,
                          max_body=args.max_body, ice_servers=tuple(args.stun), connect_timeout=args.connect_timeout,
                          record_dir=record, push_idle_timeout=args.push_idle_timeout)
    avatars = parse_avatar_specs(args.avatar) if args.avatar else default_avatar_specs()
    idle = parse_idle_specs(args.idle, avatars)
    if args.fps <= 0:
        raise LipSyncError(f"--fps must be > 0, got {args.fps}")
    if args.overhead_ms is not None and args.overhead_ms < 0:
        raise LipSyncError(f"--overhead-ms must be >= 0, got {args.overhead_ms}")
    limit_arenas()      # a server that runs for weeks: memory flat over any number of sessions (heap.py)
    engine = create_engine(args.engine, args.checkpoint_path, device=args.device, progress=True)
    asyncio.run(serve_forever(engine, avatars, config, fps=args.fps, blend=args.blend, max_batch=args.max_batch,
                              overhead_ms=args.overhead_ms, max_overhead_ms=args.max_overhead_ms, idle_paths=idle))
    return 0

"""Embed lipsync-rt: push speech in chunks (as a TTS engine streams it) and get lip-synced frames.

    python examples/stream_tts.py                                  # examples/face.jpg + speech.wav
    python examples/stream_tts.py --face avatar.mp4 --audio tts.wav --out talk.mp4 --live

Offline (the default) runs as fast as the machine allows and writes exactly what ``lipsync-rt infer``
would; ``--live`` paces output in real time, as a video call would consume it (frame i and its audio
leave at T0 + i/25 + D), and prints the session's delay and drop counts.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np

from lipsync_rt.audio import load_audio
from lipsync_rt.default_model import load_generator
from lipsync_rt.engine import TorchEngine
from lipsync_rt.io import CallbackSink, Mp4Sink, run_sinks
from lipsync_rt.pipeline import Avatar, LipSyncSession, SessionConfig

HERE = Path(__file__).resolve().parent


async def stream(args: argparse.Namespace) -> None:
    model, _ = load_generator(None)                      # the bundled lite model
    engine = TorchEngine(model, device="auto")
    avatar = Avatar.prepare(args.face, engine)           # boxes, landmarks, encoder features: once
    speech = (load_audio(args.audio) * 32767).astype(np.int16)   # a TTS stream's int16 PCM, say
    rate, chunk = 16000, 16000 * 200 // 1000             # 200 ms per push

    config = SessionConfig(live=args.live)
    async with LipSyncSession(engine, avatar=avatar, config=config) as session:

        async def tts():
            for start in range(0, len(speech), chunk):
                session.push_audio(speech[start:start + chunk], rate)
                await asyncio.sleep(0.2 if args.live else 0)   # a live TTS yields as it speaks
            session.end_of_input()

        frames = []
        sinks = [Mp4Sink(args.out, config.fps), CallbackSink(on_frame=lambda f: frames.append(f.generated))]
        await asyncio.gather(tts(), run_sinks(session, sinks))
        stats = session.stats()
    print(f"wrote {args.out}: {len(frames)} frames ({sum(frames)} lip-synced, {stats.frames_dropped} dropped); "
          f"delay D = {stats.delay * 1000:.0f} ms (look-ahead {stats.lookahead * 1000:.1f} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face", default=str(HERE / "face.jpg"))
    parser.add_argument("--audio", default=str(HERE / "speech.wav"))
    parser.add_argument("--out", default="stream_tts.mp4")
    parser.add_argument("--live", action="store_true", help="real-time pacing instead of as fast as possible")
    asyncio.run(stream(parser.parse_args()))

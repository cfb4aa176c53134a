"""A lip-synced avatar worker for LiveKit Agents (the dispatcher pattern), and a stand-in agent.

    pip install 'lipsync-rt[livekit]'
    livekit-server --dev                                   # a local LiveKit server (devkey / secret)
    python examples/livekit_avatar.py dispatcher           # avatar workers on demand, port 8089
    python examples/livekit_avatar.py agent --room demo    # joins 'demo', calls the dispatcher, speaks

Then join room 'demo' with any LiveKit client (a token from ``lk token create``) and watch the avatar
speak and idle.

How the parts talk, as LiveKit's own avatar plugins do:

1. The agent (a LiveKit Agents worker, or the stand-in here) asks the dispatcher, over HTTP, to send an
   avatar into its room, with a token for the avatar's identity that says it publishes on behalf of
   the agent (``lk.publish_on_behalf``).
2. The dispatcher starts an avatar worker: it joins the room, and an ``AvatarRunner`` reads the agent's
   audio (``DataStreamAudioReceiver``), feeds it to ``LipSyncVideoGenerator`` and publishes the
   avatar's video and the delayed audio as the room's view of the agent.
3. The agent sends its TTS to the avatar instead of publishing it: in an ``AgentSession`` that is
   ``session.output.audio = DataStreamAudioOutput(ctx.room, destination_identity=AVATAR)``; the
   stand-in agent here streams a wav (or espeak-ng) reply every few seconds and interrupts every
   third one, which is ``clear_buffer`` at the avatar.

All avatar workers of one dispatcher share one engine. This file was not run against a LiveKit
server on the machines lipsync-rt is developed on (none can run there); the generator itself is
tested against the real AvatarRunner in tests/test_livekit.py.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Optional

import numpy as np
from aiohttp import ClientSession, web
from livekit import api, rtc
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import AvatarRunner, DataStreamAudioOutput, DataStreamAudioReceiver

from lipsync_rt.integrations import shared_engine
from lipsync_rt.integrations.livekit import LipSyncVideoGenerator
from lipsync_rt.pipeline import Avatar

HERE = Path(__file__).resolve().parent
AVATAR_IDENTITY = "lipsync-avatar"
AGENT_IDENTITY = "stand-in-agent"


def token(identity: str, room: str, *, on_behalf_of: Optional[str] = None, kind: Optional[str] = None) -> str:
    """A room token from LIVEKIT_API_KEY / LIVEKIT_API_SECRET (livekit-server --dev: devkey / secret)."""
    grant = api.AccessToken(os.environ.get("LIVEKIT_API_KEY", "devkey"), os.environ.get("LIVEKIT_API_SECRET", "secret"))
    grant = grant.with_identity(identity).with_name(identity).with_grants(api.VideoGrants(room_join=True, room=room))
    if on_behalf_of:
        grant = grant.with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: on_behalf_of})
    if kind:
        grant = grant.with_kind(kind)
    return grant.to_jwt()


# -- the avatar side


async def avatar_worker(url: str, room_token: str, avatar: Avatar, engine, sender: Optional[str]) -> None:
    """Join the room and lip-sync the agent's audio until the room closes."""
    room = rtc.Room()
    await room.connect(url, room_token)
    generator = LipSyncVideoGenerator(avatar, engine=engine, audio_sample_rate=24000)
    runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room, sender_identity=sender),
                          video_gen=generator, options=generator.options())
    try:
        await generator.start()
        await runner.start()
        left = asyncio.Event()
        room.on("disconnected", lambda *_: left.set())
        await left.wait()
    finally:
        await runner.aclose()
        await generator.aclose()
        await room.disconnect()


def dispatcher(avatar: Avatar, engine) -> web.Application:
    """``POST /launch {"url", "token", "sender"}``: start an avatar worker in that room."""
    workers: set[asyncio.Task] = set()

    async def launch(request: web.Request) -> web.Response:
        body = await request.json()
        task = asyncio.create_task(avatar_worker(body["url"], body["token"], avatar, engine, body.get("sender")))
        workers.add(task)
        task.add_done_callback(workers.discard)
        return web.json_response({"launched": AVATAR_IDENTITY})

    async def shutdown(app: web.Application) -> None:
        for task in list(workers):
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    app = web.Application()
    app.router.add_post("/launch", launch)
    app.on_shutdown.append(shutdown)
    return app


# -- a stand-in agent: what an AgentSession's TTS output does, without STT, LLM or TTS services


def speech(text: str, wav: Optional[Path]) -> tuple[np.ndarray, int]:
    if wav is None and shutil.which("espeak-ng"):
        out = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
        wav_file = wave.open(io.BytesIO(out))
    else:
        wav_file = wave.open(str(wav or HERE / "speech.wav"))
    with wav_file as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16), w.getframerate()


async def stand_in_agent(url: str, room_name: str, dispatcher_url: str, wav: Optional[Path]) -> None:
    room = rtc.Room()
    await room.connect(url, token(AGENT_IDENTITY, room_name, kind="agent"))
    async with ClientSession() as http:
        await http.post(f"{dispatcher_url}/launch", json={
            "url": url, "sender": AGENT_IDENTITY,
            "token": token(AVATAR_IDENTITY, room_name, on_behalf_of=AGENT_IDENTITY)})
    output = DataStreamAudioOutput(room, destination_identity=AVATAR_IDENTITY, wait_remote_track=rtc.TrackKind.KIND_VIDEO)
    output.on("playback_finished", lambda ev: print(f"played {ev.playback_position:.2f} s"
                                                    f"{' (interrupted)' if ev.interrupted else ''}"))
    turn = 0
    try:
        while True:
            turn += 1
            pcm, rate = speech(f"This is reply number {turn}. I am a lip synced avatar on LiveKit.", wav)
            step = rate // 50
            for a in range(0, len(pcm), step):
                piece = pcm[a:a + step]
                await output.capture_frame(rtc.AudioFrame(piece.tobytes(), rate, 1, piece.size))
                if turn % 3 == 0 and a > len(pcm) // 2:              # every third reply: barge in
                    output.clear_buffer()
                    break
            else:
                output.flush()
            await output.wait_for_playout()
            await asyncio.sleep(2.0)
    finally:
        await room.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    d = sub.add_parser("dispatcher", help="serve avatar workers on demand")
    d.add_argument("--face", default=str(HERE / "face.jpg"))
    d.add_argument("--idle", help="idle clip between replies")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8089)
    a = sub.add_parser("agent", help="a stand-in agent that speaks through the avatar")
    a.add_argument("--url", default=os.environ.get("LIVEKIT_URL", "ws://localhost:7880"))
    a.add_argument("--room", default="demo")
    a.add_argument("--dispatcher", default="http://127.0.0.1:8089")
    a.add_argument("--wav", type=Path, help="say this file instead of espeak-ng")
    args = parser.parse_args()
    if args.role == "dispatcher":
        engine = shared_engine()
        avatar = Avatar.prepare(args.face, engine, idle=args.idle)
        print(f"avatar dispatcher on http://{args.host}:{args.port}/launch")
        web.run_app(dispatcher(avatar, engine), host=args.host, port=args.port, print=None)
    else:
        asyncio.run(stand_in_agent(args.url, args.room, args.dispatcher, args.wav))


if __name__ == "__main__":
    main()

"""Stream espeak-ng speech into a ``lipsync-rt serve`` session through the audio-push API.

    lipsync-rt serve --token s3cret                     # in one terminal
    python examples/push_tts.py --token s3cret "Hello there." "This is a second reply."

Each argument is one reply (a segment): espeak-ng synthesises it, and its PCM goes over the session's
WebSocket in 40 ms messages as it is produced, paced at real time as a streaming TTS would send it
(``--burst`` sends each reply as fast as it comes instead, the way many TTS services do). The server
answers with ``playback_started`` / ``playback_finished`` per reply, printed here. Open the printed
page address to watch the avatar (the page's "watch a session" field takes the id). ``--interrupt-after
S`` barges in S seconds into the last reply. Without ``--session`` a new session is made and deleted
at the end; with ``--keep`` it stays (for a recording, delete it later with ``curl -X DELETE``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import struct
import subprocess
import sys
import time

import aiohttp

CHUNK_S = 0.04


def espeak(text: str, voice: str, speed: int) -> subprocess.Popen:
    """espeak-ng writing a 16-bit mono WAV (22050 Hz) of ``text`` to its stdout, as it synthesises."""
    if shutil.which("espeak-ng") is None:
        sys.exit("push_tts.py needs espeak-ng (apt-get install espeak-ng)")
    return subprocess.Popen(["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), text],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def read_wav_header(stream) -> tuple[int, int]:
    """(sample_rate, channels) from a streamed RIFF header; its sizes are placeholders, so only the
    'fmt ' chunk is read and the stream is left at the start of the samples."""
    riff = stream.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise SystemExit("espeak-ng did not write a WAV stream")
    rate = channels = None
    while True:
        head = stream.read(8)
        if len(head) < 8:
            raise SystemExit("the WAV stream ended before its samples")
        kind, size = head[:4], struct.unpack("<I", head[4:])[0]
        if kind == b"data":
            return rate, channels
        body = stream.read(size)
        if kind == b"fmt ":
            fmt, channels, rate = struct.unpack("<HHI", body[:8])
            bits = struct.unpack("<H", body[14:16])[0]
            if fmt != 1 or bits != 16:
                raise SystemExit("espeak-ng's WAV is not 16-bit PCM")


async def speak(ws, text: str, args, events: asyncio.Queue, last: bool) -> None:
    """One reply: synthesise, stream, end it, and wait for its playback_finished."""
    process = espeak(text, args.voice, args.speed)
    loop = asyncio.get_running_loop()
    rate, channels = await loop.run_in_executor(None, read_wav_header, process.stdout)
    await ws.send_str(json.dumps({"type": "start", "sample_rate": rate, "channels": channels}))
    step = int(rate * CHUNK_S) * 2 * channels
    began, sent = time.monotonic(), 0.0
    interrupt_at = began + args.interrupt_after if last and args.interrupt_after is not None else None
    while True:
        data = await loop.run_in_executor(None, process.stdout.read, step)
        if not data:
            break
        data = data[: len(data) - len(data) % (2 * channels)]
        await ws.send_bytes(data)
        sent += len(data) / (2 * channels * rate)
        if not args.burst:                                  # a streaming TTS: about real time
            await asyncio.sleep(max(0.0, began + sent - CHUNK_S - time.monotonic()))
        if interrupt_at is not None and time.monotonic() >= interrupt_at:
            break
    process.kill()
    process.wait()
    if interrupt_at is not None:
        await asyncio.sleep(max(0.0, interrupt_at - time.monotonic()))
        await ws.send_str('{"type": "interrupt"}')
        print(f"  interrupted after {args.interrupt_after:g} s")
    else:
        await ws.send_str('{"type": "end_of_segment"}')
    while (await events.get())["type"] != "playback_finished":
        pass


async def main(args) -> int:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    base = args.server.rstrip("/")
    async with aiohttp.ClientSession(headers=headers) as http:
        session = args.session
        if session is None:
            body = {"avatar": args.avatar} if args.avatar else {}
            if args.rtmp:
                body["rtmp"] = args.rtmp
            async with http.post(f"{base}/sessions", json=body) as response:
                data = await response.json()
                if response.status != 201:
                    sys.exit(f"the server refused the session ({response.status}): {data.get('error')}")
            session = data["session"]
            print(f"session {session} (delay {data['delay'] * 1000:.0f} ms); watch it at {base}/?session={session}")
        events: asyncio.Queue = asyncio.Queue()
        try:
            async with http.ws_connect(f"{base}/sessions/{session}/audio") as ws:
                async def listen() -> None:
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            event = json.loads(msg.data)
                            print(f"  <- {event}")
                            await events.put(event)
                    await events.put({"type": "playback_finished", "closed": ws.close_code})

                listener = asyncio.ensure_future(listen())
                for k, text in enumerate(args.text):
                    print(f"-> reply {k + 1}: {text!r}")
                    await speak(ws, text, args, events, last=k == len(args.text) - 1)
                listener.cancel()
        finally:
            if args.session is None and not args.keep:
                async with http.delete(f"{base}/sessions/{session}") as response:
                    print(f"session deleted ({response.status})")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", nargs="+", help="the replies to speak, one argument each")
    parser.add_argument("--server", default="http://127.0.0.1:8080", help="the server (default: %(default)s)")
    parser.add_argument("--token", help="the server's token, if it has one")
    parser.add_argument("--session", help="push into this session (default: make one, delete it at the end)")
    parser.add_argument("--avatar", help="avatar NAME for a new session (default: the server's first)")
    parser.add_argument("--rtmp", help="also stream the new session to this rtmp:// URL")
    parser.add_argument("--voice", default="en", help="espeak-ng voice (default: %(default)s)")
    parser.add_argument("--speed", type=int, default=160, help="words per minute (default: %(default)s)")
    parser.add_argument("--burst", action="store_true", help="send each reply as fast as it is made")
    parser.add_argument("--interrupt-after", type=float, metavar="S", help="barge in S seconds into the last reply")
    parser.add_argument("--keep", action="store_true", help="leave the new session running at the end")
    sys.exit(asyncio.run(main(parser.parse_args())))

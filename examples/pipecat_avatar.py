"""A talking avatar in your browser with Pipecat: a whole bot page on this machine, no cloud account.

    pip install 'lipsync-rt[pipecat]'
    python examples/pipecat_avatar.py                          # http://127.0.0.1:8765/
    python examples/pipecat_avatar.py --face talk.mp4 --idle idle.mp4 --wav reply.wav

Open the address, press Connect, type something and press Say: the avatar speaks it (espeak-ng stands
in for a TTS service; without espeak-ng, or with --wav, it plays that file). Press Interrupt while it
speaks: it stops at once and idles, as when a user barges in.

The pipeline is Pipecat's own: SmallWebRTCTransport (aiortc underneath, host candidates only) in and
out, a stand-in TTS, and lipsync-rt's LipSyncAvatarService between them::

    transport.input() -> StandInTTS -> LipSyncAvatarService -> transport.output()

Every browser gets its own pipeline; all of them share one engine (``shared_engine()``). In a real bot
the TTS is a Pipecat TTS service fed by an LLM, and interruptions come from the user's voice.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Optional

import numpy as np
from aiohttp import web
from pipecat.frames.frames import (InterruptionFrame, TTSAudioRawFrame, TTSSpeakFrame, TTSStartedFrame,
                                   TTSStoppedFrame)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from lipsync_rt.integrations import shared_engine
from lipsync_rt.integrations.pipecat import LipSyncAvatarService
from lipsync_rt.pipeline import Avatar, SessionConfig

HERE = Path(__file__).resolve().parent
GREETING = "Hello! I am a lip synced avatar. Type something and I will say it."


def read_wav(data: bytes | str | Path) -> tuple[np.ndarray, int]:
    """int16 mono samples and their rate, from a wav file or wav bytes (channels averaged)."""
    with wave.open(io.BytesIO(data) if isinstance(data, bytes) else str(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())
        return pcm.mean(axis=1).astype(np.int16), w.getframerate()


class StandInTTS(FrameProcessor):
    """Speaks each ``TTSSpeakFrame`` the way a TTS service streams a reply: ``TTSStartedFrame``, 20 ms
    ``TTSAudioRawFrame``s twice as fast as real time, ``TTSStoppedFrame``; espeak-ng says the text, or
    (``wav``) a file is played. An ``InterruptionFrame`` stops the reply being sent."""

    def __init__(self, wav: Optional[Path] = None) -> None:
        super().__init__()
        self._wav = wav if wav is not None or shutil.which("espeak-ng") else HERE / "speech.wav"
        self._task: Optional[asyncio.Task] = None
        self._ids = itertools.count(1)

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSSpeakFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._stop()
            self._task = self.create_task(self._speak(frame.text))
            return
        if isinstance(frame, InterruptionFrame):
            await self._stop()
        await self.push_frame(frame, direction)

    async def cleanup(self):
        await super().cleanup()
        await self._stop()

    async def _stop(self) -> None:
        if self._task is not None:
            await self.cancel_task(self._task)
            self._task = None

    async def _speak(self, text: str) -> None:
        if self._wav is not None:
            pcm, rate = read_wav(self._wav)
        else:
            out = await asyncio.get_running_loop().run_in_executor(
                None, lambda: subprocess.run(["espeak-ng", "--stdout", text[:500]], capture_output=True, check=True))
            pcm, rate = read_wav(out.stdout)
        context = f"reply-{next(self._ids)}"
        await self.push_frame(TTSStartedFrame(context_id=context))
        step = rate // 50
        for a in range(0, len(pcm), step):
            await self.push_frame(TTSAudioRawFrame(audio=pcm[a:a + step].tobytes(), sample_rate=rate,
                                                   num_channels=1, context_id=context))
            await asyncio.sleep(0.01)
        await self.push_frame(TTSStoppedFrame(context_id=context))


class BotServer:
    """The page, and one Pipecat pipeline per browser (``/api/offer``), told to speak or stop by
    ``/api/say`` and ``/api/interrupt``."""

    def __init__(self, avatar: Avatar, *, wav: Optional[Path] = None, engine=None, fps: float = 25.0,
                 overhead_ms: Optional[float] = None, greet: bool = True) -> None:
        self.avatar, self.wav, self.fps, self.greet = avatar, wav, fps, greet
        self.engine = engine if engine is not None else shared_engine()
        self.overhead_ms = overhead_ms
        self.workers: dict[str, PipelineWorker] = {}
        self.tasks: set[asyncio.Task] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.page)
        app.router.add_post("/api/offer", self.offer)
        app.router.add_post("/api/say", self.say)
        app.router.add_post("/api/interrupt", self.interrupt)
        app.on_shutdown.append(lambda app: self.close())
        return app

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def offer(self, request: web.Request) -> web.Response:
        body = await request.json()
        connection = SmallWebRTCConnection()
        await connection.initialize(sdp=body["sdp"], type=body["type"])
        answer = connection.get_answer()
        task = asyncio.create_task(self.run_bot(connection, answer["pc_id"]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response(answer)

    async def run_bot(self, connection: SmallWebRTCConnection, pc_id: str) -> None:
        height, width = self.avatar.frames[0].shape[:2]
        transport = SmallWebRTCTransport(webrtc_connection=connection, params=TransportParams(
            audio_out_enabled=True, video_out_enabled=True, video_out_width=width, video_out_height=height,
            video_out_framerate=int(round(self.fps))))
        avatar = LipSyncAvatarService(avatar=self.avatar, engine=self.engine,
                                      config=SessionConfig(fps=self.fps, overhead_ms=self.overhead_ms))
        worker = PipelineWorker(Pipeline([transport.input(), StandInTTS(self.wav), avatar, transport.output()]),
                                idle_timeout_secs=None)
        self.workers[pc_id] = worker

        @transport.event_handler("on_client_connected")
        async def on_connected(transport, client):
            if self.greet:
                await worker.queue_frame(TTSSpeakFrame(GREETING))

        @transport.event_handler("on_client_disconnected")
        async def on_disconnected(transport, client):
            await worker.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        try:
            await runner.run()
        finally:
            self.workers.pop(pc_id, None)

    async def say(self, request: web.Request) -> web.Response:
        body = await request.json()
        worker = self.workers.get(body.get("pc_id"))
        if worker is None:
            return web.json_response({"error": "no such bot"}, status=404)
        await worker.queue_frame(TTSSpeakFrame(str(body.get("text") or GREETING)[:500]))
        return web.json_response({"ok": True})

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await request.json()
        worker = self.workers.get(body.get("pc_id"))
        if worker is None:
            return web.json_response({"error": "no such bot"}, status=404)
        await worker.queue_frame(InterruptionFrame())
        return web.json_response({"ok": True})

    async def close(self) -> None:
        for worker in list(self.workers.values()):
            await worker.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>lipsync-rt + Pipecat</title>
<style>body{font:15px sans-serif;margin:2em;max-width:40em} video{background:#222;width:100%}
input{width:60%} button{margin:.3em}</style></head>
<body><h1>lipsync-rt avatar, Pipecat bot</h1>
<video id="video" autoplay playsinline></video>
<p><button id="connect">Connect</button>
<input id="text" value="The quick brown fox jumps over the lazy dog."><button id="say" disabled>Say</button>
<button id="interrupt" disabled>Interrupt</button></p><p id="status">not connected</p>
<script>
const $ = (id) => document.getElementById(id);
window.bot = {pc: null, pcId: null, framesDecoded: 0};
async function connect() {
  const pc = new RTCPeerConnection();
  window.bot.pc = pc;
  pc.addTransceiver("audio", {direction: "sendrecv"});   // Pipecat expects audio, then video
  pc.addTransceiver("video", {direction: "sendrecv"});
  const stream = new MediaStream();
  pc.ontrack = (e) => { stream.addTrack(e.track); $("video").srcObject = stream; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
  });
  const answer = await (await fetch("/api/offer", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: "offer"})})).json();
  window.bot.pcId = answer.pc_id;
  await pc.setRemoteDescription({sdp: answer.sdp, type: answer.type});
  $("say").disabled = $("interrupt").disabled = false;
  $("status").textContent = "connected";
  setInterval(async () => {
    for (const r of (await pc.getStats()).values())
      if (r.type === "inbound-rtp" && r.kind === "video") window.bot.framesDecoded = r.framesDecoded;
    $("status").textContent = `connected: ${window.bot.framesDecoded} frames`;
  }, 500);
}
const post = (path, body) => fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
  body: JSON.stringify({pc_id: window.bot.pcId, ...body})});
$("connect").onclick = () => { $("connect").disabled = true; connect(); };
$("say").onclick = () => post("/api/say", {text: $("text").value});
$("interrupt").onclick = () => post("/api/interrupt", {});
</script></body></html>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face", default=str(HERE / "face.jpg"), help="avatar photo or clip")
    parser.add_argument("--idle", help="idle clip the avatar shows between replies")
    parser.add_argument("--wav", type=Path, help="play this file for every reply instead of espeak-ng")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    engine = shared_engine()
    avatar = Avatar.prepare(args.face, engine, idle=args.idle)
    server = BotServer(avatar, wav=args.wav, engine=engine)
    print(f"open http://{args.host}:{args.port}/ and press Connect (Ctrl-C to stop)")
    web.run_app(server.app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()

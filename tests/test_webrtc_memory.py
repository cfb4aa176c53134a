"""A server that runs for weeks: sessions opened and closed one after another are freed as they close,
while the server keeps running (not only when its event loop ends), and its memory stays flat.

The clients end in the ways real ones do: ``/close`` then hang up, hang up without a word, post an
offer and vanish, and close at once after connecting (a page reloaded). aiortc keeps a connection that
was closed while it was still connecting, with its senders and their tracks, until its own connect
task ends, much later: the peer must cut the tracks loose from the session.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import weakref

from test_webrtc import FPS, Served, avatar, camera_frame, engine, speech_samples  # noqa: F401 - fixtures
from lipsync_rt.webrtc import ServerConfig
from lipsync_rt.webrtc.loopback import LoopbackClient

WARM_UP = 12         # sessions before memory is measured: caches, the batcher's last batches, aiortc's state
MEASURED = 16        # sessions measured, in pairs, four of each ending
ENDINGS = ("close", "hang up", "vanish", "at once")


async def _session(served, ending: str, frame, speech) -> weakref.ref:
    """One client from offer to its end; returns a weak reference to the server's session."""
    mode = "camera" if ending == "close" else "avatar"
    client = LoopbackClient(served.url, mode=mode, avatar="face", frames=[frame], speech=speech, fps=FPS)
    if ending == "vanish":                   # an offer, then nothing: the answer is never applied
        client.pc.addTransceiver("audio")
        client.pc.addTransceiver("video", direction="recvonly")
        await client.pc.setLocalDescription(await client.pc.createOffer())
        body = {"sdp": client.pc.localDescription.sdp, "type": "offer", "mode": "avatar"}
        async with served.http.post(served.url + "/offer", json=body) as response:
            session_id = (await response.json())["session"]
        ref = weakref.ref(served.server.peers[session_id].session)
        await client.pc.close()
        async with served.http.post(served.url + "/close", json={"session": session_id}) as response:
            assert response.status == 200
        return ref
    await client.connect(served.http)
    ref = weakref.ref(served.server.peers[client.session_id].session)
    await asyncio.sleep(0.0 if ending == "at once" else 0.4)
    await client.close(served.http if ending in ("close", "at once") else None)
    return ref


async def _round(served, ending: str, frame, speech) -> list[bool]:
    """Two clients at once, ending the same way; whether each session is gone as soon as its peer has
    been cleaned up (at once after ``/close``; a hang-up is noticed a little later), with the server
    still running."""
    refs = await asyncio.gather(*(_session(served, ending, frame, speech) for _ in range(2)))
    for _ in range(100):
        if not served.server.peers:
            break
        await asyncio.sleep(0.1)
    gc.collect()
    return [ref() is None for ref in refs]


def test_closed_sessions_are_freed_while_the_server_runs_and_memory_stays_flat(engine, avatar, camera_frame,  # noqa: F811
                                                                                speech_samples):  # noqa: F811
    from lipsync_rt.pipeline import SessionConfig

    async def run():
        config = ServerConfig(connect_timeout=2.0)
        async with Served(engine, {"face": avatar}, config) as served:
            served.server._session_config = SessionConfig(fps=FPS, overhead_ms=80)
            tracemalloc.start()
            warm = []
            for i in range(WARM_UP // 2):
                await _round(served, ENDINGS[i % 4], camera_frame, speech_samples)
                warm.append(tracemalloc.get_traced_memory()[0])
            freed, after = [], []
            for i in range(MEASURED // 2):
                freed += await _round(served, ENDINGS[i % 4], camera_frame, speech_samples)
                after.append(tracemalloc.get_traced_memory()[0])
            tracemalloc.stop()
            # What is held between sessions comes and goes by a batch or two (the shared batcher keeps its
            # last one); flat means never rising above what the warm-up already reached.
            return freed, max(after) - max(warm[2:]), len(served.server.peers)

    freed, growth, peers = asyncio.run(run())
    assert freed == [True] * MEASURED
    assert peers == 0
    # A session holds megabytes (queued audio, frames, masks); sixteen that were kept would show.
    assert growth < 1_000_000, f"memory grew by {growth / 1e6:.1f} MB over {MEASURED} sessions"

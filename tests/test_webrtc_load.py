"""Several concurrent sessions on one shared engine: all get frames; after they close, the server's
peers, tasks, threads and sessions are back to where they started."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import numpy as np

from test_webrtc import FPS, Served, avatar, camera_frame, engine, metric, speech_samples  # noqa: F401 - fixtures
from lipsync_rt.webrtc.loopback import LoopbackClient

SESSIONS = 3
# Long-lived by design: the shared batcher's collectors and aiohttp's keep-alive connection handlers.
SHARED = ("MicroBatcher._collect", "RequestHandler.start")


def own_tasks() -> list[str]:
    """The running tasks, less the shared ones: what sessions start must all be gone after they end."""
    names = (t.get_coro().__qualname__ for t in asyncio.all_tasks())
    return sorted(n for n in names if n not in SHARED)


def test_concurrent_sessions_all_get_frames_then_resources_return_to_baseline(engine, avatar, camera_frame,  # noqa: F811
                                                                              speech_samples):  # noqa: F811
    async def run():
        async with Served(engine, {"face": avatar}) as served:
            await asyncio.sleep(0.2)
            tasks_before = own_tasks()
            clients = [LoopbackClient(served.url, mode="camera" if i == 0 else "avatar", avatar="face",
                                      frames=[camera_frame], speech=speech_samples, fps=FPS)
                       for i in range(SESSIONS)]
            await asyncio.gather(*(c.connect(served.http) for c in clients))
            sessions = [weakref.ref(p.session) for p in served.server.peers.values()]
            peers = [weakref.ref(p.pc) for p in served.server.peers.values()]
            opened = len(served.server.peers)
            await asyncio.sleep(3.0)
            during = await served.metrics()
            # One closes politely (/close); the others just hang up, as a closed tab does.
            await clients[0].close(served.http)
            for client in clients[1:]:
                await client.close()
            for _ in range(100):
                if not served.server.peers:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            after = await served.metrics()
            tasks_after = own_tasks()
            return (clients, opened, during, after, sessions, peers, tasks_before, tasks_after,
                    len(served.server.peers))

    (clients, opened, during, after, sessions, peers, tasks_before, tasks_after, left) = asyncio.run(run())
    assert opened == SESSIONS
    for client in clients:
        assert len(client.received.video_times) >= FPS, len(client.received.video_times)
        assert client.received.audio_frames > 0
    assert metric(during, "lipsync_rt_sessions") == SESSIONS
    assert metric(after, "lipsync_rt_sessions") == 0 and left == 0
    assert metric(after, "lipsync_rt_sessions_ended_total") == SESSIONS
    assert tasks_after == tasks_before
    gc.collect()
    assert [ref() for ref in sessions + peers] == [None] * (2 * SESSIONS)
    # Per-session worker threads (tracking, blending) are gone; aiortc's shared executor may keep its own.
    assert not [t for t in threading.enumerate() if t.name.startswith("lipsync-")]
    assert np.isfinite(metric(after, "lipsync_rt_sessions_started_total"))

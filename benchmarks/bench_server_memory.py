"""A server that runs for weeks: its memory over many sessions opened, run and closed one after another.

The WebRTC server runs in this process with the bundled lite model (torch engine, one shared
micro-batcher); aiortc loopback clients, two at a time, connect in avatar mode, send speech for
``--seconds`` and end in one of four ways, in turn (see ``one_session``); a peer that never connects is
given up after 2 s. ``--settle`` seconds after each pair has been cleaned up (the idle server between
sessions) the process's RSS is read, after a forced garbage collection, and so is how many of the
closed sessions are still reachable. The first ``--warm-up`` sessions fill the caches (the batcher's buffers, aiortc's codecs,
the allocator's arenas) and are not counted.

Reported: RSS over the first and the last tenth of the measured sessions (medians: one reading moves
with what the last two sessions did), the growth between them, the slope over the second half (a
plateau is ~0), and the closed sessions still alive. Run it against another
checkout (``PYTHONPATH=<checkout>``) for a baseline: the script uses only what both have.

By default the malloc arenas are capped as ``lipsync-rt serve`` caps them; ``--arenas glibc`` leaves
glibc's default, for comparison.

    python benchmarks/bench_server_memory.py --sessions 100 --warm-up 40 --json benchmarks/server_memory_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
import weakref
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Resident set size of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


ENDINGS = ("close", "hang up", "vanish", "at once")


async def one_session(url: str, http, server, speech: np.ndarray, seconds: float, ending: str) -> weakref.ref:
    """One client from its offer to its end; a weak reference to the server's session. The endings are
    those of real clients: ``/close`` then hang up, hang up without a word, post an offer and vanish
    (the answer never applied: aiortc keeps such a connection until its connect task gives up), and
    ``/close`` at once after connecting (a page reloaded)."""
    from lipsync_rt.webrtc.loopback import LoopbackClient

    client = LoopbackClient(url, mode="avatar", avatar="face", speech=speech, fps=25.0)
    if ending == "vanish":
        client.pc.addTransceiver("audio")
        client.pc.addTransceiver("video", direction="recvonly")
        await client.pc.setLocalDescription(await client.pc.createOffer())
        body = {"sdp": client.pc.localDescription.sdp, "type": "offer", "mode": "avatar", "avatar": "face"}
        async with http.post(url + "/offer", json=body) as response:
            session_id = (await response.json())["session"]
        ref = weakref.ref(server.peers[session_id].session)
        await client.pc.close()
        async with http.post(url + "/close", json={"session": session_id}) as response:
            await response.read()
        return ref
    await client.connect(http)
    ref = weakref.ref(server.peers[client.session_id].session)
    await asyncio.sleep(0.0 if ending == "at once" else seconds)
    await client.close(http if ending in ("close", "at once") else None)
    return ref


async def one_pair(url: str, http, server, speech: np.ndarray, seconds: float, ending: str) -> list[weakref.ref]:
    """Two clients at once, ending the same way; returns when the server has cleaned both up."""
    refs = await asyncio.gather(*(one_session(url, http, server, speech, seconds, ending) for _ in range(2)))
    for _ in range(150):                        # a hang-up is noticed when the connection fails
        if not server.peers:
            break
        await asyncio.sleep(0.1)
    return list(refs)


async def run(args: argparse.Namespace) -> dict:
    import aiohttp

    from lipsync_rt.audio import load_audio
    from lipsync_rt.default_model import load_generator
    from lipsync_rt.engine import TorchEngine
    from lipsync_rt.pipeline import Avatar, SessionConfig
    from lipsync_rt.webrtc import LipSyncServer, ServerConfig
    from lipsync_rt.webrtc.server import listening

    try:                    # as the server's command does: aiortc's connect task of a vanished peer
        from lipsync_rt.webrtc.server import _quiet_closed_connections

        asyncio.get_running_loop().set_exception_handler(_quiet_closed_connections)
    except ImportError:
        pass
    if args.arenas == "limited":
        from lipsync_rt.webrtc.heap import limit_arenas

        limit_arenas()      # as `lipsync-rt serve` does, before the engine
    engine = TorchEngine(load_generator(None)[0], device="cpu")
    avatar = Avatar.prepare(str(args.face), engine, fps=25.0)
    speech = load_audio(str(args.speech))
    server = LipSyncServer(engine, {"face": avatar}, ServerConfig(max_sessions=4, connect_timeout=2.0),
                           session_config=SessionConfig(fps=25.0, overhead_ms=80))
    points, alive_refs = [], []
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as http:
            async with listening(server) as url:
                total = args.warm_up + args.sessions
                done = 0
                while done < total:
                    refs = await one_pair(url, http, server, speech, args.seconds, ENDINGS[(done // 2) % 4])
                    done += 2
                    await asyncio.sleep(args.settle)    # the server hands freed memory back 1 s after
                    gc.collect()
                    if done > args.warm_up:
                        alive_refs += refs
                    points.append({"sessions": done, "rss_mb": round(rss_mb(), 2),
                                   "alive": sum(r() is not None for r in alive_refs),
                                   "seconds": round(time.monotonic() - started, 1)})
                    print(f"{done:4d} sessions  RSS {points[-1]['rss_mb']:7.1f} MB  closed but alive "
                          f"{points[-1]['alive']}", file=sys.stderr, flush=True)
    finally:
        await server.batcher.close()
    measured = [p for p in points if p["sessions"] > args.warm_up]
    # One reading moves by +-10 MB with what the two sessions just did; a tenth of the readings at each
    # end, by their medians, says where memory stands.
    tenth = max(1, len(measured) // 10)
    first = float(np.median([p["rss_mb"] for p in measured[:tenth]]))
    last = float(np.median([p["rss_mb"] for p in measured[-tenth:]]))
    half = measured[len(measured) // 2:]
    x = np.array([p["sessions"] for p in half], float)
    y = np.array([p["rss_mb"] for p in half], float)
    slope = float(np.polyfit(x, y, 1)[0]) * 100 if len(half) >= 2 else 0.0
    return {
        "sessions_measured": measured[-1]["sessions"] - args.warm_up,
        "warm_up": args.warm_up,
        "seconds_per_session": args.seconds,
        "rss_first_tenth_mb": round(first, 2),
        "rss_last_tenth_mb": round(last, 2),
        "growth_mb": round(last - first, 2),
        "rss_peak_mb": max(p["rss_mb"] for p in measured),
        "second_half_slope_mb_per_100_sessions": round(slope, 2),
        "closed_sessions_alive": measured[-1]["alive"],
        "points": points,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100, help="sessions measured after the warm-up (even)")
    parser.add_argument("--warm-up", type=int, default=10, help="sessions before memory is measured (even)")
    parser.add_argument("--seconds", type=float, default=0.5, help="how long each session runs before /close")
    parser.add_argument("--face", type=Path, default=ROOT / "examples" / "face.jpg")
    parser.add_argument("--speech", type=Path, default=ROOT / "examples" / "speech.wav")
    parser.add_argument("--settle", type=float, default=1.5,
                        help="seconds between a pair's cleanup and the reading (the server trims after 1 s)")
    parser.add_argument("--arenas", choices=("limited", "glibc"), default="limited",
                        help="cap malloc's arenas as `lipsync-rt serve` does, or leave glibc's default")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.sessions < 2 or args.warm_up < 2 or args.seconds < 0:
        parser.error("--sessions and --warm-up need at least 2, --seconds at least 0")
    if args.json and not os.access(args.json.resolve().parent, os.W_OK):
        parser.error(f"--json: cannot write into {args.json.resolve().parent}")
    result = asyncio.run(run(args))
    summary = {k: v for k, v in result.items() if k != "points"}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

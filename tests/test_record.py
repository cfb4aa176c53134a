"""``--record DIR``: every served session's output (what a viewer gets: the frames and the delayed
audio) lands in DIR/<session>.mp4, complete, whether the session was deleted, its peer hung up, or the
server shut down (Ctrl-C) with it still running; nothing half-written is left behind."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from lipsync_rt.audio import load_audio
from lipsync_rt.media import iter_video_frames, probe
from lipsync_rt.webrtc.loopback import LoopbackClient
from test_push import AUTH, FPS, TOKEN, Served, next_json, tone


@pytest.fixture(scope="module")
def engine():
    from conftest import seeded_generator
    from lipsync_rt.engine import TorchEngine

    return TorchEngine(seeded_generator(seed=3))


@pytest.fixture(scope="module")
def avatar(engine):
    from conftest import EXAMPLE_FACE
    from lipsync_rt.pipeline import Avatar

    return Avatar.prepare(EXAMPLE_FACE, engine, fps=FPS)


def audio_level(path) -> tuple[float, float]:
    """(peak, time of the first sample above 0.1) of a file's audio."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        rate = stream.rate
    x = np.concatenate(chunks)
    loud = np.flatnonzero(np.abs(x) > 0.1)
    return float(np.abs(x).max()), (loud[0] / rate if len(loud) else float("nan"))


def test_sessions_are_recorded_however_they_end(engine, avatar, tmp_path, speech):
    folder = tmp_path / "rec"
    folder.mkdir()

    async def run():
        async with Served(engine, {"face": avatar}, record_dir=folder) as served:
            # 1. a push session: 1 s of tone, played, then deleted
            deleted = await served.create()
            async with served.socket(deleted) as ws:
                await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000, "channels": 1}))
                await next_json(ws, "ready")
                await asyncio.sleep(0.4)                      # 0.4 s of idle first: the tone starts later
                await ws.send_bytes(tone(1.0, 16000))
                await ws.send_str('{"type": "end_of_segment"}')
                await next_json(ws, "playback_finished")
            async with served.http.delete(f"{served.url}/sessions/{deleted}", headers=AUTH) as response:
                assert response.status == 200
                assert (await response.json())["record"] == str(folder / f"{deleted}.mp4")
            assert (folder / f"{deleted}.mp4").exists()    # complete when DELETE answers

            # 2. a browser-style session whose peer hangs up without a word
            client = LoopbackClient(served.url, mode="avatar", avatar="face", speech=load_audio(speech),
                                    fps=FPS, token=TOKEN)
            await client.connect(served.http)
            hung_up = client.session_id
            await asyncio.sleep(1.0)
            await client.close()                               # no /close: the server notices the hang-up
            for _ in range(150):
                if hung_up not in served.server.peers:
                    break
                await asyncio.sleep(0.1)
            assert hung_up not in served.server.peers

            # 3. a push session still running when the server shuts down (what Ctrl-C does)
            running = await served.create()
            await asyncio.sleep(0.8)
        return deleted, hung_up, running

    deleted, hung_up, running = asyncio.run(run())
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.mp4" for s in (deleted, hung_up, running))
    size = (avatar.frames[0].shape[1], avatar.frames[0].shape[0])
    for sid in (deleted, hung_up, running):
        info = probe(folder / f"{sid}.mp4")
        assert info.has_video and info.has_audio and (info.width, info.height) == size
        assert info.video_duration_s >= 0.5
        # video and the delayed audio cover the same span: the audio is contiguous from the first frame
        assert info.audio_duration_s == pytest.approx(info.video_duration_s, abs=0.15)
    info = probe(folder / f"{deleted}.mp4")
    peak, onset = audio_level(folder / f"{deleted}.mp4")
    assert peak > 0.2                                          # the pushed tone, as the viewers heard it
    assert onset >= 0.3 and info.video_duration_s >= onset + 0.9   # after the idle start, then all of it
    assert probe(folder / f"{hung_up}.mp4").video_duration_s >= 0.4       # 1 s connected, less D and set-up
    frames = list(iter_video_frames(folder / f"{running}.mp4"))
    assert len(frames) >= 10                                   # 0.8 s less the delay D


def test_a_record_folder_that_cannot_be_written_is_a_one_line_error(tmp_path, capsys):
    from lipsync_rt.cli import main

    (tmp_path / "file").write_text("")
    assert main(["serve", "--record", str(tmp_path / "file")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lipsync-rt: error: --record") and "is a file" in err and "\n" not in err

"""Idle clips: looping or ping-pong, the avatar's shape, pictures between and during replies, the
change of clip at the nearest frame (against a plain cut), and a live session that idles, speaks and
is interrupted back to idle."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from conftest import seeded_generator
from lipsync_rt.audio import SAMPLE_RATE, load_audio
from lipsync_rt.engine import TorchEngine
from lipsync_rt.errors import LipSyncError
from lipsync_rt.media import Mp4Writer
from lipsync_rt.pipeline import Avatar, IdleClip, LipSyncSession, PlaybackStarted, SessionConfig
from lipsync_rt.pipeline.idle import clip_index, loops_cleanly, thumbnails
from lipsync_rt.pipeline.stages import AvatarPictures

SIZE = (320, 288)


def canvas(photo, dx, dy):
    frame = np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
    frame[dy:dy + 256, dx:dx + 256] = photo
    return frame


def speaking_frames(photo, count=24):
    """The photo jumping between the idle clip's offsets: a busy speaking clip of the same person."""
    return [canvas(photo, 20 + 2 * ((5 * i) % 9), 18) for i in range(count)]


def idle_frames(photo, count=16):
    """The photo swaying slowly right then back: a clip that loops cleanly."""
    steps = [0, 2, 4, 6, 8, 10, 12, 14, 16, 14, 12, 10, 8, 6, 4, 2]
    return [canvas(photo, 20 + steps[k % len(steps)], 18) for k in range(count)]


def write_clip(path, frames, fps=25):
    with Mp4Writer(path, fps, audio=False) as writer:
        for frame in frames:
            writer.write_video(frame)
    return path


def step(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def engine():
    return TorchEngine(seeded_generator(seed=5))


@pytest.fixture(scope="module")
def clips(tmp_path_factory, photo):
    folder = tmp_path_factory.mktemp("idle")
    return (write_clip(folder / "speaking.mp4", speaking_frames(photo)),
            write_clip(folder / "idle.mp4", idle_frames(photo)))


@pytest.fixture(scope="module")
def avatar(clips, engine):
    return Avatar.prepare(clips[0], engine, idle=clips[1])


def test_an_idle_clip_loops_when_it_can_else_walks_back_and_forth(photo):
    assert loops_cleanly(thumbnails(idle_frames(photo)))
    drifting = [canvas(photo, 10 + 3 * k, 18) for k in range(16)]
    assert not loops_cleanly(thumbnails(drifting))
    assert IdleClip(drifting, size=SIZE).mode == "pingpong"
    assert [clip_index(p, 4, "pingpong") for p in range(8)] == [0, 1, 2, 3, 2, 1, 0, 1]
    assert [clip_index(p, 4, "loop") for p in range(6)] == [0, 1, 2, 3, 0, 1]
    assert clip_index(5, 1, "pingpong") == 0


def test_an_idle_clip_takes_the_avatars_size_but_not_another_shape(photo):
    half = [f[::2, ::2].copy() for f in idle_frames(photo, 3)]
    clip = IdleClip(half, size=SIZE)
    assert clip.frames[0].shape == (SIZE[1], SIZE[0], 3)
    with pytest.raises(LipSyncError, match="shape"):
        IdleClip([np.zeros((288, 200, 3), np.uint8)], size=SIZE)


def test_prepare_reads_the_idle_clip_without_analysing_it(avatar, clips):
    assert avatar.idle is not None and len(avatar.idle) == 16 and avatar.idle.mode == "loop"
    assert avatar.transitions.to_speech.shape == (16,) and avatar.transitions.to_idle.shape == (24,)
    assert "idle" in repr(avatar)


def test_without_an_idle_clip_pictures_are_the_avatars_own_loop(avatar):
    plain = Avatar(avatar.frames, avatar.faces)
    for mode in ("loop", "pingpong"):
        pictures = AvatarPictures(plain, mode)
        shown = [asyncio.run(pictures.picture(i, idle=i % 7 < 3)) for i in range(60)]
        assert [p.avatar_index for p in shown] == [plain.index(i, mode) for i in range(60)]
        assert not any(p.idle for p in shown)


def pictures_for(avatar, idle_pattern, transition="nearest"):
    pictures = AvatarPictures(avatar, "loop", transition)
    return [asyncio.run(pictures.picture(i, idle)) for i, idle in enumerate(idle_pattern)], pictures


def test_clips_change_at_the_nearest_frame(avatar):
    pattern = [True] * 10 + [False] * 20 + [True] * 10
    shown, pictures = pictures_for(avatar, pattern)
    assert all(p.idle and p.track is None for p in shown[:10]) and all(p.idle for p in shown[30:])
    assert not any(p.idle for p in shown[10:30]) and pictures.changes == 2
    idle = avatar.idle
    for i in range(10):
        assert shown[i].image is idle.frames[idle.index(i)]
    # speech starts at the speaking frame nearest to the idle frame on screen, then runs on
    first = int(avatar.transitions.to_speech[idle.index(9)])
    assert [p.avatar_index for p in shown[10:30]] == [(first + k) % len(avatar) for k in range(20)]
    # and the idle clip comes back at the frame nearest to the last speaking frame
    assert shown[30].image is idle.frames[int(avatar.transitions.to_idle[(first + 19) % len(avatar)])]


def test_the_nearest_frame_leaves_a_smaller_step_than_a_cut(avatar):
    """Over many changes, at every phase of both clips: the step on screen at a change is the smallest
    the new clip allows (up to the thumbnails' rounding), and well below a plain cut's on average."""
    pattern = [(i // 7) % 2 == 0 if i < 100 else (i // 11) % 2 == 0 for i in range(200)]
    changes = [i for i in range(1, 200) if pattern[i] != pattern[i - 1]]
    nearest, _ = pictures_for(avatar, pattern)
    cut, _ = pictures_for(avatar, pattern, "cut")
    near = np.array([step(nearest[i - 1].image, nearest[i].image) for i in changes])
    plain = np.array([step(cut[i - 1].image, cut[i].image) for i in changes])
    best = np.array([min(step(nearest[i - 1].image, frame)
                         for frame in (avatar.idle.frames if pattern[i] else avatar.frames)) for i in changes])
    assert (near <= best + 0.5).all()
    assert near.mean() < 0.8 * plain.mean()


def test_interrupt_turns_the_stand_ins_idle(avatar):
    shown, pictures = pictures_for(avatar, [True] * 5 + [False] * 20)
    assert not pictures.stand_in(15).idle
    pictures.interrupt(12)
    assert all(pictures.stand_in(i).idle for i in range(12, 30))
    assert not pictures.stand_in(11).idle                   # what may have left already stays as it was
    assert asyncio.run(pictures.picture(25, idle=True)).idle


def test_live_session_idles_speaks_and_returns_to_idle(avatar, speech):
    wav = load_audio(speech)

    async def main():
        session = LipSyncSession(avatar=avatar, engine=TorchEngine(seeded_generator(seed=5)),
                                 config=SessionConfig(overhead_ms=80))
        async with session:
            reader = asyncio.ensure_future(_collect(session.video()))
            audio = asyncio.ensure_future(_collect(session.audio()))
            await asyncio.sleep(0.5)                                      # idle first
            session.push_audio(wav[:12000], SAMPLE_RATE, segment="hello")
            session.end_of_segment()
            await asyncio.sleep(1.6)                                      # the reply, then idle again
            session.push_audio(wav, SAMPLE_RATE, segment="long")
            async for event in session.events():
                if isinstance(event, PlaybackStarted) and event.segment == "long":
                    break
            await asyncio.sleep(0.4)
            cut_at = session._stages["release"].next_index
            session.interrupt()
            await asyncio.sleep(0.4)
            session.end_of_input()
            frames = await reader
            await audio
        return frames, cut_at, session.stats()

    frames, cut_at, stats = asyncio.run(main())
    idle = [f.idle for f in frames]
    assert idle[0] and not all(idle)
    changes = [i for i in range(1, len(idle)) if idle[i] != idle[i - 1]]
    assert len(changes) >= 4                                    # idle -> hello -> idle -> long -> idle
    for i in range(len(frames)):
        if idle[i]:
            assert any(frames[i].image is clip for clip in avatar.idle.frames)   # the clip, unchanged
    assert all(idle[cut_at:cut_at + 5])
    # no visible jump where the clips change: the clips share their poses, so a change costs about
    # nothing (codec noise and the generated mouth), where a plain cut costs a normal step of the clip
    steps = [step(frames[i - 1].image, frames[i].image) for i in changes]
    own = np.median([step(a, b) for a, b in zip(avatar.frames, avatar.frames[1:])])
    assert max(steps) < 3.0 < own
    assert stats.frames_generated > 0


async def _collect(iterator):
    return [item async for item in iterator]

"""A live frame whose mouth is not ready: held, eased back, or frozen for a frame or two, never a snap
to the closed mouth mid-speech (pipeline/conceal.py)."""

from __future__ import annotations

import numpy as np

from lipsync_rt.pipeline.conceal import EASE_FRAMES, FREEZE_FRAMES, HOLD_FRAMES, Concealer
from lipsync_rt.pipeline.messages import DROPPED, IDLE, FrameResult

BOX = (8, 8, 24, 24)


def original(picture: int) -> np.ndarray:
    return np.full((32, 32, 3), 10 * picture, np.uint8)


def generated(index: int, picture: int) -> FrameResult:
    image = original(picture)
    image[BOX[1]:BOX[3], BOX[0]:BOX[2]] = 250             # an open mouth, inside the box
    return FrameResult(index, image, True, None, None, 0, picture, BOX)


def dropped(index: int, picture: int) -> FrameResult:
    return FrameResult(index, original(picture), False, None, DROPPED, 0, picture, BOX)


def play(concealer: Concealer, results: list[FrameResult]) -> list[FrameResult]:
    out = []
    for result in results:
        result = concealer.conceal(result)
        concealer.released(result)
        out.append(result)
    return out


def mouth(result: FrameResult) -> float:
    return float(result.image[BOX[1]:BOX[3], BOX[0]:BOX[2]].mean())


def test_a_photo_holds_the_mouth_then_eases_back_to_the_original():
    drops = HOLD_FRAMES + EASE_FRAMES + 2
    out = play(Concealer(), [generated(0, 0)] + [dropped(i, 0) for i in range(1, drops + 1)])
    held = out[1:1 + HOLD_FRAMES]
    assert all(r.held and np.array_equal(r.image, out[0].image) for r in held)
    easing = [mouth(r) for r in out[1 + HOLD_FRAMES:1 + HOLD_FRAMES + EASE_FRAMES]]
    assert all(r.held for r in out[1 + HOLD_FRAMES:1 + HOLD_FRAMES + EASE_FRAMES])
    assert 250 > easing[0] > easing[-1] > 0 and easing == sorted(easing, reverse=True)
    for r in out[1 + HOLD_FRAMES + EASE_FRAMES:]:
        assert not r.held and np.array_equal(r.image, original(0))
    # outside the face box nothing ever changes
    assert all((r.image[:8] == 0).all() for r in out)


def test_a_moving_picture_freezes_for_a_frame_or_two_then_shows_the_original():
    out = play(Concealer(), [generated(0, 0)] + [dropped(i, i) for i in range(1, 5)])
    assert [r.held for r in out[1:]] == [True] * FREEZE_FRAMES + [False] * (4 - FREEZE_FRAMES)
    assert all(np.array_equal(r.image, out[0].image) for r in out[1:1 + FREEZE_FRAMES])
    assert np.array_equal(out[-1].image, original(4))


def test_nothing_is_held_without_speech_before_it():
    # the first frame of the stream, and a drop right after idle, show their own picture
    idle = FrameResult(1, original(0), False, None, IDLE, 0, 0, BOX)
    out = play(Concealer(), [dropped(0, 0), generated(1, 0), idle, dropped(3, 0)])
    assert not out[0].held and not out[3].held
    # a generated frame in between starts the count again
    out = play(Concealer(), [generated(0, 0)] + [dropped(i, 0) for i in range(1, 4)] + [generated(4, 0), dropped(5, 0)])
    assert all(r.held for r in out[1:4]) and out[5].held

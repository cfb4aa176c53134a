"""Rest in pauses: the paste's strength from the mel window, and the picture itself in a pause."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lipsync_rt.audio import MEL_SILENCE, SAMPLE_RATE, melspectrogram, mel_chunks
from lipsync_rt.blend import Blender
from lipsync_rt.pipeline import LipSyncSession, SessionConfig
from lipsync_rt.pipeline.rest import speech_weight


def _speech_then_pause(speech_wav: np.ndarray) -> np.ndarray:
    """0.5 s of speech (frames 0-12: the fixture's first word, no pause in it), 1 s of silence
    (frames 12-37), the same 0.5 s again."""
    part = speech_wav[: SAMPLE_RATE // 2]
    return np.concatenate([part, np.zeros(SAMPLE_RATE, np.float32), part])


def test_weight_is_one_in_speech_zero_in_a_pause_and_ramps_between(speech):
    from lipsync_rt.audio import load_audio

    wav = _speech_then_pause(load_audio(speech))
    for offset in (0, -8):
        weights = np.array([speech_weight(w, offset) for w in mel_chunks(melspectrogram(wav), 25, mel_offset=offset)])
        assert np.all(weights[17:33] == 0.0)                  # the middle of the one-second pause
        assert np.all(weights[:10] == 1.0)                    # speech: the model's mouth, at full strength
        edges = weights[8:42]
        assert 0 < np.sum((edges > 0) & (edges < 1)) <= 6      # a short ease on each side, not a cut or a drift
    silence = np.full((80, 16), MEL_SILENCE, np.float32)
    assert speech_weight(silence) == 0.0
    loud_far = silence.copy()
    loud_far[:, 15] = 0.0                                      # speech only at the far edge of a centred window
    assert speech_weight(loud_far, -8) < speech_weight(np.full((80, 16), 0.0, np.float32), -8) == 1.0


def test_blender_strength_zero_gives_the_frame_and_one_the_full_paste(photo):
    blender = Blender("feather")
    face = np.random.default_rng(0).random((3, 96, 96)).astype(np.float32)
    box = (40, 40, 140, 160)
    np.testing.assert_array_equal(blender.paste(photo, face, box, strength=0.0), photo)
    full = blender.paste(photo, face, box)
    np.testing.assert_array_equal(blender.paste(photo, face, box, strength=1.0), full)
    half = blender.paste(photo, face, box, strength=0.5).astype(int)
    changed = np.any(full != photo, axis=2)
    between = np.abs(half - photo)[changed].sum() < np.abs(full.astype(int) - photo)[changed].sum()
    assert changed.any() and between


@pytest.mark.parametrize("rest", [True, False])
def test_a_pause_shows_the_picture_itself_unless_rest_is_off(speech, engine, avatar, rest):
    from lipsync_rt.audio import load_audio

    wav = _speech_then_pause(load_audio(speech))

    async def run():
        config = SessionConfig(live=False, rest_in_pauses=rest)
        async with LipSyncSession(engine, avatar=avatar, config=config) as session:
            session.push_audio(wav, SAMPLE_RATE)
            session.end_of_input()
            return [frame async for frame in session.video()]

    frames = asyncio.run(run())
    middle = [f for f in frames[17:33] if avatar.faces.has_face[f.pts % len(avatar)]]
    same = [np.array_equal(f.image, avatar.frames[f.pts % len(avatar)]) for f in middle]
    assert middle and all(f.generated for f in middle)
    assert all(same) if rest else not any(same)
    speaking = [f for f in frames[:10] if f.generated]
    assert speaking and not any(np.array_equal(f.image, avatar.frames[f.pts % len(avatar)]) for f in speaking)


def test_infer_has_rest_on_by_default_and_no_rest_turns_it_off():
    from lipsync_rt.cli import build_parser

    base = ["infer", "--checkpoint_path", "g.pth", "--face", "f.jpg", "--audio", "a.wav"]
    assert build_parser().parse_args(base).rest is True
    assert build_parser().parse_args(base + ["--no-rest"]).rest is False

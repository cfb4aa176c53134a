"""``infer`` end to end on small real inputs, and equality with the reference algorithm."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import BLANK_FRAMES, face_frames, seeded_generator, write_wav
from lipsync_rt.audio import load_audio, mel_chunks, melspectrogram
from lipsync_rt.blend import Blender
from lipsync_rt.engine import TorchEngine
from lipsync_rt.face import analyse_clip
from lipsync_rt.infer import InferOptions, run_inference
from lipsync_rt.media import iter_video_frames, probe
from oracle import lipsync_frames


def _expected_frames(audio_path, fps: float) -> int:
    return len(mel_chunks(melspectrogram(load_audio(audio_path)), fps))


def _run(tmp_path, face, audio, checkpoint, **kw):
    out = tmp_path / "out" / "result.mp4"
    options = InferOptions(face=str(face), audio=str(audio), outfile=str(out), checkpoint_path=str(checkpoint), **kw)
    return run_inference(options, progress=False), out


def test_photo_end_to_end(tmp_path, speech, generator_checkpoint):
    from conftest import EXAMPLE_FACE

    report, out = _run(tmp_path, EXAMPLE_FACE, speech, generator_checkpoint, wav2lip_batch_size=16)
    info = probe(out)
    expected = _expected_frames(speech, 25.0)
    assert report.frames == expected == info.frame_count
    assert info.has_video and info.has_audio and info.fps == pytest.approx(25.0)
    audio_seconds = len(load_audio(speech)) / 16000
    assert info.audio_duration_s == pytest.approx(audio_seconds, abs=0.07)
    assert info.video_duration_s == pytest.approx(expected / 25.0, abs=1e-6)
    assert (info.width, info.height) == (512, 512)
    assert report.frames_without_face == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.mp4"]  # no temporary files left


def test_video_loops_and_passes_frames_without_face_through(tmp_path, speech, face_video, generator_checkpoint):
    # 1.6 s of speech over a 0.8 s video: the video loops from the start, as in the reference.
    report, out = _run(tmp_path, face_video, speech, generator_checkpoint, wav2lip_batch_size=8)
    count = _expected_frames(speech, 25.0)
    assert report.frames == count == probe(out).frame_count
    looped_blank = [i for i in range(count) if i % 20 in BLANK_FRAMES]
    assert report.frames_without_face == len(looped_blank)
    decoded = [f.image for f in iter_video_frames(out)]
    for i in looped_blank:  # a blank frame stays the flat grey it was (up to H.264 noise)
        assert np.abs(decoded[i].astype(int) - 40).mean() < 1.5


def test_audio_from_a_video_file_and_static(tmp_path, face_video, generator_checkpoint):
    # (rest in pauses off: on this small face the feathered mask reaches row 100, and frames in pauses
    # would show the picture itself there, not frame 0's paste)
    report, out = _run(tmp_path, face_video, face_video, generator_checkpoint, static=True, rest_in_pauses=False)
    assert report.frames == _expected_frames(face_video, 25.0)
    decoded = [f.image for f in iter_video_frames(out)]
    # --static: every output frame is built from frame 0, so the upper half of the frame never moves.
    assert max(np.abs(d[:100].astype(int) - decoded[0][:100]).mean() for d in decoded) < 1.0


def test_silence_is_fine(tmp_path, generator_checkpoint):
    from conftest import EXAMPLE_FACE

    silence = write_wav(tmp_path / "silence.wav", np.zeros(16000))
    report, out = _run(tmp_path, EXAMPLE_FACE, silence, generator_checkpoint)
    # 1 s is 81 mel columns: 21 full windows plus the reference's tail window, 22 frames (not 25).
    assert report.frames == probe(out).frame_count == _expected_frames(silence, 25.0) == 22


def _reference(frames, boxes, chunks, model, batch_size):
    """The reference inference.py loop, step by step: crop, mask, batch, model, truncate, paste.

    Batched as the reference batches (float results of a convolution depend on the batch size).
    """
    results = []
    for start in range(0, len(chunks), batch_size):
        ids = range(start, min(len(chunks), start + batch_size))
        crops = [cv2.resize(frames[i % len(frames)][y1:y2, x1:x2], (96, 96))
                 for i in ids for x1, y1, x2, y2 in [boxes[i % len(frames)]]]
        img_batch, mel_batch = np.asarray(crops), np.asarray([chunks[i] for i in ids])
        masked = img_batch.copy()
        masked[:, 48:] = 0
        img_batch = np.concatenate((masked, img_batch), axis=3) / 255.0
        mel_batch = np.reshape(mel_batch, [len(mel_batch), mel_batch.shape[1], mel_batch.shape[2], 1])
        img_t = torch.FloatTensor(np.transpose(img_batch, (0, 3, 1, 2)))
        mel_t = torch.FloatTensor(np.transpose(mel_batch, (0, 3, 1, 2)))
        with torch.no_grad():
            pred = model(mel_t, img_t)
        pred = pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0
        for p, i in zip(pred, ids):
            frame = frames[i % len(frames)].copy()
            x1, y1, x2, y2 = boxes[i % len(frames)]
            frame[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
            results.append(frame)
    return results


def test_hard_paste_with_fixed_box_equals_the_reference(speech, photo):
    frames = face_frames(photo, 6, blank=())
    chunks = mel_chunks(melspectrogram(load_audio(speech)), 25.0)[:9]
    faces = analyse_clip(frames, box=(40, 250, 50, 270))  # top, bottom, left, right
    model = seeded_generator(seed=5)
    expected = _reference(frames, faces.boxes, chunks, model, batch_size=4)
    exact = TorchEngine(model, device="cpu", exact=True)
    got = list(lipsync_frames(frames, faces, chunks, exact, Blender("none"), batch_size=4))
    assert len(got) == len(expected) == 9
    for a, b in zip(got, expected):
        assert np.array_equal(a, b)
    # The optimised engine (BatchNorm folded, channels-last) is the same network up to float rounding.
    folded = TorchEngine(model, device="cpu")
    for a, b in zip(lipsync_frames(frames, faces, chunks, folded, Blender("none"), batch_size=4), expected):
        assert np.abs(a.astype(int) - b).max() <= 1


def test_engine_torch_gives_the_reference_frames_bit_for_bit(tmp_path, speech, photo, generator_checkpoint,
                                                            monkeypatch):
    """The whole ``infer --engine torch --blend none`` job with a fixed box: every frame it encodes is the
    reference's, bit for bit. (The default engine, auto, is int8 on the CPU: faithful, not bit-exact.)"""
    import lipsync_rt.infer as infer_module
    from lipsync_rt.engine import DEFAULT_ENGINE
    from lipsync_rt.models import load_checkpoint

    assert InferOptions(face="f", audio="a").engine == DEFAULT_ENGINE == "auto"
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), photo)
    written = []

    class Recording(infer_module.Mp4Sink):
        def write_video(self, frame):
            written.append(frame.image.copy())
            super().write_video(frame)

    monkeypatch.setattr(infer_module, "Mp4Sink", Recording)
    box = (30, 110, 80, 150)  # top, bottom, left, right: around the face of the 256x256 photo
    report, _ = _run(tmp_path, face, speech, generator_checkpoint, engine="torch", blend="none", box=box,
                     wav2lip_batch_size=8)
    assert report.model == str(generator_checkpoint) and report.build_seconds == 0.0
    faces = analyse_clip([photo], box=box, static=True)
    chunks = mel_chunks(melspectrogram(load_audio(speech)), 25.0)
    expected = _reference([photo], faces.boxes, chunks, load_checkpoint(generator_checkpoint).eval(), batch_size=8)
    assert len(written) == len(expected) == report.frames
    for got, want in zip(written, expected):
        assert np.array_equal(got, want)


def test_feather_blend_changes_only_the_lower_face(speech, photo):
    frames = face_frames(photo, 4, blank=())
    chunks = mel_chunks(melspectrogram(load_audio(speech)), 25.0)[:4]
    faces = analyse_clip(frames)
    engine = TorchEngine(seeded_generator(), device="cpu")
    for frame, out, box in zip(frames, lipsync_frames(frames, faces, chunks, engine, Blender("feather")), faces.boxes):
        changed = np.argwhere(np.any(out != frame, axis=2))
        x1, y1, x2, y2 = box
        assert len(changed) > 0
        assert changed[:, 0].min() > y1 + (y2 - y1) * 0.25  # the eyes and everything above stay
        assert changed[:, 0].max() < y2 and x1 < changed[:, 1].min() and changed[:, 1].max() < x2


def test_engine_sees_only_frames_with_faces(speech, photo):
    frames = face_frames(photo, 14)
    chunks = mel_chunks(melspectrogram(load_audio(speech)), 25.0)[:14]
    faces = analyse_clip(frames)

    class Counting:
        name = "counting"
        seen = 0

        def infer(self, mel, face):
            assert mel.shape[1:] == (1, 80, 16) and face.shape[1:] == (6, 96, 96)
            Counting.seen += len(mel)
            return np.zeros((len(mel), 3, 96, 96), np.float32)

    out = list(lipsync_frames(frames, faces, chunks, Counting(), Blender("none"), batch_size=5))
    assert Counting.seen == 14 - len(BLANK_FRAMES)
    for i in BLANK_FRAMES:
        assert out[i] is frames[i]

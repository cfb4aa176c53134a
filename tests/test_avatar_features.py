"""The avatar feature cache gives the same faces as running the whole generator, on real inputs."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_rt.audio import load_audio, mel_chunks, melspectrogram
from lipsync_rt.engine import AvatarFeatures, SplitEngine, TorchEngine
from lipsync_rt.engine.features import feature_bytes_per_frame, feature_shapes
from lipsync_rt.errors import LipSyncError
from lipsync_rt.lipsync import crop_face, face_input, mel_input

from conftest import seeded_generator

# The example face in the 256x256 ``photo`` fixture (detector box plus the default bottom pad).
FACE_BOX = (89, 37, 135, 97)


@pytest.fixture(scope="module")
def avatar_faces(photo) -> np.ndarray:
    """Six avatar frames: crops of the example face, each box shifted a little, as a drifting clip."""
    x1, y1, x2, y2 = FACE_BOX
    shifts = [(0, 0), (2, 1), (-2, 0), (1, -2), (3, 3), (-1, 2)]
    crops = np.stack([crop_face(photo, (x1 + dx, y1 + dy, x2 + dx, y2 + dy)) for dx, dy in shifts])
    return face_input(crops)


@pytest.fixture(scope="module")
def mels(speech) -> np.ndarray:
    chunks = mel_chunks(melspectrogram(load_audio(speech)), 25.0)
    return mel_input(chunks[5:13])  # eight windows of spoken audio


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    return TorchEngine(seeded_generator(seed=5), device="cpu")


def test_cached_features_give_the_whole_model_output(engine, avatar_faces, mels):
    assert isinstance(engine, SplitEngine)
    feats = AvatarFeatures.compute(engine, avatar_faces, batch_size=4)  # two batches, the last partial
    assert len(feats) == 6
    assert feats.nbytes == 6 * feature_bytes_per_frame(0.25) == feats.bytes_per_frame * 6
    idx = [0, 1, 2, 3, 4, 5, 0, 1]
    taken = feats.take(idx)
    assert [t.shape[1:] for t in taken] == feature_shapes(0.25)
    assert all(t.dtype == np.float32 and len(t) == 8 for t in taken)
    split = engine.infer_encoded(mels, taken)
    whole = engine.infer(mels, avatar_faces[idx])
    assert split.shape == (8, 3, 96, 96)
    assert np.abs(split - whole).max() <= 1e-5
    # Not trivially equal: different mel windows and different avatar frames give different faces.
    assert np.abs(whole[0] - whole[6]).max() > 1e-3


def test_take_accepts_repeats_and_any_order(engine, avatar_faces):
    feats = AvatarFeatures.compute(engine, avatar_faces)
    direct = engine.encode_face(avatar_faces)
    idx = [5, 0, 5, 2, 2, 1]
    for got, want in zip(feats.take(idx), direct):
        np.testing.assert_array_equal(got, want[idx])
    single = feats.take([3])
    assert [len(t) for t in single] == [1] * 7
    with pytest.raises(LipSyncError, match="avatar frame 6 is out of range: the avatar has 6 frames"):
        feats.take([0, 6])
    with pytest.raises(LipSyncError, match="out of range"):
        feats.take([-1])


def test_half_storage_halves_memory_and_stays_close(engine, avatar_faces, mels):
    exact = AvatarFeatures.compute(engine, avatar_faces)
    half = AvatarFeatures.compute(engine, avatar_faces, storage="float16")
    assert half.nbytes * 2 == exact.nbytes
    idx = [0, 1, 2, 3, 4, 5, 4, 3]
    assert all(t.dtype == np.float32 for t in half.take(idx))
    diff = np.abs(engine.infer_encoded(mels, half.take(idx)) - engine.infer_encoded(mels, exact.take(idx))).max()
    assert 0 < diff < 5e-3
    with pytest.raises(LipSyncError, match="unknown feature storage"):
        AvatarFeatures.compute(engine, avatar_faces, storage="int4")


class WholeOnly:
    """An engine that can only run the whole network (like a TensorRT plan of the full graph)."""

    name = "whole-only"

    def infer(self, mel, face):
        return np.zeros((len(face), 3, 96, 96), np.float32)


class LoadedWithoutSplitGraphs(WholeOnly):
    """Has the methods, but says it lacks the graphs behind them (an ONNX engine without its pair)."""

    name = "int8"
    split = False

    def encode_face(self, face):
        raise AssertionError("must not be called")

    infer_encoded = encode_face


def test_engine_without_split_support_is_refused(avatar_faces):
    with pytest.raises(LipSyncError, match="engine 'whole-only' cannot run the face encoder alone"):
        AvatarFeatures.compute(WholeOnly(), avatar_faces)
    with pytest.raises(LipSyncError, match="engine 'int8' cannot run the face encoder alone"):
        AvatarFeatures.compute(LoadedWithoutSplitGraphs(), avatar_faces)


def test_bad_inputs_are_refused(engine, avatar_faces):
    with pytest.raises(LipSyncError, match="no avatar frames to encode"):
        AvatarFeatures.compute(engine, avatar_faces[:0])
    with pytest.raises(LipSyncError, match=r"must be \[N, 6, 96, 96\]"):
        AvatarFeatures.compute(engine, avatar_faces[:, :3])
    with pytest.raises(LipSyncError, match="batch_size must be >= 1"):
        AvatarFeatures.compute(engine, avatar_faces, batch_size=0)


def test_memory_per_frame_of_the_full_and_lite_models():
    assert feature_bytes_per_frame(1.0) == 4 * (16 * 96 * 96 + 32 * 48 * 48 + 64 * 24 * 24 + 128 * 12 * 12
                                                + 256 * 6 * 6 + 512 * 3 * 3 + 512)  # 1.11 MiB
    assert feature_bytes_per_frame(1.0) == 1163264
    assert feature_bytes_per_frame(0.25) == 290816
    assert feature_bytes_per_frame(1.0, "float16") == 1163264 // 2

"""The LSE arithmetic, SyncNet v2's architecture and loader, and the face-track crop rule, on
hand-made embeddings and seeded weights (syncnet_v2.model itself cannot be downloaded here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lipsync_rt.errors import CheckpointError
from lipsync_rt.evaluation import crop as C
from lipsync_rt.evaluation import scoring as S
from lipsync_rt.models.syncnet_v2 import SyncNetV2, load_syncnet_v2


def reference_pdist(video: np.ndarray, audio: np.ndarray, vshift: int) -> np.ndarray:
    """syncnet_python's calc_pdist semantics, written out with torch: audio padded with vshift zero
    vectors at each end, window i compared with padded rows i .. i + 2 vshift."""
    v, a = torch.from_numpy(video).float(), torch.from_numpy(audio).float()
    padded = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
    rows = [torch.nn.functional.pairwise_distance(v[[i]].repeat(2 * vshift + 1, 1), padded[i:i + 2 * vshift + 1])
            for i in range(len(v))]
    return torch.stack(rows).numpy()


def orthonormal_clip(n: int, delay: int, dim: int = 64):
    """Video windows e_0..e_{n-1}; audio window u is video window u - delay (other windows: fresh vectors)."""
    eye = np.eye(dim, dtype=np.float32)
    video = eye[:n]
    audio = np.stack([eye[u - delay] if 0 <= u - delay < n else eye[n + u % (dim - n)] for u in range(n)])
    return video, audio


def test_distance_matrix_with_zero_padding_is_the_references():
    rng = np.random.default_rng(0)
    video, audio = rng.standard_normal((12, 32)).astype(np.float32), rng.standard_normal((12, 32)).astype(np.float32)
    ours = S.distance_matrix(video, audio, S.frame_index(12, 4), S.PAD_ZERO)
    np.testing.assert_allclose(ours, reference_pdist(video, audio, 4), rtol=1e-5)


@pytest.mark.parametrize("delay", [-3, 0, 2])
def test_lse_values_and_offset_sign_on_hand_made_embeddings(delay):
    """Audio delayed by d frames: the best shift is +d, the offset (SyncNet's sign) -d. At that shift,
    N - |d| windows match exactly (distance 0) and |d| meet zero padding (distance |e_i| = 1); at any
    other shift k, N - |k| pairs are orthonormal (sqrt 2) and |k| padded (1)."""
    n, vshift = 20, 5
    video, audio = orthonormal_clip(n, delay)
    s = S.score_matrix(S.distance_matrix(video, audio, S.frame_index(n, vshift), S.PAD_ZERO))
    expected = np.array([abs(k) / n if k == delay else ((n - abs(k)) * math.sqrt(2) + abs(k)) / n
                         for k in range(-vshift, vshift + 1)])
    np.testing.assert_allclose(s["mdist"], expected, atol=1e-4)
    assert s["offset"] == -delay
    assert s["lse_d"] == pytest.approx(abs(delay) / n, abs=1e-4)
    assert s["lse_c"] == pytest.approx(np.median(expected) - abs(delay) / n, abs=1e-4)
    # every window whose 11 audio windows all exist picks its own true shift: accuracy 1 only at delay 0
    assert s["offsync_acc"] == (1.0 if delay == 0 else 0.0)


def test_skip_padding_leaves_missing_pairs_out_of_the_means():
    n = 10
    video, audio = orthonormal_clip(n, 0)
    s = S.score_matrix(S.distance_matrix(video, audio, S.frame_index(n, 3), S.PAD_SKIP))
    np.testing.assert_allclose(s["mdist"], [math.sqrt(2)] * 3 + [0.0] + [math.sqrt(2)] * 3, atol=1e-4)
    assert s["offsync_windows"] == n - 6 and s["offsync_acc"] == 1.0


def test_medfilt_is_scipys():
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(3).standard_normal(40)
    for kernel in (9, 13):
        np.testing.assert_allclose(S.medfilt_zero(x, kernel), signal.medfilt(x, kernel))
    y = x.copy()
    y[5] = np.nan
    assert np.isnan(S.medfilt_zero(y, 9)[5]) and not np.isnan(S.medfilt_zero(y, 9)[6])


def test_fine_curve_finds_a_sub_frame_lag_and_the_av_offset_refines_the_frame_offset():
    """Audio embeddings per column (4 per frame, like MFCCs); video window i matches column 4 i + 6:
    audio 6 columns (60 ms) late, which is between frames: frame offset -1 or -2, A/V offset -60 ms.
    The audio embeddings wander smoothly (a random walk), so nearer columns are nearer embeddings."""
    rng = np.random.default_rng(5)
    n, cols = 30, 140
    audio = np.cumsum(rng.standard_normal((cols, 16)), axis=0)
    video = audio[np.arange(n) * 4 + 6]
    lags = np.arange(-20, 21)
    fine = S.fine_curve(video, audio, np.arange(n) * 4, lags)
    assert lags[np.nanargmin(fine)] == 6 and fine[np.nanargmin(fine)] < 1e-3
    index = S.frame_index(n, 5)
    frame_cols = np.where(index >= 0, index * 4, -1)
    dists = S.distance_matrix(video, audio, frame_cols, S.PAD_SKIP)
    lag_ms = -lags * 10.0
    order = np.argsort(lag_ms)
    scores = S.build_scores(dists, None, lag_ms[order], fine[order])
    assert scores.offset in (-1, -2) and scores.av_offset_ms == -60.0
    doc = scores.to_json()
    assert doc["offsets"][doc["mdist"].index(min(doc["mdist"]))] == scores.offset


# ---- SyncNet v2 --------------------------------------------------------------------------------------------

PUBLIC_SHAPES = {   # shapes every syncnet_v2.model key must have (from the architecture of syncnet_python's S)
    "netcnnaud.0.weight": (64, 1, 3, 3), "netcnnaud.4.weight": (192, 64, 3, 3), "netcnnaud.8.weight": (384, 192, 3, 3),
    "netcnnaud.11.weight": (256, 384, 3, 3), "netcnnaud.14.weight": (256, 256, 3, 3),
    "netcnnaud.18.weight": (512, 256, 5, 4), "netcnnaud.19.running_var": (512,),
    "netfcaud.0.weight": (512, 512), "netfcaud.1.running_mean": (512,), "netfcaud.3.weight": (1024, 512),
    "netcnnlip.0.weight": (96, 3, 5, 7, 7), "netcnnlip.4.weight": (256, 96, 1, 5, 5),
    "netcnnlip.8.weight": (256, 256, 1, 3, 3), "netcnnlip.11.weight": (256, 256, 1, 3, 3),
    "netcnnlip.14.weight": (256, 256, 1, 3, 3), "netcnnlip.18.weight": (512, 256, 1, 6, 6),
    "netcnnlip.19.weight": (512,), "netfclip.3.bias": (1024,),
}


def seeded_syncnet(seed: int = 0) -> SyncNetV2:
    torch.manual_seed(seed)
    model = SyncNetV2()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    return model.eval()


def test_syncnet_v2_has_the_public_keys_shapes_and_outputs():
    model = seeded_syncnet()
    state = model.state_dict()
    for key, shape in PUBLIC_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    prefixes = {k.split(".")[0] for k in state}
    assert prefixes == {"netcnnaud", "netfcaud", "netfclip", "netcnnlip"}
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(13.6e6, rel=0.01)   # ~52 MB file
    with torch.no_grad():
        assert model.forward_aud(torch.randn(3, 1, 13, 20)).shape == (3, 1024)
        assert model.forward_lip(torch.rand(1, 3, 5, 224, 224) * 255).shape == (1, 1024)
        # the convolutions reduce each stream to 1x1 exactly: the audio to 512 x 1 x 1, the lips to 512 x 1 x 1 x 1
        assert model.netcnnaud(torch.randn(1, 1, 13, 20)).shape == (1, 512, 1, 1)
        assert model.netcnnlip(torch.rand(1, 3, 5, 224, 224)).shape == (1, 512, 1, 1, 1)


def test_load_syncnet_v2_reads_old_and_new_files(tmp_path):
    model = seeded_syncnet(1)
    old_style = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old_style, tmp_path / "legacy.model", _use_new_zipfile_serialization=False)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "prefixed.model")
    x = torch.randn(2, 1, 13, 20)
    for name in ("legacy.model", "prefixed.model"):
        loaded = load_syncnet_v2(tmp_path / name)
        assert not loaded.training
        with torch.no_grad():
            torch.testing.assert_close(loaded.forward_aud(x), model.forward_aud(x))


def test_load_syncnet_v2_refuses_other_files_in_one_line(tmp_path):
    from lipsync_rt.default_model import DEFAULT_EXPERT

    state = {k: v for k, v in seeded_syncnet().state_dict().items()}
    missing = dict(state)
    del missing["netfclip.3.weight"]
    torch.save(missing, tmp_path / "missing.model")
    wrong = dict(state, **{"netcnnaud.0.weight": torch.zeros(32, 1, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.model")
    (tmp_path / "text.model").write_text("not weights")
    cases = {DEFAULT_EXPERT: "--expert", tmp_path / "missing.model": "missing: netfclip.3.weight",
             tmp_path / "wrong.model": "wrong shape", tmp_path / "text.model": "not a SyncNet v2 weights file",
             tmp_path / "absent.model": "not found"}
    for path, words in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_syncnet_v2(path)
        assert words in str(info.value) and "\n" not in str(info.value)


# ---- crops --------------------------------------------------------------------------------------------------

def test_syncnet_crop_follows_run_pipelines_rule():
    """Pad by int(s (1 + 2 c)) of grey 110, then rows [y - s, y + s (1 + 2 c)), cols [x - s (1 + c), x + s (1 + c))."""
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    for s, x, y in ((40.0, 160.0, 120.0), (55.5, 20.0, 200.0)):     # the second crop runs off the frame
        pad = int(s * 1.8)
        padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
        my, mx = y + pad, x + pad
        face = padded[int(my - s):int(my + s * 1.8), int(mx - s * 1.4):int(mx + s * 1.4)]
        import cv2

        np.testing.assert_array_equal(C.syncnet_crop(frame, s, x, y), cv2.resize(face, (224, 224)))


def test_track_boxes_are_interpolated_and_median_filtered():
    signal = pytest.importorskip("scipy.signal")
    boxes = np.array([[10 + i, 20, 110 + 2 * i, 140] for i in range(30)], float)
    has = np.ones(30, bool)
    has[[0, 1, 12, 13, 14, 29]] = False
    first, last, filled = C.interpolate_track(boxes, has)
    assert (first, last) == (2, 28) and len(filled) == 27
    np.testing.assert_allclose(filled, boxes[2:29])          # linear boxes: interpolation restores them exactly
    track = C.syncnet_track(filled)
    s = np.maximum(filled[:, 3] - filled[:, 1], filled[:, 2] - filled[:, 0]) / 2
    np.testing.assert_allclose(track[:, 0], signal.medfilt(s, 13))
    np.testing.assert_allclose(track[:, 1], signal.medfilt((filled[:, 0] + filled[:, 2]) / 2, 13))


def test_expert_crop_is_the_box_resized_to_96():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[20:60, 30:70] = 200
    out = C.expert_crop(frame, np.array([30.2, 19.6, 69.8, 60.4]))
    assert out.shape == (96, 96, 3) and out.min() == 200

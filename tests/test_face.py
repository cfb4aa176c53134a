"""Face package: detection, box convention, tracking, clip analysis and its cache.

Uses the NASA astronaut portrait in examples/face.jpg (512x512, one ~100 px face). One detector is
shared by the module so the onnxruntime sessions are built once. The models and the MediaPipe graph
maths are tested in test_face_models.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync_rt.errors import LipSyncError, NoFaceError
from lipsync_rt.face import (
    FACE_OVAL,
    ClipFaces,
    FaceDetector,
    FaceTracker,
    analyse_clip,
    analyse_file,
    apply_pads,
    box_from_landmarks,
    cache_key,
    smooth_boxes,
    smooth_runs,
    validate_fixed_box,
)

FACE_JPG = Path(__file__).resolve().parents[1] / "examples" / "face.jpg"

# Mesh indices (MediaPipe canonical face mesh): eye corners and mouth corners / lip centres.
EYES = [33, 133, 362, 263]
MOUTH = [61, 291, 13, 14]


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    img = cv2.imread(str(FACE_JPG))
    assert img is not None and img.shape == (512, 512, 3)
    return img


@pytest.fixture(scope="module")
def detector():
    with FaceDetector() as det:
        yield det


def blank(shape=(512, 512, 3), seed=None) -> np.ndarray:
    if seed is None:
        return np.full(shape, 127, np.uint8)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def moving_clip(face: np.ndarray, n: int, step=(3, 2), size=(720, 960)) -> list:
    """The portrait translated by ``step`` px per frame inside a larger grey canvas."""
    h, w = size
    frames = []
    for i in range(n):
        m = np.float32([[1, 0, 150 + step[0] * i], [0, 1, 60 + step[1] * i]])
        canvas = np.full((h, w, 3), 100, np.uint8)
        frames.append(cv2.warpAffine(face, m, (w, h), dst=canvas, borderMode=cv2.BORDER_TRANSPARENT))
    return frames


def inside(points: np.ndarray, box) -> bool:
    x1, y1, x2, y2 = box
    xs, ys = points[:, 0], points[:, 1]
    return bool(np.all((xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)))


# -- box convention (pure) ------------------------------------------------------------------------------

def test_face_oval_outlines_the_mesh(face, detector):
    """FACE_OVAL (MediaPipe's FACEMESH_FACE_OVAL) is the mesh's outer contour: on a frontal face no mesh
    point lies more than a pixel outside the oval polygon, and the oval spans the whole mesh."""
    assert len(FACE_OVAL) == 36 and len(set(FACE_OVAL.tolist())) == 36
    for image in (face, np.ascontiguousarray(face[:, ::-1])):
        landmarks = detector.detect(image).landmarks
        oval = landmarks[FACE_OVAL]
        centre = oval.mean(axis=0)
        polygon = oval[np.argsort(np.arctan2(*(oval - centre).T[::-1]))].reshape(-1, 1, 2)
        outside = [cv2.pointPolygonTest(polygon, (float(x), float(y)), True) for x, y in landmarks]
        assert min(outside) > -1.5
        assert cv2.contourArea(polygon) > 0.98 * cv2.contourArea(cv2.convexHull(landmarks))
        assert np.allclose(oval.min(axis=0), landmarks.min(axis=0), atol=1.0)
        assert np.allclose(oval.max(axis=0), landmarks.max(axis=0), atol=1.0)


def test_box_from_landmarks_spans_the_oval_and_clips():
    pts = np.zeros((468, 2), np.float32)
    pts[:] = (50, 50)
    pts[FACE_OVAL] = (50, 50)
    pts[10] = (50, 0)      # forehead top
    pts[152] = (50, 100)   # chin
    pts[234] = (10, 50)
    pts[454] = (90, 50)
    x1, y1, x2, y2 = box_from_landmarks(pts)
    assert (x1, x2, y2) == (10, 90, 100)
    assert 0 <= y1 <= 10  # top moved down a little from the hairline
    # Clipped to a smaller frame, negatives clipped to 0 even without a frame.
    assert box_from_landmarks(pts, (80, 60, 3))[2:] == (60, 80)
    assert min(box_from_landmarks(pts - 40)) == 0


def test_apply_pads_reference_rule_and_clipping():
    assert apply_pads((100, 100, 200, 220), (0, 10, 0, 0), (480, 640)) == (100, 100, 200, 230)
    assert apply_pads((100, 100, 200, 220), (5, 6, 7, 8), (480, 640)) == (93, 95, 208, 226)
    # Clipped at every edge.
    assert apply_pads((3, 2, 630, 475), (10, 10, 10, 20), (480, 640)) == (0, 0, 640, 480)


def reference_smoothing(boxes: np.ndarray, T: int) -> np.ndarray:
    """The reference loop, written out literally, on an integer array in place."""
    for i in range(len(boxes)):
        if i + T > len(boxes):
            window = boxes[len(boxes) - T:]
        else:
            window = boxes[i: i + T]
        boxes[i] = np.mean(window, axis=0)
    return boxes


def test_smooth_boxes_matches_reference_rule():
    seq = np.array([[0, 0, 10, 10], [1, 2, 11, 13], [3, 3, 13, 14], [4, 6, 14, 16], [9, 9, 19, 19],
                    [10, 10, 20, 20], [13, 11, 23, 24]], dtype=np.int64)
    out = smooth_boxes(seq)
    # Hand-computed: box0 = mean(rows 0..4) = (17/5, 20/5, 67/5, 72/5) truncated.
    assert out[0].tolist() == [3, 4, 13, 14]
    # Tail: rows 3..6 use the last 5 rows, already-smoothed ones included.
    tail = np.array(seq, copy=True)
    reference_smoothing(tail, 5)
    assert out.tolist() == tail.tolist()
    assert seq[0].tolist() == [0, 0, 10, 10]  # input untouched
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 4, 5, 6, 17):
        boxes = rng.integers(0, 500, (n, 4))
        assert smooth_boxes(boxes).tolist() == reference_smoothing(boxes.copy(), 5).tolist(), n


def test_smooth_runs_keeps_gaps_out_of_windows():
    boxes = np.array([[0, 0, 10, 10]] * 3 + [[-1] * 4] + [[100, 100, 110, 110]] * 3)
    has = np.array([1, 1, 1, 0, 1, 1, 1], bool)
    out = smooth_runs(boxes, has)
    assert out[:3].tolist() == [[0, 0, 10, 10]] * 3
    assert out[3].tolist() == [-1] * 4
    assert out[4:].tolist() == [[100, 100, 110, 110]] * 3


def test_fixed_box_validation():
    assert validate_fixed_box((10, 200, 20, 300), (480, 640)) == (20, 10, 300, 200)
    for bad in [(10, 500, 20, 300), (-1, 200, 20, 300), (10, 200, 300, 20), (10, 200, 20, 700)]:
        with pytest.raises(LipSyncError, match="--box"):
            validate_fixed_box(bad, (480, 640))


def test_importing_face_loads_no_model_runtime():
    code = ("import sys, lipsync_rt.face; "
            "assert 'mediapipe' not in sys.modules and 'onnxruntime' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=FACE_JPG.parents[1])


# -- detector ---------------------------------------------------------------------------------------------

def test_detector_finds_the_astronaut(face, detector):
    det = detector.detect(face)
    assert det is not None and det.source == "mesh" and det.score > 0.5
    assert det.landmarks.shape == (468, 2) and det.landmarks.dtype == np.float32
    x1, y1, x2, y2 = det.box
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
    assert inside(det.landmarks[EYES], det.box) and inside(det.landmarks[MOUTH], det.box)
    # Roughly square and about face sized (the face is ~100 px wide in this photo).
    assert 70 < x2 - x1 < 130 and 0.8 < (y2 - y1) / (x2 - x1) < 1.3
    # Eyes in the upper half, mouth in the lower half, like an S3FD crop.
    eye_y = (det.landmarks[EYES, 1].mean() - y1) / (y2 - y1)
    mouth_y = (det.landmarks[MOUTH, 1].mean() - y1) / (y2 - y1)
    assert 0.2 < eye_y < 0.45 and 0.6 < mouth_y < 0.85


def test_detector_wants_bgr_and_rejects_other_input(face, detector):
    # The models were trained on RGB: a frame with red and blue swapped scores lower.
    assert detector.detect(np.ascontiguousarray(face[..., ::-1])).score < detector.detect(face).score
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(face.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(face[..., 0])


def test_no_face_gives_none_and_is_counted(detector):
    assert detector.detect(blank()) is None
    assert detector.detect(blank(seed=0)) is None
    tracker = FaceTracker(detector=detector)
    try:
        assert tracker.update(blank()) is None
        assert tracker.update(blank(seed=1)) is None
        assert tracker.frames_without_face == 2 and tracker.frames_seen == 2
    finally:
        tracker.close()
    assert not detector.closed  # a detector passed in is not the tracker's to close


def test_tracker_applies_pads_clipped_to_the_frame(face, detector):
    raw = detector.detect(face).box
    shifted = np.zeros_like(face)
    shifted[: 512 - raw[1] + 5] = face[raw[1] - 5:]  # face's top 5 px from the frame's top edge
    with FaceTracker(detector=detector, pads=(20, 10, 4, 6), smoothing=0.0) as tracker:
        track = tracker.update(shifted)
    assert track is not None and track.keyframe
    assert track.box == apply_pads(track.raw_box, (20, 10, 4, 6), shifted.shape)
    assert track.box[1] == 0  # 20 px of top padding clipped at the edge
    assert track.box[3] == track.raw_box[3] + 10


# -- tracker ----------------------------------------------------------------------------------------------

def test_tracker_follows_a_moving_face_with_keyframes_at_interval(face, detector):
    frames = moving_clip(face, 12, step=(3, 2))
    with FaceTracker(detector=detector, keyframe_interval=4, smoothing=0.0, pads=(0, 0, 0, 0)) as tracker:
        tracks = [tracker.update(f) for f in frames]
    assert all(t is not None for t in tracks)
    assert [i for i, t in enumerate(tracks) if t.keyframe] == [0, 4, 8]
    assert tracker.keyframes == 3 and tracker.frames_without_face == 0
    centres = np.array([[(x1 + x2) / 2, (y1 + y2) / 2] for x1, y1, x2, y2 in (t.raw_box for t in tracks)])
    drift = centres - centres[0]
    expected = np.arange(12)[:, None] * np.array([3, 2])
    assert np.abs(drift - expected).max() < 5
    for t in tracks:
        assert inside(t.landmarks[MOUTH], t.box)


def test_tracker_causal_smoothing_lags_but_converges(face, detector):
    frames = moving_clip(face, 6, step=(4, 0))
    with FaceTracker(detector=detector, smoothing=0.5, pads=(0, 0, 0, 0)) as tracker:
        tracks = [tracker.update(f) for f in frames]
    assert tracks[0].box == tracks[0].raw_box
    lag = [t.raw_box[0] - t.box[0] for t in tracks[1:]]
    assert all(0 <= d <= 8 for d in lag), lag


def test_tracker_redetects_after_losing_the_face(face, detector):
    frames = [face, face, blank(), face, face]
    with FaceTracker(detector=detector, keyframe_interval=50) as tracker:
        tracks = [tracker.update(f) for f in frames]
    assert [t is not None for t in tracks] == [True, True, False, True, True]
    assert [t.keyframe for t in tracks if t is not None] == [True, False, True, False]
    assert tracker.frames_without_face == 1


# -- clips ------------------------------------------------------------------------------------------------

def test_clip_with_face_and_blank_frames(face, detector):
    frames = [face, face, blank(), face, blank(seed=3), face, face]
    clip = analyse_clip(frames, detector=detector, keyframe_interval=3)
    assert clip.has_face.tolist() == [True, True, False, True, False, True, True]
    assert clip.frames_without_face == 2 and len(clip) == 7
    assert (clip.boxes[~clip.has_face] == -1).all() and np.isnan(clip.landmarks[~clip.has_face]).all()
    assert not np.isnan(clip.landmarks[clip.has_face]).any()
    assert clip.boxes.dtype == np.int32 and clip.landmarks.dtype == np.float32
    assert clip.track(2) is None and clip.track(0).box == tuple(clip.boxes[0])
    assert clip.track(7).box == clip.track(0).box  # loops like the reference
    assert clip.landmarks_of(2) is None and clip.landmarks_of(3).shape == (468, 2)
    # Unsmoothed, each box is the raw box with the default pads (10 px at the bottom).
    plain = analyse_clip(frames, detector=detector, smooth=False)
    for raw, padded in zip(plain.raw_boxes[plain.has_face], plain.boxes[plain.has_face], strict=True):
        assert tuple(padded) == apply_pads(raw, (0, 10, 0, 0), face.shape)
        assert padded[3] == raw[3] + 10


def test_clip_smoothing_is_the_reference_rule(face, detector):
    frames = moving_clip(face, 8, step=(5, 3))
    raw = analyse_clip(frames, smooth=False, detector=detector)
    smoothed = analyse_clip(frames, smooth=True, detector=detector)
    assert smoothed.boxes.tolist() == smooth_boxes(raw.boxes).tolist()
    assert raw.boxes.tolist() != smoothed.boxes.tolist()


def test_clip_without_any_face_raises(detector):
    with pytest.raises(NoFaceError, match="no face found in noise.mp4"):
        analyse_clip([blank(), blank(seed=5)], detector=detector, name="noise.mp4")


def test_static_analyses_only_the_first_frame(face, detector):
    def frames():
        yield face
        raise AssertionError("static analysis must not read frame 1")

    clip = analyse_clip(frames(), static=True, detector=detector)
    assert len(clip) == 1 and clip.static and clip.has_face.all()


def test_fixed_box_skips_detection_and_keeps_landmarks(face, detector):
    det = detector.detect(face)
    x1, y1, x2, y2 = det.box
    clip = analyse_clip([face, face], box=(y1, y2, x1, x2), detector=detector)
    assert clip.fixed_box and not clip.smoothed
    assert clip.boxes.tolist() == [[x1, y1, x2, y2]] * 2  # no pads, no smoothing, like --box
    assert clip.has_face.all() and not np.isnan(clip.landmarks).any()
    with pytest.raises(LipSyncError, match="--box"):
        analyse_clip([face], box=(400, 600, 0, 100), detector=detector)
    # All -1 means "no box", as on the reference command line.
    assert not analyse_clip([face], box=(-1, -1, -1, -1), detector=detector).fixed_box


# -- persistence and cache ----------------------------------------------------------------------------------

def test_clip_save_load_round_trip(face, detector, tmp_path):
    clip = analyse_clip([face, blank(), face], detector=detector, pads=(1, 2, 3, 4))
    clip.save(tmp_path / "faces.npz")
    back = ClipFaces.load(tmp_path / "faces.npz")
    for name in ("boxes", "raw_boxes", "has_face", "keyframes"):
        assert np.array_equal(getattr(back, name), getattr(clip, name)), name
    assert np.array_equal(back.landmarks, clip.landmarks, equal_nan=True)
    assert np.array_equal(back.scores, clip.scores, equal_nan=True)
    assert (back.frame_size, back.pads, back.smoothed) == ((512, 512), (1, 2, 3, 4), True)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(LipSyncError):
        ClipFaces.load(tmp_path / "junk.npz")


def test_analyse_file_hits_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LIPSYNC_RT_CACHE", str(tmp_path / "cache"))
    first = analyse_file(FACE_JPG)
    entries = list((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 1

    def no_detection(*args, **kwargs):
        raise AssertionError("detector built on a cache hit")

    monkeypatch.setattr(FaceDetector, "__init__", no_detection)
    again = analyse_file(FACE_JPG)
    assert np.array_equal(again.boxes, first.boxes)
    assert np.array_equal(again.landmarks, first.landmarks, equal_nan=True)
    # Other parameters are another entry (and would need the detector).
    with pytest.raises(AssertionError, match="cache hit"):
        analyse_file(FACE_JPG, pads=(0, 20, 0, 0))


def test_cache_key_depends_on_content_and_parameters():
    params = {"pads": [0, 10, 0, 0], "smooth": True}
    assert cache_key("a" * 64, params) == cache_key("a" * 64, dict(params))
    assert cache_key("a" * 64, params) != cache_key("b" * 64, params)
    assert cache_key("a" * 64, params) != cache_key("a" * 64, {**params, "smooth": False})


def test_renamed_file_still_hits_and_damaged_entry_is_recomputed(tmp_path, face):
    src = tmp_path / "avatar.png"
    cv2.imwrite(str(src), face)
    cache = tmp_path / "c"
    first = analyse_file(src, cache_dir=cache)
    entry = next(cache.glob("*.npz"))
    copy = tmp_path / "renamed.png"
    copy.write_bytes(src.read_bytes())
    assert np.array_equal(analyse_file(copy, cache_dir=cache).boxes, first.boxes)
    entry.write_bytes(b"garbage")
    assert np.array_equal(analyse_file(src, cache_dir=cache).boxes, first.boxes)
    assert ClipFaces.load(entry).has_face.all()  # rewritten


def test_analyse_file_decodes_a_video(tmp_path, face):
    from lipsync_rt.errors import MediaError

    frames = moving_clip(face, 6, step=(2, 1), size=(480, 640))
    path = tmp_path / "avatar.mp4"
    from lipsync_rt.media import write_mp4

    write_mp4(path, frames, 25)
    clip = analyse_file(path, cache_dir=tmp_path / "c", keyframe_interval=3)
    assert len(clip) == 6 and clip.has_face.all() and clip.frame_size == (480, 640)
    assert clip.keyframes.tolist() == [True, False, False, True, False, False]
    with pytest.raises(MediaError, match="not found"):
        analyse_file(tmp_path / "missing.mp4", cache_dir=tmp_path / "c")

"""The bundled ONNX face models and the MediaPipe graph maths around them.

- pure maths: SSD anchors, box/keypoint decoding, the score sigmoid, weighted NMS, letterbox, the mesh
  region of interest and the landmark back-projection;
- agreement: on the example photo, a mirrored and a rotated copy, detections and landmarks match what
  mediapipe 0.10.21 itself returned (``tests/fixtures/face_reference.npz``, written by
  ``tools/compare_face_backends.py --write-reference``); a grey frame has no face;
- damaged model files give one-line LipSyncErrors.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync_rt.errors import LipSyncError
from lipsync_rt.face import FaceDetector, VideoLandmarker
from lipsync_rt.face import model_files
from lipsync_rt.face.blazeface import (
    FULL_RANGE,
    SHORT_RANGE,
    BlazeFace,
    decode,
    iou,
    letterbox,
    ssd_anchors,
    weighted_nms,
)
from lipsync_rt.face.mesh import (
    MESH_INPUT,
    FaceMesh,
    Roi,
    input_to_frame,
    roi_from_detection,
    roi_from_landmarks,
    roi_to_input,
)
from lipsync_rt.face.model_files import FaceModel, FaceModelError

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "face_reference.npz"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return cv2.imread(str(ROOT / "examples" / "face.jpg"))


@pytest.fixture(scope="module")
def short() -> BlazeFace:
    return BlazeFace(SHORT_RANGE, FaceModel("short"))


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    return FaceMesh(FaceModel("mesh"))


# -- anchors, decoding, NMS ---------------------------------------------------------------------------------

def test_ssd_anchors_layout():
    short = ssd_anchors(SHORT_RANGE)
    assert short.shape == (896, 2)
    # 16x16 cells with 2 anchors each, row by row, then 8x8 cells with 6 anchors each.
    assert np.allclose(short[0], short[1]) and np.allclose(short[0], (0.5 / 16, 0.5 / 16))
    assert np.allclose(short[2], (1.5 / 16, 0.5 / 16))
    assert np.allclose(short[32], (0.5 / 16, 1.5 / 16))
    assert np.allclose(short[512:518], (0.5 / 8, 0.5 / 8)) and np.allclose(short[518], (1.5 / 8, 0.5 / 8))
    assert np.allclose(short[-1], (7.5 / 8, 7.5 / 8))
    full = ssd_anchors(FULL_RANGE)
    assert full.shape == (2304, 2)
    assert np.allclose(full[1], (1.5 / 48, 0.5 / 48)) and np.allclose(full[48], (0.5 / 48, 1.5 / 48))


def test_decode_offsets_are_input_pixels_from_the_anchor_centre():
    anchors = np.array([[0.25, 0.5], [0.75, 0.75]], np.float32)
    raw = np.zeros((2, 16), np.float32)
    raw[0, :4] = (12.8, -6.4, 25.6, 38.4)           # centre +0.1, -0.05; size 0.2 x 0.3 (input 128)
    raw[0, 4:] = np.arange(12) * 1.28                 # keypoint k: (+0.01*2k, +0.01*(2k+1))
    logits = np.array([2.0, -3.0], np.float32)        # sigmoid 0.881, 0.047
    boxes, kps, scores = decode(raw, logits, anchors, 128, min_score=0.5)
    assert len(scores) == 1 and scores[0] == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert np.allclose(boxes[0], (0.35 - 0.1, 0.45 - 0.15, 0.35 + 0.1, 0.45 + 0.15), atol=1e-6)
    assert np.allclose(kps[0, 0], (0.25, 0.51)) and np.allclose(kps[0, 5], (0.25 + 0.10, 0.5 + 0.11))


def test_score_logits_are_clipped_before_the_sigmoid():
    anchors = np.zeros((3, 2), np.float32)
    with np.errstate(over="raise"):
        _, _, scores = decode(np.zeros((3, 16)), np.array([1e6, -1e6, 0.0]), anchors, 128, min_score=0.0)
    assert scores[0] == pytest.approx(1.0) and scores[1] < 1e-40 and scores[2] == pytest.approx(0.5)


def test_iou():
    a = np.array([0, 0, 2, 2], np.float32)
    others = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [1, 1, 1, 1]], np.float32)
    assert np.allclose(iou(a, others), [1 / 7, 1.0, 0.0, 0.0])


def test_weighted_nms_averages_overlapping_detections_by_score():
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [3.0, 3.0, 4.0, 4.0], [0.2, 0.2, 1.2, 1.2]])
    kps = np.repeat(boxes[:, None, :2], 6, axis=1)
    scores = np.array([0.9, 0.6, 0.8, 0.3])
    out = weighted_nms(boxes, kps, scores, threshold=0.3)
    assert [round(s, 3) for _, _, s in out] == [0.9, 0.8]  # best first; the merged score is the best one
    members = [0, 1, 3]  # IoU with box 0: 0.82 and 0.47 > 0.3
    w = scores[members] / scores[members].sum()
    assert np.allclose(out[0][0], (boxes[members] * w[:, None]).sum(axis=0))
    assert np.allclose(out[0][1], (kps[members] * w[:, None, None]).sum(axis=0))
    assert np.allclose(out[1][0], boxes[2])
    assert weighted_nms(boxes[:0], kps[:0], scores[:0]) == []


def test_letterbox_maps_the_region_corners_to_the_input_corners():
    m = letterbox((640, 360, 1280), 128)
    corners = np.array([[0, -280, 1], [1280, 1000, 1]], np.float64)
    assert np.allclose(corners @ m.T, [[0, 0], [128, 128]])


def test_detection_input_is_rgb_in_minus_one_to_one(short):
    blue = np.zeros((64, 64, 3), np.uint8)
    blue[..., 0] = 255  # BGR blue
    x = short.input_tensor(blue, (32, 32, 64))
    assert x.shape == (1, 128, 128, 3) and x.dtype == np.float32
    assert np.allclose(x[0, 64, 64], (-1, -1, 1))
    # Outside the frame (the letterbox border) is black: -1.
    assert np.allclose(short.input_tensor(blue, (32, 32, 128))[0, 2, 2], (-1, -1, -1))


# -- the mesh region of interest ----------------------------------------------------------------------------

def test_roi_from_detection_uses_the_eye_line_and_the_longer_side():
    box = (100.0, 50.0, 180.0, 150.0)  # 80 x 100
    kp = np.zeros((6, 2))
    kp[0], kp[1] = (120, 90), (160, 90)
    roi = roi_from_detection(box, kp)
    assert (roi.cx, roi.cy, roi.side, roi.angle) == (140.0, 100.0, 150.0, 0.0)
    kp[1] = (160, 130)  # left eye (image right) lower: the face leans, positive angle
    assert roi_from_detection(box, kp).angle == pytest.approx(math.pi / 4)


def test_roi_from_landmarks_uses_points_33_and_263():
    pts = np.random.default_rng(0).uniform(100, 200, (468, 2))
    pts[33], pts[263] = (120, 150), (180, 90)
    roi = roi_from_landmarks(pts)
    (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
    assert roi.cx == pytest.approx((x1 + x2) / 2) and roi.side == pytest.approx(1.5 * max(x2 - x1, y2 - y1))
    assert roi.angle == pytest.approx(-math.pi / 4)


def test_crop_and_back_projection_are_inverse():
    roi = Roi(300.0, 200.0, 150.0, 0.4)
    m = roi_to_input(roi)
    # The ROI centre lands in the middle of the input; its rotated x axis along the input's x axis.
    assert np.allclose(m @ (300, 200, 1), (96, 96))
    edge = (300 + 75 * math.cos(0.4), 200 + 75 * math.sin(0.4), 1)
    assert np.allclose(m @ edge, (192, 96))
    pts = np.random.default_rng(1).uniform(0, MESH_INPUT, (50, 2))
    frame = input_to_frame(pts, roi)
    back = np.c_[frame, np.ones(len(frame))] @ m.T
    assert np.allclose(back, pts, atol=1e-9)


# -- agreement with mediapipe 0.10.21 ------------------------------------------------------------------------

def reference_images(photo: np.ndarray) -> dict:
    """Exactly as tools/compare_face_backends.py built them for the reference file."""
    rot = cv2.getRotationMatrix2D((photo.shape[1] / 2, photo.shape[0] / 2), 20, 1.0)
    return {"photo": photo, "mirrored": np.ascontiguousarray(photo[:, ::-1]),
            "rotated": cv2.warpAffine(photo, rot, photo.shape[1::-1], flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=(110, 110, 110))}


@pytest.mark.parametrize("name", ["photo", "mirrored", "rotated"])
def test_agrees_with_mediapipe(name, photo, short, mesh):
    ref = np.load(REFERENCE)
    img = reference_images(photo)[name]
    faces = short.detect(img, 0.5)
    assert len(faces) == 1
    face = faces[0]
    # Detection: same score, box and keypoints (tolerances cover JPEG decoders and OpenCV builds).
    assert face.score == pytest.approx(float(ref[f"{name}_score"]), abs=2e-3)
    assert np.abs(np.array(face.box) - ref[f"{name}_box"]).max() < 0.5
    assert np.abs(face.keypoints - ref[f"{name}_keypoints"]).max() < 0.5
    # Mesh on the detection's region, as MediaPipe's static FaceMesh: mean error well under a pixel.
    landmarks = mesh.landmarks(img, roi_from_detection(face.box, face.keypoints))
    assert landmarks is not None and landmarks.shape == (468, 2) and landmarks.dtype == np.float32
    err = np.linalg.norm(landmarks - ref[f"{name}_landmarks"], axis=1)
    assert err.mean() < 0.1 and err.max() < 0.5, (err.mean(), err.max())


def test_mirrored_photo_mirrors_the_face(photo):
    with FaceDetector() as det:
        a, b = det.detect(photo), det.detect(np.ascontiguousarray(photo[:, ::-1]))
    x1, y1, x2, y2 = a.box
    assert abs(b.box[0] - (512 - x2)) <= 3 and abs(b.box[2] - (512 - x1)) <= 3 and abs(b.box[1] - y1) <= 3


def test_no_face_and_presence_score(short, mesh):
    grey = np.full((480, 640, 3), 127, np.uint8)
    assert short.detect(grey, 0.5) == []
    _, presence = mesh.run(grey, Roi(320, 240, 200, 0.0))
    assert presence < 0.5 and mesh.landmarks(grey, Roi(320, 240, 200, 0.0)) is None


def test_full_range_finds_a_small_face(photo):
    # A ~90 px face in a 720p frame: 9 px in the short-range model's 128x128 input, too small for it.
    frame = np.full((720, 1280, 3), 110, np.uint8)
    frame[130:590, 410:870] = cv2.resize(photo, (460, 460), interpolation=cv2.INTER_AREA)
    with FaceDetector(model="short") as det:
        assert det.detect(frame) is None
    with FaceDetector() as det:
        found = det.detect(frame)
    assert found is not None and found.source == "mesh" and found.score > 0.8
    assert 550 < found.box[0] < found.box[2] < 690


# -- tracking, threads, sessions ------------------------------------------------------------------------------

def test_video_landmarker_tracks_and_recovers(photo):
    frames = []
    for i in range(6):
        canvas = np.full((600, 800, 3), 100, np.uint8)
        canvas[40 + 3 * i: 552 + 3 * i, 100 + 4 * i: 612 + 4 * i] = photo
        frames.append(canvas)
    with VideoLandmarker() as video, FaceDetector() as det:
        tracked = [video.process(f) for f in frames]
        assert all(t is not None for t in tracked)
        for f, t in zip(frames, tracked):
            # Tracked landmarks stay within a few pixels of a fresh detection's.
            assert np.linalg.norm(t - det.detect(f).landmarks, axis=1).mean() < 3
        assert video.process(np.full((600, 800, 3), 100, np.uint8)) is None
        assert video.process(frames[0]) is not None  # re-detected after the miss


def test_tracker_follows_a_small_face_with_the_mesh_alone(photo, monkeypatch):
    """Key frames seed the video mesh, so a face too small for whole-frame short-range detection is
    still tracked by the mesh alone between key frames (no re-detection around the box)."""
    from lipsync_rt.face import FaceTracker

    small = cv2.resize(photo, (460, 460), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(8):
        frame = np.full((720, 1280, 3), 110, np.uint8)
        frame[130 + 2 * i: 590 + 2 * i, 410 + 3 * i: 870 + 3 * i] = small
        frames.append(frame)
    with FaceDetector() as det, FaceTracker(detector=det, keyframe_interval=5, smoothing=0.0) as tracker:
        monkeypatch.setattr(det, "landmarks_in", lambda *a: pytest.fail("fell back to re-detection"))
        tracks = [tracker.update(f) for f in frames]
    assert all(t is not None and t.landmarks is not None for t in tracks)
    assert [i for i, t in enumerate(tracks) if t.keyframe] == [0, 5]
    x0 = [t.raw_box[0] for t in tracks]
    assert all(abs(x0[i] - x0[0] - 3 * i) <= 3 for i in range(8)), x0


def test_detector_is_thread_safe(photo):
    with FaceDetector() as det:
        expected = det.detect(photo).box
        results, errors = [], []

        def work():
            try:
                for _ in range(5):
                    results.append(det.detect(photo).box)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and results == [expected] * 15
    assert det.closed
    with pytest.raises(RuntimeError, match="closed"):
        det.detect(photo)


def test_sessions_use_one_thread():
    model = FaceModel("short")
    assert model._session.get_session_options().intra_op_num_threads == 1
    assert model._session.get_providers() == ["CPUExecutionProvider"]


# -- damaged model files ----------------------------------------------------------------------------------------

def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 400, text
    return text


def test_truncated_model_is_a_one_line_error(tmp_path):
    bad = tmp_path / "face_mesh.onnx"
    bad.write_bytes(model_files.model_path("mesh").read_bytes()[:50_000])
    with pytest.raises(LipSyncError) as info:
        FaceModel("mesh", bad)
    assert "damaged" in one_line(info.value) and "reinstall" in str(info.value)


def test_missing_garbage_and_wrong_models(tmp_path):
    with pytest.raises(FaceModelError, match="missing") as info:
        FaceModel("mesh", tmp_path / "nope.onnx")
    one_line(info.value)
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01not a model" * 100)
    with pytest.raises(FaceModelError, match="damaged") as info:
        FaceModel("short", tmp_path / "garbage.onnx")
    one_line(info.value)
    with pytest.raises(FaceModelError, match="expected") as info:  # the mesh file where BlazeFace belongs
        FaceModel("short", model_files.model_path("mesh"))
    one_line(info.value)


def test_detector_reports_a_damaged_install(tmp_path, monkeypatch):
    for name in model_files.MODELS:
        src = model_files.model_path(name)
        (tmp_path / src.name).write_bytes(src.read_bytes()[:1000])
    monkeypatch.setattr(model_files, "ASSETS", tmp_path)
    with pytest.raises(LipSyncError, match="blazeface_short.onnx.*damaged") as info:
        FaceDetector()
    one_line(info.value)

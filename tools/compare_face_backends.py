#!/usr/bin/env python3
"""Measure the ONNX face path against the MediaPipe one it replaced: speed and agreement.

The MediaPipe path is the ``lipsync_rt/face/detector.py`` and ``tracker.py`` of an older revision
(``--old-rev``, default 410245a, the last one on mediapipe), loaded from git into this process. So
this needs an environment with mediapipe 0.10.21 and the project's other dependencies, e.g. a venv
made as ``convert_face_models.py`` describes plus ``pip install -e .`` of this repo, or any venv with
mediapipe 0.10.21 and this checkout on PYTHONPATH::

    PYTHONPATH=. <venv-with-mediapipe>/bin/python tools/compare_face_backends.py --json out.json

With ``--tasks DIR`` it measures the other candidate instead, current mediapipe's Tasks API, on the
TFLite files of a mediapipe 0.10.21 package directory (run it in a venv with current mediapipe and
onnxruntime).

Test images: the example portrait and matplotlib's Grace Hopper photo, each as is, mirrored, rotated
+-20 degrees, and scaled into a 1280x720 frame small (full-range detection) and large; plus a
grey and a noise frame without a face. Agreement per image: box IoU of the S3FD-like boxes, mean
landmark distance in pixels and as a fraction of the box width, score difference. Speeds: median
milliseconds over repeated calls, one thread (``OMP_NUM_THREADS=1`` is set for both backends).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lipsync_rt.face import FaceDetector, FaceTracker, box_iou  # noqa: E402
from lipsync_rt.face.blazeface import FULL_RANGE, SHORT_RANGE, BlazeFace  # noqa: E402
from lipsync_rt.face.mesh import FaceMesh, roi_from_detection  # noqa: E402
from lipsync_rt.face.model_files import FaceModel  # noqa: E402


def load_old(rev: str):
    """The mediapipe-based detector and tracker modules of ``rev``, as lipsync_rt.face._old_*."""
    mods = {}
    for name in ("detector", "tracker"):
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:lipsync_rt/face/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        src = src.replace("from .detector import", "from ._old_detector import")
        full = f"lipsync_rt.face._old_{name}"
        spec = importlib.util.spec_from_loader(full, loader=None)
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = "lipsync_rt.face"
        sys.modules[full] = mod
        exec(compile(src, f"{rev}:{name}.py", "exec"), mod.__dict__)
        mods[name] = mod
    return mods["detector"], mods["tracker"]


def place(img: np.ndarray, scale: float, size=(720, 1280), angle: float = 0.0, flip: bool = False) -> np.ndarray:
    """``img`` scaled, rotated about its centre and centred on a grey canvas of ``size`` (or its own)."""
    if flip:
        img = img[:, ::-1].copy()
    h, w = img.shape[:2]
    out_h, out_w = size if size else (h, w)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += (out_w / 2 - w / 2, out_h / 2 - h / 2)
    return cv2.warpAffine(img, m, (out_w, out_h), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(110, 110, 110))


def test_images():
    photos = {"astronaut": cv2.imread(str(REPO / "examples" / "face.jpg"))}
    try:
        import matplotlib

        hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if hopper.is_file():
            photos["hopper"] = cv2.imread(str(hopper))
    except ImportError:
        pass
    images = {}
    for name, img in photos.items():
        images[f"{name}"] = img
        images[f"{name}-mirrored"] = place(img, 1.0, None, flip=True)
        images[f"{name}-rot+20"] = place(img, 1.0, None, angle=20)
        images[f"{name}-rot-20"] = place(img, 1.0, None, angle=-20)
        images[f"{name}-small-720p"] = place(img, 0.45)
        images[f"{name}-large-720p"] = place(img, 1.6)
    images["grey"] = np.full((480, 640, 3), 127, np.uint8)
    images["noise"] = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return images


def moving_clip(img: np.ndarray, n: int = 40, size=(720, 1280), start=(300, 100)) -> list:
    """``img`` moving 3 px right and 2 px down per frame on a grey canvas of ``size`` (H, W)."""
    frames = []
    for i in range(n):
        m = np.float32([[1, 0, start[0] + 3 * i], [0, 1, start[1] + 2 * i]])
        canvas = np.full((*size, 3), 100, np.uint8)
        frames.append(cv2.warpAffine(img, m, size[::-1], dst=canvas, borderMode=cv2.BORDER_TRANSPARENT))
    return frames


def timing(fn, repeat: int) -> dict:
    """Wall-clock ms per call (median, and 10th percentile: the uncontended time on a shared machine)
    and mean process CPU ms per call (CPU above wall means extra threads)."""
    fn()
    times = []
    cpu0 = time.process_time()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    cpu = (time.process_time() - cpu0) / repeat
    return {"ms": round(float(np.median(times) * 1e3), 2), "p10_ms": round(float(np.percentile(times, 10) * 1e3), 2),
            "cpu_ms": round(cpu * 1e3, 2)}


def mediapipe_face_mesh(old_mod, img: np.ndarray):
    """MediaPipe's own FaceMesh (static mode) on the whole frame: the graph the new code reimplements."""
    _, face_mesh = old_mod._solutions()
    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        result = mesh.process(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    if not result.multi_face_landmarks:
        return None
    h, w = img.shape[:2]
    return np.array([(p.x * w, p.y * h) for p in result.multi_face_landmarks[0].landmark[:468]], np.float32)


def _mean_px(a, b) -> float:
    return round(float(np.linalg.norm(np.asarray(a) - np.asarray(b), axis=1).mean()), 3)


def agreement(old_mod, old_det, new_det, images):
    """Per image: old (MediaPipe) vs new (ONNX) detect(), and both vs MediaPipe's whole-frame FaceMesh."""
    rows = []
    for name, img in images.items():
        a, b = old_det.detect(img), new_det.detect(img)
        row = {"image": name, "old": None if a is None else a.source, "new": None if b is None else b.source}
        if a is not None and b is not None:
            row["box_iou"] = round(box_iou(a.box, b.box), 4)
            row["score_diff"] = round(abs(a.score - b.score), 5)
            if a.landmarks is not None and b.landmarks is not None:
                err = _mean_px(a.landmarks, b.landmarks)
                row["landmark_px"] = err
                row["landmark_frac_box"] = round(err / max(1, a.box[2] - a.box[0]), 5)
        ref = mediapipe_face_mesh(old_mod, img)
        if ref is not None:
            if a is not None and a.landmarks is not None:
                row["old_vs_mp_facemesh_px"] = _mean_px(a.landmarks, ref)
            if b is not None and b.landmarks is not None:
                row["new_vs_mp_facemesh_px"] = _mean_px(b.landmarks, ref)
        rows.append(row)
    return rows


def detection_scan(old_mod) -> dict:
    """MediaPipe's FaceDetection (both models) against our BlazeFace on both photos at 13 scales in a
    720p frame and 3 angles: same number of faces, and the largest box/keypoint difference in pixels."""
    import matplotlib

    face_detection, _ = old_mod._solutions()
    photos = [cv2.imread(str(REPO / "examples" / "face.jpg")),
              cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))]
    cases = mismatches = 0
    worst = 0.0
    for selection, config, name in ((0, SHORT_RANGE, "short"), (1, FULL_RANGE, "full")):
        ours = BlazeFace(config, FaceModel(name))
        with face_detection.FaceDetection(model_selection=selection, min_detection_confidence=0.5) as fd:
            for photo in photos:
                for scale in (0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.6):
                    for angle in (0, 15, -25):
                        img = place(photo, scale, angle=angle)
                        h, w = img.shape[:2]
                        theirs = fd.process(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).detections or []
                        mine = ours.detect(img, 0.5)
                        cases += 1
                        if len(theirs) != len(mine):
                            mismatches += 1
                            continue
                        for d, f in zip(theirs, mine):
                            rb = d.location_data.relative_bounding_box
                            box = np.array([rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w,
                                            (rb.ymin + rb.height) * h])
                            kps = np.array([(k.x * w, k.y * h) for k in d.location_data.relative_keypoints])
                            worst = max(worst, float(np.abs(box - np.array(f.box)).max()),
                                        float(np.abs(kps - f.keypoints).max()))
    return {"cases": cases, "face_count_mismatches": mismatches, "max_px": round(worst, 5)}


def tracker_agreement(old_tracker_mod, old_det, new_det, frames):
    """Per-frame raw boxes and landmarks of both trackers on a moving clip (interval 10)."""
    old = old_tracker_mod.FaceTracker(detector=old_det, smoothing=0.0)
    new = FaceTracker(detector=new_det, smoothing=0.0)
    ious, errs = [], []
    t_old, t_new = [], []
    try:
        for f in frames:
            t = time.perf_counter()
            a = old.update(f)
            t_old.append(time.perf_counter() - t)
            t = time.perf_counter()
            b = new.update(f)
            t_new.append(time.perf_counter() - t)
            if a is not None and b is not None:
                ious.append(box_iou(a.raw_box, b.raw_box))
                if a.landmarks is not None and b.landmarks is not None:
                    errs.append(float(np.linalg.norm(a.landmarks - b.landmarks, axis=1).mean()))
    finally:
        old.close()
        new.close()
    return {"frames": len(frames), "mean_box_iou": round(float(np.mean(ious)), 4),
            "min_box_iou": round(float(np.min(ious)), 4), "mean_landmark_px": round(float(np.mean(errs)), 3),
            "old_ms_per_frame": round(float(np.mean(t_old[1:]) * 1e3), 2),
            "new_ms_per_frame": round(float(np.mean(t_new[1:]) * 1e3), 2)}


def speeds(old_mod, old_det, new_det, images, repeat: int):
    portrait, small = images["astronaut"], images["astronaut-small-720p"]
    rgb = cv2.cvtColor(portrait, cv2.COLOR_BGR2RGB)
    fd_short, fd_mesh = old_det._fd_short, old_det._mesh
    face_detection, _ = old_mod._solutions()
    fd_full = face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
    crop = np.ascontiguousarray(rgb[30:230, 125:325])  # the mesh's 2x crop around the face
    short = BlazeFace(SHORT_RANGE, FaceModel("short"))
    full = BlazeFace(FULL_RANGE, FaceModel("full"))
    mesh = FaceMesh(FaceModel("mesh"))
    face = short.detect(portrait, 0.5)[0]
    roi = roi_from_detection(face.box, face.keypoints)
    out = {
        "short_detection_512": (lambda: fd_short.process(rgb), lambda: short.detect(portrait, 0.5)),
        "full_detection_512": (lambda: fd_full.process(rgb), lambda: full.detect(portrait, 0.5)),
        "mesh": (lambda: fd_mesh.process(crop), lambda: mesh.run(portrait, roi)),
        "detect()_512": (lambda: old_det.detect(portrait), lambda: new_det.detect(portrait)),
        "detect()_720p_small_face": (lambda: old_det.detect(small), lambda: new_det.detect(small)),
    }
    result = {k: {"mediapipe": timing(a, repeat), "onnx": timing(b, repeat)} for k, (a, b) in out.items()}
    fd_full.close()
    return result


def reference_images(photo: np.ndarray) -> dict:
    """The images of ``tests/fixtures/face_reference.npz``, rebuilt the same way by tests/test_face_models.py."""
    rot = cv2.getRotationMatrix2D((photo.shape[1] / 2, photo.shape[0] / 2), 20, 1.0)
    return {"photo": photo, "mirrored": np.ascontiguousarray(photo[:, ::-1]),
            "rotated": cv2.warpAffine(photo, rot, photo.shape[1::-1], flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=(110, 110, 110))}


def write_reference(old_mod, path: Path) -> None:
    """MediaPipe 0.10.21's own outputs on the example photo and two copies, for the regression tests:
    short-range detection (score, box, 6 keypoints) and the whole-frame static FaceMesh landmarks."""
    face_detection, _ = old_mod._solutions()
    arrays = {}
    with face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as fd:
        for name, img in reference_images(cv2.imread(str(REPO / "examples" / "face.jpg"))).items():
            h, w = img.shape[:2]
            det = fd.process(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).detections[0]
            rb = det.location_data.relative_bounding_box
            arrays[f"{name}_score"] = np.float32(det.score[0])
            arrays[f"{name}_box"] = np.array([rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w,
                                              (rb.ymin + rb.height) * h], np.float32)
            arrays[f"{name}_keypoints"] = np.array([(k.x * w, k.y * h) for k in
                                                    det.location_data.relative_keypoints], np.float32)
            arrays[f"{name}_landmarks"] = mediapipe_face_mesh(old_mod, img)
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}")


def video_mesh_agreement(old_mod, frames) -> dict:
    """MediaPipe's video-mode FaceMesh against our VideoLandmarker on the same clip."""
    from lipsync_rt.face import VideoLandmarker

    errs = []
    with old_mod.VideoLandmarker() as old, VideoLandmarker() as new:
        for f in frames:
            a, b = old.process(f), new.process(f)
            if a is not None and b is not None:
                errs.append(float(np.linalg.norm(a - b, axis=1).mean()))
    if not errs:
        return {"frames_both": 0}
    return {"frames": len(frames), "frames_both": len(errs), "mean_landmark_px": round(float(np.mean(errs)), 4),
            "max_landmark_px": round(float(np.max(errs)), 4)}


def tasks_api(mp_0_10_21: Path, repeat: int) -> dict:
    """Current mediapipe's Tasks API on the same TFLite files (the other way to drop mediapipe 0.10.21).

    Runs in an environment with a current mediapipe (>= 0.10.30: Tasks only, no bundled models);
    ``mp_0_10_21`` is an unpacked mediapipe 0.10.21 package to take the .tflite files from. Reports
    speed next to the ONNX path in the same process and agreement with tests/fixtures/face_reference.npz
    (mediapipe 0.10.21's own outputs).
    """
    import tempfile
    import zipfile

    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    det_file = mp_0_10_21 / "modules/face_detection/face_detection_short_range.tflite"
    mesh_file = mp_0_10_21 / "modules/face_landmark/face_landmark.tflite"
    tmp = Path(tempfile.mkdtemp())
    bundle = tmp / "face_landmarker.task"
    with zipfile.ZipFile(bundle, "w") as z:  # the Tasks landmarker wants both models in one bundle
        z.write(det_file, "face_detector.tflite")
        z.write(mesh_file, "face_landmarks_detector.tflite")
    detector = vision.FaceDetector.create_from_options(vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_path=str(det_file)), min_detection_confidence=0.5))
    landmarker = vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(bundle)), num_faces=1))
    ref = np.load(REPO / "tests" / "fixtures" / "face_reference.npz")
    rows = []
    for name, img in reference_images(cv2.imread(str(REPO / "examples" / "face.jpg"))).items():
        h, w = img.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        d = detector.detect(image).detections[0]
        bb = d.bounding_box
        box = np.array([bb.origin_x, bb.origin_y, bb.origin_x + bb.width, bb.origin_y + bb.height], np.float32)
        kps = np.array([(k.x * w, k.y * h) for k in d.keypoints], np.float32)
        lms = landmarker.detect(image).face_landmarks
        row = {"image": name, "score_diff": round(abs(d.categories[0].score - float(ref[f"{name}_score"])), 5),
               "box_max_px": round(float(np.abs(box - ref[f"{name}_box"]).max()), 3),
               "keypoints_max_px": round(float(np.abs(kps - ref[f"{name}_keypoints"]).max()), 3),
               "landmark_count": len(lms[0]) if lms else 0}
        if lms:
            pts = np.array([(p.x * w, p.y * h) for p in lms[0][:468]], np.float32)
            row["landmark_mean_px"] = _mean_px(pts, ref[f"{name}_landmarks"])
        rows.append(row)
    photo = cv2.imread(str(REPO / "examples" / "face.jpg"))
    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=cv2.cvtColor(photo, cv2.COLOR_BGR2RGB))
    short = BlazeFace(SHORT_RANGE, FaceModel("short"))
    with FaceDetector() as ours:
        speed = {"short_detection_512": {"tasks": timing(lambda: detector.detect(image), repeat),
                                         "onnx": timing(lambda: short.detect(photo, 0.5), repeat)},
                 "detection+mesh_512": {"tasks": timing(lambda: landmarker.detect(image), repeat),
                                        "onnx": timing(lambda: ours.detect(photo), repeat)}}
    detector.close()
    landmarker.close()
    return {"mediapipe": mp.__version__, "numpy": np.__version__, "agreement": rows, "speed": speed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-rev", default="410245a")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--write-reference", metavar="NPZ", help="only write MediaPipe's reference outputs "
                    "for the tests (tests/fixtures/face_reference.npz)")
    ap.add_argument("--tasks", metavar="MEDIAPIPE_0_10_21_DIR", help="measure current mediapipe's Tasks "
                    "API instead (run in a venv with mediapipe >= 0.10.30), on the .tflite files of this "
                    "mediapipe 0.10.21 package directory")
    args = ap.parse_args()
    if args.tasks:
        result = tasks_api(Path(args.tasks), args.repeat)
        text = json.dumps(result, indent=1)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")
        return 0
    old_mod, old_tracker = load_old(args.old_rev)
    if args.write_reference:
        write_reference(old_mod, Path(args.write_reference))
        return 0
    images = test_images()
    with old_mod.FaceDetector() as old_det, FaceDetector() as new_det:
        result = {
            "detection_scan": detection_scan(old_mod),
            "agreement": agreement(old_mod, old_det, new_det, images),
            "tracker": tracker_agreement(old_tracker, old_det, new_det, moving_clip(images["astronaut"])),
            # A larger face: whole-frame short-range detection, where video mode starts, must see it.
            "video_mesh": video_mesh_agreement(old_mod, moving_clip(images["astronaut"], size=(600, 800),
                                                                    start=(100, 20))),
            "speed": speeds(old_mod, old_det, new_det, images, args.repeat),
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

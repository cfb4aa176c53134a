"""Tests for lipsync_rt.blend: the reference hard paste and the feathered lower-face blend."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync_rt.blend import (
    LOWER_FACE_OUTLINE,
    Blender,
    fallback_mask,
    lower_face_mask,
    paste_hard,
    to_uint8_face,
)

FACE_JPG = Path(__file__).resolve().parents[1] / "examples" / "face.jpg"

# Face mesh points that must stay original (eyes, brows, nose bridge) and ones that must be generated
# (the lips).
UPPER_FACE = (33, 133, 159, 145, 362, 263, 386, 374, 70, 300, 6, 168)
MOUTH = (13, 14, 0, 17, 78, 308, 82, 312, 87, 317)


def reference_paste(frame: np.ndarray, pred_chw: np.ndarray, box) -> np.ndarray:
    """The upstream paste-back rule, written out independently of the module under test."""
    x1, y1, x2, y2 = box
    p = (pred_chw.transpose(1, 2, 0) * 255.0).astype(np.uint8)
    p = cv2.resize(p, (x2 - x1, y2 - y1))
    out = frame.copy()
    out[y1:y2, x1:x2] = p
    return out


@pytest.fixture(scope="module")
def face_image() -> np.ndarray:
    img = cv2.imread(str(FACE_JPG))
    assert img is not None, f"cannot read {FACE_JPG}"
    return img


@pytest.fixture(scope="module")
def landmarks(face_image: np.ndarray) -> np.ndarray:
    from lipsync_rt.face import FaceDetector

    with FaceDetector() as detector:
        found = detector.detect(face_image)
    assert found is not None and found.landmarks is not None, "no face mesh on examples/face.jpg"
    return found.landmarks


@pytest.fixture(scope="module")
def box(landmarks: np.ndarray, face_image: np.ndarray):
    """A Wav2Lip-like face box: the mesh's extent, a little margin, 10 px extra at the bottom."""
    h, w = face_image.shape[:2]
    (lx1, ly1), (lx2, ly2) = landmarks.min(axis=0), landmarks.max(axis=0)
    return (
        max(0, int(lx1) - 5),
        max(0, int(ly1) - 5),
        min(w, int(lx2) + 6),
        min(h, int(ly2) + 12),
    )


def generated_face(image: np.ndarray, box, tint=(0, 0, 0)) -> np.ndarray:
    """A stand-in generator output: the box crop at 96x96 with a dark 'open mouth' and an optional
    per-channel colour cast."""
    x1, y1, x2, y2 = box
    face = cv2.resize(image[y1:y2, x1:x2], (96, 96), interpolation=cv2.INTER_AREA).astype(np.int16)
    mouth = np.zeros((96, 96), np.uint8)
    cv2.ellipse(mouth, (48, 66), (14, 6), 0, 0, 360, 255, -1)
    face[mouth > 0] = (40, 30, 60)
    return np.clip(face + np.array(tint), 0, 255).astype(np.uint8)


def ring(a: np.ndarray) -> np.ndarray:
    """The outermost 1-px ring of a 2-D or 3-D array, flattened."""
    return np.concatenate([a[0].ravel(), a[-1].ravel(), a[1:-1, 0].ravel(), a[1:-1, -1].ravel()])


# ------------------------------------------------------------------------------------------------
# Conversion and the hard paste
# ------------------------------------------------------------------------------------------------


def test_to_uint8_face_matches_reference_truncation():
    rng = np.random.default_rng(1)
    pred = rng.random((3, 96, 96), dtype=np.float32)
    pred[0, 0, :4] = [0.0, 1.0, 0.999, 0.5]
    got = to_uint8_face(pred)
    want = (pred.transpose(1, 2, 0) * 255.0).astype(np.uint8)
    assert got.shape == (96, 96, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert got[0, 2, 0] == 254  # 0.999 * 255 = 254.7 truncates, not rounds

    u8 = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8_face(u8), u8)

    for bad in (np.zeros((96, 96, 3), np.float32), np.zeros((3, 96, 96), np.uint8), np.zeros((96, 96), np.int32)):
        with pytest.raises(ValueError):
            to_uint8_face(bad)


def test_paste_hard_is_bit_exact_with_reference():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for box in [(10, 20, 110, 140), (0, 0, 320, 240), (250, 200, 320, 240), (5, 5, 25, 25), (100, 50, 101, 51)]:
        pred = rng.random((3, 96, 96), dtype=np.float32)
        before = frame.copy()
        got = paste_hard(frame, pred, box)
        np.testing.assert_array_equal(got, reference_paste(frame, pred, box))
        np.testing.assert_array_equal(frame, before)
        # The same through the uint8 face and through Blender("none").
        np.testing.assert_array_equal(paste_hard(frame, to_uint8_face(pred), box), got)
        np.testing.assert_array_equal(Blender("none").paste(frame, pred, box), got)


def test_bad_arguments():
    with pytest.raises(ValueError, match="blend mode"):
        Blender("soft")
    frame = np.zeros((50, 50, 3), np.uint8)
    face = np.zeros((96, 96, 3), np.uint8)
    for b in (Blender(), Blender("none")):
        with pytest.raises(ValueError):
            b.paste(frame, face, (10, 10, 10, 20))
        with pytest.raises(ValueError):
            b.paste(frame.astype(np.float32), face, (0, 0, 10, 10))


# ------------------------------------------------------------------------------------------------
# Feathered blend on a real face
# ------------------------------------------------------------------------------------------------


def test_mask_shape_and_coverage(landmarks, box):
    x1, y1, x2, y2 = box
    m = lower_face_mask(landmarks, box)
    assert m.shape == (y2 - y1, x2 - x1) and m.dtype == np.float32
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert np.all(ring(m) == 0.0)
    local = np.round(landmarks - [x1, y1]).astype(int)
    for i in MOUTH:
        assert m[local[i, 1], local[i, 0]] >= 0.98, f"mouth landmark {i} not generated"
    for i in UPPER_FACE:
        assert m[local[i, 1], local[i, 0]] == 0.0, f"upper-face landmark {i} would be changed"
    assert len(set(LOWER_FACE_OUTLINE)) == len(LOWER_FACE_OUTLINE)


def test_feather_leaves_everything_outside_the_mask_untouched(face_image, landmarks, box):
    x1, y1, x2, y2 = box
    frame = face_image.copy()
    face = generated_face(face_image, box, tint=(-25, 10, 35))
    blender = Blender()
    out = blender.paste(frame, face, box, landmarks)
    np.testing.assert_array_equal(frame, face_image)  # input not modified
    assert out is not frame and out.shape == frame.shape and out.dtype == np.uint8

    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], frame[outside])

    m = blender.mask(box, landmarks)
    np.testing.assert_array_equal(m, lower_face_mask(landmarks, box))
    crop_out, crop_in = out[y1:y2, x1:x2], frame[y1:y2, x1:x2]
    np.testing.assert_array_equal(crop_out[m == 0], crop_in[m == 0])
    assert (m == 0).mean() > 0.3  # the upper face is a large part of the box
    assert np.any(crop_out[m > 0] != crop_in[m > 0])


def test_feather_mouth_is_the_generated_face(face_image, landmarks, box):
    x1, y1, x2, y2 = box
    face = generated_face(face_image, box)
    gen = cv2.resize(face, (x2 - x1, y2 - y1))
    m = lower_face_mask(landmarks, box)
    core = m == 1.0
    assert core.sum() > 200

    out = Blender(color_match=False, detail=0.0).paste(face_image, face, box, landmarks)[y1:y2, x1:x2]
    np.testing.assert_array_equal(out[core], gen[core])

    out_cm = Blender().paste(face_image, face, box, landmarks)[y1:y2, x1:x2]
    assert np.abs(out_cm[core].astype(int) - gen[core]).mean() < 6.0


def test_feather_has_no_seam_at_the_box_edge(face_image, landmarks, box):
    x1, y1, x2, y2 = box
    face = generated_face(face_image, box, tint=(30, -30, 30))
    out = Blender().paste(face_image, face, box, landmarks).astype(np.int32)
    orig = face_image.astype(np.int32)
    assert np.abs(ring(out[y1:y2, x1:x2]) - ring(orig[y1:y2, x1:x2])).max() == 0

    # Gradient across each box edge (box pixel vs its outside neighbour), where the frame allows it.
    def edge_gradients(img):
        g = []
        if y1 > 0:
            g.append(np.abs(img[y1, x1:x2] - img[y1 - 1, x1:x2]))
        if y2 < img.shape[0]:
            g.append(np.abs(img[y2 - 1, x1:x2] - img[y2, x1:x2]))
        if x1 > 0:
            g.append(np.abs(img[y1:y2, x1] - img[y1:y2, x1 - 1]))
        if x2 < img.shape[1]:
            g.append(np.abs(img[y1:y2, x2 - 1] - img[y1:y2, x2]))
        return np.concatenate([a.ravel() for a in g])

    assert np.all(edge_gradients(out) <= edge_gradients(orig))
    # The hard paste, by contrast, does leave a step at the box edge.
    hard = paste_hard(face_image, face, box).astype(np.int32)
    assert edge_gradients(hard).mean() > edge_gradients(orig).mean() + 5


def test_colour_matching_pulls_a_tinted_face_towards_the_original(face_image, landmarks, box):
    x1, y1, x2, y2 = box
    tint = np.array([-25, 10, 40])
    face = generated_face(face_image, box, tint=tuple(tint))
    m = lower_face_mask(landmarks, box)
    band = (m > 0.05) & (m < 1.0)
    orig = face_image[y1:y2, x1:x2].astype(np.float64)

    plain = Blender(color_match=False).paste(face_image, face, box, landmarks)[y1:y2, x1:x2]
    matched = Blender(color_match=True).paste(face_image, face, box, landmarks)[y1:y2, x1:x2]

    err_plain = np.abs(plain[band] - orig[band]).mean()
    err_matched = np.abs(matched[band] - orig[band]).mean()
    assert err_matched < 0.5 * err_plain
    # The cast itself (per-channel mean shift in the feather band) mostly goes away.
    shift_plain = (plain[band] - orig[band]).mean(axis=0)
    shift_matched = (matched[band] - orig[band]).mean(axis=0)
    assert np.all(np.sign(shift_plain) == np.sign(tint))
    assert np.all(np.abs(shift_matched) < 0.35 * np.abs(shift_plain))


def test_fallback_without_landmarks(face_image, box):
    x1, y1, x2, y2 = box
    h, w = y2 - y1, x2 - x1
    m = lower_face_mask(None, box)
    np.testing.assert_array_equal(m, fallback_mask(h, w))
    assert np.all(ring(m) == 0.0)
    assert np.all(m[: int(0.35 * h)] == 0.0)  # eyes and above stay original
    assert m[int(0.7 * h), w // 2] == 1.0  # mouth region fully generated

    face = generated_face(face_image, box, tint=(20, 20, -20))
    out = Blender().paste(face_image, face, box, None)
    crop_out, crop_in = out[y1:y2, x1:x2], face_image[y1:y2, x1:x2]
    np.testing.assert_array_equal(crop_out[m == 0], crop_in[m == 0])
    assert np.any(crop_out[m == 1] != crop_in[m == 1])
    outside = np.ones(face_image.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], face_image[outside])


def test_unusable_landmarks_fall_back(face_image, landmarks, box):
    x1, y1, x2, y2 = box
    bad = landmarks.copy()
    bad[152] = np.nan
    np.testing.assert_array_equal(lower_face_mask(bad, box), fallback_mask(y2 - y1, x2 - x1))
    far = landmarks + 1000.0  # a face somewhere else entirely
    np.testing.assert_array_equal(lower_face_mask(far, box), fallback_mask(y2 - y1, x2 - x1))
    with pytest.raises(ValueError):
        lower_face_mask(landmarks[:100], box)


def test_float_model_output_and_cache(face_image, landmarks, box):
    face = generated_face(face_image, box)
    pred = face.transpose(2, 0, 1).astype(np.float32) / 255.0 + 1e-4  # survives truncation
    blender = Blender(cache_size=2)
    a = blender.paste(face_image, pred, box, landmarks)
    b = blender.paste(face_image, face, box, landmarks.copy())  # equal values, new object: cache hit
    np.testing.assert_array_equal(a, b)
    assert len(blender._cache) == 1
    for dx in (1, 2, 3):
        blender.paste(face_image, face, (box[0] + dx, box[1], box[2] + dx, box[3]), landmarks)
    assert len(blender._cache) == 2


@pytest.mark.parametrize("mode", ["feather", "none"])
def test_boxes_at_frame_edges_and_outside(mode):
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    blender = Blender(mode)
    for box in [(0, 0, 60, 70), (100, 50, 160, 120), (0, 0, 160, 120), (-20, -10, 50, 60), (130, 90, 190, 150)]:
        before = frame.copy()
        out = blender.paste(frame, face, box)
        np.testing.assert_array_equal(frame, before)
        x1, y1, x2, y2 = box
        inside = np.zeros(frame.shape[:2], bool)
        inside[max(y1, 0) : y2, max(x1, 0) : x2] = True
        np.testing.assert_array_equal(out[~inside], frame[~inside])
        assert np.any(out[inside] != frame[inside])
    # Partially outside: the visible part is the matching part of the full-box paste.
    big = np.zeros((300, 300, 3), np.uint8)
    big[100:220, 100:260] = frame
    # (Colour matching off: its statistics legitimately differ between the two.)
    full = Blender(mode, color_match=False).paste(big, face, (80, 90, 150, 160))
    part = Blender(mode, color_match=False).paste(frame, face, (-20, -10, 50, 60))
    np.testing.assert_array_equal(part[0:60, 0:50], full[100:160, 100:150])
    # Entirely outside: nothing happens.
    np.testing.assert_array_equal(blender.paste(frame, face, (200, 200, 260, 260)), frame)


@pytest.mark.parametrize("size", [1, 2, 5, 20])
def test_tiny_boxes(face_image, landmarks, size):
    rng = np.random.default_rng(size)
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    box = (200, 130, 200 + size, 130 + size)
    for lms in (None, landmarks):
        out = Blender().paste(face_image, face, box, lms)
        assert out.shape == face_image.shape
        crop_out, crop_in = out[130 : 130 + size, 200 : 200 + size], face_image[130 : 130 + size, 200 : 200 + size]
        np.testing.assert_array_equal(ring(crop_out), ring(crop_in))
    assert fallback_mask(size, size).shape == (size, size)


def test_debug_image(face_image, landmarks, box, tmp_path):
    """Writes crop | mask | feather | hard paste side by side, for eyeballing the blend."""
    x1, y1, x2, y2 = box
    face = generated_face(face_image, box, tint=(-20, 0, 30))
    m = lower_face_mask(landmarks, box)
    mask_bgr = cv2.cvtColor((m * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    outline = np.round(landmarks[list(LOWER_FACE_OUTLINE)] - [x1, y1]).astype(np.int32)
    cv2.polylines(mask_bgr, [outline], True, (0, 255, 0), 1)
    panels = [
        face_image[y1:y2, x1:x2],
        mask_bgr,
        Blender().paste(face_image, face, box, landmarks)[y1:y2, x1:x2],
        paste_hard(face_image, face, box)[y1:y2, x1:x2],
    ]
    sheet = cv2.resize(np.hstack(panels), None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
    path = tmp_path / "blend_debug.png"
    assert cv2.imwrite(str(path), sheet)
    assert path.stat().st_size > 1000


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_detail_transfer_gives_back_the_frame_where_the_face_was_kept(face_image, landmarks, box):
    """A generator that reproduces the face perfectly at 96x96 (its best) gets the frame's own detail
    back; with detail off the pasted lower face is as soft as an upscaled 96x96 image."""
    x1, y1, x2, y2 = box
    crop = face_image[y1:y2, x1:x2]
    perfect96 = cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA)
    lower = (slice(y1 + (y2 - y1) // 2, y2), slice(x1, x2))
    with_detail = Blender("feather").paste(face_image, perfect96, box, landmarks)
    without = Blender("feather", detail=0.0).paste(face_image, perfect96, box, landmarks)
    if (x2 - x1) > 96:     # only a box larger than 96 px loses detail in the model
        assert _sharpness(without[lower]) < 0.9 * _sharpness(face_image[lower])
    assert _sharpness(with_detail[lower]) > 0.95 * _sharpness(face_image[lower])
    assert np.abs(with_detail.astype(int) - face_image.astype(int)).max() <= 6


def test_detail_survives_a_model_that_only_shades_the_face_differently(face_image, landmarks, box):
    """A small model redraws cheeks and chin a little darker or lighter, not in another shape: the
    frame's texture still goes back there (colour matching off, so the shift reaches the paste)."""
    x1, y1, x2, y2 = box
    shaded = np.clip(cv2.resize(face_image[y1:y2, x1:x2], (96, 96), interpolation=cv2.INTER_AREA).astype(int) - 12,
                     0, 255).astype(np.uint8)
    lower = (slice(y1 + (y2 - y1) // 2, y2), slice(x1, x2))
    out = Blender("feather", color_match=False).paste(face_image, shaded, box, landmarks)
    assert _sharpness(out[lower]) > 0.9 * _sharpness(face_image[lower])


def test_detail_is_not_pasted_over_a_changed_mouth(face_image, landmarks, box):
    x1, y1, x2, y2 = box
    generated = cv2.resize(face_image[y1:y2, x1:x2], (96, 96), interpolation=cv2.INTER_AREA)
    generated[62:78, 30:66] = 10                         # a dark open mouth the frame does not have
    out = Blender("feather", color_match=False).paste(face_image, generated, box, landmarks)
    sy, sx = (y2 - y1) / 96, (x2 - x1) / 96
    mouth = out[int(y1 + 65 * sy):int(y1 + 75 * sy), int(x1 + 34 * sx):int(x1 + 62 * sx)]
    assert mouth.mean() < 25 and mouth.std() < 8         # flat and dark: no old lips drawn into it


def test_detail_must_be_a_fraction():
    with pytest.raises(ValueError, match="detail"):
        Blender("feather", detail=2.0)


@pytest.mark.parametrize("tone", ["grey", "sepia"])
def test_a_monochrome_source_keeps_its_own_colours(face_image, landmarks, box, tone):
    """A colour model's face (here with a blue cast and red lips) pasted on a black-and-white or sepia
    photo takes the photo's tint: no blue-cyan lower face, no seam under the nose."""
    grey = cv2.cvtColor(face_image, cv2.COLOR_BGR2GRAY)
    if tone == "grey":
        source = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    else:
        ycrcb = np.dstack([grey, np.full_like(grey, 142), np.full_like(grey, 112)])
        source = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)
    face = generated_face(face_image, box, tint=(40, 10, -25))
    out = Blender().paste(source, face, box, landmarks)
    x1, y1, x2, y2 = box
    chroma = lambda image: cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2YCrCb)[..., 1:].astype(int)  # noqa: E731
    off = np.abs(chroma(out) - chroma(source))
    # the tint is the source's everywhere (a sepia pixel near black or white cannot hold all of its tint,
    # so the odd dark mouth pixel may differ a little more)
    assert np.percentile(off, 99) <= 3 and off.mean() < 1
    # the brightness still comes from the generated face: its dark open mouth is there
    m = lower_face_mask(landmarks, box)
    core = m > 0.99
    luma = lambda image: cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY).astype(int)  # noqa: E731
    assert np.abs(luma(out)[core] - luma(source)[core]).mean() > 3


def test_a_colour_source_is_matched_per_channel_as_before(face_image, landmarks, box):
    """The monochrome path is only for monochrome sources: a colour photo keeps its per-channel matching."""
    from lipsync_rt.blend import _monochrome_tint

    x1, y1, x2, y2 = box
    band = ((lower_face_mask(landmarks, box) > 0.05) & (lower_face_mask(landmarks, box) < 0.95)).view(np.uint8)
    assert _monochrome_tint(face_image[y1:y2, x1:x2], band) is None

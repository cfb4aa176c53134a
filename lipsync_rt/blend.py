"""Paste generated 96x96 faces back into video frames.

Wav2Lip's generator returns the whole face box, upper half included, at 96x96. The reference
implementation overwrites the box with it, which leaves a visible rectangle: the upscaled face is
blurrier than the frame and its colours drift a little from the original. Only the lower face
actually has to change, so the default here is a feathered lower-face mask built from the face mesh
landmarks, with the generated pixels' colour nudged towards the original's around the mask's edge.

Two modes (``--blend``):

``none``
    :func:`paste_hard`, bit-exact with the reference paste; kept for comparisons.
``feather`` (default)
    :class:`Blender` with a soft mask from :func:`lower_face_mask`. Pixels where the mask is 0 are
    copied bit-for-bit; the mask is 0 on the box's outermost ring of pixels, so there is no seam
    at the box edge. When landmarks are unknown, a feathered ellipse over the lower part of the box
    stands in for the face outline (see :func:`fallback_mask`).

    Detail transfer: the generator works at 96x96, so whatever finer texture the frame has (skin
    pores, stubble, lip lines) cannot come back from it, and an upscaled 96x96 face looks soft next
    to the real one. The frame's own detail is the part of the face a 96x96 image cannot hold (the
    face minus its 96x96 version scaled back up); it is added to the generated face wherever the
    generator kept the face as it was (its output matches the frame's 96x96 version), and faded out
    where the mouth really changed (an open mouth, teeth), where the old detail would be wrong.

All work is confined to the box (in fact to the bounding rectangle of the mask's non-zero part), so
the cost follows the face size, not the frame size; the only whole-frame operation is the copy that
keeps the caller's frame untouched.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "BLEND_MODES",
    "LOWER_FACE_OUTLINE",
    "Blender",
    "fallback_mask",
    "lower_face_mask",
    "paste_hard",
    "to_uint8_face",
]

Box = Tuple[int, int, int, int]

BLEND_MODES = ("feather", "none")

# MediaPipe face mesh indices (468-point topology), walked as one closed polygon around the part of
# the face that moves when speaking. Names are the subject's own left/right.
#
# * Jaw line: the lower half of FACEMESH_FACE_OVAL, from 132 (right cheek, at nose-tip height)
#   down around the chin (152) and back up to 361 (left cheek, same height). Starting at nose-tip
#   height rather than at the ears keeps the ears and temples original; the cheeks below that line
#   bulge and stretch with an open mouth, so they are included.
# * Upper edge: from 361 inwards along the cheeks (411, 425), the nasal side of the cheek (423),
#   the left alar base (327), the subnasale (2), the right alar base (98) and back out (203, 205,
#   187) to 132. This runs just under the nose, so the nasolabial folds and the upper lip come
#   from the generator while the nose, eyes and everything above stay original: Wav2Lip's
#   generator only ever sees the lower half of the box masked, and its upper half is merely a
#   blurrier copy of the input.
_JAW = (132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361)
_UNDER_NOSE = (411, 425, 423, 327, 2, 98, 203, 205, 187)
LOWER_FACE_OUTLINE: Tuple[int, ...] = _JAW + _UNDER_NOSE

# Upper lip top (0) and lower lip bottom (17): their midpoint is the centre from which the outline
# is pushed outwards. Points far from the mouth (the chin, the jaw) move most, which is where an
# opening mouth moves the generated face beyond the original outline; the under-nose edge, close
# to the centre, barely moves and so stays out of the nostrils.
_MOUTH_CENTRE = (0, 17)

# Fraction of the box's shorter side used as the Gaussian sigma of the feather.
DEFAULT_FEATHER = 0.04
# How far (relative) the outline is pushed out from the mouth centre.
DEFAULT_EXPAND = 0.12
# Masks smaller than this fraction of the box are taken as a sign of bad landmarks.
_MIN_MASK_FRACTION = 0.02
# Limits on the per-channel contrast gain of the colour matching. The generated face is an
# upscaled 96x96 image with less fine texture than the frame, so an unlimited std ratio would
# over-amplify its low-frequency shading.
_GAIN_LIMITS = (0.67, 1.5)
# Detail transfer: the frame's detail is kept where the generated face differs from the frame's
# 96x96 version by less than about this many grey levels (a Gaussian fall-off). A small model
# re-draws cheeks and chin with a slightly different shading, not a different shape: at 14 levels
# that shading alone switched the detail off there (the bundled model's lower face while talking
# stayed at 0.53 of the input's sharpness); at 28 skin texture and wrinkles come back there, while
# an opened mouth (teeth against a cavity differ by 100 levels and more) still gets none.
DETAIL_TOLERANCE = 28.0


# --------------------------------------------------------------------------------------------------
# Generated face conversion and the reference paste
# --------------------------------------------------------------------------------------------------


def to_uint8_face(pred: Any) -> np.ndarray:
    """Convert a generator output to a uint8 HxWx3 BGR face exactly as the reference does.

    Float input is channel-first [3,H,W] in [0,1] (a model output), converted HWC, times 255, and cast
    to uint8 by truncation (not rounding), in float32 like the reference; values are clipped to
    [0, 255] first, which changes nothing for a sigmoid output but keeps a misbehaving engine from
    wrapping around. uint8 input is taken as already converted HxWx3. Doing this in one place keeps
    every consumer (blending, debug dumps, metrics) on the same rounding rule.
    """
    arr = np.asarray(pred)
    if arr.dtype == np.uint8:
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"a uint8 face must be HxWx3, got shape {arr.shape}")
        return np.ascontiguousarray(arr)
    if arr.dtype.kind != "f":
        raise ValueError(f"a face must be uint8 HxWx3 or float 3xHxW, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"a float face must be 3xHxW (channel-first), got shape {arr.shape}")
    hwc = arr.astype(np.float32, copy=False).transpose(1, 2, 0) * np.float32(255.0)
    np.clip(hwc, 0.0, 255.0, out=hwc)
    return np.ascontiguousarray(hwc.astype(np.uint8))


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError("frame must be a uint8 HxWx3 numpy array")


def _box_ints(box: Sequence[int]) -> Box:
    if len(box) != 4:
        raise ValueError(f"box must be (x1, y1, x2, y2), got {box!r}")
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty box {box!r}: need x2 > x1 and y2 > y1")
    return x1, y1, x2, y2


def _visible(box: Box, frame_shape: Tuple[int, ...]) -> Optional[Tuple[slice, slice, slice, slice]]:
    """Slices (frame rows, frame cols, box rows, box cols) of the part of the box inside the frame.

    Boxes from the tracker are normally inside the frame already (as in the reference, which clamps
    them); a box that pokes out is still pasted with the right geometry, only cropped.
    """
    x1, y1, x2, y2 = box
    h, w = frame_shape[:2]
    fx1, fy1, fx2, fy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if fx2 <= fx1 or fy2 <= fy1:
        return None
    return (slice(fy1, fy2), slice(fx1, fx2), slice(fy1 - y1, fy2 - y1), slice(fx1 - x1, fx2 - x1))


def paste_hard(frame: np.ndarray, face96: Any, box: Sequence[int]) -> np.ndarray:
    """The reference paste-back (``--blend none``), bit-exact; returns a new frame.

    Kept so outputs can be compared with the original Wav2Lip inference: the face is resized to the
    box with cv2.resize's default (bilinear) interpolation and overwrites the whole box.
    """
    _check_frame(frame)
    x1, y1, x2, y2 = b = _box_ints(box)
    face = to_uint8_face(face96)
    out = frame.copy()
    vis = _visible(b, frame.shape)
    if vis is None:
        return out
    fr, fc, br, bc = vis
    out[fr, fc] = cv2.resize(face, (x2 - x1, y2 - y1))[br, bc]
    return out


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------

_KERNELS: "OrderedDict[int, np.ndarray]" = OrderedDict()
_TAPERS: "OrderedDict[Tuple[int, int], np.ndarray]" = OrderedDict()
_SMALL_CACHE = 64
# Blur sigma, in pixels, at the reduced resolution masks are drawn at (see _canvas).
_WORK_SIGMA = 3.0


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """A 1-D Gaussian kernel, cached by its size: box sizes jitter by a pixel or two per frame, so
    quantising sigma to the kernel size makes nearly every frame a cache hit."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    k = _KERNELS.get(radius)
    if k is None:
        k = cv2.getGaussianKernel(2 * radius + 1, radius / 3.0, cv2.CV_32F)
        _KERNELS[radius] = k
        if len(_KERNELS) > _SMALL_CACHE:
            _KERNELS.popitem(last=False)
    return k


def _taper_1d(n: int, ramp: int) -> np.ndarray:
    """One axis of the border taper, cached (the window is separable, so the cache stays tiny)."""
    key = (n, ramp)
    t = _TAPERS.get(key)
    if t is None:
        d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)
        u = np.clip(d / np.float32(ramp), 0.0, 1.0)
        t = u * u * (np.float32(3.0) - np.float32(2.0) * u)
        _TAPERS[key] = t
        if len(_TAPERS) > _SMALL_CACHE:
            _TAPERS.popitem(last=False)
    return t


def _canvas(h: int, w: int, sigma: float) -> Tuple[np.ndarray, float, float]:
    """A blank canvas for drawing the mask shape at reduced resolution, and its x/y scale factors.

    The mask is smooth by construction, so there is no point in drawing and blurring it at full size:
    the canvas is sized so the blur's sigma is about ``_WORK_SIGMA`` pixels there and the result is
    upsampled bilinearly. That keeps the cost flat in the box size (a 400 px box costs what a 100 px
    one does) instead of growing with area times kernel width.
    """
    scale = min(1.0, _WORK_SIGMA / sigma)
    hs, ws = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    return np.zeros((hs, ws), np.uint8), ws / w, hs / h


def _to_canvas(xy: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Box pixel coordinates to canvas coordinates, with the half-pixel convention cv2.resize uses,
    as 28.4 fixed point for the anti-aliased drawing functions."""
    c = (np.asarray(xy, np.float32) + 0.5) * np.array([sx, sy], np.float32) - 0.5
    return np.round(c * 16.0).astype(np.int32)


def _feather(canvas: np.ndarray, h: int, w: int, sigma: float) -> np.ndarray:
    """Blur a drawn 0/255 canvas into a float32 [0,1] box-sized mask that is 0 on the box border."""
    sx = canvas.shape[1] / w
    k = _gaussian_kernel(sigma * sx)
    m = cv2.sepFilter2D(canvas, cv2.CV_32F, k, k, borderType=cv2.BORDER_REPLICATE)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    m *= np.float32(1.0 / 255.0)
    # The border taper: exactly 0 on the box's outer pixel ring, rising smoothly (C1) to 1 over
    # `ramp` pixels. It is what guarantees a seamless box edge even when the chin reaches the box.
    ramp = max(1, int(round(1.5 * sigma)))
    m *= _taper_1d(h, ramp)[:, None]
    m *= _taper_1d(w, ramp)[None, :]
    # Snap the far tails: values this small or this close to 1 move a pixel by well under a level,
    # and exact 0/1 make "outside the mask is untouched" and "the mouth is the generated face" hold
    # exactly rather than approximately.
    m[m < 1e-3] = 0.0
    m[m > 1.0 - 1e-3] = 1.0
    return m


def _sigma(h: int, w: int, feather: float) -> float:
    return max(0.5, feather * min(h, w))


def fallback_mask(height: int, width: int, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """Feathered ellipse over the lower part of the box, for frames without landmarks.

    Wav2Lip boxes run from about the brows to just under the chin (with the reference's 10 px bottom
    pad), which puts the mouth at roughly 65-75% of the box height. The ellipse is centred at 74%
    height and spans 52%-96% vertically and 16%-84% horizontally: about the half of the box the
    generator itself gets masked, so its feathered edge stays below the eyes. It is coarser than the
    landmark outline (it cannot follow the jaw), so it is only a stand-in.
    """
    h, w = int(height), int(width)
    if h <= 0 or w <= 0:
        raise ValueError(f"mask size must be positive, got {h}x{w}")
    sigma = _sigma(h, w, feather)
    canvas, sx, sy = _canvas(h, w, sigma)
    centre = _to_canvas([0.5 * w - 0.5, 0.74 * h - 0.5], sx, sy)
    axes = np.maximum(1, np.round(np.array([0.34 * w * sx, 0.22 * h * sy]) * 16.0)).astype(int)
    cv2.ellipse(canvas, tuple(int(v) for v in centre), tuple(int(v) for v in axes), 0.0, 0.0, 360.0, 255,
                thickness=-1, lineType=cv2.LINE_AA, shift=4)
    return _feather(canvas, h, w, sigma)


def _outline_points(landmarks: np.ndarray, box: Box, expand: float) -> Optional[np.ndarray]:
    lm = np.asarray(landmarks)
    if lm.ndim != 2 or lm.shape[0] < 468 or lm.shape[1] < 2:
        raise ValueError(f"landmarks must be [468, 2] (x, y) in frame pixels, got shape {lm.shape}")
    pts = lm[list(LOWER_FACE_OUTLINE), :2].astype(np.float32)
    centre = lm[list(_MOUTH_CENTRE), :2].astype(np.float32).mean(axis=0)
    if not (np.isfinite(pts).all() and np.isfinite(centre).all()):
        return None
    pts = centre + (pts - centre) * np.float32(1.0 + expand)
    pts -= np.array(box[:2], np.float32)
    return pts


def lower_face_mask(
    landmarks: Optional[np.ndarray],
    box: Sequence[int],
    feather: float = DEFAULT_FEATHER,
    expand: float = DEFAULT_EXPAND,
) -> np.ndarray:
    """Soft float32 [h, w] mask (box-sized) of where the generated face replaces the original.

    The polygon :data:`LOWER_FACE_OUTLINE` is pushed out from the mouth centre by ``expand`` (an open
    mouth drops the chin below the original jaw line), blurred with sigma = ``feather`` x the box's
    shorter side, and multiplied by a border taper so it is exactly 0 on the box's outer ring.
    Without usable landmarks (None, non-finite, or an outline that barely overlaps the box) this is
    :func:`fallback_mask`. Exposed for tests and debug images.
    """
    b = _box_ints(box)
    h, w = b[3] - b[1], b[2] - b[0]
    if landmarks is None:
        return fallback_mask(h, w, feather)
    pts = _outline_points(landmarks, b, expand)
    if pts is None:
        return fallback_mask(h, w, feather)
    sigma = _sigma(h, w, feather)
    canvas, sx, sy = _canvas(h, w, sigma)
    cv2.fillPoly(canvas, _to_canvas(pts, sx, sy).reshape(1, -1, 2), 255, lineType=cv2.LINE_AA, shift=4)
    if cv2.countNonZero(canvas) < _MIN_MASK_FRACTION * canvas.size:
        return fallback_mask(h, w, feather)
    return _feather(canvas, h, w, sigma)


# --------------------------------------------------------------------------------------------------
# Feathered blending
# --------------------------------------------------------------------------------------------------


# A source whose chroma (YCrCb) varies less than this in the feather band has no colour of its own to
# match: a black-and-white photo, a sepia print, a monochrome camera.
_MONOCHROME_CHROMA_SD = 3.0


def _match_colour(gen: np.ndarray, orig: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift/scale the generated face's channels so they match the original's around the mask edge.

    Statistics come from the same pixels of both images (so what is pictured there, skin, jaw line or
    background, cancels out) in the feather band, where a colour step would show as a halo, and not
    in the fully generated core, where the mouth legitimately differs (teeth, an open mouth). The
    per-channel affine correction is applied as a 256-entry lookup table on the uint8 face, which
    costs next to nothing.

    A monochrome source (grey, or one tint throughout) keeps its colours: per-channel gains cannot
    take a colour model's skin and lips to grey (they are clamped, and the lips differ from the band),
    which left a blue-cyan cast on the lower face and a seam under the nose. There the generated face
    contributes only its brightness, matched the same way, in the source's own tint.
    """
    band = ((mask > 0.05) & (mask < 0.95)).view(np.uint8)
    if cv2.countNonZero(band) < 16:
        return gen
    tint = _monochrome_tint(orig, band)
    if tint is not None:
        return _match_luma(gen, orig, band, tint)
    mu_g, sd_g = cv2.meanStdDev(gen, mask=band)
    mu_o, sd_o = cv2.meanStdDev(orig, mask=band)
    gain = np.clip(sd_o / np.maximum(sd_g, 1e-3), *_GAIN_LIMITS)
    levels = np.arange(256, dtype=np.float64)[:, None]
    lut = (levels - mu_g.T) * gain.T + mu_o.T  # [256, 3]
    lut = np.clip(np.rint(lut), 0, 255).astype(np.uint8).reshape(256, 1, 3)
    return cv2.LUT(gen, lut)


def _monochrome_tint(orig: np.ndarray, band: np.ndarray) -> Optional[Tuple[float, float]]:
    """The source's (Cr, Cb) in the band when it has no colour variation there, else None."""
    ycrcb = cv2.cvtColor(orig, cv2.COLOR_BGR2YCrCb)
    mean, sd = cv2.meanStdDev(ycrcb, mask=band)
    if max(float(sd[1, 0]), float(sd[2, 0])) >= _MONOCHROME_CHROMA_SD:
        return None
    return float(mean[1, 0]), float(mean[2, 0])


def _match_luma(gen: np.ndarray, orig: np.ndarray, band: np.ndarray, tint: Tuple[float, float]) -> np.ndarray:
    """The generated face's brightness, matched to the source's in the band (as the channels are for a
    colour source), in the source's one tint."""
    luma_g = cv2.cvtColor(gen, cv2.COLOR_BGR2GRAY)
    luma_o = cv2.cvtColor(orig, cv2.COLOR_BGR2GRAY)
    mu_g, sd_g = cv2.meanStdDev(luma_g, mask=band)
    mu_o, sd_o = cv2.meanStdDev(luma_o, mask=band)
    gain = float(np.clip(sd_o[0, 0] / max(sd_g[0, 0], 1e-3), *_GAIN_LIMITS))
    lut = np.clip(np.rint((np.arange(256) - mu_g[0, 0]) * gain + mu_o[0, 0]), 0, 255).astype(np.uint8)
    ycrcb = np.empty(gen.shape, np.uint8)
    ycrcb[..., 0] = cv2.LUT(luma_g, lut)
    ycrcb[..., 1] = int(round(tint[0]))
    ycrcb[..., 2] = int(round(tint[1]))
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)


def _transfer_detail(gen: np.ndarray, box_pixels: np.ndarray, size: Tuple[int, int], rect: Tuple[slice, slice],
                     strength: float) -> np.ndarray:
    """The generated face plus the frame's detail where the generator kept the face as it was.

    ``box_pixels`` is the frame inside the whole box (its visible part); the frame's 96x96 version is
    made the way the model's input was (area-averaged down) and scaled back up the way the output is,
    so on a face the generator reproduced exactly, ``gen + detail`` is the frame itself.
    """
    h, w = box_pixels.shape[:2]
    low = cv2.resize(cv2.resize(box_pixels, (size[1], size[0]), interpolation=cv2.INTER_AREA), (w, h),
                     interpolation=cv2.INTER_LINEAR)
    ry, rx = rect
    orig = box_pixels[ry, rx].astype(np.float32)
    low = low[ry, rx].astype(np.float32)
    g = gen.astype(np.float32)
    change = cv2.GaussianBlur(np.abs(g - low).max(axis=2), (0, 0), 1.5)
    keep = strength * np.exp(-(change / DETAIL_TOLERANCE) ** 2)
    out = g + (orig - low) * keep[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _nonzero_rect(mask: np.ndarray) -> Optional[Tuple[slice, slice]]:
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)


class Blender:
    """Pastes generated faces into frames for one stream (``--blend feather`` or ``none``).

    One object per stream because it caches masks: a still photo gives the same box and landmarks on
    every frame, and a short avatar clip repeats them every loop. The cache is keyed by the box and
    the landmark values (not their object identity, which Python reuses) and drops the least
    recently used entry; a looping clip longer than ``cache_size`` frames therefore never hits, so
    raise it to the loop length where memory allows. A miss costs a few tenths of a millisecond.

    Args:
        mode: "feather" (default: soft lower-face mask, colour matching) or "none" (reference hard
            paste, bit-exact).
        feather: Gaussian sigma of the mask edge, as a fraction of the box's shorter side.
        expand: how far the landmark outline is pushed out from the mouth centre (relative).
        color_match: match the generated face's per-channel mean/std to the original's in the mask's
            feather band, so a colour cast of the model does not show as a halo.
        detail: put back the frame's fine detail the 96x96 generator cannot hold, where the generator
            left the face as it was (see the module doc); 0 turns it off, 1 restores all of it.
        cache_size: number of masks kept (one box-sized float32 array each); 0 disables caching.
    """

    def __init__(
        self,
        mode: str = "feather",
        *,
        feather: float = DEFAULT_FEATHER,
        expand: float = DEFAULT_EXPAND,
        color_match: bool = True,
        detail: float = 1.0,
        cache_size: int = 16,
    ) -> None:
        if mode not in BLEND_MODES:
            raise ValueError(f"unknown blend mode {mode!r}; expected one of {', '.join(BLEND_MODES)}")
        if not feather > 0:
            raise ValueError(f"feather must be > 0, got {feather!r}")
        if expand < 0:
            raise ValueError(f"expand must be >= 0, got {expand!r}")
        self.mode = mode
        self.feather = float(feather)
        self.expand = float(expand)
        self.color_match = bool(color_match)
        if not 0.0 <= detail <= 1.0:
            raise ValueError(f"detail must be in [0, 1], got {detail!r}")
        self.detail = float(detail)
        self.cache_size = max(0, int(cache_size))
        self._cache: "OrderedDict[tuple, Tuple[np.ndarray, Optional[Tuple[slice, slice]]]]" = OrderedDict()
        # paste() may run for several frames of one stream at once in an executor.
        self._lock = threading.Lock()

    def _mask(self, box: Box, landmarks: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[Tuple[slice, slice]]]:
        h, w = box[3] - box[1], box[2] - box[0]
        if landmarks is None:
            key: tuple = (h, w)  # the fallback depends on the box size only
        else:
            lm = np.ascontiguousarray(landmarks, dtype=np.float32)
            key = (box, lm.shape, lm.tobytes())
            landmarks = lm
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        mask = lower_face_mask(landmarks, box, self.feather, self.expand)
        entry = (mask, _nonzero_rect(mask))
        if self.cache_size:
            with self._lock:
                self._cache[key] = entry
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return entry

    def mask(self, box: Sequence[int], landmarks: Optional[np.ndarray] = None) -> np.ndarray:
        """The float32 [h, w] mask :meth:`paste` would use for this box (a copy; for debug images)."""
        return self._mask(_box_ints(box), landmarks)[0].copy()

    def paste(
        self,
        frame: np.ndarray,
        face96: Any,
        box: Sequence[int],
        landmarks: Optional[np.ndarray] = None,
        strength: float = 1.0,
    ) -> np.ndarray:
        """Return a new frame with the generated face pasted into ``box``; ``frame`` is not modified.

        ``face96`` is a generator output (float 3x96x96 in [0,1] or uint8 96x96x3 BGR) covering the whole
        box; ``landmarks`` are the face mesh points of this frame in frame pixels, or None. ``strength``
        (feather only) scales the mask: 0 gives the frame back unchanged (a pause,
        ``pipeline/rest.py``), 1 the full paste.
        """
        if self.mode == "none":
            return paste_hard(frame, face96, box)
        if strength <= 0.0:
            return frame.copy()
        _check_frame(frame)
        b = _box_ints(box)
        x1, y1, x2, y2 = b
        face = to_uint8_face(face96)
        out = frame.copy()
        vis = _visible(b, frame.shape)
        if vis is None:
            return out
        mask, rect = self._mask(b, landmarks)
        if rect is None:
            return out
        _, _, br, bc = vis
        w, h = x2 - x1, y2 - y1
        # Shrinking with bilinear aliases; area averaging is the right filter for small boxes.
        shrink = w < face.shape[1] and h < face.shape[0]
        gen_full = cv2.resize(face, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

        # Work on the intersection of the visible box part and the mask's non-zero rectangle.
        ry = slice(max(br.start, rect[0].start), min(br.stop, rect[0].stop))
        rx = slice(max(bc.start, rect[1].start), min(bc.stop, rect[1].stop))
        if ry.stop <= ry.start or rx.stop <= rx.start:
            return out
        m = mask[ry, rx] if strength >= 1.0 else mask[ry, rx] * np.float32(strength)
        fy = slice(y1 + ry.start, y1 + ry.stop)
        fx = slice(x1 + rx.start, x1 + rx.stop)
        orig = frame[fy, fx]
        gen = gen_full[ry, rx]
        if self.color_match:
            gen = _match_colour(gen, orig, m)
        inside = x1 >= 0 and y1 >= 0 and x2 <= frame.shape[1] and y2 <= frame.shape[0]
        if self.detail > 0 and inside and not shrink:
            gen = _transfer_detail(gen, frame[y1:y2, x1:x2], face.shape[:2], (ry, rx), self.detail)
        # (1-m)*orig + m*gen, rounded: exactly orig where m == 0 and exactly gen where m == 1, so
        # pixels outside the mask stay bit-identical.
        out[fy, fx] = cv2.blendLinear(orig, gen, 1.0 - m, m)
        return out

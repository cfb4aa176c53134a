"""A photograph that talks: its lips and jaw moved by a piecewise-affine warp over its face mesh, and
the mouth's interior (cavity, teeth, tongue) rendered with colours taken from the face.

Geometry. The photo is brought upright (eyes level) onto a canonical canvas where its face box is
``CANON_BOX`` pixels. Its 468 face-mesh landmarks are the warp's control points, together with a ring
of points under the jaw (so the neck stretches instead of tearing) and the border of the region that
can move (which stays put). The control points are triangulated once (Delaunay, at rest) and every
pixel of the region keeps its barycentric coordinates in its triangle, so a frame's warp costs one
weighted gather of the control points' displacements plus a remap.

Motion, per control point, from the frame's mouth controls (``opening`` 0..1, ``spread`` -1..1):

- the lower lip (inner and outer contours and everything between) drops by the lip gap, largest in
  the middle of the mouth (``(1 - u^2) ** 0.6`` across it), and keeps its thickness and colour;
- the upper lip rises by ``UPPER_LIFT`` of the gap, fading out towards the nose;
- the chin and jaw drop by ``JAW_FOLLOW`` of the gap, the middle of the face more than its sides,
  blending into the lower lip's motion between them and fading out over the neck;
- spread widens (rounding narrows) the mouth by up to ``WIDTH_RANGE`` about its centre, and a
  spread mouth lifts its corners a little; an open mouth is ``NARROW`` narrower, so it opens to an
  oval rather than a letterbox.

The gap between the moved inner lip contours is then painted: a dark cavity coloured from the lips,
upper teeth under the upper lip (tinted to the photo's exposure, with soft gaps between them), lower
teeth for some identities, and a tongue that shows when the mouth is wide open. At opening 0 the
photo is returned unchanged.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from lipsync_rt.face.boxes import FACE_OVAL, box_from_landmarks

from .geometry import (CHEEKS, EYES, INNER_LOWER, INNER_UPPER, OUTER_LOWER, OUTER_UPPER, affine,
                       similarity, smoothstep)

CANON_BOX = 128             # face box side on the canonical (upright, unmoved) canvas
CANON_SIZE = 320            # canonical canvas side

MAX_OPEN = 0.4              # inner lip gap at full opening, as a fraction of the mouth width
NARROW = 0.1                # an open mouth is this much narrower (the corners come in as the jaw drops)
UPPER_LIFT = 0.12           # the upper lip rises this fraction of the gap
JAW_FOLLOW = 0.85           # the chin drops this fraction of the gap
WIDTH_RANGE = 0.12          # mouth width changes by up to +-12 % with spread
SMILE_LIFT = 0.06           # a fully spread mouth lifts its corners by this fraction of its half width
TEETH_HEIGHT = 0.13         # visible upper teeth, as a fraction of the mouth width


class Portrait:
    """One identity: a photo (restyled unless ``original``) with a mouth rig on its canonical canvas."""

    def __init__(self, image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, original: bool) -> None:
        lm = np.asarray(landmarks, dtype=np.float64)
        eyes = sorted((lm[list(EYES[0])].mean(axis=0), lm[list(EYES[1])].mean(axis=0)), key=lambda p: p[0])
        tilt = math.degrees(math.atan2(eyes[1][1] - eyes[0][1], eyes[1][0] - eyes[0][0]))
        x1, y1, x2, y2 = box_from_landmarks(lm)
        scale = CANON_BOX / max(x2 - x1, y2 - y1)
        flip = (not original) and rng.random() < 0.5
        width = 1.0 if original else rng.uniform(0.9, 1.1)
        centre = (CANON_SIZE / 2, CANON_SIZE / 2)
        m = similarity(((x1 + x2) / 2, (y1 + y2) / 2), centre, tilt, scale * width, scale, flip)
        if scale < 0.8:   # shrinking: blur first so warpAffine's bilinear sampling does not alias
            image = cv2.GaussianBlur(image, (0, 0), 0.45 / scale)
        base = cv2.warpAffine(image, m, (CANON_SIZE, CANON_SIZE), flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REFLECT101)
        self.landmarks = affine(lm, m)
        self.base = base if original else restyle(base, self.landmarks, rng)
        self.rig = MouthRig(self.base, self.landmarks, rng, original)

    def render(self, opening: float, spread: float) -> tuple[np.ndarray, np.ndarray]:
        """The canvas with the mouth at (opening, spread), and the moved landmarks."""
        return self.rig.render(opening, spread)


def restyle(base: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new appearance of the same face: skin tone on the skin, new colours elsewhere (hair, clothes,
    background), gamma, a little blur. Skin is the face hull plus anything with the face's chroma
    (neck, ears), so the neck never keeps the old tone under a recoloured face."""
    hull_mask = np.zeros(base.shape[:2], np.float32)
    hull = cv2.convexHull(np.round(landmarks).astype(np.int32))
    cv2.fillConvexPoly(hull_mask, hull, 1.0, cv2.LINE_AA)
    lab = cv2.cvtColor(base, cv2.COLOR_BGR2LAB).astype(np.float32)
    inner = cv2.erode(hull_mask, np.ones((9, 9), np.uint8)) > 0.5
    ref = np.median(lab[inner], axis=0)
    chroma = np.hypot(lab[..., 1] - ref[1], lab[..., 2] - ref[2])
    like = np.exp(-(chroma / 7.0) ** 2) * (np.abs(lab[..., 0] - ref[0]) < 70)
    mask = cv2.GaussianBlur(np.maximum(hull_mask, like.astype(np.float32)), (0, 0), 3.0)[:, :, None]

    face = lab.copy()
    darken = rng.uniform(0.45, 1.1)
    face[..., 0] *= darken
    face[..., 1] += rng.uniform(-5, 4)                # darker skin: browner, not redder
    face[..., 2] += rng.uniform(-8, 8) + 12.0 * max(0.0, 1.0 - darken)
    face = cv2.cvtColor(np.clip(face, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)

    hsv = cv2.cvtColor(base, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(0, 180), 180)
    hsv[..., 1] *= rng.uniform(0.4, 1.3)
    hsv[..., 2] *= rng.uniform(0.7, 1.15)
    rest = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)

    out = face.astype(np.float32) * mask + rest.astype(np.float32) * (1 - mask)
    gamma = rng.uniform(0.85, 1.2)
    out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** gamma
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    sigma = rng.uniform(0.0, 0.8)
    return cv2.GaussianBlur(out, (0, 0), sigma) if sigma > 0.3 else out


def _sorted_contour(points: np.ndarray) -> np.ndarray:
    return points[np.argsort(points[:, 0], kind="stable")]


def _interp(x: np.ndarray, contour: np.ndarray) -> np.ndarray:
    return np.interp(x, contour[:, 0], contour[:, 1])


class MouthRig:
    """The mesh warp and the interior painter of one canvas (see the module docstring)."""

    def __init__(self, base: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, original: bool) -> None:
        self.base = base
        lm = np.asarray(landmarks, dtype=np.float64)
        self.lm = lm
        h, w = base.shape[:2]
        corners = lm[[OUTER_UPPER[0], OUTER_UPPER[-1]]]
        self.cx = float(corners[:, 0].mean())
        self.hw = max(float(abs(corners[1, 0] - corners[0, 0])) / 2, 4.0)
        inner_up, inner_lo = _sorted_contour(lm[list(INNER_UPPER)]), _sorted_contour(lm[list(INNER_LOWER)])
        self.inner_hw = max(float(inner_up[-1, 0] - inner_up[0, 0]) / 2, 3.0)
        self.my = float((inner_up[:, 1].mean() + inner_lo[:, 1].mean()) / 2)
        self.chin = float(lm[152, 1])
        self.cm = max(self.chin - self.my, 8.0)
        oval = lm[FACE_OVAL]
        self.face_cx = float((oval[:, 0].min() + oval[:, 0].max()) / 2)
        self.face_hw = float((oval[:, 0].max() - oval[:, 0].min()) / 2)
        self._inner_up, self._inner_lo = inner_up, inner_lo
        self._outer_lo = _sorted_contour(lm[list(OUTER_LOWER)])

        # The region that moves: from just under the nose to well under the chin, across the jaw.
        x0 = max(0, int(self.face_cx - 1.25 * self.face_hw))
        x1 = min(w, int(self.face_cx + 1.25 * self.face_hw) + 1)
        y0 = max(0, int(self.my - 1.1 * self.hw))
        y1 = min(h, int(self.chin + 2.2 * self.cm) + 1)
        self.roi = (x0, y0, x1, y1)
        self._controls, self._lower = self._control_points()
        self._triangulate()
        self._colours(rng, original)

    # -- control points and triangulation --------------------------------------------------------

    def _control_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Mesh points inside the region, a ring under the jaw, and the region's fixed border.

        Returns the points and, per point, whether it belongs to the lower part (moves with the jaw)."""
        x0, y0, x1, y1 = self.roi
        lm = self.lm
        inside = (lm[:, 0] > x0 + 1) & (lm[:, 0] < x1 - 2) & (lm[:, 1] > y0 + 1) & (lm[:, 1] < y1 - 2)
        mesh = lm[inside]
        lower = mesh[:, 1] > (_interp(mesh[:, 0], self._inner_up) + _interp(mesh[:, 0], self._inner_lo)) / 2
        index = np.flatnonzero(inside)
        for i in INNER_LOWER[1:-1]:
            lower[index == i] = True
        for i in INNER_UPPER[1:-1]:
            lower[index == i] = False
        # jaw ring: the lower face oval pushed outwards from the mouth
        oval = lm[FACE_OVAL]
        low = oval[oval[:, 1] > self.my]
        centre = np.array([self.face_cx, self.my])
        ring = []
        for k in (0.25, 0.6):
            pts = centre + (low - centre) * (1.0 + k)
            ring.append(pts)
        ring = np.concatenate(ring)
        ring = ring[(ring[:, 0] > x0 + 1) & (ring[:, 0] < x1 - 2) & (ring[:, 1] > y0 + 1) & (ring[:, 1] < y1 - 2)]
        n_side = 12
        xs = np.linspace(x0, x1 - 1, n_side)
        ys = np.linspace(y0, y1 - 1, n_side)
        border = np.concatenate([np.stack([xs, np.full(n_side, y0)], 1), np.stack([xs, np.full(n_side, y1 - 1)], 1),
                                 np.stack([np.full(n_side - 2, x0), ys[1:-1]], 1),
                                 np.stack([np.full(n_side - 2, x1 - 1), ys[1:-1]], 1)])
        self._n_mesh, self._mesh_index = len(mesh), index
        self._n_ring = len(ring)
        points = np.concatenate([mesh, ring, border])
        is_lower = np.concatenate([lower, np.ones(len(ring), bool), np.zeros(len(border), bool)])
        return points, is_lower

    def _triangulate(self) -> None:
        x0, y0, x1, y1 = self.roi
        pts = self._controls
        subdiv = cv2.Subdiv2D((x0 - 1, y0 - 1, x1 - x0 + 2, y1 - y0 + 2))
        pts32 = pts.astype(np.float32)
        lookup = {}
        for i, (x, y) in enumerate(pts32):
            lookup[(float(x), float(y))] = i
            subdiv.insert((float(x), float(y)))
        triangles = []
        for t in subdiv.getTriangleList():
            keys = [(float(t[k]), float(t[k + 1])) for k in (0, 2, 4)]
            if all(k in lookup for k in keys):
                triangles.append([lookup[k] for k in keys])
        tri = np.asarray(triangles, np.int64)
        # every pixel of the region: its triangle and barycentric weights at rest
        hh, ww = y1 - y0, x1 - x0
        owner = np.full((hh, ww), -1, np.int32)
        local = pts - (x0, y0)
        for n, (a, b, c) in enumerate(tri):
            poly = np.round(local[[a, b, c]] * 16).astype(np.int32)
            cv2.fillConvexPoly(owner, poly, int(n), cv2.LINE_8, 4)
        yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float64)
        missing = owner < 0
        if missing.any():       # pixels no rasterised triangle covered: take the nearest one's triangle
            _, labels = cv2.distanceTransformWithLabels(missing.astype(np.uint8), cv2.DIST_L2, 3,
                                                        labelType=cv2.DIST_LABEL_PIXEL)
            covered = ~missing
            by_label = np.zeros(labels.max() + 1, np.int32)
            by_label[labels[covered]] = owner[covered]
            owner = by_label[labels]
        a, b, c = (local[tri[owner, k]] for k in range(3))
        det = (b[..., 1] - c[..., 1]) * (a[..., 0] - c[..., 0]) + (c[..., 0] - b[..., 0]) * (a[..., 1] - c[..., 1])
        det = np.where(np.abs(det) < 1e-9, 1e-9, det)
        wa = ((b[..., 1] - c[..., 1]) * (xx - c[..., 0]) + (c[..., 0] - b[..., 0]) * (yy - c[..., 1])) / det
        wb = ((c[..., 1] - a[..., 1]) * (xx - c[..., 0]) + (a[..., 0] - c[..., 0]) * (yy - c[..., 1])) / det
        weights = np.stack([wa, wb, 1.0 - wa - wb], axis=-1)
        self._tri_vertices = tri[owner]             # [hh, ww, 3]
        self._weights = weights.astype(np.float32)
        self._grid = np.stack([xx + x0, yy + y0], axis=-1).astype(np.float32)

    # -- motion ----------------------------------------------------------------------------------

    def displacements(self, opening: float, spread: float) -> np.ndarray:
        """[N, 2] displacement of every control point for one mouth (forward: rest -> moved)."""
        pts = self._controls
        x, y = pts[:, 0], pts[:, 1]
        d = np.zeros_like(pts)
        # spread: widen or narrow about the mouth centre, near the mouth
        bump = np.exp(-((x - self.cx) / (1.6 * self.hw)) ** 4 - ((y - self.my) / (1.1 * self.hw)) ** 4)
        d[:, 0] = (x - self.cx) * (WIDTH_RANGE * spread - NARROW * opening) * bump
        corner = np.exp(-((np.abs(x - self.cx) - self.hw) / (0.45 * self.hw)) ** 2 - ((y - self.my) / (0.45 * self.hw)) ** 2)
        d[:, 1] -= SMILE_LIFT * self.hw * max(spread, 0.0) * corner
        # opening: lips apart, jaw down
        gap = opening * MAX_OPEN * 2.0 * self.inner_hw
        u = (x - self.cx) / self.inner_hw
        prof = np.clip(1.0 - u * u, 0.0, 1.0) ** 0.6
        lower = self._lower
        outer_lo = _interp(x, self._outer_lo)
        b = smoothstep((y - outer_lo) / np.maximum(self.chin - outer_lo, 4.0))
        jaw_w = 1.0 - smoothstep((np.abs(x - self.face_cx) / self.face_hw - 0.55) / 0.5)
        fade = 1.0 - smoothstep((y - (self.chin + 0.4 * self.cm)) / (1.4 * self.cm))
        drop = (gap * prof * (1.0 - b) + JAW_FOLLOW * gap * jaw_w * b) * fade
        lift = -UPPER_LIFT * gap * prof * (1.0 - smoothstep((_interp(x, self._inner_up) - y) / (0.6 * self.hw)))
        d[:, 1] += np.where(lower, drop, lift)
        d[len(pts) - self._border_count():] = 0.0
        return d

    def _border_count(self) -> int:
        return len(self._controls) - self._n_mesh - self._n_ring

    def render(self, opening: float, spread: float) -> tuple[np.ndarray, np.ndarray]:
        """The canvas with this mouth, and all 468 landmarks moved with it."""
        moved = self.lm.copy()
        if opening <= 1e-4 and abs(spread) <= 1e-4:
            return self.base.copy(), moved
        disp = self.displacements(opening, spread)
        field = (self._weights[..., None] * disp[self._tri_vertices].astype(np.float32)).sum(axis=2)   # [h, w, 2]
        # inverse map: the source of destination pixel p is q with q + D(q) = p (fixed point)
        src = self._grid - field
        for _ in range(3):
            local = src - np.array(self.roi[:2], np.float32)
            at = cv2.remap(field, local[..., 0], local[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            src = self._grid - at
        x0, y0, x1, y1 = self.roi
        canvas = self.base.copy()
        roi = cv2.remap(self.base, src[..., 0], src[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
        moved[self._mesh_index] += disp[:self._n_mesh]
        gap_px = opening * MAX_OPEN * 2.0 * self.inner_hw
        if gap_px > 0.3:
            self._paint_interior(roi, moved, min(1.0, gap_px / 1.5))
        canvas[y0:y1, x0:x1] = roi
        return canvas, moved

    # -- interior --------------------------------------------------------------------------------

    def _colours(self, rng: np.random.Generator, original: bool) -> None:
        """Interior colours from this face: the cavity and tongue from the lips, the teeth from the
        photo's exposure (a dark-skinned or dim photo gets dimmer teeth, never glowing ones)."""
        jitter = (lambda lo, hi: 1.0) if original else rng.uniform   # noqa: E731
        h, w = self.base.shape[:2]
        outer = np.zeros((h, w), np.uint8)
        inner = np.zeros((h, w), np.uint8)
        cv2.fillPoly(outer, [np.round(np.concatenate([_sorted_contour(self.lm[list(OUTER_UPPER)]),
                                                      _sorted_contour(self.lm[list(OUTER_LOWER)])[::-1]])).astype(np.int32)], 1)
        cv2.fillPoly(inner, [np.round(np.concatenate([self._inner_up, self._inner_lo[::-1]])).astype(np.int32)], 1)
        lips = (outer > 0) & (inner == 0)
        lip = self.base[lips].reshape(-1, 3).astype(np.float64).mean(axis=0) if lips.any() else np.array([90.0, 90, 150])
        cheek = self.lm[list(CHEEKS)].round().astype(int)
        skin = np.mean([self.base[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3).mean(axis=0) for x, y in cheek], axis=0)
        luma = float(skin @ (0.114, 0.587, 0.299))
        self.cavity = np.minimum(lip * 0.16 * jitter(0.7, 1.2) + (3.0, 2.0, 8.0), skin * 0.22)
        self.tongue = np.minimum(lip * np.array([0.62, 0.6, 0.92]) * jitter(0.8, 1.1), skin * 0.85)
        bright = float(np.clip(luma / 165.0, 0.55, 1.05)) ** 0.5
        self.teeth = np.array([200.0, 212.0, 222.0]) * bright * jitter(0.85, 1.02)
        self.teeth_show = 1.0 if original else rng.uniform(0.3, 1.0)
        self.lower_teeth = (not original) and rng.random() < 0.35

    def _paint_interior(self, roi: np.ndarray, moved: np.ndarray, strength: float) -> None:
        x0, y0 = self.roi[:2]
        up = _sorted_contour(moved[list(INNER_UPPER)]) - (x0, y0)
        lo = _sorted_contour(moved[list(INNER_LOWER)]) - (x0, y0)
        poly = np.concatenate([up, lo[::-1]])
        bx0, by0 = np.floor(poly.min(axis=0)).astype(int) - 2
        bx1, by1 = np.ceil(poly.max(axis=0)).astype(int) + 3
        bx0, by0 = max(bx0, 0), max(by0, 0)
        bx1, by1 = min(bx1, roi.shape[1]), min(by1, roi.shape[0])
        if bx1 <= bx0 or by1 <= by0:
            return
        mask = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
        cv2.fillPoly(mask, [np.round((poly - (bx0, by0)) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
        alpha = mask.astype(np.float32) / 255.0 * strength
        if not alpha.any():
            return
        yy, xx = np.mgrid[by0:by1, bx0:bx1].astype(np.float64)
        xx += 0.5
        yy += 0.5
        top, bottom = _interp(xx, up), _interp(xx, lo)
        height = np.maximum(bottom - top, 1e-3)
        half = max((up[-1, 0] - up[0, 0]) / 2, 1.0)
        cx = (up[-1, 0] + up[0, 0]) / 2
        u = np.clip(np.abs(xx - cx) / half, 0.0, 1.0)
        v = np.clip((yy - top) / height, 0.0, 1.0)

        colour = self.cavity * ((0.55 + 0.45 * (1.0 - u * u)) * (0.85 + 0.3 * v * (1 - v)))[..., None]
        # tongue: low in a wide-open mouth, lit from the front
        t = smoothstep((v - 0.55) / 0.3) * smoothstep((0.8 - u) / 0.25) * smoothstep((height - 0.22 * half) / (0.25 * half))
        tongue = self.tongue * (0.75 + 0.25 * (1 - u))[..., None]
        colour = colour * (1 - 0.85 * t[..., None]) + tongue * (0.85 * t[..., None])
        # upper teeth under the upper lip, soft gaps between them, darker towards the corners
        th = TEETH_HEIGHT * 2 * half * self.teeth_show
        teeth_a = np.clip(top + th - yy + 0.5, 0.0, 1.0) * smoothstep((0.78 - u) / 0.18)
        gaps = np.ones_like(u)
        for g in (0.0, 0.24, 0.45, 0.63):
            gaps -= 0.14 * np.exp(-((u - g) / 0.025) ** 2)
        edge = 0.82 + 0.18 * np.clip((yy - top) / max(th, 1e-3), 0, 1)
        teeth = self.teeth * ((0.62 + 0.38 * (1 - u * u)) * gaps * edge)[..., None]
        colour = colour * (1 - teeth_a[..., None]) + teeth * teeth_a[..., None]
        if self.lower_teeth:
            lth = 0.6 * th
            la = (np.clip(yy - (bottom - lth) + 0.5, 0.0, 1.0) * smoothstep((0.6 - u) / 0.2)
                  * smoothstep((height - 0.3 * half) / (0.2 * half)))
            colour = colour * (1 - la[..., None]) + self.teeth * 0.8 * (0.7 + 0.3 * (1 - u))[..., None] * la[..., None]
        # the upper lip shades the top of the mouth
        colour *= (0.7 + 0.3 * smoothstep((yy - top) / 2.0))[..., None]

        patch = roi[by0:by1, bx0:bx1].astype(np.float32)
        a = alpha[..., None]
        roi[by0:by1, bx0:bx1] = np.clip(patch * (1 - a) + colour * a + 0.5, 0, 255).astype(np.uint8)

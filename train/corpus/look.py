"""Per-clip camera look: what makes the network learn to move any face's lips rather than memorise a
few photos. Each clip draws colour balance, exposure, saturation, gamma, a light gradient, blur,
sensor noise and JPEG compression once; head motion is a slow walk of position, roll and scale.

Everything is applied to the whole video frame before the face is cropped, as a camera and a codec
would, so the crop (and the generator's reference frame) carries the same look as the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import walk

MOTION_PX = 0.02            # head translation walk amplitude, fraction of the face box
MOTION_DEG = 1.5            # head roll walk amplitude, degrees
MOTION_SCALE = 0.015        # head scale walk amplitude
ROLL_DEG = 6.0              # per-clip head roll, +-
BOX_JITTER = 0.006          # per-frame face-box noise, fraction of the box (a detector's wobble)


@dataclass(frozen=True)
class Look:
    """One clip's camera: colour, light, optics and codec."""

    gain: tuple[float, float, float]    # per-channel gain (BGR): white balance and exposure
    saturation: float
    gamma: float
    light_angle: float                  # direction of a soft light gradient across the frame (radians)
    light_strength: float               # 0: flat; 0.3: one side 30 % brighter than the other
    blur: float                         # Gaussian sigma in frame pixels (0: none)
    noise: float                        # sensor noise sigma, grey levels
    jpeg_quality: int                   # 100: no compression

    @property
    def plain(self) -> bool:
        return self == PLAIN

    @staticmethod
    def draw(rng: np.random.Generator, plain: bool = False) -> "Look":
        """A random look; ``plain`` gives the untouched camera (the demo photo's own clips)."""
        if plain:
            return PLAIN
        exposure = rng.uniform(0.8, 1.2)
        gain = tuple(float(exposure * g) for g in rng.uniform(0.9, 1.1, 3))
        return Look(
            gain=gain,                                          # type: ignore[arg-type]
            saturation=float(rng.uniform(0.7, 1.25)),
            gamma=float(rng.uniform(0.85, 1.2)),
            light_angle=float(rng.uniform(0, 2 * np.pi)),
            light_strength=float(rng.uniform(0.0, 0.3)),
            blur=float(rng.choice([0.0, rng.uniform(0.3, 1.1)], p=[0.5, 0.5])),
            noise=float(rng.uniform(0.0, 3.0)),
            jpeg_quality=int(rng.choice([100, int(rng.integers(35, 95))], p=[0.3, 0.7])),
        )

    def apply(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The frame as this camera sees it (``rng`` draws only the noise)."""
        if self.plain:
            return frame
        h, w = frame.shape[:2]
        x = frame.astype(np.float32) / 255.0
        if self.saturation != 1.0:
            grey = x @ np.array([0.114, 0.587, 0.299], np.float32)
            x = grey[..., None] + (x - grey[..., None]) * self.saturation
        x = x * np.array(self.gain, np.float32)
        if self.light_strength > 0:
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            ramp = ((xx / w - 0.5) * np.cos(self.light_angle) + (yy / h - 0.5) * np.sin(self.light_angle))
            x = x * (1.0 + self.light_strength * ramp)[..., None]
        x = np.clip(x, 0.0, 1.0) ** self.gamma * 255.0
        if self.blur > 0:
            x = cv2.GaussianBlur(x, (0, 0), self.blur)
        if self.noise > 0:
            x = x + rng.normal(0.0, self.noise, x.shape).astype(np.float32)
        out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
        if self.jpeg_quality < 100:
            ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if ok:
                out = cv2.imdecode(data, cv2.IMREAD_COLOR)
        return out


PLAIN = Look((1.0, 1.0, 1.0), 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 100)


@dataclass(frozen=True)
class HeadMotion:
    """Per-frame offsets of the head in the video frame: translation (px), roll (deg), scale."""

    dx: np.ndarray
    dy: np.ndarray
    roll: np.ndarray
    scale: np.ndarray
    box_noise: np.ndarray     # [T, 4] face-box noise in fractions of the box

    @staticmethod
    def draw(n: int, face_px: float, rng: np.random.Generator, still: bool = False) -> "HeadMotion":
        if still:
            z = np.zeros(n)
            return HeadMotion(z, z, z, z, np.zeros((n, 4)))
        roll0 = rng.uniform(-ROLL_DEG, ROLL_DEG)
        return HeadMotion(walk(n, rng, MOTION_PX * face_px), walk(n, rng, MOTION_PX * face_px),
                          roll0 + walk(n, rng, MOTION_DEG), walk(n, rng, MOTION_SCALE),
                          rng.normal(0.0, BOX_JITTER, (n, 4)))

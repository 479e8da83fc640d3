"""Procedurally generated faces with known 68-point (iBUG/300W) geometry.

Why: the embedded default recipe must run with no files and no downloads, yet the task must
not be trivial. Each face is drawn from a 3-D template of the 68 iBUG points (plus a
forehead contour for the skin region) that varies in

- shape: face width, jaw squareness and taper, eye spacing and size, nose length and width,
  mouth width, brow height and arch;
- expression: mouth opening, smile, brow raise, eye openness (with a little asymmetry);
- pose: yaw, pitch and roll of the 3-D template, scale and offset inside the crop (as a face
  detector's box would leave it);
- appearance: skin, hair, lip, iris and background colours, a lighting gradient, background
  clutter, an occluder (hand / object) on some faces, blur and sensor noise.

Everything is drawn with Pillow at ``supersample`` times the output size and box-filtered
down, so features are anti-aliased and points are sub-pixel exact. A face depends only on
``(seed, split, index)``, so a data set is identical whatever its size or the order of
generation. Points are in *continuous* pixel coordinates: the image spans [0, W] and pixel
``i`` has its centre at ``i + 0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kdtool_landmarks.layouts import LAYOUTS

_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}
_FLIP = np.asarray(LAYOUTS["ibug68"].flip_perm)


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator (the recipe's ``data.synthetic`` section maps onto these)."""

    size: int = 64
    supersample: int = 3
    max_yaw_deg: float = 40.0
    max_pitch_deg: float = 20.0
    max_roll_deg: float = 25.0
    scale_range: tuple[float, float] = (0.26, 0.34)  # face half-width / crop size
    max_shift: float = 0.07  # face centre offset / crop size
    occluder_prob: float = 0.25
    clutter: int = 4  # background shapes per image
    max_blur: float = 1.0  # Gaussian blur radius in output pixels
    max_noise: float = 10.0  # std of additive noise, in 8-bit levels


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, _SPLIT_IDS.get(split, 9), index]))


def face_template(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random 3-D face: (68, 3) landmarks and (K, 3) skin outline (jaw + forehead).

    Units: about one face half-width; x to the image right, y down, z towards the camera.
    The right half (image left) is built, the left half mirrored with the flip permutation,
    then a little asymmetry is added so faces are not perfectly symmetric.
    """
    u = rng.uniform
    width = u(0.85, 1.0)
    jaw_top, chin = u(-0.25, -0.05), u(0.95, 1.2)
    squareness = u(2.0, 3.2)  # super-ellipse exponent of the jaw
    taper = u(0.0, 0.25)
    eye_sep, eye_w, eye_y = u(0.33, 0.43), u(0.12, 0.17), u(-0.28, -0.16)
    eye_open = u(0.35, 1.0) if rng.random() < 0.85 else u(0.05, 0.35)
    brow_y, brow_arch, brow_raise = u(-0.55, -0.45), u(0.02, 0.1), u(-0.03, 0.12)
    nose_len, nose_w = u(0.2, 0.42), u(0.16, 0.26)
    mouth_y, mouth_w = u(0.55, 0.7), u(0.24, 0.38)
    smile = u(-0.04, 0.1)
    mouth_open = u(0.0, 0.22) if rng.random() < 0.5 else 0.0

    pts = np.zeros((68, 3))
    # Jaw 0..16: a super-ellipse from the right temple, round the chin, to the left temple.
    for i in range(17):
        phi = math.pi - i * math.pi / 16
        c, s = math.cos(phi), math.sin(phi)
        e = 2.0 / squareness
        x = width * math.copysign(abs(c) ** e, c) * (1 - taper * s**2)
        drop = mouth_open * 0.6 * s**4
        y = jaw_top + (chin - jaw_top) * abs(s) ** e + drop
        z = 0.15 * s - 0.7 * abs(c)
        pts[i] = (x, y, z)
    # Right brow 17..21 (outer to inner).
    for k in range(5):
        t = k / 4
        x = -(0.85 - 0.7 * t) * width
        y = brow_y - brow_raise - brow_arch * math.sin(math.pi * (0.3 + 0.7 * t))
        pts[17 + k] = (x, y, 0.3 - 0.35 * abs(x))
    # Nose bridge 27..30 and base 31..35.
    for k in range(4):
        t = k / 3
        pts[27 + k] = (0.0, -0.3 + t * (nose_len + 0.15), 0.3 + 0.4 * t)
    base_y = -0.15 + nose_len + 0.12
    for k, (dx, dy, z) in enumerate([(-1.0, 0.0, 0.3), (-0.5, 0.03, 0.42), (0.0, 0.05, 0.5)]):
        pts[31 + k] = (dx * nose_w, base_y + dy, z)
    # Right eye 36..41: outer corner, two upper lid points, inner corner, two lower lid points.
    cx = -eye_sep
    eh = 0.075 * eye_open
    eye = [(-1.0, 0.0), (-0.35, -1.0), (0.35, -1.0), (1.0, 0.02), (0.35, 0.75), (-0.35, 0.75)]
    for k, (ex, ey) in enumerate(eye):
        pts[36 + k] = (cx + ex * eye_w, eye_y + ey * eh, 0.2 - 0.2 * abs(cx + ex * eye_w))
    # Mouth: outer 48..54 (upper, right corner to centre), 55..59 lower; inner 60..67.
    my = mouth_y
    outer_up = [(-1.0, -smile), (-0.6, -0.07), (-0.25, -0.1), (0.0, -0.08)]
    for k, (mx, dy) in enumerate(outer_up):
        pts[48 + k] = (mx * mouth_w, my + dy, 0.45 - 0.3 * mx**2)
    outer_low = {59: (-0.6, 0.08), 58: (-0.25, 0.11), 57: (0.0, 0.12)}
    for idx, (mx, dy) in outer_low.items():
        pts[idx] = (mx * mouth_w, my + dy + mouth_open, 0.45 - 0.3 * mx**2)
    inner = {
        60: (-0.8, -0.8 * smile, 0.0),
        61: (-0.3, -0.025, 0.0),
        62: (0.0, -0.02, 0.0),
        67: (-0.3, 0.025, 1.0),
        66: (0.0, 0.03, 1.0),
    }
    for idx, (mx, dy, follows) in inner.items():
        pts[idx] = (mx * mouth_w, my + dy + follows * mouth_open, 0.42 - 0.3 * mx**2)

    # Mirror the right half onto the left with the flip permutation (x -> -x).
    right = [
        i
        for i in range(68)
        if _FLIP[i] != i
        and (
            i < 8 or 17 <= i <= 21 or i in (31, 32) or 36 <= i <= 41 or i in (48, 49, 50, 59, 58, 60, 61, 67)
        )
    ]
    for i in right:
        pts[_FLIP[i]] = pts[i] * (-1.0, 1.0, 1.0)
    # Asymmetry: independent jitter of brows, eye openness and mouth corners.
    pts[22:27, 1] += u(-0.03, 0.03)
    pts[42:48, 1] += (pts[42:48, 1] - pts[42:48, 1].mean()) * u(-0.25, 0.25)
    pts[54, 1] += u(-0.03, 0.03)
    pts[:, :2] += rng.normal(0.0, 0.006, size=(68, 2))

    # Skin outline: jaw plus a forehead arc over the top of the head.
    forehead = []
    top = brow_y - u(0.45, 0.65)
    for k in range(1, 12):
        phi = math.pi * k / 12  # 0..pi across the top, from the left temple
        x = width * 1.02 * math.cos(phi)
        y = jaw_top - (jaw_top - top) * math.sin(phi) ** 0.8
        forehead.append((x, y, 0.1 * math.sin(phi) - 0.6 * abs(math.cos(phi))))
    outline = np.concatenate([pts[:17], np.asarray(forehead)], axis=0)
    return pts, outline


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (
        math.cos(yaw),
        math.sin(yaw),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(roll),
        math.sin(roll),
    )
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _colour(rng: np.random.Generator, lo: float = 0, hi: float = 255) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.uniform(lo, hi, size=3))  # type: ignore[return-value]


def _skin(rng: np.random.Generator) -> np.ndarray:
    tone = rng.uniform(0.0, 1.0)
    light = np.array([236, 196, 170]) * (1 - tone) + np.array([92, 58, 40]) * tone
    return np.clip(light + rng.normal(0, 12, 3), 0, 255)


def render_face(seed: int, split: str, index: int, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """One face: (H, W, 3) uint8 image and (68, 2) float32 points (continuous pixel coordinates)."""
    rng = _rng(seed, split, index)
    pts3, outline3 = face_template(rng)
    rot = _rotation(
        math.radians(rng.uniform(-cfg.max_yaw_deg, cfg.max_yaw_deg)),
        math.radians(rng.uniform(-cfg.max_pitch_deg, cfg.max_pitch_deg)),
        math.radians(rng.uniform(-cfg.max_roll_deg, cfg.max_roll_deg)),
    )
    ss = cfg.supersample
    big = cfg.size * ss
    scale = rng.uniform(*cfg.scale_range) * big
    centre = big / 2 + rng.uniform(-cfg.max_shift, cfg.max_shift, size=2) * big
    centre[1] -= 0.3 * scale  # puts the landmarks' centre (not the head's) near the crop centre

    def project(p: np.ndarray) -> np.ndarray:
        q = p @ rot.T
        return q[:, :2] * scale + centre

    pts = project(pts3)
    outline = project(outline3)
    depth = (pts3 @ rot.T)[:, 2]

    # Background: a gradient between two colours plus random clutter.
    c0, c1 = np.array(_colour(rng)), np.array(_colour(rng))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:big, 0:big] / big
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    bg = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(cfg.clutter):
        x0, y0 = rng.uniform(-0.2, 1.0, size=2) * big
        w, h = rng.uniform(0.1, 0.5, size=2) * big
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x0 + w, y0 + h], fill=_colour(rng))

    skin = _skin(rng)
    hair = np.array(_colour(rng, 10, 120)) if rng.random() < 0.8 else np.array(_colour(rng, 120, 240))
    # Hair blob behind the head and a neck below the chin.
    head_c = outline.mean(axis=0)
    r = np.linalg.norm(outline - head_c, axis=1).max() * rng.uniform(1.0, 1.15)
    hair_c = head_c - rot[:2, 1] * scale * rng.uniform(0.1, 0.35)
    draw.ellipse(
        [hair_c[0] - r, hair_c[1] - r, hair_c[0] + r, hair_c[1] + r * rng.uniform(0.7, 1.0)],
        fill=tuple(int(v) for v in hair),
    )
    neck_w = 0.5 * scale
    down = rot[:2, 1]
    side = np.array([down[1], -down[0]])
    chin = pts[8]
    neck = [
        chin - side * neck_w - down * 0.6 * scale,
        chin + side * neck_w - down * 0.6 * scale,
        chin + side * neck_w * 1.3 + down * 1.5 * scale,
        chin - side * neck_w * 1.3 + down * 1.5 * scale,
    ]
    draw.polygon([tuple(p) for p in neck], fill=tuple(int(v) for v in skin * 0.8))
    draw.polygon([tuple(p) for p in outline], fill=tuple(int(v) for v in skin))
    # Ears: on the side turned towards the camera.
    for idx in (1, 15):
        if depth[idx] > -0.75:
            e = pts[idx] - (pts[8] - pts[idx]) * 0.05
            er = 0.13 * scale
            draw.ellipse(
                [e[0] - er * 0.6, e[1] - er, e[0] + er * 0.6, e[1] + er],
                fill=tuple(int(v) for v in skin * 0.9),
            )
    draw.polygon([tuple(p) for p in outline], fill=tuple(int(v) for v in skin))

    line = max(1, int(round(0.02 * scale)))
    brow_col = tuple(int(v) for v in np.clip(hair * 0.8, 0, 255))
    for seg in (pts[17:22], pts[22:27]):
        draw.line([tuple(p) for p in seg], fill=brow_col, width=max(2, int(0.045 * scale)), joint="curve")
    iris = _colour(rng, 20, 160)
    for eye in (pts[36:42], pts[42:48]):
        draw.polygon([tuple(p) for p in eye], fill=(245, 245, 240), outline=(40, 30, 30))
        c = eye.mean(axis=0) + rng.normal(0, 0.01 * scale, 2)
        ir = min(0.06 * scale, float(np.ptp(eye[:, 1])) * 0.55 + 1)
        draw.ellipse([c[0] - ir, c[1] - ir, c[0] + ir, c[1] + ir], fill=iris)
        draw.ellipse([c[0] - ir / 2.5, c[1] - ir / 2.5, c[0] + ir / 2.5, c[1] + ir / 2.5], fill=(10, 10, 10))
        draw.line([tuple(p) for p in eye[:4]], fill=(30, 20, 20), width=line + 1)
    nose_col = tuple(int(v) for v in skin * 0.7)
    draw.line([tuple(p) for p in pts[27:31]], fill=nose_col, width=line)
    draw.line([tuple(p) for p in pts[31:36]], fill=nose_col, width=line)
    for idx in (32, 34):
        n = pts[idx]
        nr = 0.03 * scale
        draw.ellipse(
            [n[0] - nr, n[1] - nr * 0.6, n[0] + nr, n[1] + nr * 0.6], fill=tuple(int(v) for v in skin * 0.4)
        )
    lip = tuple(int(v) for v in np.clip(skin * np.array([0.95, 0.55, 0.55]) + rng.normal(0, 10, 3), 0, 255))
    draw.polygon([tuple(p) for p in pts[48:60]], fill=lip)
    inner = pts[60:68]
    if np.ptp(inner[:, 1]) > 0.02 * scale:
        draw.polygon([tuple(p) for p in inner], fill=(50, 15, 20))
        teeth = np.array([pts[60], pts[61], pts[62], pts[63], pts[64]])
        teeth_low = teeth + (pts[66] - pts[62]) * 0.35
        draw.polygon([tuple(p) for p in teeth] + [tuple(p) for p in teeth_low[::-1]], fill=(235, 230, 215))
    else:
        draw.line([tuple(p) for p in inner[:5]], fill=(70, 25, 30), width=line)

    # Glasses on some faces, an occluder on others.
    if rng.random() < 0.15:
        col = _colour(rng, 0, 90)
        for eye in (pts[36:42], pts[42:48]):
            c = eye.mean(axis=0)
            gr = 0.2 * scale
            draw.ellipse(
                [c[0] - gr, c[1] - gr * 0.75, c[0] + gr, c[1] + gr * 0.75], outline=col, width=line + 1
            )
        draw.line([tuple(pts[39]), tuple(pts[42])], fill=col, width=line + 1)
    if rng.random() < cfg.occluder_prob:
        target = pts[rng.integers(0, 68)]
        ow, oh = rng.uniform(0.2, 0.45, size=2) * scale
        box = [target[0] - ow, target[1] - oh, target[0] + ow, target[1] + oh]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=_colour(rng))

    # Lighting: a directional brightness gradient over the whole image.
    arr = np.asarray(img).astype(np.float32)
    la = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0.0, 0.35) * (np.cos(la) * (xx - 0.5) + np.sin(la) * (yy - 0.5)) * 2
    arr = arr * light[..., None] * rng.uniform(0.7, 1.2)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    img = img.resize((cfg.size, cfg.size), Image.Resampling.BOX)
    blur = rng.uniform(0.0, cfg.max_blur)
    if blur > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    out = np.asarray(img).astype(np.float32)
    out += rng.normal(0.0, rng.uniform(0.0, cfg.max_noise), size=out.shape)
    image = np.clip(out, 0, 255).astype(np.uint8)
    # Pillow draws a vertex at (X, Y) on the pixel whose centre is (X, Y), i.e. continuous
    # coordinate X + 0.5 of the supersampled canvas; box-filtering by ss divides by ss.
    points = ((pts + 0.5) / ss).astype(np.float32)
    return image, points


def make_split(seed: int, split: str, count: int, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """``count`` faces of a split: (count, H, W, 3) uint8 images and (count, 68, 2) points."""
    images = np.empty((count, cfg.size, cfg.size, 3), dtype=np.uint8)
    points = np.empty((count, 68, 2), dtype=np.float32)
    for i in range(count):
        images[i], points[i] = render_face(seed, split, i, cfg)
    return images, points

"""Procedural segmentation scenes: textured shapes on textured backgrounds, from a seed.

The embedded default data set of the ``segmentation_lad`` task, generated at run time so
nothing is downloaded. Every scene is a function of ``(seed, index)`` alone. Pure numpy
(scikit-image is not a dependency): textures are smooth value noise, stripes, checkers and
dots with random colours, so local appearance does not give a shape's class away and the
network has to look at geometry. A void band (255) one or two pixels wide is drawn along
every object boundary, as Pascal VOC's annotations have.
"""

from __future__ import annotations

import numpy as np

SHAPE_CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle", "ring", "cross")
# VOC-like colours for drawing masks (index -> RGB); class 0 black, void 255 drawn cream.
SYNTH_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (128, 0, 0),
    (0, 128, 0),
    (128, 128, 0),
    (0, 0, 128),
    (128, 0, 128),
)
VOID = 255


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random ``cells x cells`` grid bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    pos = np.linspace(0, cells, size, endpoint=False)
    i0 = np.floor(pos).astype(int)
    f = pos - i0
    f = f * f * (3 - 2 * f)  # smoothstep, avoids visible grid lines
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """One random two-colour texture, float32 (size, size, 3) in [0, 1]."""
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:
        t = _smooth_noise(rng, size, int(rng.integers(2, 9)))
    elif kind == 1:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(3.0, 12.0)
        t = 0.5 + 0.5 * np.sin(
            (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + rng.uniform(0, 6.3)
        )
    elif kind == 2:
        cell = int(rng.integers(3, 10))
        t = (((xx + rng.integers(cell)) // cell + (yy + rng.integers(cell)) // cell) % 2).astype(np.float32)
    else:
        period = int(rng.integers(4, 10))
        radius = rng.uniform(0.8, period / 2.5)
        dy = (yy + rng.integers(period)) % period - period / 2
        dx = (xx + rng.integers(period)) % period - period / 2
        t = (dx * dx + dy * dy < radius * radius).astype(np.float32)
    c0 = rng.random(3)
    c1 = rng.random(3)
    return (c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]).astype(np.float32)


def _shape_mask(kind: str, rng: np.random.Generator, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean mask of one shape of class ``kind`` centred at (cy, cx) with radius ``r``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi / 2)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    if kind == "disc":
        return u * u + v * v <= r * r
    if kind == "square":
        return (np.abs(u) <= r * 0.8) & (np.abs(v) <= r * 0.8)
    if kind == "triangle":
        # Equilateral triangle with circumradius r, rotated by a random angle.
        inside = np.ones_like(u, dtype=bool)
        rot = rng.uniform(0, 2 * np.pi)
        for k in range(3):
            theta = rot + k * 2 * np.pi / 3
            inside &= (u * np.cos(theta) + v * np.sin(theta)) <= r * 0.5
        return inside
    if kind == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (r * 0.55) ** 2)
    if kind == "cross":
        arm = r * 0.3
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    raise ValueError(f"unknown shape {kind!r}")


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of a label change (4-neighbourhood, dilated)."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge[1:, :] |= mask[:-1, :] != mask[1:, :]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:, 1:] |= mask[:, :-1] != mask[:, 1:]
    for _ in range(width - 1):
        grown = edge.copy()
        grown[:-1] |= edge[1:]
        grown[1:] |= edge[:-1]
        grown[:, :-1] |= edge[:, 1:]
        grown[:, 1:] |= edge[:, :-1]
        edge = grown
    return edge


def generate_scene(
    seed: int,
    index: int,
    size: int = 64,
    *,
    max_shapes: int = 4,
    void_width: int = 1,
    noise: float = 0.06,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 (size, size, 3), mask uint8 (size, size))``.

    1 to ``max_shapes`` shapes of random classes, sizes, rotations and textures, later ones
    occluding earlier ones, on a textured background; Gaussian pixel noise of std ``noise``;
    a void band of ``void_width`` pixels (0 for none) along every boundary in the mask.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 0x5E6, index]))
    image = _texture(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(1, len(SHAPE_CLASSES)))
        r = rng.uniform(0.12, 0.3) * size
        cy, cx = rng.uniform(r * 0.5, size - r * 0.5, size=2)
        region = _shape_mask(SHAPE_CLASSES[cls], rng, size, cy, cx, r)
        image[region] = _texture(rng, size)[region]
        mask[region] = cls
    image = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    out_image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if void_width > 0:
        mask[_boundary(mask, void_width)] = VOID
    return out_image, mask

"""Active shape model: the soft landmarks the Tolerant-Teacher learns from.

PCA on the training shapes (each flattened to 2N numbers, in the normalised crop frame the
networks regress), keeping the fewest components whose eigenvalues hold ``variance`` (97% in
the paper) of the total; each shape's coefficients ``b = V^T (x - mean)`` are clipped to
``+-clip * sqrt(lambda)`` (3 in the paper) and the shape rebuilt as ``mean + V b``. The result
is a plausible, smoothed version of the annotation: annotation noise and rare deformations
the shape space cannot express are removed, which is what makes the teacher "tolerant".

*Open point* (not in the paper): shapes are not Procrustes-aligned before PCA, so pose and
scale are part of the shape space, as when PCA is run directly on the training labels;
``align: procrustes`` removes translation, scale and rotation before PCA and puts them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ShapeModel:
    mean: np.ndarray  # (2N,)
    components: np.ndarray  # (2N, k), orthonormal columns
    eigenvalues: np.ndarray  # (k,)
    explained: float  # share of the variance the k components keep
    clip: float

    @property
    def num_components(self) -> int:
        return int(self.components.shape[1])

    def coefficients(self, shapes: np.ndarray) -> np.ndarray:
        flat = shapes.reshape(len(shapes), -1).astype(np.float64)
        return (flat - self.mean) @ self.components

    def reconstruct(self, shapes: np.ndarray) -> np.ndarray:
        """Soft landmarks: project, clip each coefficient to +-clip*sqrt(lambda), rebuild."""
        b = self.coefficients(shapes)
        bound = self.clip * np.sqrt(self.eigenvalues)
        b = np.clip(b, -bound, bound)
        return (self.mean + b @ self.components.T).reshape(shapes.shape).astype(np.float32)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            mean=self.mean,
            components=self.components,
            eigenvalues=self.eigenvalues,
            explained=self.explained,
            clip=self.clip,
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ShapeModel:
        with np.load(path) as z:
            return cls(z["mean"], z["components"], z["eigenvalues"], float(z["explained"]), float(z["clip"]))


def fit_shape_model(shapes: np.ndarray, variance: float = 0.97, clip: float = 3.0) -> ShapeModel:
    """PCA of (M, N, 2) shapes keeping the smallest k with cumulative variance >= ``variance``."""
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance share must be in (0, 1], got {variance}")
    flat = shapes.reshape(len(shapes), -1).astype(np.float64)
    if len(flat) < 2:
        raise ValueError("the shape model needs at least two training shapes")
    mean = flat.mean(axis=0)
    _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
    eig = s**2 / (len(flat) - 1)
    total = eig.sum()
    if total <= 0:
        k = 1
    else:
        cum = np.cumsum(eig) / total
        k = int(np.searchsorted(cum, variance - 1e-12) + 1)
        k = min(k, len(eig))
    explained = float(eig[:k].sum() / total) if total > 0 else 1.0
    return ShapeModel(mean, vt[:k].T.copy(), eig[:k].copy(), explained, clip)


def _similarity_to(shape: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Rotation, scale and translation taking ``shape`` onto ``ref`` (least squares)."""
    mu_s, mu_r = shape.mean(0), ref.mean(0)
    a, b = shape - mu_s, ref - mu_r
    u, sig, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    corr = np.diag([1.0, d])
    rot = u @ corr @ vt
    scale = float((sig * np.diag(corr)).sum() / max((a**2).sum(), 1e-12))
    return rot, scale, mu_r - scale * mu_s @ rot


def soft_landmarks(
    shapes: np.ndarray, variance: float = 0.97, clip: float = 3.0, align: str = "none"
) -> tuple[np.ndarray, ShapeModel]:
    """Soft landmarks for (M, N, 2) shapes and the shape model that made them."""
    if align == "none":
        model = fit_shape_model(shapes, variance, clip)
        return model.reconstruct(shapes), model
    if align != "procrustes":
        raise ValueError(f"unknown alignment {align!r}; expected 'none' or 'procrustes'")
    ref = shapes.mean(axis=0)
    ref = (ref - ref.mean(0)) / max(float(np.linalg.norm(ref - ref.mean(0))), 1e-12)
    transforms = [_similarity_to(s, ref) for s in shapes]
    aligned = np.stack([scale * s @ rot + t for s, (rot, scale, t) in zip(shapes, transforms, strict=True)])
    model = fit_shape_model(aligned, variance, clip)
    rebuilt = model.reconstruct(aligned)
    back = np.stack(
        [((r - t) @ rot.T) / scale for r, (rot, scale, t) in zip(rebuilt, transforms, strict=True)]
    )
    return back.astype(np.float32), model

"""Landmark layouts: point counts, left/right flip permutations and the eye corners for NME.

A horizontal flip mirrors the image, so a point on the subject's left becomes a point on the
right: the flipped shape must also be re-indexed (point ``i`` of the flipped face is point
``perm[i]`` of the original, mirrored). Getting this wrong teaches a model swapped eyes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _perm_from_pairs(n: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


@dataclass(frozen=True)
class Layout:
    """A landmark annotation scheme."""

    name: str
    num_points: int
    flip_perm: tuple[int, ...] | None
    # Outer eye corners: the inter-ocular distance normalising NME.
    eye_corners: tuple[int, int] | None

    def __post_init__(self) -> None:
        if self.flip_perm is not None:
            perm = np.asarray(self.flip_perm)
            if sorted(perm.tolist()) != list(range(self.num_points)) or not np.array_equal(
                perm[perm], np.arange(len(perm))
            ):
                raise ValueError(
                    f"layout {self.name}: flip permutation is not an involution of 0..{self.num_points - 1}"
                )


_IBUG68_PAIRS = (
    [(i, 16 - i) for i in range(8)]  # jaw
    + [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22)]  # brows
    + [(31, 35), (32, 34)]  # nostrils
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    + [(60, 64), (61, 63), (65, 67)]  # inner lips
)

# Same pairs as the public WFLW tooling (HRNet's MATCHED_PARTS), 0-based.
_WFLW98_PAIRS = (
    [(i, 32 - i) for i in range(16)]
    + [(33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47)]
    + [(60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73)]
    + [(55, 59), (56, 58)]
    + [(76, 82), (77, 81), (78, 80), (87, 83), (86, 84)]
    + [(88, 92), (89, 91), (95, 93), (96, 97)]
)

_COFW29_PAIRS = [
    (0, 1),
    (4, 6),
    (2, 3),
    (5, 7),
    (8, 9),
    (10, 11),
    (12, 14),
    (16, 17),
    (13, 15),
    (18, 19),
    (22, 23),
]

LAYOUTS: dict[str, Layout] = {
    "ibug68": Layout("ibug68", 68, _perm_from_pairs(68, _IBUG68_PAIRS), (36, 45)),
    "wflw98": Layout("wflw98", 98, _perm_from_pairs(98, _WFLW98_PAIRS), (60, 72)),
    "cofw29": Layout("cofw29", 29, _perm_from_pairs(29, _COFW29_PAIRS), (8, 9)),
}


def layout_for(name: str | None, num_points: int) -> Layout:
    """The named layout, or the standard one for ``num_points``, or a generic layout
    (no flip, no eye corners: NME falls back to the box size)."""
    if name is not None:
        layout = LAYOUTS[name]
        if layout.num_points != num_points:
            raise ValueError(f"layout {name!r} has {layout.num_points} points, the data has {num_points}")
        return layout
    for layout in LAYOUTS.values():
        if layout.num_points == num_points:
            return layout
    return Layout(f"generic{num_points}", num_points, None, None)

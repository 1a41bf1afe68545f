"""Part colours: far apart in CIELAB, and the stripes and checkers drawn in a shade of them."""
from __future__ import annotations

import colorsys
from typing import List, Optional, Sequence

import numpy as np

from .primitives import Pattern, SeedLike, Vec3, _rng, _vec


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=float)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _color_candidates(rng: np.random.Generator, n: int = 384) -> np.ndarray:
    h = rng.random(n)
    s = rng.uniform(0.45, 0.95, n)
    v = rng.uniform(0.5, 0.95, n)
    return np.array([colorsys.hsv_to_rgb(*hsv) for hsv in zip(h, s, v)])


def distinct_colors(rng: SeedLike, n: int, avoid: Sequence[Sequence[float]] = ()) -> List[Vec3]:
    """``n`` colours far apart in CIELAB (greedy farthest-point over random saturated candidates),
    also far from the colours in ``avoid``."""
    rng = _rng(rng)
    cand = _color_candidates(rng)
    lab = _srgb_to_lab(cand)
    chosen: List[int] = []
    if len(avoid):
        dmin = np.min(np.linalg.norm(lab[:, None] - _srgb_to_lab(np.asarray(avoid))[None], axis=-1), axis=1)
    else:
        dmin = np.full(len(cand), np.inf)
        first = int(rng.integers(len(cand)))
        chosen.append(first)
        dmin = np.minimum(dmin, np.linalg.norm(lab - lab[first], axis=-1))
    while len(chosen) < n:
        # a random one among the nearly-farthest candidates (pure farthest-point always picks extremes)
        near_best = np.nonzero(dmin >= 0.85 * dmin.max())[0]
        k = int(rng.choice(near_best))
        chosen.append(k)
        dmin = np.minimum(dmin, np.linalg.norm(lab - lab[k], axis=-1))
    chosen = chosen[:n]
    if not len(avoid):
        chosen = [chosen[i] for i in rng.permutation(len(chosen))]  # no part always gets the "first" colour
    return [_vec(np.round(cand[k], 4)) for k in chosen]


def _pattern_for(rng: np.random.Generator, color: Vec3, kind: Optional[str] = None) -> Pattern:
    kind = kind or ("stripes" if rng.random() < 0.6 else "checker")
    c = np.asarray(color)
    second = c * 0.45 if rng.random() < 0.5 else c + (1 - c) * 0.6  # same hue, darker or lighter
    return Pattern(kind, _vec(np.round(second, 4)), float(rng.uniform(0.05, 0.09)), str(rng.choice(["x", "y", "z"])))

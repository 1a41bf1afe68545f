"""Cameras and a small software renderer: sphere-traced implicit parts, or voxel DDA."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .primitives import ObjectSpec, Part, SeedLike, _rng
from .voxelize import VoxelObject


@dataclass(frozen=True)
class View:
    """A camera looking at the origin, z up.

    ``yaw_deg`` is the azimuth of the camera position from +x towards +y (0 = in front of the
    object), ``pitch_deg`` its elevation (positive = looking down). Perspective with vertical field
    of view ``fov_deg`` (TRELLIS renders use 40° at distance 2); with ``ortho`` the view is
    orthographic with the same framing at the origin (half-height ``distance·tan(fov/2)``).
    """

    yaw_deg: float = 45.0
    pitch_deg: float = 25.0
    distance: float = 2.0
    fov_deg: float = 40.0
    ortho: bool = False

    def basis(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(eye, forward, right, up)`` in world coordinates."""
        y = math.radians(self.yaw_deg)
        p = math.radians(float(np.clip(self.pitch_deg, -89.0, 89.0)))
        eye = self.distance * np.array([math.cos(p) * math.cos(y), math.cos(p) * math.sin(y), math.sin(p)])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        return eye, fwd, right, up

    def rays(self, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(origins [H·W, 3] or [3], directions [H·W, 3])`` through pixel centres, row-major."""
        eye, fwd, right, up = self.basis()
        half = math.tan(math.radians(self.fov_deg) / 2)
        ys = (1 - (np.arange(height) + 0.5) / height * 2) * half
        xs = ((np.arange(width) + 0.5) / width * 2 - 1) * half * width / height
        X, Y = np.meshgrid(xs, ys)
        X, Y = X.reshape(-1, 1), Y.reshape(-1, 1)
        if self.ortho:
            origins = eye + self.distance * (X * right + Y * up)
            return origins, np.broadcast_to(fwd, origins.shape).copy()
        d = fwd + X * right + Y * up
        return eye, d / np.linalg.norm(d, axis=1, keepdims=True)

    def to_dict(self) -> dict:
        return {"yaw_deg": float(self.yaw_deg), "pitch_deg": float(self.pitch_deg), "distance": float(self.distance),
                "fov_deg": float(self.fov_deg), "ortho": bool(self.ortho)}


def random_view(
    seed: SeedLike = None,
    pitch_range: Tuple[float, float] = (0.0, 45.0),
    distance: float = 2.0,
    fov_deg: float = 40.0,
) -> View:
    """A view with a uniform yaw in [0, 360) and a uniform pitch in ``pitch_range`` (degrees)."""
    rng = _rng(seed)
    return View(float(rng.uniform(0, 360)), float(rng.uniform(*pitch_range)), distance, fov_deg)


def fit_view(obj: Union[ObjectSpec, "VoxelObject"], view: View, fill: float = 0.8, probe: int = 96) -> View:
    """``view`` with its field of view (or orthographic extent) narrowed or widened so that the object
    spans ``fill`` of the frame along its larger image axis (the camera still looks at the origin, so
    the framing is symmetric about the image centre). Measured on a ``probe``-pixel render."""
    wide = replace(view, fov_deg=max(view.fov_deg, 60.0))
    r = render(obj, wide, probe)
    hit = r.part_id >= 0
    if not hit.any():
        return view
    rows, cols = np.nonzero(hit)
    c = (probe - 1) / 2
    m = (max(np.abs(rows - c).max(), np.abs(cols - c).max()) + 1.0) / (probe / 2)  # in units of tan(fov/2)
    tan_half = math.tan(math.radians(wide.fov_deg) / 2) * m / fill
    return replace(view, fov_deg=float(math.degrees(2 * math.atan(tan_half))))


@dataclass
class RenderResult:
    """A render.

    Attributes:
        rgba: uint8 ``[H, W, 4]``; alpha 0 on the background (RGB 0 there), 255 on the object (partial
            on anti-aliased edges with ``supersample > 1``).
        part_id: int16 ``[H, W]``, -1 on the background; with supersampling the most frequent part
            among a pixel's sub-samples. ``alpha > 0`` exactly where ``part_id >= 0``.
        depth: float32 ``[H, W]`` camera-space depth (along the view axis), ``inf`` on the background.
        part_names: the parts ``part_id`` indexes.
        view: the view rendered.
    """

    rgba: np.ndarray
    part_id: np.ndarray
    depth: np.ndarray
    part_names: List[str]
    view: View

    def image(self) -> Image.Image:
        return Image.fromarray(self.rgba, "RGBA")

    def mask(self, parts) -> np.ndarray:
        return part_mask(self, parts)


# lighting, fixed in the camera frame: a key light from the upper left of the camera, a weak fill from
# the right, ambient. The weights sum to at most 1, so shading only scales a colour (its hue is kept
# exactly and nothing clips).
_AMBIENT, _KEY, _FILL = 0.32, 0.53, 0.15


def _lights(view: View) -> Tuple[np.ndarray, np.ndarray]:
    _, fwd, right, up = view.basis()
    key = -0.45 * right + 0.65 * up - 0.6 * fwd
    fill = 0.7 * right - 0.15 * up - 0.5 * fwd
    return key / np.linalg.norm(key), fill / np.linalg.norm(fill)


def _shade(color: np.ndarray, normal: np.ndarray, view: View) -> np.ndarray:
    key, fill = _lights(view)
    s = _AMBIENT + _KEY * np.maximum(normal @ key, 0) + _FILL * np.maximum(normal @ fill, 0)
    return color * s[:, None]


def _ray_box(o, d, lo, hi) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slab test: ``(t_near, t_far, entry_axis)`` for rays ``o + t·d`` against the box [lo, hi]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(d == 0, 1e-30, d)
        t1 = (lo - o) * inv
        t2 = (hi - o) * inv
    tmin = np.minimum(t1, t2)
    tn = tmin.max(axis=1)
    return tn, np.maximum(t1, t2).min(axis=1), tmin.argmax(axis=1)


def _take(v, idx):
    return v if np.ndim(v) == 0 else v[idx]


def _trace_part(part: Part, o, d, t0, t1, eps=1e-4, max_steps=160):
    """Sphere-trace rays (``o`` columns scalars or arrays, ``d`` [M, 3]) from t0 to t1; hit t or inf."""
    M = len(t0)
    ox, oy, oz = o
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    t = t0.copy()
    t_prev = t0.copy()
    t_hit = np.full(M, np.inf)
    a = np.arange(M)
    last_d = None
    for _ in range(max_steps):
        if a.size == 0:
            break
        ta = t[a]
        dist = part.sdf(_take(ox, a) + ta * dx[a], _take(oy, a) + ta * dy[a], _take(oz, a) + ta * dz[a])
        hit = dist < eps
        if hit.any():
            h = a[hit]
            th = ta[hit]
            over = dist[hit] < -eps  # stepped past the surface (an sdf that is only an estimate)
            if over.any():
                hb = h[over]
                lo_t, hi_t = t_prev[hb], th[over]
                for _ in range(10):
                    mid = 0.5 * (lo_t + hi_t)
                    dm = part.sdf(_take(ox, hb) + mid * dx[hb], _take(oy, hb) + mid * dy[hb], _take(oz, hb) + mid * dz[hb])
                    inside = dm < 0
                    hi_t = np.where(inside, mid, hi_t)
                    lo_t = np.where(inside, lo_t, mid)
                th = th.copy()
                th[over] = hi_t
            t_hit[h] = th
        step = np.maximum(dist, 2e-4)
        t_prev[a] = ta
        t[a] = ta + step
        keep = ~hit & (t[a] <= t1[a])
        a = a[keep]
        last_d = dist[keep]
    if a.size and last_d is not None:  # out of steps: accept rays that ended right at the surface
        close = last_d < 2e-3
        t_hit[a[close]] = t[a[close]]
    return t_hit


def _render_spec(spec: ObjectSpec, view: View, H: int, W: int):
    o, d = view.rays(H, W)
    n = H * W
    t_best = np.full(n, np.inf)
    p_best = np.full(n, -1, np.int16)
    lo, hi = spec.bounds()
    tn, tf, _ = _ray_box(o, d, lo - 1e-3, hi + 1e-3)
    cand = np.nonzero((tn < tf) & (tf > 0))[0]
    oc = o if o.ndim == 1 else o[cand]
    dc = d[cand]
    tbc = t_best[cand]
    pbc = p_best[cand]
    for k, part in enumerate(spec.parts):
        plo, phi = part.bounds()
        pn, pf, _ = _ray_box(oc, dc, plo - 1e-3, phi + 1e-3)
        pn = np.maximum(pn, 0)
        pf = np.minimum(pf, tbc)
        sel = np.nonzero(pn < pf)[0]
        if sel.size == 0:
            continue
        os_ = tuple(oc[i] for i in range(3)) if oc.ndim == 1 else tuple(oc[sel, i] for i in range(3))
        th = _trace_part(part, os_, dc[sel], pn[sel], pf[sel])
        better = th < tbc[sel]
        tbc[sel[better]] = th[better]
        pbc[sel[better]] = k
    t_best[cand] = tbc
    p_best[cand] = pbc
    hit = np.nonzero(p_best >= 0)[0]
    rgb = np.zeros((n, 3), np.float32)
    if hit.size:
        oh = o if o.ndim == 1 else o[hit]
        p = oh + t_best[hit, None] * d[hit]
        normal = np.zeros((hit.size, 3))
        col = np.zeros((hit.size, 3), np.float32)
        h = 5e-4
        for k, part in enumerate(spec.parts):
            m = p_best[hit] == k
            if not m.any():
                continue
            x, y, z = p[m, 0], p[m, 1], p[m, 2]
            g = np.stack([
                part.sdf(x + h, y, z) - part.sdf(x - h, y, z),
                part.sdf(x, y + h, z) - part.sdf(x, y - h, z),
                part.sdf(x, y, z + h) - part.sdf(x, y, z - h),
            ], 1)
            normal[m] = g
            col[m] = part.color_at(x, y, z)
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        flip = np.sum(normal * d[hit], axis=1) > 0
        normal[flip] *= -1
        rgb[hit] = _shade(col, normal, view)
    _, fwd, _, _ = view.basis()
    depth = np.where(p_best >= 0, t_best * (d @ fwd), np.inf)
    return rgb, p_best, depth


def _render_voxels(vox: VoxelObject, view: View, H: int, W: int):
    """Voxel DDA: first occupied voxel along each ray, flat-shaded by the face it was entered through."""
    R = vox.resolution
    o, d = view.rays(H, W)
    n = H * W
    index = np.full((R, R, R), -1, np.int32)
    ijk_all = vox.coords[:, 1:].astype(np.int64)
    index[ijk_all[:, 0], ijk_all[:, 1], ijk_all[:, 2]] = np.arange(len(ijk_all))
    t_best = np.full(n, np.inf)
    v_best = np.full(n, -1, np.int64)
    axis_best = np.zeros(n, np.int64)
    if len(ijk_all):
        glo, ghi = ijk_all.min(0), ijk_all.max(0)
        tn, tf, entry = _ray_box(o, d, glo / R - 0.5, (ghi + 1) / R - 0.5)
        a = np.nonzero((tn < tf) & (tf > 0))[0]
        oa = o if o.ndim == 1 else o[a]
        da = d[a]
        t = np.maximum(tn[a], 0)
        g = ((oa + t[:, None] * da) + 0.5) * R
        ijk = np.clip(np.floor(g).astype(np.int64), glo, ghi)
        step = np.where(da >= 0, 1, -1)
        with np.errstate(divide="ignore"):
            inv = np.where(da == 0, np.inf, 1.0 / np.abs(da * R))
        nxt = np.where(step > 0, ijk + 1, ijk)
        with np.errstate(divide="ignore", invalid="ignore"):
            tmax = np.where(da == 0, np.inf, t[:, None] + (nxt - g) / np.where(da == 0, 1, da * R))
        ax = entry[a]
        rows = np.arange(len(a))
        for _ in range(3 * R + 3):
            if a.size == 0:
                break
            v = index[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
            hit = v >= 0
            if hit.any():
                t_best[a[hit]] = t[hit]
                v_best[a[hit]] = v[hit]
                axis_best[a[hit]] = ax[hit]
            ax = np.argmin(tmax, axis=1)
            rows = np.arange(len(a))
            t = tmax[rows, ax]
            ijk[rows, ax] += step[rows, ax]
            tmax[rows, ax] += inv[rows, ax]
            keep = ~hit & np.all((ijk >= glo) & (ijk <= ghi), axis=1)
            a, ijk, t, ax, tmax, step, inv, da = a[keep], ijk[keep], t[keep], ax[keep], tmax[keep], step[keep], inv[keep], da[keep]
    hit = np.nonzero(v_best >= 0)[0]
    rgb = np.zeros((n, 3), np.float32)
    p_best = np.full(n, -1, np.int16)
    if hit.size:
        ax = axis_best[hit]
        normal = np.zeros((hit.size, 3))
        normal[np.arange(hit.size), ax] = -np.sign(d[hit, ax])
        rgb[hit] = _shade(vox.color[v_best[hit]], normal, view)
        p_best[hit] = vox.part[v_best[hit]]
    _, fwd, _, _ = view.basis()
    depth = np.where(v_best >= 0, t_best * (d @ fwd), np.inf)
    return rgb, p_best, depth


def render(
    obj: Union[ObjectSpec, VoxelObject],
    view: Optional[View] = None,
    size: Union[int, Tuple[int, int]] = 256,
    *,
    supersample: int = 1,
) -> RenderResult:
    """Render an object spec (sphere-traced implicit surfaces) or a :class:`VoxelObject` (voxel DDA).

    Args:
        view: the camera (default: ``View()``, a 3/4 view from the front right, 25° above).
        size: ``S`` for S×S or ``(height, width)``.
        supersample: render ``s×`` larger and box-filter down (anti-aliased edges, fractional alpha).
    """
    view = view or View()
    H, W = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    s = int(supersample)
    HS, WS = H * s, W * s
    if isinstance(obj, VoxelObject):
        rgb, pid, depth = _render_voxels(obj, view, HS, WS)
        names = list(obj.part_names)
    elif isinstance(obj, ObjectSpec):
        rgb, pid, depth = _render_spec(obj, view, HS, WS)
        names = obj.part_names
    else:
        raise TypeError(f"cannot render a {type(obj).__name__}")
    rgb = rgb.reshape(HS, WS, 3)
    pid = pid.reshape(HS, WS)
    depth = depth.reshape(HS, WS).astype(np.float32)
    if s == 1:
        alpha = np.where(pid >= 0, 255, 0).astype(np.uint8)
        rgba = np.concatenate([np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), alpha[..., None]], -1)
        return RenderResult(rgba, pid.astype(np.int16), depth, names, view)
    cov = (pid >= 0).reshape(H, s, W, s).sum((1, 3))
    csum = rgb.reshape(H, s, W, s, 3).sum((1, 3))
    col = csum / np.maximum(cov, 1)[..., None]
    alpha = np.round(cov / (s * s) * 255).astype(np.uint8)
    alpha[(cov > 0) & (alpha == 0)] = 1
    rgba = np.concatenate([np.round(np.clip(col, 0, 1) * 255).astype(np.uint8), alpha[..., None]], -1)
    rgba[cov == 0, :3] = 0
    sub = pid.reshape(H, s, W, s)
    best_n = np.zeros((H, W), np.int64)
    part_id = np.full((H, W), -1, np.int16)
    for k in range(len(names)):
        c = (sub == k).sum((1, 3))
        better = c > best_n
        best_n[better] = c[better]
        part_id[better] = k
    depth = depth.reshape(H, s, W, s).min((1, 3))
    return RenderResult(rgba, part_id, depth, names, view)


def part_mask(result: RenderResult, parts, part_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Bool ``[H, W]`` mask of the pixels of one or several parts (names or indices)."""
    names = list(part_names if part_names is not None else result.part_names)
    if isinstance(parts, (str, int, np.integer)):
        parts = [parts]
    idx = []
    for p in parts:
        if isinstance(p, (int, np.integer)):
            if not 0 <= p < len(names):
                raise IndexError(f"part index {p} out of range for {len(names)} parts")
            idx.append(int(p))
        else:
            if p not in names:
                raise KeyError(f"no part named {p!r}; parts are {names}")
            idx.append(names.index(p))
    return np.isin(result.part_id, idx)

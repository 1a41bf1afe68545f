"""Implicit primitives and the parts and objects built from them (signed distances, negative inside)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

Vec3 = Tuple[float, float, float]
Mat3 = Tuple[Vec3, Vec3, Vec3]
SeedLike = Union[int, np.random.Generator, None]

RESOLUTION = 64
KINDS = ("creature", "chair", "table", "lamp", "mug", "car", "robot")
_AXES = {"x": 0, "y": 1, "z": 2}


def _rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _vec(v) -> Vec3:
    return tuple(float(x) for x in v)  # type: ignore[return-value]


def _rotation(axis: str, degrees: float) -> Mat3:
    """3×3 rotation about a world axis (right-handed), as nested tuples (local → world)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    if axis == "x":
        m = ((1, 0, 0), (0, c, -s), (0, s, c))
    elif axis == "y":
        m = ((c, 0, s), (0, 1, 0), (-s, 0, c))
    else:
        m = ((c, -s, 0), (s, c, 0), (0, 0, 1))
    return tuple(_vec(r) for r in m)  # type: ignore[return-value]


@dataclass(frozen=True)
class Primitive:
    """Base of the implicit primitives. ``rotation`` maps local to world axes (``None`` = identity)."""

    center: Vec3
    rotation: Optional[Mat3] = field(default=None, kw_only=True)

    type_name = "primitive"

    # -- to implement -------------------------------------------------------------------------
    def _sdf_local(self, x, y, z):  # pragma: no cover - abstract
        raise NotImplementedError

    def _half_local(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _scaled_params(self, s: float) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def sdf(self, x, y, z):
        """Signed distance (negative inside) at world points given as broadcastable x, y, z arrays."""
        cx, cy, cz = self.center
        dx, dy, dz = x - cx, y - cy, z - cz
        if self.rotation is not None:
            r = self.rotation  # local = Rᵀ·(p - c)
            dx, dy, dz = (
                r[0][0] * dx + r[1][0] * dy + r[2][0] * dz,
                r[0][1] * dx + r[1][1] * dy + r[2][1] * dz,
                r[0][2] * dx + r[1][2] * dy + r[2][2] * dz,
            )
        return self._sdf_local(dx, dy, dz)

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """Axis-aligned world bounding box ``(lo, hi)`` (conservative for rotated primitives)."""
        h = self._half_local()
        if self.rotation is not None:
            h = np.abs(np.asarray(self.rotation)) @ h
        c = np.asarray(self.center)
        return c - h, c + h

    def transformed(self, scale: float, offset: Sequence[float]) -> "Primitive":
        """The primitive after ``p -> scale·p + offset``."""
        c = np.asarray(self.center) * scale + np.asarray(offset)
        return replace(self, center=_vec(c), **self._scaled_params(scale))

    def to_dict(self) -> dict:
        d = {"type": self.type_name}
        for k, v in self.__dict__.items():
            if v is None:
                continue
            d[k] = [list(r) for r in v] if k == "rotation" else (list(v) if isinstance(v, tuple) else v)
        return d


def _axial(axis: str, x, y, z):
    """(radial a, radial b, axial) coordinates for a round primitive along ``axis``."""
    if axis == "z":
        return x, y, z
    if axis == "x":
        return y, z, x
    return z, x, y


def _axial_half(axis: str, radial: float, axial: float) -> np.ndarray:
    h = np.full(3, radial)
    h[_AXES[axis]] = axial
    return h


@dataclass(frozen=True)
class Box(Primitive):
    """Box of half-sizes ``half``; ``rounding`` rounds its edges (the box keeps its size)."""

    half: Vec3 = (0.1, 0.1, 0.1)
    rounding: float = 0.0
    type_name = "box"

    def _sdf_local(self, x, y, z):
        r = self.rounding
        qx = np.abs(x) - (self.half[0] - r)
        qy = np.abs(y) - (self.half[1] - r)
        qz = np.abs(z) - (self.half[2] - r)
        ox, oy, oz = np.maximum(qx, 0), np.maximum(qy, 0), np.maximum(qz, 0)
        outside = np.sqrt(ox * ox + oy * oy + oz * oz)
        inside = np.minimum(np.maximum(np.maximum(qx, qy), qz), 0)
        return outside + inside - r

    def _half_local(self):
        return np.asarray(self.half, dtype=float)

    def _scaled_params(self, s):
        return {"half": _vec(np.asarray(self.half) * s), "rounding": self.rounding * s}


@dataclass(frozen=True)
class Ellipsoid(Primitive):
    """Ellipsoid of semi-axes ``radii`` (a sphere when they are equal)."""

    radii: Vec3 = (0.1, 0.1, 0.1)
    type_name = "ellipsoid"

    def _sdf_local(self, x, y, z):
        a, b, c = self.radii
        if a == b == c:
            return np.sqrt(x * x + y * y + z * z) - a
        ux, uy, uz = x / a, y / b, z / c
        k0 = np.sqrt(ux * ux + uy * uy + uz * uz)
        vx, vy, vz = ux / a, uy / b, uz / c
        k1 = np.sqrt(vx * vx + vy * vy + vz * vz)
        # outside: the usual k0(k0-1)/k1 estimate; inside: (k0-1)·min radius (a lower bound in size)
        out = k0 * (k0 - 1) / np.maximum(k1, 1e-12)
        return np.where(k0 >= 1, out, (k0 - 1) * min(a, b, c))

    def _half_local(self):
        return np.asarray(self.radii, dtype=float)

    def _scaled_params(self, s):
        return {"radii": _vec(np.asarray(self.radii) * s)}


@dataclass(frozen=True)
class Cylinder(Primitive):
    """Cylinder along ``axis`` with ``radius`` and half-length ``half_height``; optional edge rounding."""

    radius: float = 0.1
    half_height: float = 0.1
    axis: str = "z"
    rounding: float = 0.0
    type_name = "cylinder"

    def _sdf_local(self, x, y, z):
        a, b, c = _axial(self.axis, x, y, z)
        rr = self.rounding
        dr = np.sqrt(a * a + b * b) - (self.radius - rr)
        dz = np.abs(c) - (self.half_height - rr)
        mr, mz = np.maximum(dr, 0), np.maximum(dz, 0)
        return np.minimum(np.maximum(dr, dz), 0) + np.sqrt(mr * mr + mz * mz) - rr

    def _half_local(self):
        return _axial_half(self.axis, self.radius, self.half_height)

    def _scaled_params(self, s):
        return {"radius": self.radius * s, "half_height": self.half_height * s, "rounding": self.rounding * s}


@dataclass(frozen=True)
class Cone(Primitive):
    """Capped cone (frustum) along ``axis``: radius ``r0`` at ``-half_height``, ``r1`` at ``+half_height``."""

    r0: float = 0.1
    r1: float = 0.05
    half_height: float = 0.1
    axis: str = "z"
    type_name = "cone"

    def _sdf_local(self, x, y, z):
        a, b, c = _axial(self.axis, x, y, z)
        h, r0, r1 = self.half_height, self.r0, self.r1
        qx = np.sqrt(a * a + b * b)
        qy = c
        # distance to the caps
        cap_r = np.where(qy < 0, r0, r1)
        cax = qx - np.minimum(qx, cap_r)
        cay = np.abs(qy) - h
        # distance to the slanted side, segment from (r1, h) to (r0, -h)
        k2x, k2y = r1 - r0, 2 * h
        t = np.clip(((r1 - qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y), 0, 1)
        cbx = qx - r1 + k2x * t
        cby = qy - h + k2y * t
        sign = np.where((cbx < 0) & (cay < 0), -1.0, 1.0)
        return sign * np.sqrt(np.minimum(cax * cax + cay * cay, cbx * cbx + cby * cby))

    def _half_local(self):
        return _axial_half(self.axis, max(self.r0, self.r1), self.half_height)

    def _scaled_params(self, s):
        return {"r0": self.r0 * s, "r1": self.r1 * s, "half_height": self.half_height * s}


@dataclass(frozen=True)
class Torus(Primitive):
    """Torus around ``axis``: ring radius ``major``, tube radius ``minor``."""

    major: float = 0.1
    minor: float = 0.03
    axis: str = "z"
    type_name = "torus"

    def _sdf_local(self, x, y, z):
        a, b, c = _axial(self.axis, x, y, z)
        q = np.sqrt(a * a + b * b) - self.major
        return np.sqrt(q * q + c * c) - self.minor

    def _half_local(self):
        return _axial_half(self.axis, self.major + self.minor, self.minor)

    def _scaled_params(self, s):
        return {"major": self.major * s, "minor": self.minor * s}


_PRIMITIVES = {cls.type_name: cls for cls in (Box, Ellipsoid, Cylinder, Cone, Torus)}


def primitive_from_dict(d: dict) -> Primitive:
    d = dict(d)
    cls = _PRIMITIVES[d.pop("type")]
    kw = {}
    for k, v in d.items():
        if k == "rotation":
            kw[k] = tuple(_vec(r) for r in v)
        elif isinstance(v, list):
            kw[k] = _vec(v)
        else:
            kw[k] = v
    return cls(**kw)


# ----------------------------------------------------------------------------------------------
# parts and objects
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """A two-colour pattern evaluated from 3D position relative to the part's centre.

    ``kind`` is ``"stripes"`` (slabs of thickness ``period/2`` across ``axis``) or ``"checker"``
    (cubes of side ``period/2``); the odd cells take ``color``.
    """

    kind: str
    color: Vec3
    period: float = 0.06
    axis: str = "z"

    def __post_init__(self):
        if self.kind not in ("stripes", "checker"):
            raise ValueError(f"unknown pattern kind {self.kind!r}")

    def odd(self, x, y, z, origin: Vec3) -> np.ndarray:
        half = self.period / 2
        u = [(np.asarray(v) - o) / half for v, o in zip((x, y, z), origin)]
        if self.kind == "stripes":
            return np.floor(u[_AXES[self.axis]]).astype(np.int64) % 2 == 1
        s = np.floor(u[0]).astype(np.int64) + np.floor(u[1]).astype(np.int64) + np.floor(u[2]).astype(np.int64)
        return s % 2 == 1

    def to_dict(self) -> dict:
        return {"kind": self.kind, "color": list(self.color), "period": self.period, "axis": self.axis}


@dataclass(frozen=True)
class Part:
    """A named part: ``shape`` minus every primitive in ``subtract``, coloured ``color`` (RGB in [0, 1])."""

    name: str
    shape: Primitive
    color: Vec3 = (0.7, 0.7, 0.7)
    pattern: Optional[Pattern] = None
    subtract: Tuple[Primitive, ...] = ()

    def sdf(self, x, y, z):
        d = self.shape.sdf(x, y, z)
        for s in self.subtract:
            d = np.maximum(d, -s.sdf(x, y, z))
        return d

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        return self.shape.bounds()

    def color_at(self, x, y, z) -> np.ndarray:
        """Surface colour ``[..., 3]`` float32 at points (base colour, or the pattern's second colour)."""
        x, y, z = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float), np.asarray(z, float))
        out = np.empty(x.shape + (3,), np.float32)
        out[...] = self.color
        if self.pattern is not None:
            odd = self.pattern.odd(x, y, z, self.shape.center)
            out[odd] = self.pattern.color
        return out

    def transformed(self, scale: float, offset: Sequence[float]) -> "Part":
        pat = self.pattern
        if pat is not None:
            pat = replace(pat, period=pat.period * scale)
        return replace(
            self,
            shape=self.shape.transformed(scale, offset),
            subtract=tuple(s.transformed(scale, offset) for s in self.subtract),
            pattern=pat,
        )

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": self.shape.to_dict(), "color": list(self.color)}
        if self.pattern is not None:
            d["pattern"] = self.pattern.to_dict()
        if self.subtract:
            d["subtract"] = [s.to_dict() for s in self.subtract]
        return d

    @staticmethod
    def from_dict(d: dict) -> "Part":
        pat = d.get("pattern")
        return Part(
            name=d["name"],
            shape=primitive_from_dict(d["shape"]),
            color=_vec(d["color"]),
            pattern=None if pat is None else Pattern(pat["kind"], _vec(pat["color"]), pat["period"], pat["axis"]),
            subtract=tuple(primitive_from_dict(s) for s in d.get("subtract", [])),
        )


@dataclass(frozen=True)
class ObjectSpec:
    """An object: a tuple of parts (their union). ``kind`` names the template, ``seed`` the seed if any."""

    parts: Tuple[Part, ...]
    kind: str = "custom"
    seed: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "parts", tuple(self.parts))
        if not self.parts:
            raise ValueError("an object needs at least one part")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"part names must be unique, got {names}")

    @property
    def part_names(self) -> List[str]:
        return [p.name for p in self.parts]

    def index(self, part: Union[str, int]) -> int:
        """Index of a part given by name or index."""
        if isinstance(part, (int, np.integer)):
            if not 0 <= part < len(self.parts):
                raise IndexError(f"part index {part} out of range for {len(self.parts)} parts")
            return int(part)
        try:
            return self.part_names.index(part)
        except ValueError:
            raise KeyError(f"no part named {part!r}; parts are {self.part_names}") from None

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """Bounding box of the parts' primitives (carving ignored, so conservative)."""
        los, his = zip(*(p.bounds() for p in self.parts))
        return np.min(los, axis=0), np.max(his, axis=0)

    def evaluate(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(sdf, part)`` of the union at points ``[..., 3]`` (part by the module's most-inside rule)."""
        points = np.asarray(points, dtype=float)
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        best = np.full(points.shape[:-1], np.inf)
        lab = np.full(points.shape[:-1], -1, np.int64)
        for k, p in enumerate(self.parts):
            d = p.sdf(x, y, z)
            m = d < best
            best[m] = d[m]
            lab[m] = k
        return best, lab

    def colors_at(self, points: np.ndarray) -> np.ndarray:
        """Surface colour ``[..., 3]`` float32 at points of the part each point belongs to (most-inside
        rule; the part's pattern included)."""
        points = np.asarray(points, dtype=float)
        _, lab = self.evaluate(points)
        out = np.zeros(points.shape[:-1] + (3,), np.float32)
        for k, part in enumerate(self.parts):
            m = lab == k
            if m.any():
                p = points[m]
                out[m] = part.color_at(p[:, 0], p[:, 1], p[:, 2])
        return out

    def transformed(self, scale: float, offset: Sequence[float]) -> "ObjectSpec":
        return replace(self, parts=tuple(p.transformed(scale, offset) for p in self.parts))

    def to_dict(self) -> dict:
        """A JSON/TOML-friendly dict (no ``None`` values); inverse of :meth:`from_dict`."""
        d = {"kind": self.kind, "parts": [p.to_dict() for p in self.parts]}
        if self.seed is not None:
            d["seed"] = int(self.seed)
        return d

    @staticmethod
    def from_dict(d: dict) -> "ObjectSpec":
        return ObjectSpec(tuple(Part.from_dict(p) for p in d["parts"]), d.get("kind", "custom"), d.get("seed"))

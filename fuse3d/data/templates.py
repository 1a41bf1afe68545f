"""The object templates (front = +x, z up) and random objects drawn from them."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .colors import _pattern_for, distinct_colors
from .primitives import (KINDS, Box, Cone, Cylinder, Ellipsoid, ObjectSpec, Part, Pattern, Primitive, SeedLike, Torus,
                         _rng, _rotation, _vec)


_Shape = Tuple[str, Primitive, Tuple[Primitive, ...]]


def _p(name: str, shape: Primitive, *subtract: Primitive) -> _Shape:
    return (name, shape, tuple(subtract))


def _creature(r: np.random.Generator) -> List[_Shape]:
    u = r.uniform
    leg_h = u(0.12, 0.22)
    bl, bw, bh = u(0.26, 0.36), u(0.13, 0.18), u(0.11, 0.16)
    bz = leg_h + bh * 0.75
    out = [_p("body", Ellipsoid((0, 0, bz), radii=(bl, bw, bh)))]
    hr = u(0.09, 0.14)
    hx, hz = bl * 0.82 + hr * 0.2, bz + bh * 0.55 + hr * 0.45
    out.append(_p("head", Ellipsoid((hx, 0, hz), radii=(hr * u(1.0, 1.2), hr, hr * u(0.9, 1.05)))))
    lr = u(0.035, 0.055)
    lx, ly = bl * u(0.45, 0.6), bw * u(0.4, 0.55)
    for i, (sx, sy) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1))):
        out.append(_p(f"leg_{i}", Cylinder((sx * lx, sy * ly, bz / 2), radius=lr, half_height=bz / 2, rounding=lr * 0.4)))
    if r.random() < 0.5:
        out.append(_p("snout", Ellipsoid((hx + hr * 0.9, 0, hz - hr * 0.25), radii=(hr * 0.5, hr * 0.45, hr * 0.36))))
    if r.random() < 0.7:
        tl = u(0.1, 0.18)
        ang = u(15, 50)
        ux, uz = math.cos(math.radians(ang)), -math.sin(math.radians(ang))
        near = np.array([-bl * 0.8, 0, bz + bh * 0.1])
        c = near - tl * np.array([ux, 0, uz])
        out.append(_p("tail", Cone(_vec(c), r0=u(0.015, 0.025), r1=u(0.035, 0.05), half_height=tl, axis="x",
                                   rotation=_rotation("y", ang))))
    top = r.choice(["ears", "hat", "none"], p=[0.45, 0.35, 0.2])
    if top == "ears":
        eh = hr * u(0.45, 0.6)
        for i, sy in enumerate((1, -1)):
            out.append(_p(f"ear_{i}", Cone((hx - hr * 0.1, sy * hr * 0.5, hz + hr * 0.55 + eh * 0.6), r0=hr * 0.42,
                                           r1=hr * 0.1, half_height=eh, rotation=_rotation("x", -sy * 20))))  # tips lean outwards
    elif top == "hat":
        style = r.choice(["cone", "top", "dome"])
        base = hz + hr * 0.75
        if style == "cone":
            hh = hr * u(0.45, 0.6)
            out.append(_p("hat", Cone((hx, 0, base + hh * 0.85), r0=hr * 0.6, r1=hr * 0.08, half_height=hh)))
        elif style == "top":
            hh = hr * u(0.35, 0.5)
            out.append(_p("hat", Cylinder((hx, 0, base + hh * 0.8), radius=hr * 0.55, half_height=hh, rounding=0.01)))
        else:
            out.append(_p("hat", Ellipsoid((hx, 0, base), radii=(hr * 0.75, hr * 0.75, hr * 0.55)),
                          Box((hx, 0, base - hr), half=(hr, hr, hr))))
    return out


def _chair(r: np.random.Generator) -> List[_Shape]:
    u = r.uniform
    sd, sw, st = u(0.19, 0.25), u(0.2, 0.27), u(0.025, 0.04)
    leg_h = u(0.22, 0.32)
    sz = leg_h + st
    out = [_p("seat", Box((0, 0, sz), half=(sd, sw, st), rounding=st * 0.5))]
    round_legs = r.random() < 0.5
    lr = u(0.022, 0.034)
    for i, (sx, sy) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1))):
        c = (sx * (sd - lr * 1.3), sy * (sw - lr * 1.3), sz / 2)
        shape = (Cylinder(c, radius=lr, half_height=sz / 2, rounding=lr * 0.3) if round_legs
                 else Box(c, half=(lr, lr, sz / 2), rounding=lr * 0.3))
        out.append(_p(f"leg_{i}", shape))
    bt, bh = u(0.02, 0.035), u(0.17, 0.27)
    tilt = u(0, 12)
    out.append(_p("back", Box((-sd + bt + 0.01, 0, sz + bh), half=(bt, sw * u(0.85, 1.0), bh), rounding=bt * 0.6,
                              rotation=_rotation("y", -tilt))))
    if r.random() < 0.5:
        aw, ah = u(0.02, 0.03), u(0.06, 0.1)
        for i, sy in enumerate((1, -1)):
            out.append(_p(f"arm_{i}", Box((-sd * 0.15, sy * (sw - aw), sz + st + ah - 0.005), half=(sd * 0.8, aw, ah),
                                          rounding=aw * 0.5)))
    if r.random() < 0.35:
        out.append(_p("cushion", Box((0.01, 0, sz + st + 0.02), half=(sd * 0.8, sw * 0.8, 0.03), rounding=0.025)))
    return out


def _table(r: np.random.Generator) -> List[_Shape]:
    u = r.uniform
    height = u(0.35, 0.5)
    tt = u(0.02, 0.035)
    tz = height - tt
    out: List[_Shape] = []
    if r.random() < 0.6:
        tl, tw = u(0.35, 0.42), u(0.22, 0.32)
        out.append(_p("top", Box((0, 0, tz), half=(tl, tw, tt), rounding=tt * 0.5)))
        lr = u(0.022, 0.035)
        inset = lr + u(0.01, 0.04)
        round_legs = r.random() < 0.5
        for i, (sx, sy) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1))):
            c = (sx * (tl - inset), sy * (tw - inset), tz / 2)
            shape = (Cylinder(c, radius=lr, half_height=tz / 2, rounding=lr * 0.3) if round_legs
                     else Box(c, half=(lr, lr, tz / 2), rounding=lr * 0.3))
            out.append(_p(f"leg_{i}", shape))
        if r.random() < 0.4:
            out.append(_p("shelf", Box((0, 0, tz * u(0.25, 0.4)), half=(tl - inset, tw - inset, 0.015), rounding=0.006)))
        top_r = min(tl, tw)
    else:
        tr = u(0.3, 0.42)
        out.append(_p("top", Cylinder((0, 0, tz), radius=tr, half_height=tt, rounding=tt * 0.5)))
        br, bt = u(0.14, 0.22), u(0.02, 0.03)
        out.append(_p("base", Cone((0, 0, bt), r0=br, r1=br * u(0.6, 0.9), half_height=bt)))
        # starts inside the base: a bottom face coplanar with the base's would show through it
        out.append(_p("pedestal", Cylinder((0, 0, (tz + bt) / 2), radius=u(0.03, 0.05), half_height=(tz - bt) / 2)))
        top_r = tr
    if r.random() < 0.6:
        vr, vh = u(0.05, 0.08), u(0.06, 0.12)
        vx = u(-0.3, 0.3) * top_r
        out.append(_p("vase", Ellipsoid((vx, u(-0.3, 0.3) * top_r, height + vh * 0.9), radii=(vr, vr, vh))))
    return out


def _lamp(r: np.random.Generator) -> List[_Shape]:
    u = r.uniform
    br, bt = u(0.13, 0.19), u(0.02, 0.035)
    out: List[_Shape] = []
    if r.random() < 0.5:
        out.append(_p("base", Cylinder((0, 0, bt), radius=br, half_height=bt, rounding=bt * 0.5)))
    else:
        out.append(_p("base", Cone((0, 0, bt), r0=br, r1=br * 0.6, half_height=bt)))
    height = u(0.7, 0.85)
    sh = u(0.1, 0.15)  # shade half height
    s0, s1 = u(0.18, 0.26), u(0.08, 0.14)  # shade bottom / top radius
    sc = height - sh
    wall, cap = 0.035, 0.035
    shade = Cone((0, 0, sc), r0=s0, r1=s1, half_height=sh)
    cavity = Cone((0, 0, sc - cap), r0=s0 - wall, r1=s1 - wall, half_height=sh)
    out.append(_p("shade", shade, cavity))
    pole_top = height - cap * 0.5
    out.append(_p("pole", Cylinder((0, 0, (pole_top + bt) / 2), radius=u(0.02, 0.03), half_height=(pole_top - bt) / 2)))
    out.append(_p("bulb", Ellipsoid((0, 0, sc - sh * 0.35), radii=(0.05, 0.05, 0.065))))
    if r.random() < 0.5:
        out.append(_p("finial", Ellipsoid((0, 0, height + 0.02), radii=(0.03, 0.03, 0.035))))
    if r.random() < 0.4:
        out.append(_p("knob", Cylinder((0, 0, bt * 2 + 0.02), radius=u(0.04, 0.06), half_height=0.025, rounding=0.008)))
    return out


def _mug(r: np.random.Generator) -> List[_Shape]:
    u = r.uniform
    rad, h = u(0.17, 0.24), u(0.17, 0.24)
    z0 = 0.0
    out: List[_Shape] = []
    if r.random() < 0.4:
        out.append(_p("saucer", Cylinder((0, 0, 0.015), radius=rad * u(1.35, 1.6), half_height=0.015, rounding=0.008)))
        z0 = 0.012  # the body sinks ~1 voxel into the saucer so the two always fuse
    wall, floor = u(0.025, 0.035), 0.04
    outer = Cylinder((0, 0, z0 + h), radius=rad, half_height=h)
    cavity = Cylinder((0, 0, z0 + h + floor), radius=rad - wall, half_height=h)
    out.insert(0, _p("body", replace(outer, rounding=0.01), cavity))
    tube = u(0.025, 0.035)
    major = h * u(0.5, 0.7)
    out.append(_p("handle", Torus((rad + major * 0.35, 0, z0 + h), major=major, minor=tube, axis="y"), outer))
    if r.random() < 0.6:
        # liquid fills the cavity from its floor (a floating disc would seal off an inner void)
        level, bottom = z0 + 2 * h * u(0.6, 0.85), z0 + floor
        out.append(_p("coffee", Cylinder((0, 0, (level + bottom) / 2), radius=rad - wall + 0.006,
                                         half_height=(level - bottom) / 2)))
    if r.random() < 0.5:
        bz, bh = z0 + h * u(0.5, 1.4), u(0.02, 0.04)
        # a ring whose inner face sits inside the wall (not on the cavity's face, which would z-fight)
        out.append(_p("band", Cylinder((0, 0, bz), radius=rad + 0.012, half_height=bh),
                      Cylinder((0, 0, bz), radius=rad - wall * 0.5, half_height=bh + 0.01)))
    return out


def _car(r: np.random.Generator) -> List[_Shape]:
    u = r.uniform
    L, W, H = u(0.36, 0.42), u(0.15, 0.2), u(0.06, 0.09)
    wr, ww = u(0.07, 0.1), u(0.03, 0.045)
    bz = wr + H * 0.3
    out = [_p("body", Box((0, 0, bz), half=(L, W, H), rounding=min(H, W) * 0.5))]
    ch = u(0.06, 0.09)
    cl = L * u(0.4, 0.6)
    out.append(_p("cabin", Box((L * u(-0.25, 0.0), 0, bz + H + ch - 0.015), half=(cl, W * u(0.75, 0.92), ch),
                               rounding=ch * u(0.4, 0.8))))
    wx = L * u(0.55, 0.7)
    for i, (sx, sy) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1))):
        out.append(_p(f"wheel_{i}", Cylinder((sx * wx, sy * (W - ww * 0.4), wr), radius=wr, half_height=ww,
                                             axis="y", rounding=0.012)))
    if r.random() < 0.5:
        for i, sy in enumerate((1, -1)):
            out.append(_p(f"light_{i}", Ellipsoid((L, sy * W * 0.6, bz + H * 0.25), radii=(0.035, 0.045, 0.028))))
    if r.random() < 0.4:
        out.append(_p("spoiler", Box((-L + 0.05, 0, bz + H + 0.025), half=(0.04, W * 0.85, 0.035), rounding=0.01)))
    return out


def _robot(r: np.random.Generator) -> List[_Shape]:
    u = r.uniform
    tx, ty, tz = u(0.1, 0.14), u(0.14, 0.2), u(0.14, 0.2)
    lh = u(0.16, 0.26)
    tc = lh + tz
    rnd = u(0.01, 0.04)
    out = [_p("torso", Box((0, 0, tc), half=(tx, ty, tz), rounding=rnd))]
    hx, hy, hz = u(0.08, 0.11), u(0.09, 0.13), u(0.07, 0.1)
    head_c = tc + tz + hz - 0.015
    if r.random() < 0.65:
        out.append(_p("head", Box((0, 0, head_c), half=(hx, hy, hz), rounding=u(0.01, 0.04))))
    else:
        rr = max(hx, hz)
        head_c = tc + tz + rr * 0.85
        out.append(_p("head", Ellipsoid((0, 0, head_c), radii=(rr, hy, rr))))
        hz = rr
    ar, al = u(0.035, 0.05), u(0.2, 0.3)
    atop = tc + tz - rnd - 0.02
    for i, sy in enumerate((1, -1)):
        out.append(_p(f"arm_{i}", Cylinder((0, sy * (ty + ar * 0.5), atop - al / 2), radius=ar, half_height=al / 2,
                                           rounding=ar * 0.4)))
    lw = u(0.045, 0.06)
    box_legs = r.random() < 0.5
    for i, sy in enumerate((1, -1)):
        c = (0, sy * ty * 0.5, (lh + 0.04) / 2)
        shape = (Box(c, half=(lw, lw, (lh + 0.04) / 2), rounding=0.01) if box_legs
                 else Cylinder(c, radius=lw, half_height=(lh + 0.04) / 2, rounding=0.01))
        out.append(_p(f"leg_{i}", shape))
    ah = u(0.04, 0.07)
    top = head_c + hz - 0.012
    out.append(_p("antenna", Cylinder((0, 0, top + ah), radius=0.02, half_height=ah)))
    if r.random() < 0.6:
        out.append(_p("antenna_tip", Ellipsoid((0, 0, top + 2 * ah + 0.02), radii=(0.035, 0.035, 0.035))))
    if r.random() < 0.5:
        for i, sy in enumerate((1, -1)):
            out.append(_p(f"hand_{i}", Ellipsoid((0, sy * (ty + ar * 0.5), atop - al), radii=(ar * 1.35,) * 3)))
    return out


_TEMPLATES = {
    "creature": _creature, "chair": _chair, "table": _table, "lamp": _lamp,
    "mug": _mug, "car": _car, "robot": _robot,
}


def group_name(name: str) -> str:
    """A part's name without its number: ``leg_2`` → ``leg`` (``antenna_tip`` stays)."""
    head, _, tail = name.rpartition("_")
    return head if head and tail.isdigit() else name


def random_object(
    seed: SeedLike = None,
    kind: Optional[str] = None,
    *,
    distinct_colors_per_part: bool = True,
    pattern_prob: float = 0.25,
) -> ObjectSpec:
    """A random object from a template.

    Args:
        seed: an int (stored in the spec) or a ``numpy.random.Generator`` (consumed).
        kind: one of :data:`KINDS`; random when ``None``.
        distinct_colors_per_part: every part gets its own colour (far apart in CIELAB). With ``False``
            numbered parts of a group (``leg_0`` … ``leg_3``) share one colour.
        pattern_prob: chance that a (not too thin) part carries stripes or a checker in a darker or
            lighter shade of its own colour.

    The object is centred on the origin and uniformly scaled so that its longest extent is in
    ``[0.80, 0.88]``; parts touch or overlap, so it is one connected solid.
    """
    rng = _rng(seed)
    if kind is None:
        kind = str(rng.choice(KINDS))
    if kind not in _TEMPLATES:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    shapes = _TEMPLATES[kind](rng)
    keys = [n if distinct_colors_per_part else group_name(n) for n, _, _ in shapes]
    uniq = list(dict.fromkeys(keys))
    palette = dict(zip(uniq, distinct_colors(rng, len(uniq))))
    patterns: Dict[str, Optional[Pattern]] = {}
    parts = []
    for (name, shape, sub), key in zip(shapes, keys):
        if key not in patterns:
            lo, hi = shape.bounds()
            thick = float(np.min(hi - lo)) >= 0.08
            patterns[key] = _pattern_for(rng, palette[key]) if thick and rng.random() < pattern_prob else None
        parts.append(Part(name, shape, palette[key], patterns[key], sub))
    spec = ObjectSpec(tuple(parts), kind, seed if isinstance(seed, (int, np.integer)) else None)
    lo, hi = spec.bounds()
    extent = float(np.max(hi - lo))
    scale = float(rng.uniform(0.80, 0.88)) / extent
    return spec.transformed(scale, -(lo + hi) / 2 * scale)


def recolor_part(
    spec: ObjectSpec,
    part: Union[str, int],
    color: Sequence[float],
    pattern: Union[None, str, Pattern] = None,
    *,
    period: float = 0.06,
    axis: str = "z",
) -> ObjectSpec:
    """A copy of ``spec`` with one part recoloured.

    ``pattern``: ``None`` for a solid ``color``; ``"stripes"``/``"checker"`` for that pattern in
    ``color`` and a darker shade of it (``period``, ``axis``); or a :class:`Pattern` used as is.
    """
    k = spec.index(part)
    color = _vec(np.clip(color, 0, 1))
    if isinstance(pattern, str):
        pattern = Pattern(pattern, _vec(np.round(np.asarray(color) * 0.45, 4)), period, axis)
    parts = list(spec.parts)
    parts[k] = replace(parts[k], color=color, pattern=pattern)
    return replace(spec, parts=tuple(parts))

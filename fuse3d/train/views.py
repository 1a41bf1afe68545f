"""Condition-encoder pre-training data: renders of procedural objects with dense per-patch targets.

TRELLIS stands on frozen DINOv2 features, which expose an image patch's appearance, geometry and
semantics linearly long before any flow sees them. fuse3d's small encoder is pre-trained to do the
same on the procedural renders (:mod:`fuse3d.train.pretrain`): from one preprocessed 518² image,
each patch token must linearly give, for the object pixels it covers,

- ``coverage``: the share of its pixels that show the object;
- ``part``: the share of each **part category** (:data:`PART_CATEGORIES`, shared across templates:
  a chair's leg and a table's leg are both ``leg``), background first;
- ``albedo``: the unshaded surface colour (the part's colour or its pattern's), not the shaded pixel;
- ``normal``: the world-space surface normal;
- ``position``: the object-space surface point (×2, so in ``[-1, 1]``) — the 3D location the
  flows' voxels live at, which the encoder can only get by inferring the viewpoint.

and the CLS token the object's kind and the camera's direction. Targets follow TRELLIS's crop
exactly (:meth:`fuse3d.trellis.preprocess.Preprocessed.grid_sums`, by coverage), so patch ``(i, j)``'s
target describes the pixels its token sees.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from ..data import KINDS, ObjectSpec, RenderResult, fit_view, group_name, random_object, random_view, render
from ..trellis.preprocess import preprocess_image
from ..trellis.storage import atomic_write

GRID = 37
#: part categories across all templates (a part's name without its number); index 0 is background
PART_CATEGORIES = (
    "antenna", "antenna_tip", "arm", "back", "band", "base", "body", "bulb", "cabin", "coffee", "cushion", "ear",
    "finial", "hand", "handle", "hat", "head", "knob", "leg", "light", "pedestal", "pole", "saucer", "seat", "shade",
    "shelf", "snout", "spoiler", "tail", "top", "torso", "vase", "wheel",
)
CATEGORY_INDEX = {name: i + 1 for i, name in enumerate(PART_CATEGORIES)}
NUM_CLASSES = len(PART_CATEGORIES) + 1  # + background (index 0)
RENDER_SIZE = 640  # with the framing below the TRELLIS crop is about 460–650 px: rarely upscaled
FILL = (0.65, 0.85)  # share of the frame the object spans (the bundled examples use 0.8)


def part_category(name: str) -> int:
    """Index in ``[1, NUM_CLASSES)`` of a part name's category (``leg_2`` → ``leg``)."""
    group = group_name(name)
    if group not in CATEGORY_INDEX:
        raise KeyError(f"part {name!r} has no category in PART_CATEGORIES (its group is {group!r})")
    return CATEGORY_INDEX[group]


@dataclass
class ViewSample:
    """One preprocessed condition image and its per-patch targets (``G = 37``).

    Attributes:
        image: ``[518, 518, 3]`` uint8, exactly what the encoder sees.
        coverage: ``[G, G]`` float32, share of object pixels.
        part: ``[G, G, NUM_CLASSES]`` float32 category shares (background first; rows sum to 1).
        albedo, normal, position: ``[G, G, 3]`` float32 means over the patch's object pixels (0 where
            it has none).
        kind: index in :data:`fuse3d.data.KINDS`.
        eye: ``[3]`` unit vector from the object to the camera.
    """

    seed: int
    image: np.ndarray
    coverage: np.ndarray
    part: np.ndarray
    albedo: np.ndarray
    normal: np.ndarray
    position: np.ndarray
    kind: int
    eye: np.ndarray


def surface_maps(spec: ObjectSpec, r: RenderResult):
    """Per pixel of a render: ``(hit [H, W], albedo, normal, position [H, W, 3])`` from its depth and
    part ids (the surface point on each pixel-centre ray; normals from the part's sdf)."""
    h, w = r.depth.shape
    origin, dirs = r.view.rays(h, w)
    _, fwd, _, _ = r.view.basis()
    hit = (r.part_id.reshape(-1) >= 0) & np.isfinite(r.depth.reshape(-1))
    t = np.where(hit, r.depth.reshape(-1), 0.0) / np.maximum(dirs @ fwd, 1e-6)
    pos = (origin if origin.ndim == 2 else origin[None]) + t[:, None] * dirs
    albedo, normal = np.zeros((h * w, 3), np.float32), np.zeros((h * w, 3), np.float32)
    pid = r.part_id.reshape(-1)
    eps = 5e-4
    for k, part in enumerate(spec.parts):
        m = hit & (pid == k)
        if not m.any():
            continue
        x, y, z = pos[m, 0], pos[m, 1], pos[m, 2]
        albedo[m] = part.color_at(x, y, z)
        g = np.stack([part.sdf(x + eps, y, z) - part.sdf(x - eps, y, z), part.sdf(x, y + eps, z) - part.sdf(x, y - eps, z),
                      part.sdf(x, y, z + eps) - part.sdf(x, y, z - eps)], 1)
        normal[m] = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    pos = np.where(hit[:, None], pos, 0.0).astype(np.float32)
    return hit.reshape(h, w), albedo.reshape(h, w, 3), normal.reshape(h, w, 3), pos.reshape(h, w, 3)


def make_view(spec: ObjectSpec, view, size: int = RENDER_SIZE, supersample: int = 1, seed: int = -1) -> ViewSample:
    """Render ``spec`` from ``view`` and compute its per-patch targets in the preprocessed frame."""
    r = render(spec, view, size, supersample=supersample)
    pre = preprocess_image(Image.fromarray(r.rgba, "RGBA"))
    hit, albedo, normal, pos = surface_maps(spec, r)
    cats = np.zeros(r.part_id.shape, np.int64)
    ids = np.array([part_category(p.name) for p in spec.parts])
    cats[hit] = ids[r.part_id[hit]]
    present = np.unique(cats)
    onehot = (cats[..., None] == present).astype(np.float32)  # only the categories present
    total = pre.grid_sums(np.ones(hit.shape + (1,), np.float32), GRID)[..., 0]
    shares = pre.grid_sums(onehot, GRID) / np.maximum(total, 1)[..., None]
    part = np.zeros((GRID, GRID, NUM_CLASSES), np.float32)
    part[..., present] = shares
    part[total == 0, 0] = 1.0  # cells past the image border: background
    obj = pre.grid_sums(np.concatenate([hit[..., None], albedo * hit[..., None], normal * hit[..., None],
                                        2 * pos * hit[..., None]], -1).astype(np.float64), GRID)
    n = obj[..., :1]
    mean = np.where(n > 0, obj[..., 1:] / np.maximum(n, 1), 0.0).astype(np.float32)
    eye, _, _, _ = view.basis()
    return ViewSample(seed, np.asarray(pre.image), (n[..., 0] / np.maximum(total, 1)).astype(np.float32), part,
                      mean[..., 0:3], mean[..., 3:6], mean[..., 6:9], KINDS.index(spec.kind),
                      (eye / np.linalg.norm(eye)).astype(np.float32))


def object_views(seed: int, views: int = 4, size: int = RENDER_SIZE) -> List[ViewSample]:
    """``views`` random views (yaw, pitch, framing) of object ``seed``; one view in four (by ``seed + v``)
    is anti-aliased ×2, which costs about three plain renders."""
    rng = np.random.default_rng([seed, 7])
    spec = random_object(seed)
    out = []
    for v in range(views):
        view = fit_view(spec, random_view(rng), fill=float(rng.uniform(*FILL)))
        out.append(make_view(spec, view, size, supersample=2 if (seed + v) % 4 == 0 else 1, seed=seed))
    return out


def make_views(seeds: Sequence[int], views: int = 4, workers: int = 1, size: int = RENDER_SIZE) -> List[ViewSample]:
    """:func:`object_views` of every seed (in ``workers`` processes), flattened."""
    if workers <= 1:
        return [s for seed in seeds for s in object_views(seed, views, size)]
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    with ProcessPoolExecutor(workers) as pool:
        return [s for group in pool.map(partial(object_views, views=views, size=size), seeds, chunksize=4) for s in group]


_FIELDS = ("image", "coverage", "part", "albedo", "normal", "position", "eye")


def save_views(path, samples: List[ViewSample]) -> None:
    """All samples in one safetensors file (stacked per field; seeds and kinds in the metadata)."""
    from safetensors.numpy import save

    tensors = {f: np.ascontiguousarray(np.stack([getattr(s, f) for s in samples])) for f in _FIELDS}
    meta = {"seed": [int(s.seed) for s in samples], "kind": [int(s.kind) for s in samples]}
    atomic_write(path, save(tensors, metadata={"views": json.dumps(meta), "categories": json.dumps(PART_CATEGORIES)}))


def load_views(path) -> List[ViewSample]:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), "np") as f:
        md = f.metadata()
    if json.loads(md["categories"]) != list(PART_CATEGORIES):
        raise ValueError(f"{path} was written with other part categories; rebuild it")
    meta, arrays = json.loads(md["views"]), load_file(str(path))
    return [ViewSample(seed, **{f: arrays[f][i] for f in _FIELDS}, kind=kind)
            for i, (seed, kind) in enumerate(zip(meta["seed"], meta["kind"]))]


def view_cache_path(seeds: Sequence[int], cache_dir: str, **kw):
    """Where :func:`cached_views` keeps the views of ``seeds`` (keyed by seeds, options and categories)."""
    import hashlib
    from pathlib import Path

    opts = {k: v for k, v in kw.items() if k != "workers"}
    key = hashlib.sha256(json.dumps([list(seeds), sorted(opts.items()), PART_CATEGORIES]).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"views-{key}.safetensors"


def cached_views(seeds: Sequence[int], cache_dir: Optional[str] = None, **kw) -> List[ViewSample]:
    """:func:`make_views`, kept in ``cache_dir`` when given."""
    if cache_dir is None:
        return make_views(seeds, **kw)
    path = view_cache_path(seeds, cache_dir, **kw)
    if path.is_file():
        return load_views(path)
    samples = make_views(seeds, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_views(path, samples)
    return samples

"""Training samples from the procedural part-labelled objects (:mod:`fuse3d.data`).

One object gives: its 64³ surface voxels with colour, normal and part label; a few condition images
(rendered from random views and preprocessed exactly as at inference: TRELLIS crop → 518²); and,
for the mesh decoder, exact signed distances and colours at the cube corners of a random subset of
the 4× finer voxels. Everything is numpy, so many worker processes can build a dataset quickly.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from ..data import ObjectSpec, View, fit_view, random_object, random_view, render, surface_normals, voxelize
from ..trellis.preprocess import preprocess_image
from ..trellis.storage import atomic_write
from .stream import SampleStream
from .views import FILL, RENDER_SIZE

CORNERS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]])
def _children() -> np.ndarray:
    """Offset at 4× resolution of row ``r`` of a voxel's 64 descendants after two subdivisions.

    :class:`fuse3d.trellis.sparse.SparseSubdivide` makes row ``8·i + c`` child ``c`` of row ``i``
    (``c`` = ``4·dx + 2·dy + dz``), so after two rounds row ``64·v + 8·c1 + c2`` sits at ``4·v + 2·c1 + c2``.
    """
    bits = np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
    return np.array([2 * bits[r // 8] + bits[r % 8] for r in range(64)])


CHILDREN = _children()


@dataclass
class ObjectSample:
    """Arrays for one object (``N`` surface voxels, ``V`` views, ``F`` supervised fine voxels)."""

    seed: int
    coords: np.ndarray  # [N, 3] int16 voxel coordinates at 64³, sorted
    color: np.ndarray  # [N, 3] float32
    normal: np.ndarray  # [N, 3] float32 (unit, outward)
    part: np.ndarray  # [N] int16
    images: np.ndarray  # [V, 518, 518, 3] uint8 preprocessed condition images
    fine_index: np.ndarray  # [F] int64 rows of the mesh decoder's output (voxel·64 + child)
    corner_sdf: np.ndarray  # [F, 8] float32 signed distance (world units, + outside)
    corner_color: np.ndarray  # [F, 8, 3] float32


def training_view(spec: ObjectSpec, rng: np.random.Generator) -> View:
    """A random view of ``spec`` framed as training frames its condition images (:data:`FILL`)."""
    return fit_view(spec, random_view(rng), fill=float(rng.uniform(*FILL)))


def condition_image(spec: ObjectSpec, view: View, size: int = RENDER_SIZE) -> np.ndarray:
    """``[518, 518, 3]`` uint8: a render of ``spec`` preprocessed as at inference (TRELLIS crop → 518²)."""
    return np.asarray(preprocess_image(Image.fromarray(render(spec, view, size=size).rgba, "RGBA")).image)


def training_object(seed: int, views: int = 2) -> Tuple[ObjectSpec, List[View], np.random.Generator]:
    """The object of training seed ``seed`` and the ``views`` it is rendered from, as
    :func:`make_object` draws them; the generator is returned where :func:`make_object` goes on."""
    rng = np.random.default_rng(seed)
    spec = random_object(rng)
    return spec, [training_view(spec, rng) for _ in range(views)], rng


def make_object(seed: int, views: int = 2, fine_samples: int = 4096, render_size: int = RENDER_SIZE) -> ObjectSample:
    """One object's sample; its views are framed as the encoder's pre-training views are
    (:mod:`fuse3d.train.views`: the object spans 65–85 % of the frame, so the crop is rarely upscaled)."""
    spec, framed, rng = training_object(seed, views)
    vox = voxelize(spec)
    coords = vox.coords[:, 1:].astype(np.int16)
    centres = (coords + 0.5) / 64 - 0.5
    images = [condition_image(spec, v, render_size) for v in framed]
    n_fine = len(coords) * 64
    fine_index = np.sort(rng.choice(n_fine, size=min(fine_samples, n_fine), replace=False))
    voxel, child = fine_index // 64, fine_index % 64
    fine = coords[voxel].astype(np.int64) * 4 + CHILDREN[child]  # [F, 3] at 256³
    corners = (fine[:, None, :] + CORNERS[None]) / 256.0 - 0.5  # [F, 8, 3] world positions
    sdf, _ = spec.evaluate(corners)
    images = np.stack(images) if images else np.zeros((0, 518, 518, 3), np.uint8)
    return ObjectSample(seed, coords, vox.color.astype(np.float32), surface_normals(spec, centres), vox.part.astype(np.int16),
                        images, fine_index, sdf.astype(np.float32), spec.colors_at(corners))


def make_objects(seeds: List[int], workers: int = 1, **kw) -> List[ObjectSample]:
    """Build samples for ``seeds`` (in parallel processes when ``workers > 1``)."""
    if workers <= 1:
        return [make_object(s, **kw) for s in seeds]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(partial(make_object, **kw), seeds, chunksize=8))


_ARRAYS = ("coords", "color", "normal", "part", "images", "fine_index", "corner_sdf", "corner_color")


def save_objects(path, samples: List[ObjectSample]) -> None:
    """Write samples to one safetensors file (arrays concatenated per field, row counts in the metadata)."""
    from safetensors.numpy import save

    tensors = {name: np.ascontiguousarray(np.concatenate([getattr(s, name) for s in samples])) for name in _ARRAYS}
    meta = {name: [len(getattr(s, name)) for s in samples] for name in _ARRAYS}
    meta["seed"] = [s.seed for s in samples]
    atomic_write(path, save(tensors, metadata={"layout": json.dumps(meta)}))


def load_objects(path) -> List[ObjectSample]:
    """Read what :func:`save_objects` wrote."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["layout"])
    arrays = load_file(str(path))
    split = {name: np.split(arrays[name], np.cumsum(meta[name])[:-1]) for name in _ARRAYS}
    return [ObjectSample(seed, **{name: split[name][i] for name in _ARRAYS}) for i, seed in enumerate(meta["seed"])]


def object_cache_path(seeds: List[int], cache_dir, **kw) -> Path:
    """Where :func:`cached_objects` keeps the samples of ``seeds`` (keyed by seeds and options)."""
    key = hashlib.sha256(json.dumps([list(seeds), sorted(kw.items())]).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"objects-{key}.safetensors"


def cached_objects(seeds: List[int], cache_dir=None, **kw) -> List[ObjectSample]:
    """:func:`make_objects`, read from / written to ``cache_dir`` (keyed by seeds and options) if given."""
    if cache_dir is None:
        return make_objects(seeds, **kw)
    workers = kw.pop("workers", 1)
    path = object_cache_path(seeds, cache_dir, **kw)
    if path.is_file():
        return load_objects(path)
    samples = make_objects(seeds, workers=workers, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_objects(path, samples)
    return samples


def _one_object(seed: int, **kw) -> List[ObjectSample]:
    return [make_object(seed, **kw)]


class ObjectStream(SampleStream):
    """The samples of ``seeds`` handed over as ``workers`` processes finish them (or at once from
    ``cache_dir``, the same files as :func:`cached_objects`'s); ``kw`` go to :func:`make_object`."""

    def __init__(self, seeds: List[int], cache_dir=None, workers: int = 1, **kw):
        path = object_cache_path(seeds, cache_dir, **kw) if cache_dir else None
        super().__init__(partial(_one_object, **kw), seeds, workers, path, load_objects, save_objects)

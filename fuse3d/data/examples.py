"""Fuse3D example sets: a global image and local images that each restyle one part, with masks."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from PIL import Image

from .colors import distinct_colors
from .primitives import KINDS, ObjectSpec
from .render import View, fit_view, part_mask, render
from .templates import group_name, random_object, recolor_part
from .voxelize import VoxelObject, voxelize


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def make_example_set(
    seed: int,
    kind: Optional[str] = None,
    *,
    n_local: Optional[int] = None,
    size: int = 256,
    supersample: int = 2,
) -> dict:
    """A Fuse3D example: a global condition and 2–3 local conditions of one procedural object.

    The global condition is the object from a 3/4 view (yaw 25–65°, 20–30° up). Each local condition
    is a render, from another view (yaw at least 60° from the global one and from the other locals),
    of a variant of the object whose one part has a new colour (far from all the object's colours),
    sometimes with stripes or a checker; its mask selects that part in its own image. Local parts are
    distinct, preferring parts of different groups (not two legs) and parts large in the image. Every
    view is framed by :func:`fit_view` (object ≈ 80 % of the frame).

    Without ``kind``, seeds cycle through :data:`KINDS` (``KINDS[seed % 7]``).

    Returns a dict with ``seed``, ``kind``, ``spec`` (:class:`ObjectSpec`), ``part_names``,
    ``global`` = {``image`` (PIL RGBA), ``view``, ``part_id``} and ``locals`` = a list of {``image``,
    ``mask`` (bool [H, W]), ``part`` (name), ``part_index``, ``color``, ``pattern`` (str or None),
    ``view``, ``spec`` (the variant), ``global_mask`` (bool mask of that part in the global image)}.
    """
    rng = np.random.default_rng(seed)
    spec = random_object(rng, kind or KINDS[int(seed) % len(KINDS)])
    n_local = int(n_local if n_local is not None else rng.integers(2, 4))
    gview = fit_view(spec, View(float(rng.uniform(25, 65)), float(rng.uniform(20, 30))))
    g = render(spec, gview, size, supersample=supersample)

    # candidate views: yaw steps around the object, far from the global one
    chosen_parts: List[int] = []
    used_yaws = [gview.yaw_deg]
    locals_ = []
    colors_taken = [p.color for p in spec.parts]
    for _ in range(n_local):
        views = []
        for _try in range(40):
            yaw = float(rng.uniform(0, 360))
            if min(_angle_diff(yaw, y) for y in used_yaws) >= 60:
                views.append(View(yaw, float(rng.uniform(10, 40))))
            if len(views) == 4:
                break
        if not views:
            views = [View(float((used_yaws[-1] + 120) % 360), float(rng.uniform(10, 40)))]
        # score (part, view) pairs on small renders: visible pixel count, penalising a used group
        best = None
        used_groups = {group_name(spec.parts[k].name) for k in chosen_parts}
        for v in views:
            small = render(spec, v, 64)
            counts = np.bincount(small.part_id[small.part_id >= 0], minlength=len(spec.parts))
            for k, c in enumerate(counts):
                if k in chosen_parts or c < 30:
                    continue
                score = math.sqrt(c) * (0.3 if group_name(spec.parts[k].name) in used_groups else 1.0)
                score *= float(rng.uniform(0.4, 1.0))  # some variety beyond "the biggest part"
                if best is None or score > best[0]:
                    best = (score, k, v)
        if best is None:
            break
        _, k, v = best
        v = fit_view(spec, v)
        color = distinct_colors(rng, 1, avoid=colors_taken)[0]
        colors_taken.append(color)
        pattern = None
        if rng.random() < 0.35:
            pattern = "stripes" if rng.random() < 0.6 else "checker"
        variant = recolor_part(spec, k, color, pattern, period=float(rng.uniform(0.05, 0.08)),
                               axis=str(rng.choice(["x", "y", "z"])))
        r = render(variant, v, size, supersample=supersample)
        chosen_parts.append(k)
        used_yaws.append(v.yaw_deg)
        locals_.append({
            "image": r.image(),
            "mask": part_mask(r, k),
            "part": spec.parts[k].name,
            "part_index": k,
            "color": color,
            "pattern": pattern,
            "view": v,
            "spec": variant,
            "global_mask": part_mask(g, k),
        })
    return {
        "seed": int(seed),
        "kind": spec.kind,
        "spec": spec,
        "part_names": spec.part_names,
        "global": {"image": g.image(), "view": gview, "part_id": g.part_id},
        "locals": locals_,
    }


def _mask_png(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(path, optimize=True)


def save_example_set(example: dict, folder: Union[str, Path]) -> dict:
    """Write an example set as PNGs plus ``example.json``; returns the JSON dict (TOML-friendly: no nulls).

    Files: ``global.png`` (RGBA), ``local_{i}.png`` (RGBA), ``local_{i}_mask.png`` (L, 0/255: the part
    in the local image), ``global_mask_{i}.png`` (L: the same part in the global image).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    example["global"]["image"].save(folder / "global.png", optimize=True)
    locals_meta = []
    for i, loc in enumerate(example["locals"]):
        loc["image"].save(folder / f"local_{i}.png", optimize=True)
        _mask_png(loc["mask"], folder / f"local_{i}_mask.png")
        _mask_png(loc["global_mask"], folder / f"global_mask_{i}.png")
        meta = {
            "image": f"local_{i}.png",
            "mask": f"local_{i}_mask.png",
            "global_mask": f"global_mask_{i}.png",
            "part": loc["part"],
            "part_index": int(loc["part_index"]),
            "color": [float(c) for c in loc["color"]],
            "view": loc["view"].to_dict(),
        }
        if loc["pattern"] is not None:
            meta["pattern"] = loc["pattern"]
        locals_meta.append(meta)
    meta = {
        "seed": int(example["seed"]),
        "kind": example["kind"],
        "part_names": list(example["part_names"]),
        "global": {"image": "global.png", "view": example["global"]["view"].to_dict()},
        "locals": locals_meta,
        "spec": example["spec"].to_dict(),
    }
    (folder / "example.json").write_text(json.dumps(meta, indent=1))
    return meta


def load_example_set(folder: Union[str, Path]) -> dict:
    """Read a folder written by :func:`save_example_set` (images as PIL RGBA, masks as bool arrays)."""
    folder = Path(folder)
    meta = json.loads((folder / "example.json").read_text())

    def img(name):
        with Image.open(folder / name) as im:
            return im.convert("RGBA")

    def mask(name):
        with Image.open(folder / name) as im:
            return np.asarray(im.convert("L")) >= 128

    locals_ = []
    for loc in meta["locals"]:
        locals_.append({
            "image": img(loc["image"]),
            "mask": mask(loc["mask"]),
            "global_mask": mask(loc["global_mask"]),
            "part": loc["part"],
            "part_index": loc["part_index"],
            "color": tuple(loc["color"]),
            "pattern": loc.get("pattern"),
            "view": View(**loc["view"]),
        })
    return {
        "seed": meta["seed"],
        "kind": meta["kind"],
        "spec": ObjectSpec.from_dict(meta["spec"]),
        "part_names": meta["part_names"],
        "global": {"image": img(meta["global"]["image"]), "view": View(**meta["global"]["view"])},
        "locals": locals_,
    }


@dataclass
class ExampleSet:
    """A Fuse3D example and its ground truth, the one form the views, the evaluation and the
    bundled examples share.

    Attributes:
        name: a label (the folder's name, or ``seed-N``).
        spec: the procedural object; voxels: its surface voxels at 64³ with a part label each.
        global_condition, local_conditions: :class:`fuse3d.Condition` objects (the bundled examples'
            come from their ``spec.toml``, so their files are read exactly as ``fuse3d run`` reads them).
        parts, part_indices: the part each local image restyles, in local order.
        global_masks: ``[H, W]`` bool per local: its part in the global image.
        variants: per local, the restyled object (``None`` when only its colour is known).
        seed, params: the run seed and parameters the example asks for.
    """

    name: str
    spec: ObjectSpec
    voxels: VoxelObject
    global_condition: object
    local_conditions: list
    parts: List[str]
    part_indices: List[int]
    global_masks: List[np.ndarray]
    variants: List[Optional[ObjectSpec]] = field(default_factory=list)
    seed: int = 0
    params: dict = field(default_factory=dict)
    folder: Optional[Path] = None

    @classmethod
    def from_seed(cls, seed: int, **kw) -> "ExampleSet":
        """The example :func:`make_example_set` draws for ``seed`` (masks as bool arrays)."""
        from ..conditions import Condition

        ex = make_example_set(seed, **kw)
        return cls(f"seed-{seed}", ex["spec"], voxelize(ex["spec"]), Condition(ex["global"]["image"], name="global"),
                   [Condition(loc["image"], loc["mask"], name=f"local_{i}") for i, loc in enumerate(ex["locals"])],
                   [loc["part"] for loc in ex["locals"]], [int(loc["part_index"]) for loc in ex["locals"]],
                   [loc["global_mask"] for loc in ex["locals"]], [loc["spec"] for loc in ex["locals"]], seed=0)

    @classmethod
    def from_folder(cls, folder: Union[str, Path], run_spec=None) -> "ExampleSet":
        """A folder written by :func:`save_example_set`; its conditions from ``run_spec`` (a
        :class:`fuse3d.spec.RunSpec`, e.g. the folder's ``spec.toml``) when given."""
        from ..conditions import read_mask

        folder = Path(folder)
        meta = json.loads((folder / "example.json").read_text())
        spec = ObjectSpec.from_dict(meta["spec"]) if "spec" in meta else random_object(meta["seed"], kind=meta["kind"])
        if run_spec is None:
            from ..conditions import Condition

            g = Condition(folder / meta["global"]["image"], name="global")
            ls = [Condition(folder / loc["image"], folder / loc["mask"]) for loc in meta["locals"]]
            seed, params = 0, {}
        else:
            g, ls, seed, params = run_spec.global_condition, run_spec.local_conditions, run_spec.seed, run_spec.params
        return cls(folder.name, spec, voxelize(spec), g, ls, [loc["part"] for loc in meta["locals"]],
                   [int(loc["part_index"]) for loc in meta["locals"]],
                   [read_mask(folder / loc["global_mask"]) for loc in meta["locals"]],
                   [None] * len(meta["locals"]), seed, dict(params), folder)

    @property
    def structure(self):
        """The object's true voxels ``[N, 4]`` (a torch tensor), usable as ``pipe.run(..., structure=...)``."""
        import torch

        return torch.from_numpy(self.voxels.coords)

    def truth(self, structure=None) -> List[np.ndarray]:
        """Per local: ``[N]`` bool, the voxels of ``structure`` (voxel coords ``[N, 4]``, or a run's
        structure; default the object's own) that belong to its true part. Each voxel takes the part
        of the nearest true voxel (exact on the object's own voxels)."""
        from scipy.spatial import cKDTree

        if structure is None:
            label = self.voxels.part
        else:
            coords = np.asarray(getattr(structure, "structure", structure))
            _, nearest = cKDTree(self.voxels.coords[:, 1:]).query(coords[:, 1:])
            label = self.voxels.part[nearest]
        return [label == k for k in self.part_indices]

    def local_target(self, k: int, points: np.ndarray) -> np.ndarray:
        """``[..., 3]`` colours of local ``k``'s restyled object at ``points`` (world coordinates)."""
        variant = self.variants[k] if k < len(self.variants) else None
        if variant is None:
            raise ValueError(f"{self.name}: local {k}'s restyled object is not known (a folder example keeps only its images)")
        return variant.colors_at(points)

    def global_part_patches(self, prepared, k: int) -> np.ndarray:
        """``[37, 37]`` bool: patches of the global image showing local ``k``'s part (``prepared``:
        the global image's :class:`fuse3d.conditions.Prepared`, or a run of this example)."""
        from ..method.fusion import patch_grid_mask

        if hasattr(prepared, "global_condition"):
            prepared = prepared.global_condition.prepare()
        return patch_grid_mask(prepared.pre.transform_mask(self.global_masks[k]))

    def run(self, pipe, structure="true", **params):
        """``pipe.run`` on this example's conditions, seed and parameters (``params`` override them).

        ``structure``: ``"true"`` (the object's own voxels, so every voxel has a true part), ``None``
        (sampled from the global image) or anything ``pipe.run`` takes as a structure.
        """
        if isinstance(structure, str):
            if structure != "true":
                raise ValueError(f"structure must be 'true', None or a structure, got {structure!r}")
            structure = self.structure
        return pipe.run(self.global_condition, self.local_conditions, seed=self.seed, structure=structure,
                        **{**self.params, **params})

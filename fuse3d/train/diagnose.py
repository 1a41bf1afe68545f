"""What limits a model's sampled structure: three measurements, each apart from the others.

    python -m fuse3d.train.diagnose [--model PATH] [--seeds 910000:910008] [--objects examples|training]
                                    [--checkpoint DIR] [--views 6] [--grid 12/3,12/0,25/3] [--tolerances 2,3]
                                    [--out diagnosis.json]

All three score the structure by the F-score at one voxel against the object's true 64³ surface
(as ``fuse3d.train.evaluate`` does). The objects are the seeds' Fuse3D examples
(:func:`fuse3d.data.make_example_set`, ``--objects examples``, the default) or the objects training
draws for those seeds (:func:`fuse3d.train.data.training_object`, ``--objects training``):

1. **autoencoder** (with ``--checkpoint``, a trainer's checkpoint folder): the true occupancy through
   the structure encoder and decoder. Below 1, the autoencoder bounds what any flow can reach.
2. **views**: the structure sampled from the *given* views — the example's global image (a 3/4 view,
   as the evaluation uses), or the two renders a training object was trained on — against the mean
   over ``--views`` new random views framed as training frames them (:func:`fuse3d.train.data.training_view`),
   all rendered at the training size. Given ≫ new on training objects means memorised images; a
   gap on examples means the evaluation's views lie outside what the flow learned; neither, with
   low scores on training objects too, means the flow underfits.
3. **sampler**: the first given view's structure for each ``steps/cfg_strength`` of ``--grid``.

``--tolerances`` adds the given views' F-scores at wider matching distances (in voxels): a structure
that scores low at one voxel and high at two or three has the right shape in the wrong place by a
voxel or so (fine detail); one that stays low has the wrong shape. Each given view's structure also
records its bounding-box extents against the true ones (``extents``, voxels along x, y, z): a flow
that draws every object of a kind at the kind's usual proportions, whatever the image shows, gets
the kind right and the extents wrong.

The seeds default to the tuning seeds: a diagnosis chooses what to train next, so it never reads the
test seeds by default. Runs on the CPU in a few minutes for the small model.
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data import View, VoxelObject, make_example_set, voxelize
from ..metrics import voxel_extents, voxel_f_score
from .data import condition_image, training_object, training_view


def _f(pred: torch.Tensor, true: np.ndarray, tolerance: float = 1.0) -> float:
    return float(voxel_f_score(pred[:, 1:].cpu().numpy(), true, tolerance)["f_score"])


def structure_from_view(trellis, spec, view: View, seed: int = 0, **params) -> torch.Tensor:
    """The structure ``[N, 4]`` sampled from one render of ``spec``, preprocessed as training's are."""
    from PIL import Image

    image = Image.fromarray(condition_image(spec, view))
    return trellis.sample_structure(trellis.encode_images([image]), seed=seed, progress=False, **params)


def autoencoder_f_score(ss_encoder, ss_decoder, true: np.ndarray) -> float:
    """F-score of the true surface voxels ``[N, 3]`` through the structure autoencoder."""
    occ = torch.as_tensor(VoxelObject.from_coords(true).occupancy(), dtype=torch.float32,
                          device=next(ss_encoder.parameters()).device)[None, None]
    with torch.no_grad():
        logits = ss_decoder(ss_encoder(occ))
    return _f(torch.argwhere(logits[:, 0] > 0).int(), true)


def parse_tolerances(text: str) -> List[float]:
    """``"2,3"`` → ``[2.0, 3.0]`` (matching distances in voxels, each ≥ 0)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = [-1.0]
    if any(v < 0 for v in values):
        raise ValueError(f"--tolerances takes voxel distances ≥ 0 separated by commas, e.g. 2,3; got {text!r}")
    return values


def parse_grid(text: str) -> List[Tuple[int, float]]:
    """``"12/3,25/7.5"`` → ``[(12, 3.0), (25, 7.5)]`` (sampler steps / CFG strength)."""
    try:
        return [(int(s), float(c)) for s, c in (item.split("/") for item in text.split(","))]
    except ValueError:
        raise ValueError(f"--grid takes STEPS/CFG pairs separated by commas, e.g. 12/3,25/3; got {text!r}") from None


def diagnosed_object(seed: int, objects: str = "examples") -> tuple:
    """``(kind, spec, given views)`` of seed ``seed``: its example and global view, or the object and
    the two views training draws for it."""
    if objects == "examples":
        ex = make_example_set(seed)
        return ex["kind"], ex["spec"], [ex["global"]["view"]]
    if objects == "training":
        spec, views, _ = training_object(seed, views=2)
        return spec.kind, spec, views
    raise ValueError(f"objects is 'examples' or 'training', not {objects!r}")


@torch.no_grad()
def diagnose(trellis, seeds: Sequence[int], views: int = 6, grid: Sequence[Tuple[int, float]] = (),
             autoencoder: Optional[tuple] = None, objects: str = "examples", progress: bool = True,
             tolerances: Sequence[float] = ()) -> Dict[str, object]:
    """Per seed and in the mean: the F-scores of the module docstring."""
    from tqdm.auto import tqdm

    rows = []
    for seed in tqdm(list(seeds), desc=f"Diagnosing ({objects})", disable=not progress):
        kind, spec, given = diagnosed_object(seed, objects)
        true = np.asarray(voxelize(spec).coords)[:, 1:].astype(np.int64)
        row: Dict[str, object] = {"seed": seed, "kind": kind}
        if autoencoder is not None:
            row["autoencoder"] = autoencoder_f_score(*autoencoder, true)
        structures = [structure_from_view(trellis, spec, v) for v in given]
        row["given_views"] = [_f(s, true) for s in structures]
        row["given_views_by_tolerance"] = {f"{t:g}": [_f(s, true, t) for s in structures] for t in tolerances}
        row["extents"] = {"true": voxel_extents(true),
                          "given_views": [voxel_extents(s[:, 1:].cpu().numpy()) for s in structures]}
        rng = np.random.default_rng([seed, 1])  # views neither the example nor training drew
        new_views = [training_view(spec, rng) for _ in range(views)]
        row["new_views"] = [_f(structure_from_view(trellis, spec, v), true) for v in new_views]
        row["sampler"] = {f"{s}/{c:g}": _f(structure_from_view(trellis, spec, given[0], steps=s, cfg_strength=c), true)
                          for s, c in grid}
        rows.append(row)

    def mean(values) -> float:
        return float(np.mean(list(values)))

    summary = {"objects": objects,
               "given_views": mean(np.mean(r["given_views"]) for r in rows),
               "given_views_by_tolerance": {k: mean(np.mean(r["given_views_by_tolerance"][k]) for r in rows)
                                            for k in (rows[0]["given_views_by_tolerance"] if rows else {})},
               "extent_error_voxels": mean(np.abs(np.subtract(e, r["extents"]["true"])).mean()
                                           for r in rows for e in r["extents"]["given_views"]),
               "new_views": mean(np.mean(r["new_views"]) for r in rows) if views else None,
               "sampler": {k: mean(r["sampler"][k] for r in rows) for k in rows[0]["sampler"]} if rows else {}}
    if autoencoder is not None:
        summary["autoencoder"] = mean(r["autoencoder"] for r in rows)
    return {"summary": summary, "per_seed": rows}


def load_structure_autoencoder(checkpoint: str, device: str = "cpu") -> tuple:
    """``(ss_encoder, ss_decoder)`` of a trainer's checkpoint folder (``WORK/ckpt``, or a kept copy)."""
    from pathlib import Path

    from .train import load_checkpoint_networks

    if not (Path(checkpoint) / "state.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a trainer checkpoint (it has no state.json)")
    nets = load_checkpoint_networks(Path(checkpoint), ["ss_encoder", "ss_decoder"], device)
    return nets["ss_encoder"], nets["ss_decoder"]


def main(argv: Optional[Sequence[str]] = None) -> None:
    from ..pipeline import Fuse3D
    from .evaluate import _seed_range

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder or Hugging Face repo id (default: the bundled model)")
    ap.add_argument("--seeds", type=_seed_range, default=range(910000, 910008), help="seeds START:STOP (the tuning seeds)")
    ap.add_argument("--checkpoint", default=None,
                    help="a trainer's checkpoint folder (WORK/ckpt): also score its structure autoencoder")
    ap.add_argument("--objects", choices=("examples", "training"), default="examples",
                    help="the seeds' Fuse3D examples, or the objects training draws for them")
    ap.add_argument("--views", type=int, default=6, help="new random views per object")
    ap.add_argument("--grid", type=parse_grid, default=[], help="sampler settings STEPS/CFG,… for the first given view")
    ap.add_argument("--tolerances", type=parse_tolerances, default=[],
                    help="also score the given views at these matching distances in voxels, e.g. 2,3")
    ap.add_argument("--out", default=None, help="write the full results here (JSON)")
    args = ap.parse_args(argv)
    pipe = Fuse3D.from_pretrained(args.model, progress=False)
    autoencoder = load_structure_autoencoder(args.checkpoint) if args.checkpoint else None
    result = {"model": pipe.model_name, "seeds": [args.seeds.start, args.seeds.stop],
              **diagnose(pipe.trellis, args.seeds, args.views, args.grid, autoencoder, args.objects,
                         tolerances=args.tolerances)}
    print(f"model: {pipe.model_name}")
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

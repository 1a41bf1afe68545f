"""Linear probes of a condition encoder's tokens on held-out renders: what do they expose linearly?

    python -m fuse3d.train.probe --encoder small=fuse3d/weights/fuse3d-small --encoder new=DIR/encoder \\
        [--fit-seeds 930000:930040] [--test-seeds 940000:940040] [--out probe.json]

For each encoder, tokens of renders of the ``--fit-seeds`` objects fit the probes, and tokens of the
``--test-seeds`` objects (other objects) score them. Only patches that mostly show the object
(coverage ≥ 0.5) count:

- ``part_accuracy``: softmax regression of the patch's main part category (:data:`PART_CATEGORIES`),
  beside ``part_majority`` (always guessing the commonest category);
- ``albedo_r2``, ``normal_r2``, ``position_r2``: ridge regression, R² over the three channels;
- ``kind_accuracy``: softmax regression of the object's kind from the CLS token;
- ``extents_r2``: ridge regression (α = 100: there is one row per image, not per patch) of the
  object's bounding-box extents in the 64³ grid from the CLS token and the mean patch token, beside
  ``extents_r2_kind``, the R² of guessing each kind's mean extents, and ``extents_r2_within_kind``,
  the same ridge regression of what the kind's mean leaves (extents minus the kind's mean, the true
  kind given). The structure flow must read an object's proportions off the tokens: near 0 within
  the kind says the tokens show a kind's usual proportions, not this object's.

Seeds: 930000+ and 940000+ are used by nothing else (training starts at 100000, evaluation at
900000 and 910000). An encoder is a model folder (its ``image_cond_model``), a ``ckpts/NAME`` prefix
(``NAME.json`` + ``NAME.safetensors``), or ``random:WIDTH,DEPTH,HEADS`` (fresh weights: the floor).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import KINDS, random_object, voxelize
from ..metrics import voxel_extents
from .views import GRID, PART_CATEGORIES, ViewSample, cached_views

MIN_COVERAGE = 0.5


def load_encoder(spec: str, device: str = "cpu") -> torch.nn.Module:
    """An encoder from a model folder, a ``ckpts/NAME`` prefix or ``random:WIDTH,DEPTH,HEADS``."""
    from ..trellis.checkpoint import load_network
    from ..trellis.dinov2 import DinoV2Encoder

    if spec.startswith("random:"):
        width, depth, heads = (int(v) for v in spec[len("random:"):].split(","))
        torch.manual_seed(0)
        return DinoV2Encoder("vit_small_patch14_reg4_dinov2", 518, embed_dim=width, depth=depth, num_heads=heads).eval().to(device)
    path = Path(spec)
    if (path / "pipeline.json").is_file():
        doc = json.loads((path / "pipeline.json").read_text())
        path = path / doc["args"]["image_cond_model"]
    return load_network(path, device=device, dtype="fp32").eval()


@torch.no_grad()
def tokens_of(encoder, samples: Sequence[ViewSample], batch: int = 8) -> torch.Tensor:
    """Output tokens ``[N, T, C]`` (float32, CPU) of the samples' images."""
    device = next(encoder.parameters()).device
    out = []
    for i in range(0, len(samples), batch):
        px = torch.as_tensor(np.stack([s.image for s in samples[i:i + batch]]), device=device)
        out.append(encoder(px.permute(0, 3, 1, 2).float() / 255.0).float().cpu())
    return torch.cat(out)


def _standardise(fit: torch.Tensor, test: torch.Tensor):
    mean, std = fit.mean(0), fit.std(0, correction=0).clamp(min=1e-6)
    return (fit - mean) / std, (test - mean) / std


def softmax_probe(x_fit, y_fit, x_test, y_test, classes: int, weight_decay: float = 1e-3, steps: int = 200) -> float:
    """Test accuracy of a multinomial logistic regression fitted by L-BFGS."""
    x_fit, x_test = _standardise(x_fit, x_test)
    lin = torch.nn.Linear(x_fit.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x_fit), y_fit) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((lin(x_test).argmax(1) == y_test).float().mean())


def r2(y, pred) -> float:
    """Coefficient of determination of ``pred`` for ``y``, over all output channels (in float64)."""
    y, pred = y.double(), pred.double()
    return float(1 - (y - pred).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def ridge_r2(x_fit, y_fit, x_test, y_test, alpha: float = 1.0) -> float:
    """R² on the test set (over all output channels) of a ridge regression."""
    x_fit, x_test = _standardise(x_fit, x_test)
    a = torch.cat([x_fit, torch.ones(len(x_fit), 1)], 1).double()
    reg = alpha * torch.eye(a.shape[1], dtype=torch.float64)
    reg[-1, -1] = 0
    w = torch.linalg.solve(a.T @ a + reg, a.T @ y_fit.double())
    return r2(y_test, torch.cat([x_test, torch.ones(len(x_test), 1)], 1).double() @ w)


def _patch_rows(samples: Sequence[ViewSample], tokens: torch.Tensor, prefix: int):
    patches = tokens[:, prefix:].reshape(len(samples), GRID * GRID, -1)
    cov = torch.as_tensor(np.stack([s.coverage.reshape(-1) for s in samples]))
    keep = cov >= MIN_COVERAGE
    x = patches[keep]
    target = {name: torch.as_tensor(np.stack([getattr(s, name).reshape(GRID * GRID, -1) for s in samples]))[keep]
              for name in ("part", "albedo", "normal", "position")}
    target["label"] = target["part"][:, 1:].argmax(1)  # the main category among the object's pixels
    return x, target


def object_extents(samples: Sequence[ViewSample]) -> torch.Tensor:
    """``[N, 3]``: each sample's object's bounding-box extents (x, y, z) as a share of the 64³ grid."""
    memo: Dict[int, np.ndarray] = {}
    for s in samples:
        if s.seed not in memo:
            memo[s.seed] = np.asarray(voxel_extents(np.asarray(voxelize(random_object(s.seed)).coords)[:, 1:])) / 64.0
    return torch.as_tensor(np.stack([memo[s.seed] for s in samples]), dtype=torch.float32)


def kind_means(kinds_fit, y_fit, kinds) -> torch.Tensor:
    """Per row of ``kinds``: the mean ``y`` of its kind in the fit set (the overall mean for a kind it lacks)."""
    return torch.stack([y_fit[kinds_fit == k].mean(0) if (kinds_fit == k).any() else y_fit.mean(0) for k in kinds])


def kind_mean_r2(kinds_fit, y_fit, kinds_test, y_test) -> float:
    """R² on the test set of predicting ``y`` by the mean of its kind in the fit set."""
    return r2(y_test, kind_means(kinds_fit, y_fit, kinds_test))


def probe_encoder(encoder, fit: Sequence[ViewSample], test: Sequence[ViewSample]) -> Dict[str, float]:
    """Every probe of :mod:`this module <fuse3d.train.probe>` for one encoder."""
    prefix = encoder.num_prefix_tokens
    tf, tt = tokens_of(encoder, fit), tokens_of(encoder, test)
    xf, yf = _patch_rows(fit, tf, prefix)
    xt, yt = _patch_rows(test, tt, prefix)
    majority = int(torch.bincount(yf["label"]).argmax())
    out = {"part_accuracy": softmax_probe(xf, yf["label"], xt, yt["label"], len(PART_CATEGORIES)),
           "part_majority": float((yt["label"] == majority).float().mean()),
           "patches_fit": int(len(xf)), "patches_test": int(len(xt))}
    for name in ("albedo", "normal", "position"):
        out[f"{name}_r2"] = ridge_r2(xf, yf[name], xt, yt[name])
    kf = torch.as_tensor([s.kind for s in fit])
    kt = torch.as_tensor([s.kind for s in test])
    out["kind_accuracy"] = softmax_probe(tf[:, 0], kf, tt[:, 0], kt, len(KINDS))
    ef, et = object_extents(fit), object_extents(test)
    pooled = [torch.cat([t[:, 0], t[:, prefix:].mean(1)], 1) for t in (tf, tt)]
    out["extents_r2"] = ridge_r2(pooled[0], ef, pooled[1], et, alpha=100.0)
    out["extents_r2_kind"] = kind_mean_r2(kf, ef, kt, et)
    out["extents_r2_within_kind"] = ridge_r2(pooled[0], ef - kind_means(kf, ef, kf), pooled[1],
                                             et - kind_means(kf, ef, kt), alpha=100.0)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def _seeds(text: str) -> List[int]:
    a, b = (int(v) for v in text.split(":"))
    return list(range(a, b))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", action="append", required=True, metavar="NAME=PATH",
                    help="an encoder to probe (repeat): a model folder, a ckpts/NAME prefix or random:W,D,H")
    ap.add_argument("--fit-seeds", default="930000:930040", help="objects whose renders fit the probes")
    ap.add_argument("--test-seeds", default="940000:940040", help="other objects, whose renders score them")
    ap.add_argument("--views", type=int, default=2, help="views per object")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--data-cache", default=None)
    ap.add_argument("--out", default=None, help="write the scores as JSON here")
    args = ap.parse_args(argv)
    fit = cached_views(_seeds(args.fit_seeds), args.data_cache, views=args.views, workers=args.workers)
    test = cached_views(_seeds(args.test_seeds), args.data_cache, views=args.views, workers=args.workers)
    result = {"fit_seeds": args.fit_seeds, "test_seeds": args.test_seeds, "views": args.views, "encoders": {}}
    for item in args.encoder:
        name, _, path = item.partition("=")
        result["encoders"][name] = {"source": path, **probe_encoder(load_encoder(path), fit, test)}
        print(name, result["encoders"][name], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

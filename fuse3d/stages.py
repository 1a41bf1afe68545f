"""The Fuse3D run as a declared stage graph: every stage once, as data.

A :class:`Stage` says over which indices it exists (``per``: each ``"condition"`` — the local
images then the global one —, each ``"local"`` image, or once per ``"run"``), which stages it reads
(:class:`Input`), which :class:`~fuse3d.params.Fuse3DParams` fields its result depends on
(``fields``), the JSON values those fields give its cache key (``key``) and how it is computed
(``compute``). Cache keys, retune invalidation, ``run.stages()`` and the table in
``docs/architecture.md`` all come from :data:`STAGES`; a stage's ``key`` and ``compute`` see only
its declared fields (:class:`ParamView` refuses the others), so a declaration cannot lie about
what it depends on::

    prepare ─ encode ─┬─ structure ─┬─ capture ─ forward_alignment ─ refine ─┐
                      │             └─ neighbourhoods ─────────────────────┤
                      │                                           reverse_alignment
                      └──────────────────────────────── unified_tokens ────┤
                                                                    enhancement ─ final ─ gaussians, mesh
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .cache import Entry
from .conditions import ConditionError
from .method import alignment, capture, enhancement, fusion, interventions
from .method.inpainting import inpainting_hook
from .method.kernels import EnhanceProcessor
from .method.presets import preset_sampler
from .method.seeds import derive_seed
from .trellis.attention import SDPAProcessor, use_attn_processors
from .trellis.sampler import CallTracker
from .trellis.sparse import SparseTensor

DOMAINS = ("condition", "local", "run")
INDEX_RULES = ("same", "global", "locals", "conditions", "run")


@dataclass(frozen=True)
class Input:
    """A stage read by another: ``stage`` at the reader's own index (``"same"``), the global
    condition's (``"global"``), every local's or every condition's (lists), or the run's one.
    ``when(run, params)`` makes it conditional (e.g. only under the shared capture strategy)."""

    name: str
    stage: str
    index: str = "same"
    when: Optional[Callable] = None

    def __post_init__(self):
        if self.index not in INDEX_RULES:
            raise ValueError(f"input index rule must be one of {INDEX_RULES}, got {self.index!r}")


@dataclass(frozen=True)
class Stage:
    name: str
    per: str
    inputs: Tuple[Input, ...]
    fields: Tuple[str, ...]
    key: Callable[[Any, int, "ParamView"], dict]
    compute: Callable[[Any, int, Dict[str, Any], "ParamView"], Entry]
    doc: str

    def __post_init__(self):
        if self.per not in DOMAINS:
            raise ValueError(f"{self.name}: per must be one of {DOMAINS}, got {self.per!r}")


class ParamView:
    """The run's parameters as one stage may see them: its declared fields only."""

    def __init__(self, params, stage: Stage):
        self._params, self._stage = params, stage

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._stage.fields:
            raise AttributeError(f"stage {self._stage.name!r} reads parameter {name!r} but does not declare it "
                                 f"(declared: {', '.join(self._stage.fields) or 'none'})")
        return getattr(self._params, name)


# ============================================================================ helpers shared by stages
def model(run) -> dict:
    return {"model": run.trellis.fingerprint}


def sampler(run, p: ParamView, kind: str) -> dict:
    """The sampler parameters of ``pipeline.json``, the run's preset and its overrides (``structure``
    or ``latent``)."""
    base = run.trellis.ss_sampler_params if kind == "structure" else run.trellis.slat_sampler_params
    return preset_sampler(base, p.sampler, kind, getattr(p, f"{kind}_steps"), getattr(p, f"{kind}_cfg"))


LATENT_FIELDS = ("seed", "sampler", "latent_steps", "latent_cfg")


def patches(entry: Entry, name: str = "selected") -> torch.Tensor:
    return fusion.patch_indices(entry[name].numpy())


def cells(structure: Entry) -> Tuple[torch.Tensor, torch.Tensor]:
    return alignment.cells_of_voxels(structure["coords"])


# ============================================================================ prepare, encode, structure
def _prepare(run, i, x, p):
    pr = run.conditions[i].prepare()
    t = {"image": torch.from_numpy(np.asarray(pr.image).copy()), "alpha": torch.from_numpy(pr.pre.alpha),
         "foreground": torch.from_numpy(pr.foreground), "selected": torch.from_numpy(pr.selected)}
    if pr.pixel_mask is not None:
        t["pixel_mask"] = torch.from_numpy(pr.pixel_mask)
    return Entry(t, {"crop_box": list(pr.pre.crop_box), "source_size": list(pr.pre.source_size), "name": run.conditions[i].name})


def _encode_crop(run, i, p) -> bool:
    return p.fusion == "crop" and i < run.K


def _encode(run, i, x, p):
    from PIL import Image

    if _encode_crop(run, i, p):
        image, selected = crop_region(run.conditions[i])
    else:
        image, selected = Image.fromarray(x["prepare"]["image"].numpy()), x["prepare"]["selected"]
    tokens = run.trellis.encode_images([image])[0].float()
    return Entry({"tokens": tokens.cpu(), "selected": selected.bool()}, {"fusion": "crop" if _encode_crop(run, i, p) else "mcfm"})


def crop_region(cond):
    """Ablation *w/o MCFM*: the selected region alone, cut out and preprocessed as a new image."""
    from PIL import Image

    from .trellis.preprocess import preprocess_image

    pr = cond.prepare()
    mask = pr.pixel_mask
    if mask is None:  # patch selection: expand patches to pixels
        mask = np.kron(pr.selected, np.ones((14, 14), bool))
    rgba = np.dstack([np.asarray(pr.image), (mask & (pr.pre.alpha > 0)).astype(np.uint8) * 255])
    if not rgba[..., 3].any():
        raise ConditionError(f"{cond.name}: the selected region has no visible pixel to crop")
    cropped = preprocess_image(Image.fromarray(rgba, "RGBA"))
    return cropped.image, torch.from_numpy(fusion.foreground_patches(np.asarray(cropped.image)))


def _user_structure(run, p) -> bool:
    return run.user_structure is not None


def _structure_key(run, i, p):
    if _user_structure(run, p):
        return {"user": hashlib.sha256(run.user_structure.numpy().tobytes()).hexdigest()}
    return {**model(run), "seed": p.seed, "sampler": sampler(run, p, "structure")}


def _structure(run, i, x, p):
    if _user_structure(run, p):
        return Entry({"coords": run.user_structure}, {"source": "user"})
    cond = x["tokens"]["tokens"][None].to(run.trellis.device)
    coords = run.trellis.sample_structure(cond, seed=derive_seed(p.seed, "structure"), progress=run.progress,
                                          **sampler(run, p, "structure"))
    if len(coords) == 0:
        raise RuntimeError(f"the structure sampled from {run.global_condition.name} is empty")
    return Entry({"coords": coords.cpu()}, {"source": "sampled from the global condition"})


# ============================================================================ capture
CAPTURE_FIELDS = LATENT_FIELDS + ("capture_blocks", "capture_steps", "capture_strategy", "capture_tokens",
                                  "capture_detail", "capture_batch", "fusion", "prefix_tokens")


def _capture_key(run, i, p):
    key = {**model(run), "seed": p.seed, "sampler": sampler(run, p, "latent"), "blocks": p.capture_blocks,
           "steps": p.capture_steps, "strategy": p.capture_strategy, "prefix_tokens": p.prefix_tokens}
    if i < run.K:  # the reverse capture always feeds the global image's full tokens, without detail
        key.update(tokens=p.capture_tokens, detail=p.capture_detail, fusion=p.fusion)
    return key  # capture_batch only groups the samplings: not part of the key


def capture_plan(run, p: ParamView, structure: Entry, prepared: List[Entry], encoded: List[Entry]) -> capture.CapturePlan:
    """The capture samplings of a run: one item per condition (locals, then the global image)."""
    items = []
    for i, (prep, enc) in enumerate(zip(prepared, encoded)):
        reverse = i == run.K
        fg = None if reverse or p.capture_tokens == "full" or p.fusion == "crop" else patches(prep, "foreground")
        fed, target = capture.capture_tokens(enc["tokens"].shape[0], run.prefix, patches(enc), fg, reverse,
                                             p.prefix_tokens)
        name = "capture:global" if reverse else f"capture:{run.local_conditions[i].key}"
        label = "global" if reverse else run.local_conditions[i].name
        items.append(capture.CaptureItem(label, enc["tokens"][fed], fed, target, derive_seed(p.seed, name)))
    return capture.CapturePlan(structure["coords"], len(cells(structure)[0]), run.num_heads, run.num_blocks, items,
                               sampler(run, p, "latent"), p.capture_strategy, p.capture_blocks, p.capture_steps,
                               p.capture_detail, p.capture_batch)


def _capture(run, i, x, p):
    """Capture of condition ``i``; every other capture of the run still missing is computed with it
    (one batched sampling when it fits) and stored too."""
    n = run.K + 1
    keys = {j: run.key("capture", j) for j in range(n)}
    wanted = range(run.K) if run.base is not None else range(n)  # an edit needs no global capture
    missing = [j for j in range(n) if j == i or (j in wanted and run.cache.status("capture", keys[j]) == "missing")]
    prepared = [run.entry("prepare", j) for j in range(n)]
    encoded = [run.entry("encode", j) for j in range(n)]
    plan = capture_plan(run, p, x["structure"], prepared, encoded)
    results, seconds = timed(lambda: capture.capture(run.trellis, plan, missing, run.progress), run.trellis.device)
    mine = None
    for j, (tensors, meta) in zip(missing, results):
        entry = Entry(tensors, {**meta, "seconds": seconds, "computed_with": len(missing)})
        if j == i:
            mine = entry
        else:
            run.cache.put("capture", keys[j], entry)
    return mine


EXPLORE_FIELDS = LATENT_FIELDS + ("capture_strategy", "prefix_tokens", "explore_cells", "explore_patches",
                                  "explore_blocks", "explore_steps")


def _explore_patches(p, i: int) -> Optional[Tuple[int, ...]]:
    return dict(p.explore_patches or ()).get(i)


def _explore_key(run, i, p):
    return {**model(run), "seed": p.seed, "sampler": sampler(run, p, "latent"), "strategy": p.capture_strategy,
            "prefix_tokens": p.prefix_tokens, "cells": _json(p.explore_cells), "patches": _json(_explore_patches(p, i)),
            "blocks": _json(p.explore_blocks), "steps": _json(p.explore_steps)}


def _explore(run, i, x, p):
    """On-demand attention of a few cells over every token (``rows [heads, cells, tokens]``, in every
    condition's capture sampling, fed its full tokens) and of chosen patches over every cell
    (``patch_scores [heads, cells]``); every other condition still missing is computed with it."""
    def asked(j: int) -> bool:
        return bool(p.explore_cells) or bool(_explore_patches(p, j))

    if not asked(i):
        raise ValueError(f"nothing to explore in condition {i}: give explore_cells or explore_patches "
                         "(run.cell_attention, run.patch_attention)")
    n = run.K + 1
    keys = {j: run.key("explore", j) for j in range(n)}
    missing = [j for j in range(n) if j == i or (asked(j) and run.cache.status("explore", keys[j]) == "missing")]
    encoded = [run.entry("encode", j) for j in range(n)]
    out: Dict[int, Dict[str, torch.Tensor]] = {j: {} for j in missing}
    wants = [("rows", torch.tensor(p.explore_cells, dtype=torch.long), missing)] if p.explore_cells else []
    for j in missing:
        if _explore_patches(p, j):
            wants.append(("patches", torch.tensor(_explore_patches(p, j), dtype=torch.long), [j]))
    for what, chosen, which in wants:
        items = []
        for j in range(n):
            tokens = encoded[j]["tokens"]
            fed, target = capture.capture_tokens(tokens.shape[0], run.prefix, chosen if what == "patches" else
                                                 torch.zeros(0, dtype=torch.long), prefix_tokens=p.prefix_tokens)
            if what == "rows":
                target = capture.CaptureTarget("rows", chosen)
            name = "capture:global" if j == run.K else f"capture:{run.local_conditions[j].key}"  # the capture's noise
            items.append(capture.CaptureItem(f"explore {j}", tokens[fed], fed, target, derive_seed(p.seed, name)))
        plan = capture.CapturePlan(x["structure"]["coords"], len(cells(x["structure"])[0]), run.num_heads, run.num_blocks,
                                   items, sampler(run, p, "latent"), p.capture_strategy, p.explore_blocks,
                                   p.explore_steps, detail=False)
        for j, (tensors, _) in zip(which, capture.capture(run.trellis, plan, which, run.progress)):
            if what == "rows":
                out[j].update(rows=tensors["mean"], cells=tensors["target_tokens"], fed_tokens=tensors["fed_tokens"])
            else:
                out[j].update(patch_scores=tensors["mean"], patch_tokens=tensors["target_tokens"])
    for j in missing:
        if j != i:
            run.cache.put("explore", keys[j], Entry(out[j]))
    return Entry(out[i])


# ============================================================================ alignment
def _forward(run, k, x, p):
    score, mask = alignment.forward_alignment(x["capture"]["mean"], p.heads, p.threshold)
    return Entry({"score": score, "mask": mask})


def _neighbourhoods(run, i, x, p):
    idx, valid = alignment.neighbourhoods(cells(x["structure"])[0][:, 1:], p.refine_k, p.refine_ties)
    return Entry({"index": idx, "valid": valid})


def _refine(run, k, x, p):
    raw = x["forward"]["mask"]
    if not p.refine:
        return Entry({"mask": raw.clone()})
    nbr = x["neighbourhoods"]
    mask = alignment.refine(raw, cells(x["structure"])[0][:, 1:], p.refine_k, p.refine_fill, p.refine_clear,
                            p.refine_ties, neighbours=(nbr["index"], nbr["valid"]))
    return Entry({"mask": mask})


def _reverse_threshold(p) -> float:
    return p.threshold if p.reverse_threshold is None else p.reverse_threshold


def _reverse(run, i, x, p):
    cap = x["capture"]
    unaligned = alignment.unaligned_cells([r["mask"] for r in x["refine"]], cap["mean"].shape[1])
    cand = cap["fed_tokens"][cap["target_tokens"]] - run.prefix  # candidate patch indices
    if not p.reverse_alignment:
        score, sel = torch.zeros(len(cand)), torch.ones(len(cand), dtype=torch.bool)
    else:
        score, sel = alignment.reverse_alignment(cap["mean"], unaligned, p.heads, _reverse_threshold(p))
    return Entry({"unaligned": unaligned, "score": score, "selected": sel, "candidates": cand, "patches": cand[sel]})


# ============================================================================ unified tokens, enhancement
def _unified(run, i, x, p):
    n_images = run.K if p.inpainting else run.K + 1
    selected, ids = [], []
    for j in range(n_images):
        pt = x["reverse"]["patches"] if j == run.K else patches(x["tokens"][j])
        selected.append(fusion.select_tokens(x["tokens"][j]["tokens"], pt, run.prefix, p.prefix_tokens))
        ids.append(pt)
    u = fusion.unify_tokens(selected, ids, run.prefix if p.prefix_tokens else 0)
    return Entry({"tokens": u.tokens, "token_region": u.token_region, "token_patch": u.token_patch})


def lambdas_of(run, p, prepared: List[Entry], encoded: List[Entry], reverse: Optional[Entry]) -> List[float]:
    """λ per region of a run (locals, then the global image unless inpainting; ``reverse`` is only
    read then)."""
    K = run.K
    selected = [len(patches(encoded[k])) for k in range(K)]
    foreground = [int(prepared[k]["foreground"].sum()) if p.fusion == "mcfm" else selected[k] for k in range(K)]
    return enhancement.run_lambdas(p.strength, p.lambda_mode, selected, foreground, int(prepared[0]["selected"].numel()),
                                   explicit=p.lambdas, explicit_global=p.global_lambda,
                                   global_selected=0 if p.inpainting else len(reverse["patches"]),
                                   with_global=not p.inpainting,
                                   reverse_alignment=p.reverse_alignment)


def _enhancement(run, i, x, p):
    region = x["unified"]["token_region"]
    n_cells = len(x["refine"][0]["mask"])
    if not p.enhancement:
        t = enhancement.identity_tables(n_cells, region)
    else:
        aligned = [r["mask"] for r in x["refine"]]
        lams = lambdas_of(run, p, x["prepare"], x["tokens"], x.get("reverse"))
        if p.inpainting:
            t = enhancement.EnhancementTables(torch.stack([m.bool() for m in aligned], dim=1), region,
                                              torch.tensor(lams, dtype=torch.float32))
        else:
            t = enhancement.enhancement_tables(aligned, x["reverse"]["unaligned"], region, lams)
    return Entry({"cell_regions": t.cell_regions, "token_region": t.token_region, "lambdas": t.lambdas})


# ============================================================================ final sampling, decoding
def _final(run, i, x, p):
    trellis, dev = run.trellis, run.trellis.device
    coords = x["structure"]["coords"].to(dev)
    noise = trellis.latent_noise(coords, derive_seed(p.seed, "final"))
    tracker = CallTracker()
    enh = x["enhancement"]
    procs = {}
    if p.enhancement:
        tables = enhancement.EnhancementTables(enh["cell_regions"], enh["token_region"], enh["lambdas"]).to(dev)
        proc = EnhanceProcessor(tables, tracker, p.enhancement_backend)
        procs = {f"blocks.{b}.cross_attn": proc for b in range(run.num_blocks)}
    procs = _with_interventions(run, p, procs, tracker, x)
    on_step = kept = None
    if p.inpainting:
        _, voxel_cell = cells(x["structure"])
        aligned = torch.stack([r["mask"] for r in x["refine"]]).any(0)
        keep = (~alignment.cells_to_voxels(aligned, voxel_cell)).to(dev)
        if run.base is not None:  # an edit: the given latent (de-normalised) is kept
            kept = run.base.latent.to(noise.feats)
            z0 = (kept - trellis.slat_mean.to(kept)) / trellis.slat_std.to(kept)
        else:
            z0 = x["initial"]["slat0"].to(noise.feats)
            kept = trellis.denormalize(SparseTensor(z0, coords)).feats
        on_step = inpainting_hook(z0, keep, noise.feats, trellis.slat_sampler.sigma_min)
    with use_attn_processors(trellis.slat_flow, procs):
        slat = trellis.sample_latent(x["unified"]["tokens"][None].to(dev), coords, noise=noise, progress=run.progress,
                                     call_context=tracker, on_step=on_step, **sampler(run, p, "latent"))
    feats = slat.feats.float()
    if kept is not None:  # the trajectory ends σ_min·ε away from the kept latent: end on it exactly
        feats[keep] = kept[keep].float()
    meta = {"model": run.model_name, **({"edited": run.base.name} if run.base is not None else {})}
    return Entry({"feats": feats.cpu()}, meta)


INTERVENTION_FIELDS = ("ablate_heads", "ablate_mode", "patch_tokens", "patch_blocks", "intervene_steps")


def _with_interventions(run, p, procs: dict, tracker, x: Dict[str, Any]) -> dict:
    """The final sampling's processors, wrapped where the run ablates heads or patches tokens."""
    if p.ablate_heads is None and p.patch_tokens is None:
        return procs
    patch = None
    if p.patch_tokens is not None:
        region, source = p.patch_tokens
        unified = x["unified"]
        patch = interventions.patched_context(unified["token_region"], unified["token_patch"], region,
                                              x["sources"][source]["tokens"], run.prefix)
    out = dict(procs)
    for block, (heads, patched) in interventions.block_plan(run.num_blocks, p.ablate_heads, p.patch_blocks,
                                                            patch is not None).items():
        name = f"blocks.{block}.cross_attn"
        inner = procs.get(name) or SDPAProcessor()
        out[name] = interventions.InterveningProcessor(inner, tracker, heads, p.ablate_mode,
                                                       patch if patched else None, p.intervene_steps)
    return out


def _latent(run, x) -> SparseTensor:
    return SparseTensor(x["final"]["feats"], x["structure"]["coords"])


def _gaussians(run, i, x, p):
    from .assets import Gaussians

    out = run.trellis.decode(_latent(run, x).to(run.trellis.device), ["gaussian"])["gaussian"]
    return dataclass_entry(Gaussians.from_decoder_output(run.trellis.slat_decoder_gs, out), run.model_name)


def _mesh(run, i, x, p):
    from .assets import Mesh

    out = run.trellis.decode(_latent(run, x).to(run.trellis.device), ["mesh"])["mesh"]
    return dataclass_entry(Mesh.from_decoder_output(run.trellis.slat_decoder_mesh, out, fill_interior=True), run.model_name)


def dataclass_entry(obj, model_name: str) -> Entry:
    """A dataclass of arrays (Mesh, Gaussians) as a cache entry (``None`` fields are left out)."""
    from dataclasses import fields

    tensors = {f.name: torch.as_tensor(np.asarray(getattr(obj, f.name))) for f in fields(obj)
               if getattr(obj, f.name) is not None}
    return Entry(tensors, {"model": model_name})


def timed(compute, device):
    """``(compute(), wall seconds)``, synchronising CUDA around it."""
    import time

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    result = compute()
    sync()
    return result, round(time.perf_counter() - start, 4)


# ============================================================================ the declarations
def _json(value):
    """Tuples (of tuples) as lists, for a cache key."""
    return [_json(v) for v in value] if isinstance(value, tuple) else value


def _shared(run, p) -> bool:
    return p.capture_strategy == "shared"


def _inpainting(run, p) -> bool:
    return bool(p.inpainting)


def _initial(run, p) -> bool:
    """The final sampling keeps the global image's sampled latent (inpainting, not an edit)."""
    return bool(p.inpainting) and run.base is None


def _global_tokens(run, p) -> bool:
    """The global image's tokens (D_g) are fused: everything but inpainting."""
    return not p.inpainting


def _patching(run, p) -> bool:
    return p.patch_tokens is not None


def _refining(run, p) -> bool:
    return bool(p.refine)


_ENHANCEMENT_FIELDS = ("enhancement", "strength", "lambda_mode", "lambdas", "global_lambda", "inpainting", "fusion",
                       "reverse_alignment")

STAGES: Dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", "condition", (), (), lambda run, i, p: {"condition": run.conditions[i].key}, _prepare,
          "TRELLIS's crop and resize; the user mask by coverage; foreground and selected patches (§3.2)"),
    Stage("encode", "condition", (Input("prepare", "prepare"),), ("fusion",),
          lambda run, i, p: {**model(run), "crop": _encode_crop(run, i, p)}, _encode,
          "the condition encoder's tokens of the whole image [CLS, REG×4, 37×37 patches] (MCFM, §3.2)"),
    Stage("structure", "run", (Input("tokens", "encode", "global", lambda run, p: not _user_structure(run, p)),),
          ("seed", "sampler", "structure_steps", "structure_cfg"), _structure_key, _structure,
          "the sparse structure from the global image alone (or the user's), voxels [N, 4] (§3.1)"),
    Stage("capture", "condition",
          (Input("structure", "structure", "run"), Input("tokens", "encode"),
           Input("queries", "encode", "global", _shared)),
          CAPTURE_FIELDS, _capture_key, _capture,
          "cross-attention averaged over blocks and steps: forward [heads, cells] for a local, reverse "
          "[heads, cells, candidates] for the global image (§3.3)"),
    Stage("explore", "condition", (Input("structure", "structure", "run"), Input("tokens", "encode")),
          EXPLORE_FIELDS, _explore_key, _explore,
          "on demand only (the explorer): rows [heads, chosen cells, tokens] of a few cells, and "
          "[heads, cells] of chosen patches, from this condition's capture sampling fed its full tokens"),
    Stage("forward_alignment", "local", (Input("capture", "capture"),), ("heads", "threshold"),
          lambda run, k, p: {"heads": list(p.heads), "threshold": p.threshold}, _forward,
          "mean over the chosen heads, min–max over cells, threshold: the raw V_k (§3.3)"),
    Stage("neighbourhoods", "run", (Input("structure", "structure", "run"),), ("refine_k", "refine_ties"),
          lambda run, i, p: {"k": p.refine_k, "ties": p.refine_ties}, _neighbourhoods,
          "each cell's k nearest cells for the vote (supplementary)"),
    Stage("refine", "local",
          (Input("forward", "forward_alignment"), Input("structure", "structure", "run"),
           Input("neighbourhoods", "neighbourhoods", "run", _refining)),
          ("refine", "refine_k", "refine_fill", "refine_clear", "refine_ties"),
          lambda run, k, p: {"refine": p.refine, "k": p.refine_k, "fill": p.refine_fill, "clear": p.refine_clear,
                             "ties": p.refine_ties}, _refine,
          "the kNN majority vote on the raw mask: V_k (supplementary)"),
    Stage("reverse_alignment", "run", (Input("capture", "capture", "global"), Input("refine", "refine", "locals")),
          ("reverse_alignment", "heads", "threshold", "reverse_threshold"),
          lambda run, i, p: {"enabled": p.reverse_alignment, "heads": list(p.heads), "threshold": _reverse_threshold(p)},
          _reverse, "unaligned cells; the global tokens they need, D_g (§3.3)"),
    Stage("unified_tokens", "run", (Input("tokens", "encode", "conditions"),
                                    Input("reverse", "reverse_alignment", "run", _global_tokens)),
          ("inpainting", "prefix_tokens"), lambda run, i, p: {"inpainting": p.inpainting, "prefix": p.prefix_tokens},
          _unified,
          "[local_1 (5 + D_1), …, local_K (5 + D_K), global (5 + D_g)] (§3.2)"),
    Stage("enhancement", "run",
          (Input("unified", "unified_tokens", "run"), Input("refine", "refine", "locals"),
           Input("reverse", "reverse_alignment", "run", _global_tokens), Input("prepare", "prepare", "conditions"),
           Input("tokens", "encode", "conditions")),
          _ENHANCEMENT_FIELDS,
          lambda run, i, p: {f: (list(v) if isinstance(v, tuple) else v) for f in _ENHANCEMENT_FIELDS
                             for v in [getattr(p, f)]},
          _enhancement, "λ per region and the region tables of E (§3.4)"),
    Stage("final", "run",
          (Input("structure", "structure", "run"), Input("unified", "unified_tokens", "run"),
           Input("enhancement", "enhancement", "run"), Input("initial", "capture", "global", _initial),
           Input("refine", "refine", "locals", _inpainting), Input("sources", "encode", "conditions", _patching)),
          LATENT_FIELDS + ("inpainting", "enhancement_backend", "enhancement") + INTERVENTION_FIELDS,
          lambda run, i, p: {**model(run), "seed": p.seed, "sampler": sampler(run, p, "latent"),
                             "inpainting": p.inpainting, "backend": p.enhancement_backend, "enhancement": p.enhancement,
                             **({"edits": run.base.key} if run.base is not None else {}),
                             **{f: _json(getattr(p, f)) for f in INTERVENTION_FIELDS}},
          _final, "the fused structured latent [N, 8], from fresh noise, with E in every block (§3.4)"),
    Stage("gaussians", "run", (Input("final", "final", "run"), Input("structure", "structure", "run")), (),
          lambda run, i, p: model(run), _gaussians, "the asset as 3D Gaussians"),
    Stage("mesh", "run", (Input("final", "final", "run"), Input("structure", "structure", "run")), (),
          lambda run, i, p: {**model(run), "fill_interior": True}, _mesh, "the asset as a vertex-coloured mesh"),
)}


def stage_table() -> str:
    """The declarations as a Markdown table (``docs/architecture.md`` holds it)."""
    rows = ["| stage | per | reads | parameters | what it holds |", "|---|---|---|---|---|"]
    for s in STAGES.values():
        reads = ", ".join(f"{inp.stage}" + ("" if inp.index == "same" else f" ({inp.index})")
                          + (" if …" if inp.when else "") for inp in s.inputs) or "—"
        rows.append(f"| `{s.name}` | {s.per} | {reads} | {', '.join(f'`{f}`' for f in s.fields) or '—'} | {s.doc} |")
    return "\n".join(rows)

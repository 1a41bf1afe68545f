"""Fuse3D as a staged, cached pipeline.

``Fuse3D.from_pretrained(...)`` loads a TRELLIS-format model; ``pipe.run(global_condition,
local_conditions, **params)`` returns a :class:`Run`. A run is a chain of stages, each one cached
under a key made of its stage name, the keys of its inputs and its own parameters::

    prepare ─ encode ─┬─ structure ─ capture ─ forward_alignment ─ refine ─┐
                      │                                                  reverse_alignment
                      └──────────────────────────── unified_tokens ──────┤
                                                                  enhancement ─ final ─ gaussians / mesh

``run.retune(threshold=…, heads=…, refine=…, strength=…)`` returns a new run that shares every stage
whose key is unchanged, so retuning alignment or λ never runs a network; stages are computed when
first read (``run.final`` runs the final sampling).
"""
from __future__ import annotations

import hashlib
import html
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .cache import Cache, Entry, stage_key
from .conditions import Condition, ConditionError, split_global
from .method import alignment as A
from .method import enhancement as E
from .method import fusion as M
from .method.processors import (CallTracker, CaptureProcessor, CaptureState, CaptureTarget, EnhanceProcessor,
                                capture_result)
from .params import Fuse3DParams, ModelDefaults
from .trellis.attention import use_attn_processors
from .trellis.checkpoint import CheckpointError
from .trellis.pipeline import TrellisPipeline, load_pipeline
from .trellis.sparse import SparseTensor

STAGES = ("prepare", "encode", "structure", "capture", "forward_alignment", "refine", "reverse_alignment",
          "unified_tokens", "enhancement", "final", "gaussians", "mesh")


def derive_seed(seed: int, purpose: str) -> int:
    """An independent, reproducible seed for one use of the run's seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


class Fuse3D:
    """Fuse3D on a TRELLIS-format model.

    Args:
        pipeline: the loaded networks (:func:`fuse3d.trellis.pipeline.load_pipeline`).
        cache: where stage results live (default: memory only).
        progress: show progress bars.

    Attributes:
        defaults: the model's alignment defaults (:class:`fuse3d.params.ModelDefaults`): the ones its
            ``pipeline.json`` carries, else the paper's heads ``[0, 4, 12]`` at 0.55.
    """

    def __init__(self, pipeline: TrellisPipeline, cache: Optional[Cache] = None, progress: bool = True):
        self.trellis = pipeline
        self.cache = cache or Cache()
        self.progress = progress
        try:
            self.defaults = ModelDefaults.read(getattr(pipeline, "fuse3d_meta", None), pipeline.slat_flow.num_heads,
                                               f"{pipeline.source}/pipeline.json")
        except ValueError as e:
            raise CheckpointError(str(e)) from None

    @classmethod
    def from_pretrained(cls, path_or_repo: Optional[Union[str, Path]] = None, device: Optional[str] = None,
                        dtype: str = "auto", cache_dir: Optional[Union[str, Path]] = None,
                        dinov2: Optional[Union[str, Path]] = None, progress: bool = True) -> "Fuse3D":
        """Load a model folder or Hugging Face repo (``None``: the bundled default model).

        ``FUSE3D_MODEL`` (a folder or repo id) replaces the default when set; ``cache_dir`` enables
        the disk cache (safetensors + JSON).
        """
        from .models import default_model_path

        if path_or_repo is None:
            path_or_repo = os.environ.get("FUSE3D_MODEL") or default_model_path()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = load_pipeline(path_or_repo, device=device, dtype=dtype, dinov2=dinov2, progress=progress)
        return cls(pipe, Cache(cache_dir), progress)

    @property
    def model_name(self) -> str:
        return self.trellis.model_name

    def __repr__(self) -> str:
        return f"Fuse3D(model={self.model_name!r}, device={self.trellis.device}, cache={self.cache!r})"

    def run(self, global_condition: Optional[Condition] = None, local_conditions: Sequence[Condition] = (),
            seed: int = 0, structure=None, lazy: bool = False, **params) -> "Run":
        """Fuse3D for a global condition and local conditions.

        Args:
            global_condition: the image that sets the overall shape; ``None`` picks, among
                ``local_conditions``, the one with the largest selected area (paper §3.1).
            local_conditions: images whose selected regions steer their aligned 3D regions.
            seed: reproducible noise for every sampling.
            structure: use this structure instead of sampling one from the global image: voxel coords
                ``[N, 3]``/``[N, 4]``, a boolean ``[64, 64, 64]`` grid, a ``trimesh.Trimesh`` or a mesh path.
            lazy: return at once and compute stages when read (default: compute up to the final latent).
            **params: any :class:`~fuse3d.params.Fuse3DParams` field.
        """
        local_conditions = list(local_conditions)
        if global_condition is None:
            global_condition, local_conditions = split_global(local_conditions)
        if not local_conditions:
            raise ConditionError("Fuse3D needs at least one local condition")
        conds = list(local_conditions) + [global_condition]
        for c in conds:
            if not isinstance(c, Condition):
                raise TypeError(f"conditions must be fuse3d.Condition objects, got {type(c).__name__}")
            c.prepare()  # every image problem surfaces now, before any work
        p = Fuse3DParams.for_model(self.defaults, seed=int(seed), **params)
        run = Run(self, global_condition, local_conditions, p, _structure_coords(structure))
        run._check()
        if not lazy:
            run.final
        return run


def _structure_coords(structure) -> Optional[torch.Tensor]:
    if structure is None:
        return None
    from . import assets

    if isinstance(structure, torch.Tensor) or isinstance(structure, np.ndarray):
        arr = torch.as_tensor(np.asarray(structure))
        if arr.dtype == torch.bool and arr.ndim == 3:
            return assets.voxels_from_grid(arr.numpy())
        if arr.ndim == 2 and arr.shape[1] == 4:
            arr = arr[:, 1:]
        return assets.voxels_from_points(arr.numpy())
    return assets.voxelize_mesh(structure)


class Run:
    """One Fuse3D run: conditions, parameters and every stage's results (computed on first read).

    Indices: ``k`` runs over the local conditions in the order given; the global condition comes
    last wherever images are listed together.
    """

    def __init__(self, fuse3d: Fuse3D, global_condition: Condition, local_conditions: List[Condition],
                 params: Fuse3DParams, user_structure: Optional[torch.Tensor] = None):
        self.fuse3d = fuse3d
        self.global_condition = global_condition
        self.local_conditions = list(local_conditions)
        self.params = params
        self._user_structure = user_structure
        self._entries: Dict[Tuple[str, int], Entry] = {}
        self._keys: Dict[Tuple[str, int], str] = {}

    # ================================================================== basics
    @property
    def trellis(self) -> TrellisPipeline:
        return self.fuse3d.trellis

    @property
    def model_name(self) -> str:
        return self.fuse3d.model_name

    @property
    def conditions(self) -> List[Condition]:
        """Local conditions, then the global one."""
        return self.local_conditions + [self.global_condition]

    @property
    def K(self) -> int:
        return len(self.local_conditions)

    @property
    def num_heads(self) -> int:
        return self.trellis.slat_flow.num_heads

    @property
    def num_blocks(self) -> int:
        return len(self.trellis.slat_flow.blocks)

    @property
    def prefix(self) -> int:
        return self.trellis.image_encoder.num_prefix_tokens

    def _check(self) -> None:
        p = self.params
        A.check_heads(p.heads, self.num_heads)
        if p.lambdas is not None and len(p.lambdas) != self.K:
            raise ValueError(f"lambdas needs one λ per local condition ({self.K}), got {len(p.lambdas)}")
        for name in ("capture_blocks",):
            v = getattr(p, name)
            if v is not None and any(not 0 <= b < self.num_blocks for b in v):
                raise ValueError(f"{name} must be in 0..{self.num_blocks - 1}, got {list(v)}")
        if p.capture_steps is not None and any(not 0 <= s < self._latent_params()["steps"] for s in p.capture_steps):
            raise ValueError(f"capture_steps must be in 0..{self._latent_params()['steps'] - 1}, got {list(p.capture_steps)}")

    def retune(self, **changes) -> "Run":
        """A run with changed parameters sharing every unchanged stage (nothing is computed yet)."""
        run = Run(self.fuse3d, self.global_condition, self.local_conditions, self.params.updated(**changes),
                  self._user_structure)
        run._check()
        return run

    def _stage(self, stage: str, index: int, inputs: Dict[str, object], params: dict, compute) -> Entry:
        memo = (stage, index)
        if memo not in self._entries:
            key = stage_key(stage, inputs, params)
            self._keys[memo] = key
            self._entries[memo] = self.fuse3d.cache.fetch(stage, key, lambda: _timed_entry(compute, self.trellis.device))
        return self._entries[memo]

    def timings(self) -> Dict[str, float]:
        """Seconds each stage took when it was computed (stages loaded from the cache keep their time)."""
        out = {}
        for (stage, i), e in self._entries.items():
            if "seconds" in e.meta:
                out[stage if len(self._indices(stage)) == 1 else f"{stage}[{i}]"] = e.meta["seconds"]
        return out

    def key(self, stage: str, index: int = 0) -> str:
        """The cache key of a stage (computing the stage if needed)."""
        self._get(stage, index)
        return self._keys[(stage, index)]

    def _get(self, stage: str, index: int = 0) -> Entry:
        return getattr(self, f"_{stage}")(index)

    def _model(self) -> dict:
        return {"model": self.trellis.fingerprint}

    def _latent_params(self) -> dict:
        p = dict(self.trellis.slat_sampler_params)
        if self.params.latent_steps is not None:
            p["steps"] = int(self.params.latent_steps)
        if self.params.latent_cfg is not None:
            p["cfg_strength"] = float(self.params.latent_cfg)
        p["cfg_interval"] = list(p.get("cfg_interval", (0.0, 1.0)))
        return p

    def _structure_params(self) -> dict:
        p = dict(self.trellis.ss_sampler_params)
        if self.params.structure_steps is not None:
            p["steps"] = int(self.params.structure_steps)
        if self.params.structure_cfg is not None:
            p["cfg_strength"] = float(self.params.structure_cfg)
        p["cfg_interval"] = list(p.get("cfg_interval", (0.0, 1.0)))
        return p

    # ================================================================== stage: prepare / encode
    def _cond_index(self, i: int) -> Condition:
        return self.conditions[i]

    def _prepare(self, i: int) -> Entry:
        cond = self._cond_index(i)

        def compute():
            pr = cond.prepare()
            t = {"image": torch.from_numpy(np.asarray(pr.image).copy()),
                 "alpha": torch.from_numpy(pr.pre.alpha),
                 "foreground": torch.from_numpy(pr.foreground), "selected": torch.from_numpy(pr.selected)}
            if pr.pixel_mask is not None:
                t["pixel_mask"] = torch.from_numpy(pr.pixel_mask)
            return Entry(t, {"crop_box": list(pr.pre.crop_box), "source_size": list(pr.pre.source_size), "name": cond.name})

        return self._stage("prepare", i, {}, {"condition": cond.key}, compute)

    def _encode(self, i: int) -> Entry:
        prep = self._prepare(i)
        crop = self.params.fusion == "crop" and i < self.K

        def compute():
            from PIL import Image

            if crop:
                image, selected = _crop_region(self._cond_index(i))
            else:
                image, selected = Image.fromarray(prep["image"].numpy()), prep["selected"]
            tokens = self.trellis.encode_images([image])[0].float()
            return Entry({"tokens": tokens.cpu(), "selected": selected.bool()}, {"fusion": "crop" if crop else "mcfm"})

        return self._stage("encode", i, {"prepare": self._keys[("prepare", i)]}, {**self._model(), "crop": crop}, compute)

    def prepared(self, i: int):
        """Condition ``i`` after preprocessing (:class:`fuse3d.conditions.Prepared`): the 518² image the
        encoder saw, its alpha, the user mask in that frame, foreground and selected patch grids."""
        self._prepare(i)
        return self._cond_index(i).prepare()

    def tokens(self, i: int) -> torch.Tensor:
        """Condition tokens ``[T, C]`` of condition ``i`` (locals first, global last)."""
        return self._encode(i)["tokens"]

    def selected_patches(self, i: int) -> torch.Tensor:
        """``[P]`` patch indices selected in condition ``i`` (the region ``D_k``)."""
        return M.patch_indices(self._encode(i)["selected"].numpy())

    # ================================================================== stage: structure
    def _structure(self, _: int = 0) -> Entry:
        if self._user_structure is not None:
            coords = self._user_structure
            digest = hashlib.sha256(coords.numpy().tobytes()).hexdigest()
            return self._stage("structure", 0, {}, {"user": digest}, lambda: Entry({"coords": coords}, {"source": "user"}))
        g = self.K
        self._encode(g)

        def compute():
            cond = self.tokens(g)[None].to(self.trellis.device)
            coords = self.trellis.sample_structure(cond, seed=derive_seed(self.params.seed, "structure"),
                                                   progress=self.fuse3d.progress, **self._structure_params())
            if len(coords) == 0:
                raise RuntimeError(f"the structure sampled from {self.global_condition.name} is empty")
            return Entry({"coords": coords.cpu()}, {"source": "sampled from the global condition"})

        params = {**self._model(), "seed": self.params.seed, "sampler": self._structure_params()}
        return self._stage("structure", 0, {"tokens": self._keys[("encode", g)]}, params, compute)

    @property
    def structure(self) -> torch.Tensor:
        """Active voxels ``[N, 4]`` int32 ``(batch, x, y, z)`` at 64³."""
        return self._structure()["coords"]

    @property
    def cells(self) -> torch.Tensor:
        """Cells ``[M, 4]`` (32³) in the latent flow's query order."""
        return A.cells_of_voxels(self.structure)[0]

    @property
    def voxel_cell(self) -> torch.Tensor:
        """``[N]``: the cell row of every voxel."""
        return A.cells_of_voxels(self.structure)[1]

    # ================================================================== stage: capture
    def _capture_spec(self, i: int) -> Tuple[List[int], CaptureTarget]:
        """Token indices fed to capture sampling ``i`` and what it accumulates."""
        prefix = self.prefix
        enc = self._encode(i)
        sel = M.patch_indices(enc["selected"].numpy())
        n_tokens = enc["tokens"].shape[0]
        if i == self.K:  # reverse: the global image's full tokens; candidates = its selected patches
            return list(range(n_tokens)), CaptureTarget("reverse", sel + prefix)
        if self.params.capture_tokens == "full" or self.params.fusion == "crop":
            return list(range(n_tokens)), CaptureTarget("forward", sel + prefix)
        fg = M.patch_indices(self._prepare(i)["foreground"].numpy())
        fed = list(range(prefix)) + (fg + prefix).tolist()
        position = {t: j for j, t in enumerate(fed)}
        return fed, CaptureTarget("forward", torch.tensor([position[int(t)] for t in sel + prefix]))

    def _capture_params(self, i: int) -> dict:
        p = self.params
        params = {**self._model(), "seed": p.seed, "sampler": self._latent_params(), "blocks": p.capture_blocks,
                  "steps": p.capture_steps, "schedule": p.schedule}
        if i < self.K:  # the reverse capture always feeds the global image's full tokens, without detail
            params.update(tokens=p.capture_tokens, detail=p.capture_detail)
        return params

    def _capture_inputs(self, i: int) -> dict:
        self._encode(i)
        inputs = {"structure": self._keys[("structure", 0)], "tokens": self._keys[("encode", i)]}
        if self.params.schedule == "shared":  # the queries come from the global image's sampling
            self._encode(self.K)
            inputs["queries"] = self._keys[("encode", self.K)]
        return inputs

    def _capture(self, i: int) -> Entry:
        """Capture of condition ``i``: forward for a local (``i < K``), reverse for the global (``i = K``)."""
        self._structure()
        memo = ("capture", i)
        if memo in self._entries:
            return self._entries[memo]
        # compute every missing capture of this run together (one batched sampling when it fits)
        keys = {j: stage_key("capture", self._capture_inputs(j), self._capture_params(j)) for j in range(self.K + 1)}
        missing = [j for j in range(self.K + 1) if self.fuse3d.cache.status("capture", keys[j]) == "missing"]
        if i in missing:
            entries, seconds = _timed(lambda: self._capture_samplings(missing), self.trellis.device)
            for j, entry in zip(missing, entries):
                entry.meta.update(seconds=seconds, computed_with=len(missing))
                self.fuse3d.cache.put("capture", keys[j], entry)
        return self._stage("capture", i, self._capture_inputs(i), self._capture_params(i),
                           lambda: self._capture_samplings([i])[0])

    def _capture_samplings(self, items: List[int]) -> List[Entry]:
        if self.params.schedule == "shared":
            from .schedules import shared_capture

            return shared_capture(self, items)
        batch = self.params.capture_batch or len(items)
        while True:
            try:
                out = []
                for start in range(0, len(items), batch):
                    out.extend(self._capture_batch(items[start:start + batch]))
                return out
            except RuntimeError as err:
                if not _is_oom(err) or batch == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                batch = max(1, batch // 2)

    def _capture_batch(self, items: List[int]) -> List[Entry]:
        """One batched capture sampling on the structure for conditions ``items``."""
        trellis, dev = self.trellis, self.trellis.device
        coords = self.structure.to(dev)
        n_cells = len(self.cells)
        specs = [self._capture_spec(i) for i in items]
        token_sets = [self.tokens(i)[fed] for i, (fed, _) in zip(items, specs)]
        t_max = max(t.shape[0] for t in token_sets)
        cond = torch.zeros(len(items), t_max, token_sets[0].shape[1])
        key_mask = torch.zeros(len(items), t_max, dtype=torch.bool)
        for b, t in enumerate(token_sets):
            cond[b, : t.shape[0]] = t
            key_mask[b, : t.shape[0]] = True
        ragged = not bool(key_mask.all())
        noise_parts, coord_parts = [], []
        for b, i in enumerate(items):
            name = "capture:global" if i == self.K else f"capture:{self.local_conditions[i].key}"
            noise_parts.append(trellis.latent_noise(coords, derive_seed(self.params.seed, name)).feats)
            c = coords.clone()
            c[:, 0] = b
            coord_parts.append(c)
        noise = SparseTensor(torch.cat(noise_parts), torch.cat(coord_parts), len(items))
        sampler = self._latent_params()
        tracker = CallTracker()
        state = CaptureState([s[1] for s in specs], self.num_heads, n_cells, self.num_blocks, sampler["steps"],
                             self.params.capture_blocks, self.params.capture_steps,
                             key_mask.to(dev) if ragged else None, self.params.capture_detail, device=dev)
        procs = {f"blocks.{b}.cross_attn": CaptureProcessor(state, tracker, b) for b in range(self.num_blocks)}
        names = ", ".join("global" if i == self.K else self.local_conditions[i].name for i in items)
        with use_attn_processors(trellis.slat_flow, procs):
            slat = trellis.sample_latent(cond.to(dev), noise.coords, noise=noise, neg_cond=torch.zeros_like(cond).to(dev),
                                         progress=self.fuse3d.progress, call_context=tracker, normalize=False, **sampler)
        return [Entry(capture_result(state, b, fed, slat.feats[slat.layout[b]]),
                      {"kind": target.kind, "batch": names, "calls": state.sums[b].count})
                for b, (fed, target) in enumerate(specs)]

    def head_scores(self, k: int) -> torch.Tensor:
        """``[heads, cells]``: local ``k``'s selected tokens' attention per head (averaged over blocks, steps)."""
        return self._capture(k)["mean"]

    def block_scores(self, k: int) -> torch.Tensor:
        """``[blocks, heads, cells]`` per-block averages (``capture_detail``)."""
        return self._capture(k)["by_block"]

    def step_scores(self, k: int) -> torch.Tensor:
        """``[steps, heads, cells]`` per-step averages (``capture_detail``)."""
        return self._capture(k)["by_step"]

    @property
    def reverse_map(self) -> torch.Tensor:
        """``[heads, cells, candidates]``: the global image's attention normalised over cells."""
        return self._capture(self.K)["mean"]

    # ================================================================== stage: alignment
    def _forward_alignment(self, k: int) -> Entry:
        p = self.params
        cap = self._capture(k)

        def compute():
            score, mask = A.forward_alignment(cap["mean"], p.heads, p.threshold)
            return Entry({"score": score, "mask": mask})

        return self._stage("forward_alignment", k, {"capture": self._keys[("capture", k)]},
                           {"heads": list(p.heads), "threshold": p.threshold}, compute)

    def _neighbourhoods(self, _: int = 0) -> Entry:
        """The cells' k-nearest neighbourhoods for the vote (shared by every local image and retune)."""
        p = self.params

        def compute():
            idx, valid = A.neighbourhoods(self.cells[:, 1:], p.refine_k, p.refine_ties)
            return Entry({"index": idx, "valid": valid})

        return self._stage("neighbourhoods", 0, {"structure": self._keys_after("structure")},
                           {"k": p.refine_k, "ties": p.refine_ties}, compute)

    def _refine(self, k: int) -> Entry:
        p = self.params
        fwd = self._forward_alignment(k)

        def compute():
            if not p.refine:
                return Entry({"mask": fwd["mask"].clone()})
            nbr = self._neighbourhoods()
            mask = A.refine(fwd["mask"], self.cells[:, 1:], p.refine_k, p.refine_fill, p.refine_clear, p.refine_ties,
                            neighbours=(nbr["index"], nbr["valid"]))
            return Entry({"mask": mask})

        params = {"refine": p.refine, "k": p.refine_k, "fill": p.refine_fill, "clear": p.refine_clear, "ties": p.refine_ties}
        return self._stage("refine", k, {"forward": self._keys[("forward_alignment", k)],
                                         "structure": self._keys[("structure", 0)]}, params, compute)

    def forward_scores(self, k: int) -> torch.Tensor:
        """``[cells]`` min–max normalised forward score of local ``k``."""
        return self._forward_alignment(k)["score"]

    def raw_mask(self, k: int) -> torch.Tensor:
        """``[cells]`` cells above the threshold, before refinement."""
        return self._forward_alignment(k)["mask"]

    def refined_mask(self, k: int) -> torch.Tensor:
        """``[cells]`` aligned cells ``V_k`` after the kNN vote."""
        return self._refine(k)["mask"]

    def aligned_voxels(self, k: int, refined: bool = True) -> torch.Tensor:
        """``[N]`` bool: voxels aligned with local ``k``."""
        return A.cells_to_voxels(self.refined_mask(k) if refined else self.raw_mask(k), self.voxel_cell)

    def _reverse_alignment(self, _: int = 0) -> Entry:
        p = self.params
        refined = [self._refine(k) for k in range(self.K)]
        cap = self._capture(self.K)

        def compute():
            unaligned = A.unaligned_cells([r["mask"] for r in refined], len(self.cells))
            cand = cap["target_tokens"] - self.prefix  # candidate patch indices
            if not p.reverse_alignment:
                score = torch.zeros(len(cand))
                sel = torch.ones(len(cand), dtype=torch.bool)
            else:
                thr = p.threshold if p.reverse_threshold is None else p.reverse_threshold
                score, sel = A.reverse_alignment(cap["mean"], unaligned, p.heads, thr)
            return Entry({"unaligned": unaligned, "score": score, "selected": sel, "candidates": cand,
                          "patches": cand[sel]})

        inputs = {"capture": self._keys[("capture", self.K)], "refine": [self._keys[("refine", k)] for k in range(self.K)]}
        params = {"enabled": p.reverse_alignment, "heads": list(p.heads),
                  "threshold": p.threshold if p.reverse_threshold is None else p.reverse_threshold}
        return self._stage("reverse_alignment", 0, inputs, params, compute)

    @property
    def unaligned(self) -> torch.Tensor:
        """``[cells]`` cells no local image is aligned with."""
        return self._reverse_alignment()["unaligned"]

    @property
    def reverse_candidates(self) -> torch.Tensor:
        """``[Tc]`` patch indices of the global image that the reverse alignment chooses from."""
        return self._reverse_alignment()["candidates"]

    @property
    def reverse_scores(self) -> torch.Tensor:
        """``[Tc]`` min–max normalised reverse score of each candidate patch (zeros when disabled)."""
        return self._reverse_alignment()["score"]

    @property
    def global_patches(self) -> torch.Tensor:
        """``D_g``: patch indices of the global image kept by the reverse alignment."""
        return self._reverse_alignment()["patches"]

    # ================================================================== stage: unified tokens / enhancement
    def _unified_tokens(self, _: int = 0) -> Entry:
        self._reverse_alignment()
        n_images = self.K if self.params.inpainting else self.K + 1
        for i in range(self.K + 1):
            self._encode(i)

        def compute():
            selected, patches = [], []
            for i in range(n_images):
                pt = self.global_patches if i == self.K else self.selected_patches(i)
                selected.append(M.select_tokens(self.tokens(i), pt, self.prefix))
                patches.append(pt)
            u = M.unify_tokens(selected, patches, self.prefix)
            return Entry({"tokens": u.tokens, "token_region": u.token_region, "token_patch": u.token_patch})

        inputs = {"tokens": [self._keys[("encode", i)] for i in range(self.K + 1)],
                  "reverse": self._keys[("reverse_alignment", 0)]}
        return self._stage("unified_tokens", 0, inputs, {"inpainting": self.params.inpainting}, compute)

    @property
    def unified_tokens(self) -> M.UnifiedTokens:
        e = self._unified_tokens()
        return M.UnifiedTokens(e["tokens"], e["token_region"], e["token_patch"])

    def _lambda_values(self) -> List[float]:
        p = self.params
        n_total = int(self._prepare(0)["selected"].numel())
        sel = [len(self.selected_patches(k)) for k in range(self.K)]
        fg = [int(self._prepare(k)["foreground"].sum()) if p.fusion == "mcfm" else len(self.selected_patches(k))
              for k in range(self.K)]
        lams = list(p.lambdas) if p.lambdas is not None else E.region_lambdas(p.strength, p.lambda_mode, sel, fg, n_total)
        if not p.inpainting:
            lam_g = p.global_lambda
            if lam_g is None:
                lam_g = E.global_lambda(p.strength, p.lambda_mode, max(len(self.global_patches), 1), n_total) \
                    if p.reverse_alignment else 1.0
            lams.append(lam_g)
        return lams

    def _enhancement(self, _: int = 0) -> Entry:
        p = self.params
        uni = self._unified_tokens()
        refined = [self._refine(k) for k in range(self.K)]
        rev = self._reverse_alignment()

        def compute():
            region = uni["token_region"]
            if not p.enhancement:
                t = E.identity_tables(len(self.cells), region)
            else:
                aligned = [r["mask"] for r in refined]
                lams = self._lambda_values()
                if p.inpainting:
                    cell_regions = torch.stack([m.bool() for m in aligned], dim=1)
                    t = E.EnhancementTables(cell_regions, region, torch.tensor(lams, dtype=torch.float32))
                else:
                    t = E.enhancement_tables(aligned, rev["unaligned"], region, lams)
            return Entry({"cell_regions": t.cell_regions, "token_region": t.token_region, "lambdas": t.lambdas})

        inputs = {"unified": self._keys[("unified_tokens", 0)], "refine": [self._keys[("refine", k)] for k in range(self.K)],
                  "reverse": self._keys[("reverse_alignment", 0)]}
        params = {"enabled": p.enhancement, "strength": p.strength, "mode": p.lambda_mode, "lambdas": p.lambdas,
                  "global_lambda": p.global_lambda, "inpainting": p.inpainting, "fusion": p.fusion}
        return self._stage("enhancement", 0, inputs, params, compute)

    @property
    def enhancement(self) -> E.EnhancementTables:
        """Region tables of ``E`` (cells × regions, token regions, λ per region)."""
        e = self._enhancement()
        return E.EnhancementTables(e["cell_regions"], e["token_region"], e["lambdas"])

    @property
    def lambdas(self) -> List[float]:
        """λ per region: the local images in order, then the global image (absent when inpainting)."""
        return self.enhancement.lambdas.tolist()

    # ================================================================== stage: final sampling
    def _final(self, _: int = 0) -> Entry:
        p = self.params
        uni = self._unified_tokens()
        enh = self._enhancement()
        inputs = {"structure": self._keys[("structure", 0)], "unified": self._keys[("unified_tokens", 0)],
                  "enhancement": self._keys[("enhancement", 0)]}
        if p.inpainting:
            self._capture(self.K)
            inputs["initial"] = self._keys[("capture", self.K)]

        def compute():
            trellis, dev = self.trellis, self.trellis.device
            coords = self.structure.to(dev)
            noise = trellis.latent_noise(coords, derive_seed(p.seed, "final"))
            tracker = CallTracker()
            tables = E.EnhancementTables(enh["cell_regions"], enh["token_region"], enh["lambdas"]).to(dev)
            procs = {}
            if p.enhancement:
                proc = EnhanceProcessor(tables, tracker, p.enhancement_backend)
                procs = {f"blocks.{b}.cross_attn": proc for b in range(self.num_blocks)}
            on_step = None
            if p.inpainting:
                on_step = self._inpainting_hook(noise)
            cond = uni["tokens"][None].to(dev)
            with use_attn_processors(trellis.slat_flow, procs):
                slat = trellis.sample_latent(cond, coords, noise=noise, progress=self.fuse3d.progress,
                                             call_context=tracker, on_step=on_step, **self._latent_params())
            return Entry({"feats": slat.feats.float().cpu()}, {"model": self.model_name})

        params = {**self._model(), "seed": p.seed, "sampler": self._latent_params(), "inpainting": p.inpainting,
                  "backend": p.enhancement_backend, "enhancement": p.enhancement}
        return self._stage("final", 0, inputs, params, compute)

    def _inpainting_hook(self, noise: SparseTensor):
        """Keep unaligned voxels on the forward process of the global image's latent (appendix C.2)."""
        z0 = self._capture(self.K)["slat0"].to(noise.feats)
        keep = (~A.cells_to_voxels(torch.stack([self.refined_mask(k) for k in range(self.K)]).any(0),
                                   self.voxel_cell)).to(noise.device)
        sigma_min = self.trellis.slat_sampler.sigma_min

        def hook(step, t, x):
            feats = x.feats.clone()
            feats[keep] = (1 - t) * z0[keep] + (sigma_min + (1 - sigma_min) * t) * noise.feats[keep]
            return x.replace(feats)

        return hook

    @property
    def final(self) -> SparseTensor:
        """The fused structured latent on the structure (de-normalised), ``[N, 8]``."""
        return SparseTensor(self._final()["feats"], self.structure)

    # ================================================================== stage: decoding
    def _gaussians(self, _: int = 0) -> Entry:
        from .assets import Gaussians

        def compute():
            out = self.trellis.decode(self.final.to(self.trellis.device), ["gaussian"])["gaussian"]
            return _dataclass_entry(Gaussians.from_decoder_output(self.trellis.slat_decoder_gs, out), self.model_name)

        return self._stage("gaussians", 0, {"final": self._keys_after("final")}, self._model(), compute)

    def _mesh(self, _: int = 0) -> Entry:
        from .assets import Mesh

        def compute():
            out = self.trellis.decode(self.final.to(self.trellis.device), ["mesh"])["mesh"]
            mesh = Mesh.from_decoder_output(self.trellis.slat_decoder_mesh, out, fill_interior=True)
            return _dataclass_entry(mesh, self.model_name)

        return self._stage("mesh", 0, {"final": self._keys_after("final")}, {**self._model(), "fill_interior": True}, compute)

    def _keys_after(self, stage: str) -> str:
        self._get(stage)
        return self._keys[(stage, 0)]

    @property
    def gaussians(self):
        """The fused asset as 3D Gaussians (:class:`fuse3d.assets.Gaussians`, TRELLIS frame)."""
        from .assets import Gaussians

        return Gaussians(**{k: v.numpy() for k, v in self._gaussians().tensors.items()})

    @property
    def mesh(self):
        """The fused asset as a vertex-coloured mesh (:class:`fuse3d.assets.Mesh`, TRELLIS frame)."""
        from .assets import Mesh

        return Mesh(**{k: v.numpy() for k, v in self._mesh().tensors.items()})

    def export(self, path: Union[str, Path]) -> Path:
        """Write the asset: ``.glb`` (vertex-coloured mesh) or ``.ply`` (3D Gaussians), by suffix.

        The file records which model produced it (glTF extras / PLY header comments).
        """
        from .assets import export

        path = Path(path)
        if path.suffix.lower() not in (".glb", ".ply"):
            raise ValueError(f"export writes .glb (mesh) or .ply (Gaussians), not {path.suffix or 'a path without suffix'}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot export to {path}: folder {path.parent} does not exist")
        obj = self.mesh if path.suffix.lower() == ".glb" else self.gaussians
        meta = {"generator": "fuse3d", "fuse3d_model": self.model_name, "fuse3d_model_source": str(self.trellis.source)}
        return export(obj, path, metadata=meta)

    # ================================================================== inspection
    def compute(self, *stages: str) -> "Run":
        """Compute the named stages (default: everything up to the final latent)."""
        for s in stages or ("final",):
            if s not in STAGES:
                raise ValueError(f"unknown stage {s!r}; stages: {', '.join(STAGES)}")
            for i in self._indices(s):
                self._get(s, i)
        return self

    def _indices(self, stage: str) -> range:
        if stage in ("prepare", "encode"):
            return range(self.K + 1)
        if stage == "capture":
            return range(self.K + 1)
        if stage in ("forward_alignment", "refine"):
            return range(self.K)
        return range(1)

    def stages(self) -> List[dict]:
        """One row per stage instance: name, index, cache status, key and tensor shapes (computes nothing)."""
        rows = []
        for s in STAGES:
            for i in self._indices(s):
                memo = (s, i)
                if memo in self._entries:
                    e = self._entries[memo]
                    rows.append({"stage": s, "index": i, "status": f"done ({e.source})", "key": self._keys[memo][:12],
                                 "tensors": {k: list(v.shape) for k, v in e.tensors.items()}})
                else:
                    rows.append({"stage": s, "index": i, "status": "not computed", "key": "", "tensors": {}})
        return rows

    def summary(self) -> dict:
        """What ran and what came out, JSON-serialisable (used by the CLI and the views)."""
        out = {"model": self.model_name, "model_description": getattr(self.trellis, "description", ""),
               "model_source": self.trellis.source, "global": self.global_condition.name,
               "locals": [c.name for c in self.local_conditions], "params": self.params.as_dict(),
               "defaults": self.fuse3d.defaults.as_dict()}
        prepared = [c.prepare() for c in self.local_conditions]
        out["selected_patches"] = [int(p.selected.sum()) for p in prepared]      # |D_k| per local image
        out["foreground_patches"] = [int(p.foreground.sum()) for p in prepared]  # its object's patches
        done = {s for (s, _) in self._entries}
        if "structure" in done:
            out["voxels"] = int(len(self.structure))
            out["cells"] = int(len(self.cells))
        if "refine" in done:
            out["aligned_cells"] = [int(self.refined_mask(k).sum()) for k in range(self.K) if ("refine", k) in self._entries]
        if "reverse_alignment" in done:
            out["unaligned_cells"] = int(self.unaligned.sum())
            out["global_tokens"] = int(len(self.global_patches))
        if "enhancement" in done:
            out["lambdas"] = self.lambdas
        return out

    def __repr__(self) -> str:
        done = sum(1 for r in self.stages() if r["status"] != "not computed")
        return (f"Run(model={self.model_name!r}, global={self.global_condition.name!r}, "
                f"locals={[c.name for c in self.local_conditions]}, stages computed={done})")

    def _repr_html_(self) -> str:
        def row(r):
            name = r["stage"] if len(self._indices(r["stage"])) == 1 else f"{r['stage']} [{r['index']}]"
            shapes = ", ".join(f"{k} {v}" for k, v in r["tensors"].items())
            return (f"<tr><td>{name}</td><td>{html.escape(r['status'])}</td><td><code>{r['key']}</code></td>"
                    f"<td>{html.escape(shapes)}</td></tr>")

        rows = "".join(row(r) for r in self.stages())
        head = (f"<b>Fuse3D run</b> — model <b>{html.escape(self.model_name)}</b>"
                f"{' (' + html.escape(self.trellis.description) + ')' if getattr(self.trellis, 'description', '') else ''}<br>"
                f"global: {html.escape(self.global_condition.name)}; locals: "
                f"{html.escape(', '.join(c.name for c in self.local_conditions))}")
        return (f"<div>{head}<table><thead><tr><th>stage</th><th>status</th><th>key</th><th>tensors</th></tr></thead>"
                f"<tbody>{rows}</tbody></table></div>")


def _timed(compute, device):
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


def _timed_entry(compute, device) -> Entry:
    """A stage's entry with its wall time recorded in ``meta["seconds"]``."""
    entry, seconds = _timed(compute, device)
    entry.meta["seconds"] = seconds
    return entry


def _dataclass_entry(obj, model_name: str) -> Entry:
    """A dataclass of arrays (Mesh, Gaussians) as a cache entry (``None`` fields are left out)."""
    from dataclasses import fields

    tensors = {f.name: torch.as_tensor(np.asarray(getattr(obj, f.name))) for f in fields(obj)
               if getattr(obj, f.name) is not None}
    return Entry(tensors, {"model": model_name})


def _crop_region(cond: Condition):
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
    selected = torch.from_numpy(M.foreground_patches(np.asarray(cropped.image)))
    return cropped.image, selected

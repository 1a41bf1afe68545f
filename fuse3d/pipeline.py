"""Fuse3D as a staged, cached pipeline.

``Fuse3D.from_pretrained(...)`` loads a TRELLIS-format model; ``pipe.run(global_condition,
local_conditions, **params)`` returns a :class:`Run`: the stages of :mod:`fuse3d.stages`, each
computed when first read and cached under a key made of its name, its inputs' keys and the
parameters it declares. ``run.retune(threshold=…, heads=…, strength=…)`` returns a run that shares
every stage whose key is unchanged (``.invalidated()`` lists the others), so retuning alignment or λ
never runs a network. ``run["capture", 0]`` is a stage's named tensors; the accessors below
(``run.head_scores(k)``, ``run.refined_mask(k)``, ``run.final``, …) are a thin, documented façade
over them. :func:`fuse3d.method.reference.fuse3d_reference` is the same method, uncached, on one page.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .stages import STAGES as DECLARED
from .stages import Input, ParamView, Stage, patches, sampler, timed
from .cache import Cache, Entry, stage_key
from .conditions import Condition, ConditionError, split_global
from .method import alignment, fusion
from .method.enhancement import EnhancementTables
from .params import Fuse3DParams, ModelDefaults
from .trellis.checkpoint import CheckpointError
from .trellis.pipeline import TrellisPipeline, load_pipeline
from .trellis.sparse import SparseTensor

STAGES = tuple(DECLARED)


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
        from .bundled import default_model_path

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
        p = Fuse3DParams.for_model(self.defaults, seed=int(seed), **params)
        return self._start(global_condition, local_conditions, p, _structure_coords(structure), lazy)

    def encode(self, asset, views: int = 24, name: Optional[str] = None):
        """A given asset (procedural object, coloured mesh or mesh file) as structure + structured
        latent (:func:`fuse3d.assets.encode_asset`), ready for :meth:`edit`."""
        from .assets.encode import encode_asset

        return encode_asset(self.trellis, asset, views=views, name=name, progress=self.progress)

    def edit(self, source, local_conditions: Sequence[Condition], global_condition: Optional[Condition] = None,
             seed: int = 0, lazy: bool = False, views: int = 24, **params) -> "Run":
        """Edit a given asset (paper Fig. 10b): regenerate the regions the local images align with and
        keep the rest of its latent exactly.

        The edit is the inpainting variant (appendix C.2) with the given latent in place of the one
        sampled from the global image: during the final sampling every unaligned voxel is held on the
        forward process of the given latent, and ends on it; the aligned regions are sampled afresh
        with local attention enhancement. Edits chain: ``pipe.edit(pipe.edit(run, [a]), [b])``.

        Args:
            source: a :class:`Run` (its structure and final latent), an
                :class:`~fuse3d.assets.EncodedAsset` (:meth:`encode`), or an asset to encode first.
            local_conditions: the images that restyle regions of the asset, each with its mask.
            global_condition: shown as the asset and used by the ``shared`` capture strategy (default:
                the run's global condition, else a render of the encoded asset).
            views: renders averaged when an asset is encoded here (patch-feature encoders only).
            **params: any :class:`~fuse3d.params.Fuse3DParams` field (``inpainting`` is always on).
        """
        from .editing import start_edit

        if isinstance(source, Run):
            global_condition = global_condition or source.global_condition
            source = source.as_asset()
        return start_edit(self, source, local_conditions, global_condition, int(seed), lazy, views, params)

    def _start(self, global_condition: Condition, local_conditions: List[Condition], params: Fuse3DParams,
               structure: Optional[torch.Tensor], lazy: bool, base=None) -> "Run":
        """A checked run of prepared conditions (``base``: the asset an edit keeps, :meth:`edit`)."""
        for c in local_conditions + [global_condition]:
            if not isinstance(c, Condition):
                raise TypeError(f"conditions must be fuse3d.Condition objects, got {type(c).__name__}")
            c.prepare()  # every image problem surfaces now, before any work
        run = Run(self, global_condition, local_conditions, params, structure, base=base)
        run._check()
        if not lazy:
            run.final_latent()
        return run


def _structure_coords(structure) -> Optional[torch.Tensor]:
    if structure is None:
        return None
    from . import assets

    if isinstance(structure, (torch.Tensor, np.ndarray)):
        arr = torch.as_tensor(np.asarray(structure))
        if arr.dtype == torch.bool and arr.ndim == 3:
            return assets.voxels_from_grid(arr.numpy())
        if arr.ndim == 2 and arr.shape[1] == 4:
            arr = arr[:, 1:]
        return assets.voxels_from_points(arr.numpy())
    return assets.voxelize_mesh(structure)


class StageResult:
    """One stage's result (``run["capture", 0]``): named tensors, with shapes in its repr."""

    def __init__(self, stage: str, index: int, key: str, entry: Entry):
        self.stage, self.index, self.key, self.entry = stage, index, key, entry

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.entry.tensors:
            raise KeyError(f"stage {self.stage!r} holds {', '.join(self.entry.tensors)}; not {name!r}")
        return self.entry.tensors[name]

    def keys(self):
        return self.entry.tensors.keys()

    @property
    def meta(self) -> dict:
        return self.entry.meta

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {list(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in self.entry.tensors.items())
        return f"StageResult({self.stage}[{self.index}] from {self.entry.source}, key {self.key[:12]}: {shapes})"


class Run:
    """One Fuse3D run: conditions, parameters and every stage's results (computed on first read).

    Indices: ``k`` runs over the local conditions in the order given (``0..K-1``); ``i`` over all
    conditions, the global one last (``0..K``). Every accessor checks its index.
    """

    def __init__(self, fuse3d: Fuse3D, global_condition: Condition, local_conditions: List[Condition],
                 params: Fuse3DParams, user_structure: Optional[torch.Tensor] = None, parent: Optional["Run"] = None,
                 base=None):
        self.fuse3d = fuse3d
        self.base = base  # the EncodedAsset an edit keeps outside its aligned regions (Fuse3D.edit)
        self.global_condition = global_condition
        self.local_conditions = list(local_conditions)
        self.params = params
        self.user_structure = user_structure
        self._parent = parent
        self._entries: Dict[Tuple[str, int], Entry] = {}
        self._keys: Dict[Tuple[str, int], str] = {}
        self._cells = None

    # ================================================================== basics
    @property
    def trellis(self) -> TrellisPipeline:
        return self.fuse3d.trellis

    @property
    def cache(self) -> Cache:
        return self.fuse3d.cache

    @property
    def progress(self) -> bool:
        return self.fuse3d.progress

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
        alignment.check_heads(p.heads, self.num_heads)
        if p.lambdas is not None and len(p.lambdas) != self.K:
            raise ValueError(f"lambdas needs one λ per local condition ({self.K}), got {len(p.lambdas)}")
        if p.capture_blocks is not None and any(not 0 <= b < self.num_blocks for b in p.capture_blocks):
            raise ValueError(f"capture_blocks must be in 0..{self.num_blocks - 1}, got {list(p.capture_blocks)}")
        steps = sampler(self, ParamView(p, DECLARED["capture"]), "latent")["steps"]
        if p.capture_steps is not None and any(not 0 <= s < steps for s in p.capture_steps):
            raise ValueError(f"capture_steps must be in 0..{steps - 1}, got {list(p.capture_steps)}")
        if p.intervene_steps is not None and any(not 0 <= s < steps for s in p.intervene_steps):
            raise ValueError(f"intervene_steps must be in 0..{steps - 1}, got {list(p.intervene_steps)}")
        for block, heads in p.ablate_heads or ():
            if not 0 <= block < self.num_blocks:
                raise ValueError(f"ablate_heads names block {block}; the latent flow has blocks 0..{self.num_blocks - 1}")
            if heads:
                alignment.check_heads(heads, self.num_heads)
        if p.patch_blocks is not None and any(not 0 <= b < self.num_blocks for b in p.patch_blocks):
            raise ValueError(f"patch_blocks must be in 0..{self.num_blocks - 1}, got {list(p.patch_blocks)}")
        if p.patch_tokens is not None:
            region, source = p.patch_tokens
            regions = self.K if p.inpainting else self.K + 1
            if not 0 <= region < regions or not 0 <= source <= self.K:
                raise ValueError(f"patch_tokens is (region 0..{regions - 1}, source condition 0..{self.K}), "
                                 f"got {p.patch_tokens}")

    def intervene(self, ablate_heads: Optional[Dict[int, Sequence[int]]] = None, mode: str = "zero",
                  steps: Optional[Sequence[int]] = None, patch_tokens: Optional[Tuple[int, int]] = None,
                  blocks: Optional[Sequence[int]] = None) -> "Run":
        """A lazy run whose final sampling ablates heads and/or patches tokens
        (:mod:`fuse3d.method.interventions`); every earlier stage is shared with this run.

        Args:
            ablate_heads: ``{block: [heads]}`` (0-based) whose cross-attention outputs are ablated.
            mode: ``"zero"`` or ``"mean"`` (each head's output averaged over the cells).
            steps: the sampler steps to intervene at (``None``: all).
            patch_tokens: ``(region, source)``: local ``region``'s unified tokens (``K``: the global
                image's) replaced by condition ``source``'s tokens at the same patches.
            blocks: the blocks token patching acts in (``None``: all).
        """
        return self.retune(ablate_heads=ablate_heads, ablate_mode=mode, intervene_steps=steps,
                           patch_tokens=patch_tokens, patch_blocks=blocks)

    def retune(self, **changes) -> "Run":
        """A run with changed parameters sharing every unchanged stage (nothing is computed yet)."""
        run = Run(self.fuse3d, self.global_condition, self.local_conditions, self.params.updated(**changes),
                  self.user_structure, parent=self, base=self.base)
        run._check()
        return run

    # ================================================================== the graph
    def indices(self, stage: str) -> range:
        """The indices a stage exists at: ``0..K`` per condition, ``0..K-1`` per local, ``0`` per run."""
        per = self._spec(stage).per
        return range(self.K + 1) if per == "condition" else range(self.K) if per == "local" else range(1)

    def _spec(self, stage: str) -> Stage:
        if stage not in DECLARED:
            raise KeyError(f"unknown stage {stage!r}; stages: {', '.join(DECLARED)}")
        return DECLARED[stage]

    def _index(self, stage: str, index: int) -> int:
        idx = self.indices(stage)
        if not isinstance(index, (int, np.integer)) or int(index) not in idx:
            what = {"condition": f"conditions 0..{self.K} (the global one is {self.K})",
                    "local": f"local conditions 0..{self.K - 1}", "run": "index 0 only"}[self._spec(stage).per]
            raise IndexError(f"stage {stage!r} has {what}; got {index!r}")
        return int(index)

    def _input_indices(self, inp: Input, index: int):
        rule = inp.index
        if rule == "same":
            return index
        if rule == "global":
            return self.K
        if rule == "run":
            return 0
        return list(range(self.K)) if rule == "locals" else list(range(self.K + 1))

    def _active_inputs(self, spec: Stage, view: ParamView) -> List[Input]:
        return [inp for inp in spec.inputs if inp.when is None or inp.when(self, view)]

    def key(self, stage: str, index: int = 0) -> str:
        """A stage's cache key: its name, its inputs' keys and its declared parameters (computes nothing)."""
        index = self._index(stage, index)
        memo = (stage, index)
        if memo not in self._keys:
            spec = self._spec(stage)
            view = ParamView(self.params, spec)
            inputs = {}
            for inp in self._active_inputs(spec, view):
                at = self._input_indices(inp, index)
                inputs[inp.name] = [self.key(inp.stage, j) for j in at] if isinstance(at, list) else self.key(inp.stage, at)
            self._keys[memo] = stage_key(stage, inputs, spec.key(self, index, view))
        return self._keys[memo]

    def entry(self, stage: str, index: int = 0) -> Entry:
        """A stage's result, from memory, the cache or computed (its inputs first)."""
        index = self._index(stage, index)
        memo = (stage, index)
        if memo not in self._entries:
            spec = self._spec(stage)
            view = ParamView(self.params, spec)

            def compute() -> Entry:
                inputs = {}
                for inp in self._active_inputs(spec, view):
                    at = self._input_indices(inp, index)
                    inputs[inp.name] = [self.entry(inp.stage, j) for j in at] if isinstance(at, list) else self.entry(inp.stage, at)
                entry, seconds = timed(lambda: spec.compute(self, index, inputs, view), self.trellis.device)
                entry.meta.setdefault("seconds", seconds)
                return entry

            self._entries[memo] = self.cache.fetch(stage, self.key(stage, index), compute)
        return self._entries[memo]

    def __getitem__(self, item) -> StageResult:
        """``run["structure"]`` or ``run["capture", 0]``: a stage's named tensors (computed if needed)."""
        stage, index = (item, 0) if isinstance(item, str) else item
        return StageResult(stage, index, self.key(stage, index), self.entry(stage, index))

    def invalidated(self) -> List[Tuple[str, int]]:
        """The stages (and indices) this run must compute anew compared with the run it was retuned
        from: those whose key changed (all of them for a run that was not retuned)."""
        return [(s, i) for s in STAGES for i in self.indices(s)
                if self._parent is None or self.key(s, i) != self._parent.key(s, i)]

    def compute(self, *stages: str) -> "Run":
        """Compute the named stages at every index (default: everything up to the final latent)."""
        for s in stages or ("final",):
            for i in self.indices(s):
                self.entry(s, i)
        return self

    def timings(self) -> Dict[str, float]:
        """Seconds each stage took when it was computed (stages loaded from the cache keep their time)."""
        out = {}
        for (stage, i), e in self._entries.items():
            if "seconds" in e.meta:
                out[stage if len(self.indices(stage)) == 1 else f"{stage}[{i}]"] = e.meta["seconds"]
        return out

    # ================================================================== conditions and tokens
    def prepared(self, i: int):
        """Condition ``i`` after preprocessing (:class:`fuse3d.conditions.Prepared`): the 518² image the
        encoder saw, its alpha, the user mask in that frame, foreground and selected patch grids."""
        self.entry("prepare", i)
        return self.conditions[i].prepare()

    def tokens(self, i: int) -> torch.Tensor:
        """Condition tokens ``[T, C]`` of condition ``i`` (locals first, global last)."""
        return self.entry("encode", i)["tokens"]

    def selected_patches(self, i: int) -> torch.Tensor:
        """``[P]`` patch indices selected in condition ``i`` (the region ``D_k``)."""
        return patches(self.entry("encode", i))

    # ================================================================== structure
    @property
    def structure(self) -> torch.Tensor:
        """Active voxels ``[N, 4]`` int32 ``(batch, x, y, z)`` at 64³ (samples the structure if needed)."""
        return self.entry("structure")["coords"]

    def _cells_of(self):
        if self._cells is None:
            self._cells = alignment.cells_of_voxels(self.structure)
        return self._cells

    @property
    def cells(self) -> torch.Tensor:
        """Cells ``[M, 4]`` (32³) in the latent flow's query order."""
        return self._cells_of()[0]

    @property
    def voxel_cell(self) -> torch.Tensor:
        """``[N]``: the cell row of every voxel."""
        return self._cells_of()[1]

    # ================================================================== capture and alignment
    def _local(self, k: int) -> int:
        return self._index("forward_alignment", k)

    def head_scores(self, k: int) -> torch.Tensor:
        """``[heads, cells]``: local ``k``'s selected tokens' attention per head (averaged over blocks,
        steps). Runs the capture samplings if they are not cached."""
        return self.entry("capture", self._local(k))["mean"]

    def block_scores(self, k: int) -> torch.Tensor:
        """``[blocks, heads, cells]`` per-block averages (``capture_detail``)."""
        return self.entry("capture", self._local(k))["by_block"]

    def step_scores(self, k: int) -> torch.Tensor:
        """``[steps, heads, cells]`` per-step averages (``capture_detail``)."""
        return self.entry("capture", self._local(k))["by_step"]

    @property
    def reverse_map(self) -> torch.Tensor:
        """``[heads, cells, candidates]``: the global image's attention normalised over cells."""
        return self.entry("capture", self.K)["mean"]

    def forward_scores(self, k: int) -> torch.Tensor:
        """``[cells]`` min–max normalised forward score of local ``k``."""
        return self.entry("forward_alignment", k)["score"]

    def raw_mask(self, k: int) -> torch.Tensor:
        """``[cells]`` cells above the threshold, before refinement."""
        return self.entry("forward_alignment", k)["mask"]

    def refined_mask(self, k: int) -> torch.Tensor:
        """``[cells]`` aligned cells ``V_k`` after the kNN vote."""
        return self.entry("refine", k)["mask"]

    def aligned_voxels(self, k: int, refined: bool = True) -> torch.Tensor:
        """``[N]`` bool: voxels aligned with local ``k``."""
        return alignment.cells_to_voxels(self.refined_mask(k) if refined else self.raw_mask(k), self.voxel_cell)

    @property
    def unaligned(self) -> torch.Tensor:
        """``[cells]`` cells no local image is aligned with."""
        return self.entry("reverse_alignment")["unaligned"]

    @property
    def reverse_candidates(self) -> torch.Tensor:
        """``[Tc]`` patch indices of the global image that the reverse alignment chooses from."""
        return self.entry("reverse_alignment")["candidates"]

    @property
    def reverse_scores(self) -> torch.Tensor:
        """``[Tc]`` min–max normalised reverse score of each candidate patch (zeros when disabled)."""
        return self.entry("reverse_alignment")["score"]

    @property
    def global_patches(self) -> torch.Tensor:
        """``D_g``: patch indices of the global image kept by the reverse alignment."""
        return self.entry("reverse_alignment")["patches"]

    # ================================================================== tokens, enhancement, final
    @property
    def unified_tokens(self) -> fusion.UnifiedTokens:
        e = self.entry("unified_tokens")
        return fusion.UnifiedTokens(e["tokens"], e["token_region"], e["token_patch"])

    @property
    def enhancement(self) -> EnhancementTables:
        """Region tables of ``E`` (cells × regions, token regions, λ per region)."""
        e = self.entry("enhancement")
        return EnhancementTables(e["cell_regions"], e["token_region"], e["lambdas"])

    @property
    def lambdas(self) -> List[float]:
        """λ per region: the local images in order, then the global image (absent when inpainting)."""
        return self.enhancement.lambdas.tolist()

    def final_latent(self) -> SparseTensor:
        """The fused structured latent on the structure (de-normalised), ``[N, 8]``: runs the final
        sampling (and whatever it needs) unless it is cached."""
        return SparseTensor(self.entry("final")["feats"], self.structure)

    @property
    def final(self) -> SparseTensor:
        """:meth:`final_latent` (it may run the final sampling: minutes on a CPU)."""
        return self.final_latent()

    def as_asset(self):
        """This run's structure and final latent as an :class:`~fuse3d.assets.EncodedAsset`, to edit
        further (``pipe.edit(run, …)`` does this)."""
        from .editing import run_as_asset

        return run_as_asset(self)

    def gaussians_asset(self):
        """The fused asset as 3D Gaussians (:class:`fuse3d.assets.Gaussians`, TRELLIS frame); decodes
        (and samples) what is not cached."""
        from .assets import Gaussians

        return Gaussians(**{k: v.numpy() for k, v in self.entry("gaussians").tensors.items()})

    @property
    def gaussians(self):
        """:meth:`gaussians_asset` (decodes the final latent, sampling it first if needed)."""
        return self.gaussians_asset()

    def mesh_asset(self):
        """The fused asset as a vertex-coloured mesh (:class:`fuse3d.assets.Mesh`, TRELLIS frame);
        decodes (and samples) what is not cached."""
        from .assets import Mesh

        return Mesh(**{k: v.numpy() for k, v in self.entry("mesh").tensors.items()})

    @property
    def mesh(self):
        """:meth:`mesh_asset` (decodes the final latent and extracts the mesh, sampling it first if needed)."""
        return self.mesh_asset()

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
        obj = self.mesh_asset() if path.suffix.lower() == ".glb" else self.gaussians_asset()
        meta = {"generator": "fuse3d", "fuse3d_model": self.model_name, "fuse3d_model_source": str(self.trellis.source)}
        return export(obj, path, metadata=meta)

    # ================================================================== inspection
    def stages(self) -> List[dict]:
        """One row per stage and index: status, key and tensor shapes (computes nothing)."""
        rows = []
        for s in STAGES:
            for i in self.indices(s):
                memo = (s, i)
                if memo in self._entries:
                    e = self._entries[memo]
                    rows.append({"stage": s, "index": i, "status": f"done ({e.source})", "key": self.key(s, i)[:12],
                                 "tensors": {k: list(v.shape) for k, v in e.tensors.items()}})
                else:
                    cached = self.cache.status(s, self.key(s, i))
                    rows.append({"stage": s, "index": i, "status": "not computed" if cached == "missing" else f"cached ({cached})",
                                 "key": self.key(s, i)[:12], "tensors": {}})
        return rows

    def summary(self) -> dict:
        """What ran and what came out, JSON-serialisable (used by the CLI and the views)."""
        from .reports import run_summary

        return run_summary(self)

    def _available(self, stage: str, index: int = 0) -> bool:
        """Computed by this run, or in the cache (reading it then runs nothing)."""
        return (stage, index) in self._entries or self.cache.status(stage, self.key(stage, index)) != "missing"

    def __repr__(self) -> str:
        done = len(self._entries)
        edits = f", edits={self.base.name!r}" if self.base is not None else ""
        return (f"Run(model={self.model_name!r}, global={self.global_condition.name!r}, "
                f"locals={[c.name for c in self.local_conditions]}{edits}, stages computed={done})")

    def _repr_html_(self) -> str:
        from .reports import run_html

        return run_html(self)

"""Fuse3D run parameters, their defaults and validation, and which stage each one affects.

The alignment defaults (``heads``, ``threshold``) come from the model: a model folder may carry
its own in ``pipeline.json`` (``"fuse3d": {"defaults": {"heads": [...], "threshold": t,
"source": "how they were chosen"}}``, picked by the tuning protocol on tuning seeds only); a folder
that carries none, TRELLIS-image-large among them, gets the paper's (:data:`PAPER_DEFAULTS`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Optional, Tuple

from .method.alignment import DEFAULT_HEADS, DEFAULT_THRESHOLD
from .method.enhancement import LAMBDA_MODES, check_lambda
from .method.presets import SAMPLER_PRESETS


@dataclass(frozen=True)
class ModelDefaults:
    """A model's default forward-alignment setting and where it came from."""

    heads: Tuple[int, ...]
    threshold: float
    source: str

    @property
    def from_model(self) -> bool:
        return self is not PAPER_DEFAULTS and self.source != PAPER_DEFAULTS.source

    def describe(self) -> str:
        return f"heads {list(self.heads)} (0-based), threshold {self.threshold:g} — {self.source}"

    def as_dict(self) -> dict:
        return {"heads": list(self.heads), "threshold": self.threshold, "source": self.source}

    @classmethod
    def read(cls, meta: Optional[dict], num_heads: int, where: str = "pipeline.json") -> "ModelDefaults":
        """The defaults a ``pipeline.json``'s ``"fuse3d"`` entry carries; if none, the paper's, or every
        head at the paper's threshold for a model whose heads stop before the paper's head 13.

        Raises ``ValueError`` naming ``where`` for a malformed entry (unknown keys, heads out of range,
        a threshold outside [0, 1], no source)."""
        d = (meta or {}).get("defaults")
        if d is None and max(PAPER_DEFAULTS.heads) >= num_heads:  # a model with fewer heads than the paper's 13
            return cls(tuple(range(num_heads)), PAPER_DEFAULTS.threshold,
                       f"all {num_heads} heads (the model has no head 5 or 13 of the paper, and no own defaults); "
                       f"the paper's threshold {PAPER_DEFAULTS.threshold:g}")
        if d is None:
            return PAPER_DEFAULTS
        if not isinstance(d, dict) or set(d) - {"heads", "threshold", "source"} or "source" not in d:
            raise ValueError(f"{where}: fuse3d.defaults must be {{'heads': [...], 'threshold': t, 'source': '...'}}, got {d!r}")
        heads = tuple(int(h) for h in d.get("heads", PAPER_DEFAULTS.heads))
        if not heads or any(not 0 <= h < num_heads for h in heads):
            raise ValueError(f"{where}: fuse3d.defaults.heads {list(heads)} must be in 0..{num_heads - 1}")
        threshold = float(d.get("threshold", PAPER_DEFAULTS.threshold))
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"{where}: fuse3d.defaults.threshold must be in [0, 1], got {threshold}")
        return cls(heads, threshold, str(d["source"]))


#: The paper's setting: heads 1, 5 and 13 (0-based 0, 4, 12) at 0.55, as the published code uses.
PAPER_DEFAULTS = ModelDefaults(DEFAULT_HEADS, DEFAULT_THRESHOLD, "the paper's (heads 1, 5, 13; threshold 0.55)")


@dataclass(frozen=True)
class Fuse3DParams:
    """Everything a Fuse3D run depends on besides the condition images and the model.

    Sampling
        seed: all noise derives from it (structure, each capture run, the final run).
        sampler: ``"pipeline"`` (the model's ``pipeline.json``) or ``"published-demo"`` (the published
            Fuse3D demo's: structure 12 steps at CFG 7.5, latent 12 steps at CFG 3.0).
        structure_steps, structure_cfg, latent_steps, latent_cfg: overrides on top of the sampler
            (``None``: keep it).
    Multi-Condition Fusion Module
        fusion: ``"mcfm"`` (paper) or ``"crop"`` (ablation *w/o MCFM*: each region cropped and encoded alone).
        prefix_tokens: keep each image's CLS and register tokens in the capture and the unified tokens
            (paper); ``False`` is the appendix C.1 ablation.
    Alignment capture
        capture_tokens: ``"full"`` (paper: a local image's full 1374 tokens) or ``"foreground"``
            (published code: CLS, registers and the foreground patches only).
        capture_blocks, capture_steps: which blocks / sampler steps to average (``None``: all).
        capture_detail: keep per-block and per-step score maps for drill-down views.
        capture_batch: most capture samplings run as one batch (``None``: all, halved on out-of-memory).
        capture_strategy: ``"separate"`` (one capture sampling per local image plus one for the reverse
            alignment) or ``"shared"`` (one sampling with the global image, local keys scored against
            its queries). ``schedule`` is its former name, accepted with a ``DeprecationWarning``.
    Forward alignment
        heads: 0-based heads averaged (paper's 1, 5, 13 → ``(0, 4, 12)``); threshold on min–max scores.
        refine: run the kNN majority vote; refine_k, refine_fill, refine_clear, refine_ties: its settings.
    Reverse alignment
        reverse_alignment: off = ablation *w/o R.A.* (the global image's whole selection is kept, no λ_g).
        reverse_threshold: threshold for ``D_g`` (``None``: ``threshold``).
    Enhancement
        enhancement: off = ablation *w/o L.E.* (E = 1).
        strength: s in the λ formulas; lambda_mode: ``"share"`` (paper), ``"adaptive"`` or ``"constant"``
            (published code); lambdas: explicit λ per local image; global_lambda: explicit λ_g.
        enhancement_backend: ``"auto"`` (= ``"regions"``, the fastest on CUDA and CPU), ``"explicit"``,
            ``"flex"`` or ``"regions"`` (one fused attention per token region, merged exactly).
        inpainting: the appendix C.2 variant (unaligned voxels follow the global image's latent).
    Interventions in the final sampling (:mod:`fuse3d.method.interventions`; ``run.intervene``)
        ablate_heads: ``{block: [heads]}`` (stored as sorted pairs) whose cross-attention outputs are
            ablated; ablate_mode: ``"zero"`` or ``"mean"`` (over the cells).
        patch_tokens: ``(region, source)``: the unified tokens of ``region`` (local ``k`` or ``K`` for
            the global image) replaced by condition ``source``'s tokens at the same patches;
            patch_blocks: where (``None``: every block).
        intervene_steps: the sampler steps both act at (``None``: all).
    On-demand attention for the explorer (the ``explore`` stage; ``run.cell_attention``, ``run.patch_attention``)
        explore_cells: cells whose full attention rows ``[heads, cells, tokens]`` are captured in
            every condition's sampling; explore_patches: ``(condition, (patches…))`` pairs whose
            attention over all cells is captured; explore_blocks, explore_steps: which blocks and
            steps they average (``None``: all).
    """

    seed: int = 0
    sampler: str = "pipeline"
    structure_steps: Optional[int] = None
    structure_cfg: Optional[float] = None
    latent_steps: Optional[int] = None
    latent_cfg: Optional[float] = None
    fusion: str = "mcfm"
    prefix_tokens: bool = True
    capture_tokens: str = "full"
    capture_blocks: Optional[Tuple[int, ...]] = None
    capture_steps: Optional[Tuple[int, ...]] = None
    capture_detail: bool = True
    capture_batch: Optional[int] = None
    capture_strategy: str = "separate"
    heads: Tuple[int, ...] = DEFAULT_HEADS
    threshold: float = DEFAULT_THRESHOLD
    refine: bool = True
    refine_k: int = 16
    refine_fill: float = 0.6
    refine_clear: float = 0.4
    refine_ties: str = "include"
    reverse_alignment: bool = True
    reverse_threshold: Optional[float] = None
    enhancement: bool = True
    strength: float = 1.0
    lambda_mode: str = "share"
    lambdas: Optional[Tuple[float, ...]] = None
    global_lambda: Optional[float] = None
    enhancement_backend: str = "auto"
    inpainting: bool = False
    ablate_heads: Optional[Tuple[Tuple[int, Tuple[int, ...]], ...]] = None
    ablate_mode: str = "zero"
    patch_tokens: Optional[Tuple[int, int]] = None
    patch_blocks: Optional[Tuple[int, ...]] = None
    intervene_steps: Optional[Tuple[int, ...]] = None
    explore_cells: Optional[Tuple[int, ...]] = None
    explore_patches: Optional[Tuple[Tuple[int, Tuple[int, ...]], ...]] = None
    explore_blocks: Optional[Tuple[int, ...]] = None
    explore_steps: Optional[Tuple[int, ...]] = None

    @classmethod
    def for_model(cls, defaults: ModelDefaults, **changes) -> "Fuse3DParams":
        """Parameters starting from a model's alignment defaults, then ``changes``."""
        return cls(heads=tuple(defaults.heads), threshold=float(defaults.threshold)).updated(**changes)

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def updated(self, **changes) -> "Fuse3DParams":
        if "schedule" in changes:
            import warnings

            warnings.warn("the Fuse3D parameter 'schedule' is now 'capture_strategy'; 'schedule' will be removed",
                          DeprecationWarning, stacklevel=3)
            if "capture_strategy" in changes:
                raise TypeError("give capture_strategy or its old name schedule, not both")
            changes["capture_strategy"] = changes.pop("schedule")
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown Fuse3D parameter(s) {unknown}; known: {', '.join(self.names())}")
        norm = {}
        for k, v in changes.items():
            if v is not None and k in ("heads", "capture_blocks", "capture_steps", "patch_blocks", "intervene_steps",
                                       "explore_cells", "explore_blocks", "explore_steps"):
                v = tuple(int(x) for x in v)
            elif v is not None and k == "explore_patches":
                pairs = v.items() if isinstance(v, dict) else v
                v = tuple(sorted((int(i), tuple(sorted(int(t) for t in ts))) for i, ts in pairs)) or None
            elif v is not None and k == "lambdas":
                v = tuple(float(x) for x in v)
            elif v is not None and k == "ablate_heads":
                pairs = v.items() if isinstance(v, dict) else v
                v = tuple(sorted((int(b), tuple(sorted(int(h) for h in hs))) for b, hs in pairs)) or None
            elif v is not None and k == "patch_tokens":
                if len(v) != 2:
                    raise ValueError(f"patch_tokens is (region, source), got {v!r}")
                v = (int(v[0]), int(v[1]))
            norm[k] = v
        return replace(self, **norm).validated()

    def validated(self) -> "Fuse3DParams":
        def unit(name, v):
            if v is not None and not (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {v}")

        unit("threshold", self.threshold)
        unit("reverse_threshold", self.reverse_threshold)
        unit("refine_fill", self.refine_fill)
        unit("refine_clear", self.refine_clear)
        if self.refine_clear > self.refine_fill:
            raise ValueError(f"refine_clear ({self.refine_clear}) must not exceed refine_fill ({self.refine_fill})")
        if self.refine_k < 1:
            raise ValueError(f"refine_k must be positive, got {self.refine_k}")
        if self.refine_ties not in ("include", "index"):
            raise ValueError(f"refine_ties must be 'include' or 'index', got {self.refine_ties!r}")
        if not self.heads:
            raise ValueError("heads must name at least one head")
        if any(h < 0 for h in self.heads):
            raise ValueError(f"heads are 0-based and non-negative, got {list(self.heads)}")
        check_lambda(self.strength, "strength")
        if self.lambdas is not None:
            for v in self.lambdas:
                check_lambda(v, "λ")
        if self.global_lambda is not None:
            check_lambda(self.global_lambda, "global λ")
        choices = {"fusion": ("mcfm", "crop"), "capture_tokens": ("full", "foreground"),
                   "capture_strategy": ("separate", "shared"), "lambda_mode": LAMBDA_MODES,
                   "enhancement_backend": ("auto", "explicit", "flex", "regions"),
                   "sampler": tuple(SAMPLER_PRESETS), "ablate_mode": ("zero", "mean")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("structure_steps", "latent_steps"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be at least 1, got {v}")
        for name in ("structure_cfg", "latent_cfg"):
            v = getattr(self, name)
            if v is not None and (math.isnan(float(v)) or float(v) < 0):
                raise ValueError(f"{name} must be >= 0, got {v}")
        if self.capture_batch is not None and self.capture_batch < 1:
            raise ValueError(f"capture_batch must be at least 1, got {self.capture_batch}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)

"""Pre-train the small condition encoder to play DINOv2's part, then freeze it.

    python -m fuse3d.train.pretrain --work DIR [--minutes 30] [--objects 600]

TRELLIS conditions its flows on frozen DINOv2 tokens, whose patch features already expose appearance,
geometry and semantics. fuse3d's small DINOv2-architecture encoder gets the same property from the
procedural renders: linear heads on its output tokens (the ones the flows see) predict, per patch,
the dense targets of :mod:`fuse3d.train.views` (part-category shares, object coverage, unshaded
colour, world normal, object-space position) and, on the CLS token, the object's kind and the
camera's direction. Only the heads are linear, so whatever they read is linearly in the tokens.

Runs in resumable chunks (``--minutes`` of wall time each) that checkpoint to ``DIR/ckpt`` and
export the encoder to ``DIR/encoder.{json,safetensors}`` (TRELLIS's ``ckpts/NAME`` format), which
``python -m fuse3d.train.train --encoder DIR/encoder`` loads frozen. The heads are never exported.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data import KINDS
from ..trellis.checkpoint import read_json, read_safetensors, save_network, write_json, write_safetensors
from ..trellis.dinov2 import DinoV2Encoder
from .config import REQUIRED, option, parse, save_config
from .stream import SampleStream
from .views import GRID, NUM_CLASSES, ViewSample, load_views, object_views, save_views, view_cache_path

#: the patch targets and their widths, in the order of the patch head's outputs
PATCH_TARGETS = {"part": NUM_CLASSES, "coverage": 1, "albedo": 3, "normal": 3, "position": 3}
CLS_TARGETS = {"kind": len(KINDS), "eye": 3}
WEIGHTS = {"part": 1.0, "coverage": 1.0, "albedo": 10.0, "normal": 1.0, "position": 4.0, "kind": 0.3, "eye": 1.0}


@dataclass
class PretrainConfig:
    work: str = option(REQUIRED, "working folder: DIR/ckpt (resumable checkpoint), DIR/encoder.* (the export)")
    minutes: float = option(30.0, "wall time of this chunk, building the data included")
    total_minutes: float = option(30.0, "planned training time over all chunks (the cosine learning-rate schedule)")
    objects: int = option(600, "procedural objects rendered for pre-training")
    views: int = option(4, "views per object")
    seed_base: int = option(100000, "first object seed (the training seeds; evaluation and probes use others)")
    batch: int = option(8, "images per step")
    lr: float = option(5e-4, "peak learning rate (AdamW)")
    width: int = option(128, "token width (= the flows' cond_channels)")
    depth: int = option(6, "transformer blocks")
    heads: int = option(4, "attention heads")
    workers: int = option(1, "processes that render the data (training starts on the first renders)")
    permute_colours: bool = option(True, "permute each image's RGB channels and its colour target alike (exact: the "
                                         "renderer's lighting only scales colours)")
    data_cache: Optional[str] = option(None, "folder that keeps the rendered views between chunks")
    seed: int = option(0, "seed of the initialisation and the batch order")
    bf16: bool = option(True, "bfloat16 autocast on CUDA (CPU runs float32)")

    @property
    def encoder_args(self) -> dict:
        return dict(arch="vit_small_patch14_reg4_dinov2", img_size=518, embed_dim=self.width, depth=self.depth,
                    num_heads=self.heads)


class DenseHeads(torch.nn.Module):
    """Linear read-outs of the tokens: one for every patch token, one for the CLS token."""

    def __init__(self, width: int, prefix: int = 5):
        super().__init__()
        self.prefix = prefix
        self.patch = torch.nn.Linear(width, sum(PATCH_TARGETS.values()))
        self.cls = torch.nn.Linear(width, sum(CLS_TARGETS.values()))

    def forward(self, tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Tokens ``[B, T, C]`` → ``{target: [B, G², k]}`` for patch targets, ``[B, k]`` for CLS targets."""
        out = {}
        for name, part in zip(PATCH_TARGETS, self.patch(tokens[:, self.prefix:]).split(list(PATCH_TARGETS.values()), -1)):
            out[name] = part
        for name, part in zip(CLS_TARGETS, self.cls(tokens[:, 0]).split(list(CLS_TARGETS.values()), -1)):
            out[name] = part
        return out


def stack_targets(samples: List[ViewSample], device) -> Dict[str, torch.Tensor]:
    """The batch's pixels ``[B, 3, 518, 518]`` in [0, 1] and targets, on ``device``."""
    def t(name, dtype=torch.float32):
        return torch.as_tensor(np.stack([getattr(s, name) for s in samples]), device=device).to(dtype)

    out = {"pixels": t("image").permute(0, 3, 1, 2) / 255.0, "kind": t("kind", torch.long), "eye": t("eye")}
    for name in PATCH_TARGETS:
        v = t(name)
        out[name] = v.reshape(len(samples), GRID * GRID, -1)
    return out


def permute_colours(target: Dict[str, torch.Tensor], generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """The same random permutation of the RGB channels on each image and on its unshaded-colour target.

    The renderer's lights only scale a colour (:mod:`fuse3d.data.render`), so a permuted image is
    exactly the render of the object with permuted colours: six times the colours at no render cost.
    """
    b = target["pixels"].shape[0]
    perm = torch.argsort(torch.rand(b, 3, generator=generator), -1).to(target["pixels"].device)
    out = dict(target)
    out["pixels"] = torch.gather(target["pixels"], 1, perm[:, :, None, None].expand_as(target["pixels"]))
    out["albedo"] = torch.gather(target["albedo"], 2, perm[:, None, :].expand_as(target["albedo"]))
    return out


def dense_losses(pred: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Per-target losses, weighted by :data:`WEIGHTS`: soft cross-entropy of the part shares, BCE of
    the coverage, coverage-weighted MSE of colour, normal and position (patches that show the object),
    cross-entropy of the kind and MSE of the camera direction."""
    cov = target["coverage"][..., 0]
    w = cov / cov.sum().clamp(min=1.0)

    def masked_mse(name):
        return ((pred[name].float() - target[name]).pow(2).mean(-1) * w).sum()

    losses = {
        "part": -(target["part"] * F.log_softmax(pred["part"].float(), -1)).sum(-1).mean(),
        "coverage": F.binary_cross_entropy_with_logits(pred["coverage"].float()[..., 0], cov),
        "albedo": masked_mse("albedo"), "normal": masked_mse("normal"), "position": masked_mse("position"),
        "kind": F.cross_entropy(pred["kind"].float(), target["kind"]),
        "eye": F.mse_loss(pred["eye"].float(), target["eye"]),
    }
    return {k: WEIGHTS[k] * v for k, v in losses.items()}


@dataclass
class PretrainState:
    steps: int = 0
    seconds: float = 0.0
    log: List[dict] = field(default_factory=list)


class EncoderPretrainer:
    """The encoder, its heads, an EMA of the encoder (what is exported), the optimiser and the data."""

    def __init__(self, config: PretrainConfig, device: Optional[str] = None):
        self.config = config
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(config.seed)
        with torch.device(self.device):
            self.encoder = DinoV2Encoder(**config.encoder_args).train()
            self.heads = DenseHeads(config.width, self.encoder.num_prefix_tokens).train()
        self.ema = copy.deepcopy(self.encoder).requires_grad_(False).eval()
        self.params = list(self.encoder.parameters()) + list(self.heads.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.01)
        self.state = PretrainState()
        self.rng = np.random.default_rng(config.seed)
        self.data: List[ViewSample] = []
        self.generator = torch.Generator().manual_seed(config.seed)

    @property
    def folder(self) -> Path:
        return Path(self.config.work)

    # ------------------------------------------------------------------ one step
    def lr(self, local_step: int) -> float:
        progress = min(self.state.seconds / max(self.config.total_minutes * 60, 1.0), 1.0)
        return self.config.lr * min(1.0, (local_step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    def step(self, samples: List[ViewSample], lr: float) -> Dict[str, float]:
        target = stack_targets(samples, self.device)
        if self.config.permute_colours:
            target = permute_colours(target, self.generator)
        use_bf16 = self.config.bf16 and self.device == "cuda"
        with torch.enable_grad(), torch.autocast(self.device, dtype=torch.bfloat16, enabled=use_bf16):
            losses = dense_losses(self.heads(self.encoder(target["pixels"])), target)
            self.opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
        for g in self.opt.param_groups:
            g["lr"] = lr
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        with torch.no_grad():
            d = min(0.999, (1 + self.state.steps) / (10 + self.state.steps))
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.encoder.parameters()), 1 - d)
        self.state.steps += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    # ------------------------------------------------------------------ chunks
    def run(self) -> None:
        """One chunk: resume, build (or read) the data, train until ``minutes``, checkpoint, export."""
        start = time.time()
        cfg = self.config
        self.folder.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.folder / "pretrain_config.json")
        if (self.folder / "ckpt" / "state.json").is_file():
            self.load(self.folder / "ckpt")
            print(f"resumed at step {self.state.steps}", flush=True)
        seeds = list(range(cfg.seed_base, cfg.seed_base + cfg.objects))
        stream = ViewStream(seeds, cfg.data_cache, views=cfg.views, workers=cfg.workers)
        local, last_save = 0, time.time()
        try:
            while time.time() - start < cfg.minutes * 60:
                if stream.more and (local % 20 == 0 or len(self.data) < cfg.batch):
                    self.data.extend(stream.ready(wait=len(self.data) < cfg.batch))
                    if not stream.more:
                        print(f"{len(self.data)} views of {cfg.objects} objects ready in {time.time() - start:.0f} s",
                              flush=True)
                t0 = time.time()
                batch = [self.data[i] for i in self.rng.integers(len(self.data), size=cfg.batch)]
                losses = self.step(batch, self.lr(local))
                self.state.seconds += time.time() - t0
                local += 1
                if self.state.steps % 25 == 0 or local == 1:
                    row = {"step": self.state.steps, "s_per_step": round(self.state.seconds / max(local, 1), 3),
                           "views": len(self.data), **{k: round(v, 4) for k, v in losses.items()}}
                    self.state.log.append(row)
                    print(row, flush=True)
                if time.time() - last_save > 300:
                    self.save(self.folder / "ckpt")
                    last_save = time.time()
        finally:
            stream.close()
        self.save(self.folder / "ckpt")
        self.export(self.folder / "encoder")
        print(f"saved {self.folder / 'ckpt'} and exported {self.folder / 'encoder'} at step {self.state.steps}", flush=True)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {**{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()},
                   **{f"ema.{k}": v for k, v in self.ema.state_dict().items()},
                   **{f"heads.{k}": v for k, v in self.heads.state_dict().items()}}
        write_safetensors(folder / "weights.safetensors", {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()})
        write_json(folder / "state.json", {"steps": self.state.steps, "seconds": self.state.seconds,
                                           "log": self.state.log, "encoder": self.config.encoder_args})

    def load(self, folder: Path) -> None:
        state = read_json(folder / "state.json")
        if state["encoder"] != self.config.encoder_args:
            raise ValueError(f"{folder} holds an encoder {state['encoder']}, not the configured {self.config.encoder_args}")
        tensors = read_safetensors(folder / "weights.safetensors")
        for prefix, module in (("encoder.", self.encoder), ("ema.", self.ema), ("heads.", self.heads)):
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        self.state = PretrainState(state["steps"], state["seconds"], state["log"])

    def export(self, prefix: Path) -> Path:
        """The EMA encoder in TRELLIS's ``ckpts/NAME`` format (``PREFIX.json`` + ``PREFIX.safetensors``),
        and ``PREFIX.pretrain.json`` saying what it was pre-trained on (the trainer names it in the
        model's description)."""
        prefix = Path(prefix)
        save_network(self.ema, prefix, "DinoV2Encoder", self.ema.config)
        cfg = self.config
        seen = sorted({int(v.seed) for v in self.data})  # a chunk can end before every object is rendered
        write_json(prefix.with_name(prefix.name + ".pretrain.json"), {
            "objects": len(seen) or cfg.objects, "views": len(self.data) or cfg.objects * cfg.views,
            "seeds": (f"seeds {cfg.seed_base}:{cfg.seed_base + cfg.objects}" if len(seen) in (0, cfg.objects)
                      else f"{len(seen)} of seeds {cfg.seed_base}:{cfg.seed_base + cfg.objects}"),
            "steps": self.state.steps,
            "targets": ["part-category shares", "object coverage", "unshaded colour", "world normal",
                        "object-space position", "kind and camera direction (CLS)"]})
        return prefix


class ViewStream(SampleStream):
    """The pre-training renders of ``seeds`` (:func:`object_views`), read from the cache when it holds
    them, otherwise rendered in ``workers`` processes and handed over as they finish."""

    def __init__(self, seeds: List[int], cache_dir: Optional[str], views: int, workers: int):
        path = view_cache_path(seeds, cache_dir, views=views) if cache_dir else None
        super().__init__(partial(object_views, views=views), seeds, workers, path, load_views, save_views)


def main(argv=None) -> None:
    EncoderPretrainer(parse(PretrainConfig, argv, __doc__)).run()


if __name__ == "__main__":
    main()

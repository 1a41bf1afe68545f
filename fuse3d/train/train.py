"""Train the small TRELLIS-architecture model on procedural part-labelled objects.

    python -m fuse3d.train.train --work DIR [--minutes 9.2] [--total-minutes 23] [--objects 3600]

The defaults are the settings of the bundled ``fuse3d-small`` run (three chunks on one H100).

The same network classes as TRELLIS-image-large, at small width. Training runs in time-boxed chunks
(``--minutes`` of wall time each, building the data included) that checkpoint to ``DIR/ckpt``
(safetensors in fp16 + ``state.json``; optimiser moments are not kept, a resumed chunk warms its
learning rate up again) and resume from it, in two phases that split ``--total-minutes`` of training:

1. **autoencoders** (the first ``--vae-share``): the sparse-structure VAE on 64³ surface occupancy
   (BCE + soft Dice); the structured-latent encoder on per-voxel colour + normal with two decoders:
   Gaussians (colour, scale, opacity) and the mesh decoder (exact signed distances and colours at the
   cube corners of the 4× finer voxels, from the procedural shapes). Meanwhile a small
   DINOv2-architecture condition encoder is pre-trained from scratch through a training-only
   :class:`StructureProbe` that reads the coarse 16³ occupancy off its tokens.
2. **flows** (the rest): the structure flow and the latent flow with rectified-flow losses (logit-normal
   times of mean 1, as TRELLIS trains) on the frozen autoencoders' latents (computed once per chunk),
   conditioned on the encoder's tokens, which keep training jointly (10 % of conditions dropped to
   zeros, for classifier-free guidance; the probe stays on as an auxiliary loss). An exponential
   moving average of the two flows and the encoder is what gets exported.

Each phase's learning rate decays on a cosine over its planned time; gradients are clipped per network.
``--minutes 0 --export DIR`` writes the TRELLIS-format model folder (fp16 blocks) from the checkpoint.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from ..assets.gaussians import SH_C0
from ..models import SMALL_MODEL_NAME
from ..trellis.checkpoint import read_safetensors, write_json, write_safetensors
from ..trellis.dinov2 import DinoV2Encoder
from ..trellis.pipeline import write_pipeline
from ..trellis.registry import build
from ..trellis.sparse import SparseTensor
from ..trellis.vae import gaussian_representation_config
from .data import ObjectSample, cached_objects

WIDTH = 128  # token width of the small encoder = the flows' cond_channels
SIGMA_MIN = 1e-5
MODEL_NAME = SMALL_MODEL_NAME

NETWORKS: Dict[str, tuple] = {  # name: (pipeline.json key or None for training-only, class, args)
    "ss_encoder": (None, "SparseStructureEncoder", dict(
        in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[16, 32, 64], use_fp16=True)),
    "ss_decoder": ("sparse_structure_decoder", "SparseStructureDecoder", dict(
        out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[64, 32, 16], use_fp16=True)),
    "slat_encoder": (None, "SLatEncoder", dict(
        resolution=64, in_channels=6, model_channels=64, latent_channels=8, num_blocks=2, num_heads=4, mlp_ratio=2,
        attn_mode="swin", window_size=8, use_fp16=True)),
    "slat_decoder_gs": ("slat_decoder_gs", "SLatGaussianDecoder", dict(
        resolution=64, model_channels=64, latent_channels=8, num_blocks=2, num_heads=4, mlp_ratio=2, attn_mode="swin",
        window_size=8, use_fp16=True, representation_config=gaussian_representation_config(8))),
    "slat_decoder_mesh": ("slat_decoder_mesh", "SLatMeshDecoder", dict(
        resolution=64, model_channels=256, latent_channels=8, num_blocks=1, num_heads=4, mlp_ratio=2, attn_mode="swin",
        window_size=8, use_fp16=True, representation_config={"use_color": True})),
    "ss_flow": ("sparse_structure_flow_model", "SparseStructureFlowModel", dict(
        resolution=16, in_channels=8, out_channels=8, model_channels=128, cond_channels=WIDTH, num_blocks=6, num_heads=16,
        mlp_ratio=4, patch_size=2, pe_mode="ape", qk_rms_norm=True, use_fp16=True)),
    "slat_flow": ("slat_flow_model", "SLatFlowModel", dict(
        resolution=64, in_channels=8, out_channels=8, model_channels=128, cond_channels=WIDTH, num_blocks=6, num_heads=16,
        mlp_ratio=4, patch_size=2, num_io_res_blocks=2, io_block_channels=[32], pe_mode="ape", qk_rms_norm=True,
        use_fp16=True)),
}
ENCODER = dict(arch="vit_small_patch14_reg4_dinov2", img_size=518, embed_dim=WIDTH, depth=4, num_heads=4)
VAE_NETS = ("ss_encoder", "ss_decoder", "slat_encoder", "slat_decoder_gs", "slat_decoder_mesh")
FLOW_NETS = ("ss_flow", "slat_flow", "encoder")  # exported as their EMA
CKPT_GROUPS = {"vae": VAE_NETS, "ss_flow": ("ss_flow", "encoder", "probe"), "slat_flow": ("slat_flow",)}
PROBE_FLOW_WEIGHT = 0.2  # the structure probe's share of the flow phase's loss


class StructureProbe(torch.nn.Module):
    """Training-only head that reads the coarse 16³ occupancy straight off the condition tokens.

    A from-scratch condition encoder learns shape slowly when its only signal comes through the
    structure flow's cross-attention. This probe gives it direct 3D supervision from the first step —
    during the autoencoder phase, while the flows cannot train yet, and as an auxiliary loss after.
    One learned query per 2³ patch of the 16³ grid (as the structure flow patches its latent)
    cross-attends to the tokens through a small transformer decoder. Never exported.
    """

    def __init__(self, width: int, heads: int = 4, layers: int = 2, resolution: int = 16, patch: int = 2):
        super().__init__()
        self.resolution, self.patch = resolution, patch
        self.queries = torch.nn.Parameter(0.02 * torch.randn((resolution // patch) ** 3, width))
        layer = torch.nn.TransformerDecoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = torch.nn.TransformerDecoder(layer, layers)
        self.out = torch.nn.Linear(width, patch ** 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Occupancy logits ``[B, 1, 16, 16, 16]`` of condition tokens ``[B, T, C]``."""
        b, g, p = tokens.shape[0], self.resolution // self.patch, self.patch
        y = self.out(self.decoder(self.queries.expand(b, -1, -1), tokens))  # [B, g³, p³]
        y = y.view(b, g, g, g, p, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return y.reshape(b, 1, self.resolution, self.resolution, self.resolution)


def build_networks(device) -> Dict[str, torch.nn.Module]:
    nets = {}
    for name, (_, cls, args) in NETWORKS.items():
        with torch.device(device):
            nets[name] = build(cls, **{**args, "use_fp16": False}).train()
    with torch.device(device):
        nets["encoder"] = DinoV2Encoder(**ENCODER).train()
        nets["probe"] = StructureProbe(ENCODER["embed_dim"]).train()
    return nets


# ============================================================================ batching
def occupancy(samples: List[ObjectSample], device) -> torch.Tensor:
    occ = torch.zeros(len(samples), 1, 64, 64, 64, device=device)
    for b, s in enumerate(samples):
        c = torch.as_tensor(s.coords, device=device).long()
        occ[b, 0, c[:, 0], c[:, 1], c[:, 2]] = 1
    return occ


def coarse_occupancy(occ: torch.Tensor) -> torch.Tensor:
    """64³ occupancy ``[B, 1, 64, 64, 64]`` → 16³ (a cell is occupied if any of its 4³ voxels is)."""
    return F.max_pool3d(occ, 4)


def sparse_batch(samples: List[ObjectSample], feats: List[np.ndarray], device) -> SparseTensor:
    coords, rows = [], []
    for b, (s, f) in enumerate(zip(samples, feats)):
        c = torch.as_tensor(s.coords.astype(np.int32))
        coords.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], 1))
        rows.append(torch.as_tensor(f, dtype=torch.float32))
    return SparseTensor(torch.cat(rows).to(device), torch.cat(coords).to(device), len(samples))


def images(samples: List[ObjectSample], rng: np.random.Generator, device) -> torch.Tensor:
    picked = np.stack([s.images[rng.integers(len(s.images))] for s in samples])
    return torch.as_tensor(picked, device=device).permute(0, 3, 1, 2).float() / 255.0


# ============================================================================ losses
def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``1 − soft Dice`` between ``sigmoid(logits)`` and a 0/1 ``target [B, ...]``."""
    prob, dims = torch.sigmoid(logits), tuple(range(1, target.dim()))
    return (1 - (2 * (prob * target).sum(dims) + 1) / ((prob + target).sum(dims) + 1)).mean()


def probe_loss(probe: StructureProbe, tokens: torch.Tensor, occ16: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of the structure probe's 16³ occupancy from condition tokens."""
    logits = probe(tokens).float()
    return F.binary_cross_entropy_with_logits(logits, occ16) + soft_dice(logits, occ16)


def vae_losses(nets, samples: List[ObjectSample], device) -> Dict[str, torch.Tensor]:
    occ = occupancy(samples, device)
    z, mean, logvar = nets["ss_encoder"](occ, sample_posterior=True, return_raw=True)
    logits = nets["ss_decoder"](z)
    ss_bce = F.binary_cross_entropy_with_logits(logits, occ, pos_weight=torch.tensor(2.0, device=device))
    ss_dice = soft_dice(logits, occ)
    ss_kl = 0.5 * (mean**2 + logvar.exp() - logvar - 1).mean()

    x = sparse_batch(samples, [np.concatenate([s.color, s.normal], 1) for s in samples], device)
    zs, smean, slogvar = nets["slat_encoder"](x, sample_posterior=True, return_raw=True)
    slat_kl = 0.5 * (smean**2 + slogvar.exp() - slogvar - 1).mean()
    gs = nets["slat_decoder_gs"]
    out = gs.decode_features(zs)
    rgb = 0.5 + SH_C0 * gs.field(out, "features_dc")[:, :, 0, :]  # [N, G, 3]
    color = torch.as_tensor(np.concatenate([s.color for s in samples]), device=device)
    gs_color = F.mse_loss(rgb, color[:, None, :].expand_as(rgb))
    cfg = gs.rep_config
    scale = F.softplus(gs.field(out, "scaling") + math.log(math.expm1(cfg["scaling_bias"])))
    gs_scale = (torch.log(scale + 1e-6) - math.log(0.6 / 64)).pow(2).mean()
    opacity = torch.sigmoid(gs.field(out, "opacity") + math.log(cfg["opacity_bias"] / (1 - cfg["opacity_bias"])))
    gs_opacity = (1 - opacity).pow(2).mean()

    # the mesh decoder works at 4× resolution (64 fine voxels per voxel): one object per step
    mesh = nets["slat_decoder_mesh"]
    first = samples[0]
    mout = mesh.decode_features(zs[0])
    rows = torch.as_tensor(first.fine_index, device=device)
    sdf = mesh.field(mout, "sdf")[rows] - 1.0 / (4 * mesh.resolution)
    target = torch.as_tensor(first.corner_sdf, device=device)
    band = 3.0 / (4 * mesh.resolution)
    mesh_sdf = F.smooth_l1_loss(sdf.clamp(-band, band) / band * 3, target.clamp(-band, band) / band * 3)
    mesh_color = F.mse_loss(mesh.field(mout, "color")[rows][..., :3], torch.as_tensor(first.corner_color, device=device))
    # colour is weighted up: with equal weights the shared encoder spends its latent on the mesh
    # decoder's sub-voxel geometry and colour collapses to one direction of RGB
    return {"ss_bce": ss_bce, "ss_dice": ss_dice, "ss_kl": 1e-4 * ss_kl, "slat_kl": 1e-4 * slat_kl,
            "gs_color": 10 * gs_color, "gs_scale": 0.01 * gs_scale, "gs_opacity": 0.1 * gs_opacity,
            "mesh_sdf": mesh_sdf, "mesh_color": 10 * mesh_color}


@torch.no_grad()
def structure_latents(nets, samples: List[ObjectSample], device, chunk: int = 8) -> torch.Tensor:
    """The structure encoder's latents ``[O, 8, 16, 16, 16]`` of ``samples`` (posterior mean)."""
    return torch.cat([nets["ss_encoder"](occupancy(samples[i:i + chunk], device)) for i in range(0, len(samples), chunk)])


@torch.no_grad()
def rescale_structure_latent(nets, samples: List[ObjectSample], device) -> List[float]:
    """Give the sparse-structure latent unit standard deviation per channel, exactly.

    The TRELLIS format has no normalisation for this latent (only ``slat_normalization``), and the
    flow must see unit-scale data (at std 0.2 the velocity loss of a model that learned nothing is
    already small), so the scale goes into the autoencoder: the encoder's mean channels are divided by
    ``σ_c`` (log-variance shifted by ``−2·log σ_c``) and the decoder's first convolution takes
    ``σ_c·z_c`` — the decoded occupancy is unchanged. Returns the ``σ_c`` applied.
    """
    z = structure_latents(nets, samples, device)
    sigma = z.transpose(0, 1).reshape(z.shape[1], -1).std(1)
    c = len(sigma)
    enc = nets["ss_encoder"].out_layer[-1]
    enc.weight[:c] /= sigma.view(c, 1, 1, 1, 1).to(enc.weight)
    enc.bias[:c] /= sigma.to(enc.bias)
    enc.bias[c:] -= 2 * torch.log(sigma).to(enc.bias)
    dec = nets["ss_decoder"].input_layer
    dec.weight *= sigma.view(1, c, 1, 1, 1).to(dec.weight)
    return sigma.tolist()


def flow_target(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """``x_t`` and the velocity ``v = (1 − σ_min)·ε − x0`` the samplers integrate."""
    xt = (1 - t) * x0 + (SIGMA_MIN + (1 - SIGMA_MIN) * t) * noise
    return xt, (1 - SIGMA_MIN) * noise - x0


class FlowData:
    """Everything the flow phase reads, on the device: the frozen autoencoders' latents of every
    object (structure latent ``[8, 16, 16, 16]``; normalised structured latent ``[N, 8]`` on its voxels)
    and the condition images (uint8)."""

    def __init__(self, nets, samples: List[ObjectSample], norm, device, chunk: int = 16):
        self.ss, self.slat, self.coords, occ16 = [], [], [], []
        with torch.no_grad():
            for i in range(0, len(samples), chunk):
                part = samples[i:i + chunk]
                occ = occupancy(part, device)
                occ16.append(coarse_occupancy(occ).bool())
                self.ss.extend(nets["ss_encoder"](occ).unbind(0))
                x = sparse_batch(part, [np.concatenate([s.color, s.normal], 1) for s in part], device)
                z = (nets["slat_encoder"](x, sample_posterior=False).feats - norm[0]) / norm[1]
                self.slat.extend(z[sl] for sl in x.layout)
                self.coords.extend(x.coords[sl, 1:] for sl in x.layout)
        self.occ16 = torch.cat(occ16)  # [O, 1, 16, 16, 16]
        self.images = torch.as_tensor(np.stack([s.images for s in samples]), device=device)  # [O, V, H, W, 3]

    def __len__(self) -> int:
        return len(self.ss)

    def batch(self, idx: np.ndarray, rng: np.random.Generator, n_slat: int):
        """Objects ``idx``: ``(x0_ss [B, 8, 16, 16, 16], occ16 [B, 1, 16, 16, 16], images [B, 3, 518, 518],
        x0_slat)``; the structured latents (a SparseTensor) only of the first ``n_slat`` objects."""
        coords = torch.cat([F.pad(self.coords[i], (1, 0), value=b) for b, i in enumerate(idx[:n_slat])])
        slat = SparseTensor(torch.cat([self.slat[i] for i in idx[:n_slat]]), coords, len(idx[:n_slat]))
        rows = torch.as_tensor(idx, device=self.images.device)
        views = torch.as_tensor(rng.integers(self.images.shape[1], size=len(idx)), device=self.images.device)
        img = self.images[rows, views].permute(0, 3, 1, 2).float() / 255.0
        return torch.stack([self.ss[i] for i in idx]), self.occ16[rows].float(), img, slat


def condition_dropout(cond: torch.Tensor, p: float = 0.1) -> torch.Tensor:
    """Zero the tokens of a share ``p`` of the batch (the unconditional branch of CFG)."""
    return cond * (torch.rand(cond.shape[0], 1, 1, device=cond.device) > p).float()


def sample_times(b: int, device, mean: float = 1.0) -> torch.Tensor:
    """Logit-normal flow times ``[b]`` in (0, 1); mean 1 (TRELLIS's flow training setting) puts most
    of them at high noise, where the condition decides the coarse shape."""
    return torch.sigmoid(mean + torch.randn(b, device=device))


def structure_flow_loss(flow, x0: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Rectified-flow loss of the structure flow on latents ``x0 [B, 8, 16, 16, 16]`` at times ``t [B]``."""
    xt, v = flow_target(x0, t.view(-1, 1, 1, 1, 1), torch.randn_like(x0))
    return F.mse_loss(flow(xt, 1000 * t, cond), v)


def flow_losses(nets, data: FlowData, idx: np.ndarray, rng: np.random.Generator, n_slat: int) -> Dict[str, torch.Tensor]:
    """Structure flow (and structure probe) on all objects ``idx``; the latent flow, whose sparse
    attention dominates a step, on the first ``n_slat``."""
    x0_ss, occ16, img, x0_slat = data.batch(idx, rng, n_slat)
    tokens = nets["encoder"](img)
    cond = condition_dropout(tokens)
    t = sample_times(len(idx), x0_ss.device)
    ss = structure_flow_loss(nets["ss_flow"], x0_ss, t, cond)
    tv = t[x0_slat.batch_index][:, None]
    xt, v = flow_target(x0_slat.feats, tv, torch.randn_like(x0_slat.feats))
    slat = F.mse_loss(nets["slat_flow"](x0_slat.replace(xt), 1000 * t[:n_slat], cond[:n_slat]).feats, v)
    return {"ss_flow": ss, "slat_flow": slat, "probe": PROBE_FLOW_WEIGHT * probe_loss(nets["probe"], tokens, occ16)}


# ============================================================================ checkpoints
def save_checkpoint(nets, ema, state: dict, folder: Path) -> None:
    """Networks (and the flows' EMA copies) in fp16 — small enough to travel between chunks — and state."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = {**{g: {n: nets[n] for n in names} for g, names in CKPT_GROUPS.items()}, "ema": ema}
    for group, modules in groups.items():
        tensors = {f"{n}.{k}": v.half() for n, m in modules.items() for k, v in m.state_dict().items()}
        write_safetensors(folder / f"{group}.safetensors", tensors)
    write_json(folder / "state.json", state)


def load_checkpoint(nets, ema, folder: Path) -> dict:
    """Load a checkpoint into ``nets`` and ``ema``. Without ``ema.safetensors`` (left behind to carry a
    smaller checkpoint: the bundled model plus the whole one exceed the device's 64 MiB), the moving
    averages restart from the loaded weights."""
    groups = {**{g: {n: nets[n] for n in names} for g, names in CKPT_GROUPS.items()}, "ema": ema}
    if not (folder / "ema.safetensors").is_file():
        del groups["ema"]
    for group, modules in groups.items():
        tensors = read_safetensors(folder / f"{group}.safetensors")
        for n, m in modules.items():
            prefix = n + "."
            m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if "ema" not in groups:
        for n, m in ema.items():
            m.load_state_dict(nets[n].state_dict())
    return json.loads((folder / "state.json").read_text())


def export_model(nets, ema, state: dict, out: Path) -> Path:
    """Write the trained networks as a TRELLIS-format folder (blocks in fp16, as published); the
    flows and the condition encoder are their exponential moving averages."""
    final = {**nets, **ema}
    networks = {key: (final[n], f"{n}_small", cls, args) for n, (key, cls, args) in NETWORKS.items() if key}
    params = {"steps": 12, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
    sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": SIGMA_MIN}}
    encoder = copy.deepcopy(final["encoder"]).eval().half()  # stored in fp16 (loaded back as fp32 on CPU)
    return write_pipeline(
        out, networks, (encoder, "image_cond_model_small"),
        # structure CFG 3: on tuning seeds it keeps the voxel count (×1.0; ×1.27 at 5) at a slightly
        # higher F-score (0.43 against 0.41), see docs/training.md
        ss_sampler={**sampler, "params": {**params, "cfg_strength": 3.0}},
        slat_sampler={**sampler, "params": {**params, "cfg_strength": 3.0}},
        slat_normalization=state["slat_normalization"],
        fuse3d_meta={"model_name": MODEL_NAME, "description": (
            "small TRELLIS-architecture model trained by fuse3d on procedural part-labelled objects "
            f"({state['objects']} objects, {state['steps']['vae']} autoencoder + {state['steps']['flow']} flow steps); "
            "it knows only such objects, and its sampled shapes and colours are rough (docs/evaluation.md)")},
    )


# ============================================================================ loop
def lr_at(step: int, progress: float, base: float, warmup: int = 200) -> float:
    """Linear warm-up over ``warmup`` steps (of this chunk), then cosine decay to 10 % over the phase's
    planned time (``progress`` ∈ [0, 1])."""
    decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return base * min(1.0, (step + 1) / warmup) * decay


@torch.no_grad()
def ema_update(ema: Dict[str, torch.nn.Module], nets, step: int, decay: float = 0.999, names=None) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for n in names or ema:
        torch._foreach_lerp_(list(ema[n].parameters()), list(nets[n].parameters()), 1 - d)


def train_structure_flow(args, nets, ema, state: dict, data: List[ObjectSample], device, deadline: float) -> None:
    """Train the structure flow alone on the frozen (EMA) condition encoder's tokens, computed once.

    Cheap enough for a CPU: the structure flow is small and the encoder runs once per image. Used to
    redo the structure flow without a GPU (e.g. after :func:`rescale_structure_latent`).
    """
    flow, encoder = nets["ss_flow"], ema["encoder"].eval()
    t0 = time.time()
    with torch.no_grad():
        x0 = structure_latents(nets, data, device)
        tokens = torch.stack([encoder(torch.as_tensor(s.images, device=device).permute(0, 3, 1, 2).float() / 255)
                              for s in data])  # [O, V, T, C]
    print(f"structure latents and tokens of {len(data)} objects in {time.time() - t0:.1f} s", flush=True)
    if state["steps"].get("structure", 0) == 0:
        ema["ss_flow"].load_state_dict(flow.state_dict())
    opt = torch.optim.AdamW(flow.parameters(), lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed + state["steps"].get("structure", 0))
    local, start = 0, time.time()
    budget = max(deadline - start, 1.0)
    while time.time() < deadline:
        idx = torch.as_tensor(rng.integers(len(data), size=args.flow_batch))
        view = torch.as_tensor(rng.integers(tokens.shape[1], size=len(idx)))
        for g in opt.param_groups:
            g["lr"] = lr_at(local, (time.time() - start) / budget, args.lr, warmup=100)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.flow_bf16):
            loss = structure_flow_loss(flow, x0[idx], sample_times(len(idx), device), condition_dropout(tokens[idx, view]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 1.0)
        opt.step()
        ema_update(ema, nets, local, decay=0.998, names=["ss_flow"])
        local += 1
        state["steps"]["structure"] = state["steps"].get("structure", 0) + 1
        if local % 50 == 0:
            print(f"structure step {state['steps']['structure']} ({(time.time() - start) / local:.2f} s/step): "
                  f"ss_flow {loss.item():.4f}", flush=True)
            state["log"].append({"phase": "structure", "step": state["steps"]["structure"], "ss_flow": round(loss.item(), 4)})
    state["seconds"]["structure"] = state["seconds"].get("structure", 0.0) + time.time() - start


def train(args) -> None:
    start = time.time()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    work = Path(args.work)
    ckpt = work / "ckpt"
    nets = build_networks(dev)
    ema = {n: copy.deepcopy(nets[n]).requires_grad_(False) for n in FLOW_NETS}
    state = {"objects": args.objects, "seconds": {"vae": 0.0, "flow": 0.0}, "steps": {"vae": 0, "flow": 0},
             "slat_normalization": None, "log": []}
    if (ckpt / "state.json").is_file():
        state = load_checkpoint(nets, ema, ckpt)
        print(f"resumed from {ckpt}: {state['steps']}", flush=True)
    if args.minutes <= 0:
        if args.export:
            print("exported", export_model(nets, ema, state, Path(args.export)), flush=True)
        return
    seeds = list(range(args.seed_base, args.seed_base + args.objects))
    data = cached_objects(seeds, args.data_cache, workers=args.workers, views=args.views)
    print(f"{len(data)} objects ready in {time.time() - start:.1f} s", flush=True)
    def freeze_autoencoders() -> None:
        for n in VAE_NETS:
            nets[n].eval().requires_grad_(False)

    def rescale() -> None:
        state["structure_latent_scale"] = rescale_structure_latent(nets, data[:256], dev)
        print("structure latent rescaled by", state["structure_latent_scale"], flush=True)

    if args.structure_only:
        freeze_autoencoders()
        if "structure_latent_scale" not in state:
            rescale()
        train_structure_flow(args, nets, ema, state, data, dev, deadline=start + args.minutes * 60)
        save_checkpoint(nets, ema, state, ckpt)
        print(f"saved {ckpt}: {state['steps']}", flush=True)
        if args.export:
            print("exported", export_model(nets, ema, state, Path(args.export)), flush=True)
        return
    phase_budget = {"vae": args.total_minutes * 60 * args.vae_share,
                    "flow": args.total_minutes * 60 * (1 - args.vae_share)}

    def chunk_left() -> bool:  # the chunk's wall time counts from the start, data building included
        return time.time() - start < args.minutes * 60

    saver = {"last": start}

    def run_phase(phase: str, names, batch_size: int, losses_of, keep_going) -> None:
        """Optimise ``names`` on ``losses_of(object indices)`` while ``keep_going()``; log, checkpoint.

        Parameters and optimiser in float32 (TF32 matmuls); ``losses_of`` may autocast (the flow
        phase does, to bf16). Gradients are clipped per network, so that no network's large
        gradients set the step size of another's.
        """
        groups = [list(nets[n].parameters()) for n in names]
        opt = torch.optim.AdamW([p for g in groups for p in g], lr=args.lr, weight_decay=0.0)
        local = 0
        while keep_going():
            t0 = time.time()
            for g in opt.param_groups:
                g["lr"] = lr_at(local, state["seconds"][phase] / phase_budget[phase], args.lr)
            losses = losses_of(rng.integers(len(data), size=batch_size))
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            for g in groups:
                torch.nn.utils.clip_grad_norm_(g, 1.0)
            opt.step()
            if phase == "flow":
                ema_update(ema, nets, state["steps"]["flow"])
            local += 1
            if local <= 3:
                print(f"{phase} step time {time.time() - t0:.2f} s", flush=True)
            state["steps"][phase] += 1
            state["seconds"][phase] += time.time() - t0
            if state["steps"][phase] % 50 == 0:
                msg = {k: round(float(v.detach()), 4) for k, v in losses.items()}
                rate = state["seconds"][phase] / state["steps"][phase]
                print(f"{phase} step {state['steps'][phase]} ({rate:.3f} s/step): {msg}", flush=True)
                state["log"].append({"phase": phase, "step": state["steps"][phase], **msg})
            if time.time() - saver["last"] > 180:
                save_checkpoint(nets, ema, state, ckpt)
                saver["last"] = time.time()

    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=args.flow_bf16)

    # ---------------------------------------------------------------- phase 1: autoencoders
    def vae_phase_losses(idx):
        """The autoencoders on the first ``--vae-batch`` objects; meanwhile the condition encoder
        learns coarse shape through the structure probe on all ``--probe-batch``."""
        samples = [data[i] for i in idx]
        losses = vae_losses(nets, samples[:args.vae_batch], dev)
        with autocast:
            tokens = nets["encoder"](images(samples, rng, dev))
            losses["probe"] = probe_loss(nets["probe"], tokens, coarse_occupancy(occupancy(samples, dev)))
        return losses

    vae_steps = state["steps"]["vae"]
    run_phase("vae", VAE_NETS + ("encoder", "probe"), max(args.vae_batch, args.probe_batch), vae_phase_losses,
              lambda: state["seconds"]["vae"] < phase_budget["vae"] and chunk_left())
    if state["steps"]["vae"] != vae_steps:
        state["slat_normalization"] = None  # the latents changed (a longer autoencoder phase on resume)

    # ---------------------------------------------------------------- normalisation of the latents
    if state["seconds"]["vae"] >= phase_budget["vae"] and state["slat_normalization"] is None:
        rescale()
        with torch.no_grad():
            feats = []
            for i in range(0, min(len(data), 256), 16):
                batch = data[i:i + 16]
                x = sparse_batch(batch, [np.concatenate([s.color, s.normal], 1) for s in batch], dev)
                feats.append(nets["slat_encoder"](x, sample_posterior=False).feats.float())
            f = torch.cat(feats)
            state["slat_normalization"] = {"mean": f.mean(0).tolist(), "std": f.std(0).clamp(min=1e-3).tolist()}
        print("latent normalisation", state["slat_normalization"], flush=True)

    # ---------------------------------------------------------------- phase 2: flows
    if state["slat_normalization"] is not None and chunk_left():
        freeze_autoencoders()
        norm = [torch.tensor(state["slat_normalization"][k], device=dev) for k in ("mean", "std")]
        t0 = time.time()
        flow_data = FlowData(nets, data, norm, dev)
        print(f"latents of {len(flow_data)} objects in {time.time() - t0:.1f} s", flush=True)

        def losses_of(idx):
            with autocast:  # mostly for the attention kernels, which dominate a float32 flow step
                return flow_losses(nets, flow_data, idx, rng, n_slat=args.flow_batch)

        run_phase("flow", FLOW_NETS + ("probe",), max(args.flow_batch, args.ss_batch), losses_of, chunk_left)
    save_checkpoint(nets, ema, state, ckpt)
    print(f"saved {ckpt}: {state['steps']}, seconds {state['seconds']}", flush=True)
    if args.export and state["slat_normalization"] is not None:
        print("exported", export_model(nets, ema, state, Path(args.export)), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="working folder (checkpoints in WORK/ckpt)")
    ap.add_argument("--minutes", type=float, default=9.2,
                    help="wall time of this chunk, building the data included (0: only --export)")
    ap.add_argument("--total-minutes", type=float, default=23.0, help="planned training time over all chunks")
    ap.add_argument("--vae-share", type=float, default=0.35, help="share of the total spent on the autoencoders")
    ap.add_argument("--objects", type=int, default=3600)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seed-base", type=int, default=100000, help="first object seed (evaluation uses others)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--data-cache", default=None, help="folder to keep the built objects in between chunks")
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--flow-batch", type=int, default=24, help="latent-flow batch")
    ap.add_argument("--ss-batch", type=int, default=96,
                    help="structure-flow batch (its steps are cheap next to the latent flow's)")
    ap.add_argument("--probe-batch", type=int, default=32,
                    help="condition images per autoencoder step for the structure probe (encoder pre-training)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--structure-only", action="store_true",
                    help="train only the structure flow, on the frozen condition encoder's tokens (CPU-friendly)")
    ap.add_argument("--flow-bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="bfloat16 autocast for the condition encoder and the flows (sparse convolutions stay float32)")
    ap.add_argument("--export", default=None, help="write the TRELLIS-format model folder here at the end")
    train(ap.parse_args(argv))


if __name__ == "__main__":
    main()

"""Batches and losses of both training phases, and the flow phase's data on the device.

Everything here is a pure function of networks and :class:`~fuse3d.train.data.ObjectSample` s;
:mod:`fuse3d.train.train` drives it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..assets.gaussians import SH_C0
from ..trellis.sparse import SparseTensor
from .data import ObjectSample

SIGMA_MIN = 1e-5


# ============================================================================ batching
def occupancy(samples: List[ObjectSample], device) -> torch.Tensor:
    occ = torch.zeros(len(samples), 1, 64, 64, 64, device=device)
    for b, s in enumerate(samples):
        c = torch.as_tensor(s.coords, device=device).long()
        occ[b, 0, c[:, 0], c[:, 1], c[:, 2]] = 1
    return occ


def sparse_batch(samples: List[ObjectSample], feats: List[np.ndarray], device) -> SparseTensor:
    coords, rows = [], []
    for b, (s, f) in enumerate(zip(samples, feats)):
        c = torch.as_tensor(s.coords.astype(np.int32))
        coords.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], 1))
        rows.append(torch.as_tensor(f, dtype=torch.float32))
    return SparseTensor(torch.cat(rows).to(device), torch.cat(coords).to(device), len(samples))


def voxel_features(samples: List[ObjectSample]) -> List[np.ndarray]:
    """What the structured-latent encoder reads per voxel: colour and normal."""
    return [np.concatenate([s.color, s.normal], 1) for s in samples]


# ============================================================================ losses
def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``1 − soft Dice`` between ``sigmoid(logits)`` and a 0/1 ``target [B, ...]``."""
    prob, dims = torch.sigmoid(logits), tuple(range(1, target.dim()))
    return (1 - (2 * (prob * target).sum(dims) + 1) / ((prob + target).sum(dims) + 1)).mean()


def vae_losses(nets, samples: List[ObjectSample], device) -> Dict[str, torch.Tensor]:
    occ = occupancy(samples, device)
    z, mean, logvar = nets["ss_encoder"](occ, sample_posterior=True, return_raw=True)
    logits = nets["ss_decoder"](z)
    ss_bce = F.binary_cross_entropy_with_logits(logits, occ, pos_weight=torch.tensor(2.0, device=device))
    ss_dice = soft_dice(logits, occ)
    ss_kl = 0.5 * (mean**2 + logvar.exp() - logvar - 1).mean()

    x = sparse_batch(samples, voxel_features(samples), device)
    zs, smean, slogvar = nets["slat_encoder"](x, sample_posterior=True, return_raw=True)
    slat_kl = 0.5 * (smean**2 + slogvar.exp() - slogvar - 1).mean()
    return {"ss_bce": ss_bce, "ss_dice": ss_dice, "ss_kl": 1e-4 * ss_kl, "slat_kl": 1e-4 * slat_kl,
            **latent_decoder_losses(nets, samples, zs, device)}


def decoder_losses(nets, samples: List[ObjectSample], device, decoders=("gs", "mesh")) -> Dict[str, torch.Tensor]:
    """The structured-latent decoders' losses on the frozen encoder's posterior means: the latents the
    flows are trained to produce, so the decoders learn exactly what they will be given."""
    with torch.no_grad():
        zs = nets["slat_encoder"](sparse_batch(samples, voxel_features(samples), device), sample_posterior=False)
    return latent_decoder_losses(nets, samples, zs, device, decoders)


def latent_decoder_losses(nets, samples: List[ObjectSample], zs: SparseTensor, device,
                          decoders=("gs", "mesh")) -> Dict[str, torch.Tensor]:
    """Losses of the Gaussian (``"gs"``) and mesh (``"mesh"``) decoders on structured latents ``zs`` of ``samples``."""
    out = {}
    if "gs" in decoders:
        out.update(_gaussian_losses(nets["slat_decoder_gs"], samples, zs, device))
    if "mesh" in decoders:
        out.update(_mesh_losses(nets["slat_decoder_mesh"], samples[0], zs[0], device))
    return out


def _gaussian_losses(gs, samples: List[ObjectSample], zs: SparseTensor, device) -> Dict[str, torch.Tensor]:
    out = gs.decode_features(zs)
    rgb = 0.5 + SH_C0 * gs.field(out, "features_dc")[:, :, 0, :]  # [N, G, 3]
    color = torch.as_tensor(np.concatenate([s.color for s in samples]), device=device)
    gs_color = F.mse_loss(rgb, color[:, None, :].expand_as(rgb))
    cfg = gs.rep_config
    scale = F.softplus(gs.field(out, "scaling") + math.log(math.expm1(cfg["scaling_bias"])))
    gs_scale = (torch.log(scale + 1e-6) - math.log(0.6 / 64)).pow(2).mean()
    opacity = torch.sigmoid(gs.field(out, "opacity") + math.log(cfg["opacity_bias"] / (1 - cfg["opacity_bias"])))
    gs_opacity = (1 - opacity).pow(2).mean()
    # colour is weighted up: with equal weights the shared encoder spends its latent on the mesh
    # decoder's sub-voxel geometry and colour collapses to one direction of RGB
    return {"gs_color": 10 * gs_color, "gs_scale": 0.01 * gs_scale, "gs_opacity": 0.1 * gs_opacity}


def _mesh_losses(mesh, first: ObjectSample, z: SparseTensor, device) -> Dict[str, torch.Tensor]:
    """The mesh decoder works at 4× resolution (64 fine voxels per voxel): one object per step."""
    mout = mesh.decode_features(z)
    rows = torch.as_tensor(first.fine_index, device=device)
    sdf = mesh.field(mout, "sdf")[rows] - 1.0 / (4 * mesh.resolution)
    target = torch.as_tensor(first.corner_sdf, device=device)
    band = 3.0 / (4 * mesh.resolution)
    mesh_sdf = F.smooth_l1_loss(sdf.clamp(-band, band) / band * 3, target.clamp(-band, band) / band * 3)
    mesh_color = F.mse_loss(mesh.field(mout, "color")[rows][..., :3], torch.as_tensor(first.corner_color, device=device))
    return {"mesh_sdf": mesh_sdf, "mesh_color": 10 * mesh_color}


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


@torch.no_grad()
def latent_normalization(nets, samples: List[ObjectSample], device) -> dict:
    """Per-channel mean and standard deviation of the structured latent (``slat_normalization``)."""
    feats = []
    for i in range(0, len(samples), 16):
        batch = samples[i:i + 16]
        feats.append(nets["slat_encoder"](sparse_batch(batch, voxel_features(batch), device), sample_posterior=False).feats.float())
    f = torch.cat(feats)
    return {"mean": f.mean(0).tolist(), "std": f.std(0).clamp(min=1e-3).tolist()}


def flow_target(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """``x_t`` and the velocity ``v = (1 − σ_min)·ε − x0`` the samplers integrate."""
    xt = (1 - t) * x0 + (SIGMA_MIN + (1 - SIGMA_MIN) * t) * noise
    return xt, (1 - SIGMA_MIN) * noise - x0


def condition_dropout(cond: torch.Tensor, p: float = 0.1) -> torch.Tensor:
    """Zero the tokens of a share ``p`` of the batch (the unconditional branch of CFG)."""
    return cond * (torch.rand(cond.shape[0], 1, 1, device=cond.device) > p).to(cond.dtype)


def sample_times(b: int, device, mean: float = 1.0) -> torch.Tensor:
    """Logit-normal flow times ``[b]`` in (0, 1); mean 1 (TRELLIS's flow training setting) puts most
    of them at high noise, where the condition decides the coarse shape."""
    return torch.sigmoid(mean + torch.randn(b, device=device))


def structure_flow_loss(flow, x0: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Rectified-flow loss of the structure flow on latents ``x0 [B, 8, 16, 16, 16]`` at times ``t [B]``."""
    xt, v = flow_target(x0, t.view(-1, 1, 1, 1, 1), torch.randn_like(x0))
    return F.mse_loss(flow(xt, 1000 * t, cond), v)


def latent_flow_loss(flow, x0: SparseTensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Rectified-flow loss of the latent flow on normalised structured latents at times ``t [B]``."""
    xt, v = flow_target(x0.feats, t.index_select(0, x0.batch_index)[:, None], torch.randn_like(x0.feats))
    return F.mse_loss(flow(x0.replace(xt), 1000 * t, cond).feats, v)


class FlowData:
    """Everything the flow phase reads, on the device, computed from the frozen networks as objects
    arrive (:meth:`add`): each object's structure latent ``[8, 16, 16, 16]``, its normalised
    structured latent ``[N, 8]`` on its voxels, and the frozen encoder's tokens ``[V, T, C]`` of its
    condition images (kept in one tensor of room for ``capacity`` objects, grown when full)."""

    def __init__(self, nets, encoder, samples: List[ObjectSample], norm, device, chunk: int = 16,
                 token_dtype=torch.bfloat16, capacity: int = 0):
        self.nets, self.encoder, self.norm, self.device = nets, encoder, norm, device
        self.chunk, self.token_dtype, self.capacity = chunk, token_dtype, capacity
        self.ss, self.slat, self.coords = [], [], []
        self._tokens: Optional[torch.Tensor] = None
        self.add(samples)

    @torch.no_grad()
    def add(self, samples: List[ObjectSample]) -> None:
        """Encode ``samples`` and append them (their order is their index in :meth:`batch`)."""
        for i in range(0, len(samples), self.chunk):
            part = samples[i:i + self.chunk]
            self.ss.extend(self.nets["ss_encoder"](occupancy(part, self.device)).unbind(0))
            x = sparse_batch(part, voxel_features(part), self.device)
            z = (self.nets["slat_encoder"](x, sample_posterior=False).feats - self.norm[0]) / self.norm[1]
            self.slat.extend(z[sl] for sl in x.layout)
            self.coords.extend(x.coords[sl, 1:] for sl in x.layout)
            img = torch.as_tensor(np.stack([s.images for s in part]), device=self.device)  # [b, V, H, W, 3]
            b, v = img.shape[:2]
            pixels = img.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0
            tokens = self.encoder(pixels).to(self.token_dtype).unflatten(0, (b, v))
            start = len(self.ss) - b
            if self._tokens is None or len(self._tokens) < start + b:
                room = max(self.capacity, start + b, 2 * (0 if self._tokens is None else len(self._tokens)))
                grown = tokens.new_empty((room, *tokens.shape[1:]))
                if self._tokens is not None:
                    grown[:start] = self._tokens[:start]
                self._tokens = grown
            self._tokens[start:start + b] = tokens

    @property
    def tokens(self) -> torch.Tensor:
        """``[O, V, T, C]`` tokens of the objects added so far (a view, no copy)."""
        return self._tokens[:len(self)]

    def __len__(self) -> int:
        return len(self.ss)

    def batch(self, idx: np.ndarray, rng: np.random.Generator, n_slat: int):
        """Objects ``idx``: ``(x0_ss [B, 8, 16, 16, 16], tokens [B, T, C], x0_slat)`` — the tokens of one
        random view each; the structured latents (a SparseTensor) only of the first ``n_slat`` objects."""
        coords = torch.cat([F.pad(self.coords[i], (1, 0), value=b) for b, i in enumerate(idx[:n_slat])])
        slat = SparseTensor(torch.cat([self.slat[i] for i in idx[:n_slat]]), coords, len(idx[:n_slat]))
        dev = self._tokens.device
        views = torch.as_tensor(rng.integers(self._tokens.shape[1], size=len(idx)), device=dev)
        tokens = self._tokens[torch.as_tensor(idx, device=dev), views].float()
        return torch.stack([self.ss[i] for i in idx]), tokens, slat

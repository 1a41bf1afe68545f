"""The inpainting variant (paper appendix C.2): unaligned voxels keep the global image's latent.

During the final sampling, every voxel that no local image is aligned with is reset, after each
step, onto the forward process of the latent the reverse-alignment capture sampled from the global
image: ``x_t = (1 − t)·z0 + (σ_min + (1 − σ_min)·t)·ε`` with the final sampling's own noise ``ε``.
"""
from __future__ import annotations

import torch


def inpainting_hook(z0: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor, sigma_min: float):
    """A sampler ``on_step(step, t, x)`` hook: ``z0 [N, C]`` the global image's latent, ``keep [N]``
    the unaligned voxels, ``noise [N, C]`` the final sampling's initial noise."""
    def hook(step, t, x):
        feats = x.feats.clone()
        feats[keep] = (1 - t) * z0[keep] + (sigma_min + (1 - sigma_min) * t) * noise[keep]
        return x.replace(feats)

    return hook

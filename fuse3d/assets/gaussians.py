"""3D Gaussians from the SLAT Gaussian decoder, activated as in the published TRELLIS.

Per voxel of the ``resolution``³ grid (centre ``c = (coord + 0.5) / resolution``) the decoder
predicts ``G`` Gaussians. With ``lr`` the per-field multipliers of ``decoder.rep_config``:

* position ``= c + tanh(xyz·lr_xyz + offset_perturbation) / resolution · 0.5 · voxel_size`` in
  ``[0, 1]``³ (the perturbation only with ``perturb_offset``), then shifted by ``-0.5`` (the
  published aabb ``[-0.5, -0.5, -0.5, 1, 1, 1]``) into TRELLIS's frame (z up, ``[-0.5, 0.5]``³);
* scale ``= sqrt(act(scaling·lr + act⁻¹(scaling_bias))² + 3d_filter_kernel_size²)`` with ``act``
  softplus (inverse ``y + log(-expm1(-y))``) or exp (inverse log), per ``scaling_activation``;
* rotation ``= normalize(rotation·lr + [1, 0, 0, 0])``, a unit quaternion ``(w, x, y, z)``;
* opacity ``= sigmoid(opacity·lr + logit(opacity_bias))``;
* ``sh_dc = features_dc·lr``: degree-0 spherical-harmonic coefficients (RGB ``= 0.5 + C0·sh_dc``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..trellis.sparse import SparseTensor
from ._common import decoder_fields

__all__ = ["Gaussians", "SH_C0"]

#: The degree-0 real spherical harmonic, ``1 / (2·sqrt(pi))``.
SH_C0 = 0.28209479177387814


@dataclass(eq=False)
class Gaussians:
    """Activated 3D Gaussians in TRELLIS's frame (z up, object in about ``[-0.5, 0.5]``³).

    Attributes:
        positions: ``[G, 3]`` float32 centres.
        scales: ``[G, 3]`` float32 standard deviations along the Gaussian's axes (positive).
        rotations: ``[G, 4]`` float32 unit quaternions ``(w, x, y, z)`` rotating those axes.
        opacities: ``[G]`` float32 in ``(0, 1)``.
        sh_dc: ``[G, 3]`` float32 degree-0 SH colour coefficients (see :attr:`rgb`).
    """

    positions: np.ndarray
    scales: np.ndarray
    rotations: np.ndarray
    opacities: np.ndarray
    sh_dc: np.ndarray

    def __post_init__(self) -> None:
        for name, width in (("positions", 3), ("scales", 3), ("rotations", 4), ("opacities", None), ("sh_dc", 3)):
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            value = np.ascontiguousarray(value, dtype=np.float32)
            expected = (len(self.positions),) if width is None else (len(self.positions), width)
            if value.shape != expected:
                shape = "[G]" if width is None else f"[G, {width}]"
                raise ValueError(f"Gaussians.{name} must be {shape} = {list(expected)}, got {list(value.shape)}")
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def rgb(self) -> np.ndarray:
        """``[G, 3]`` float32 view-independent colour ``0.5 + C0·sh_dc``, clamped to ``[0, 1]``."""
        return np.clip(0.5 + SH_C0 * self.sh_dc, 0.0, 1.0)

    def voxel_colors(self, num_voxels: int) -> np.ndarray:
        """``[N, 3]``: the opacity-weighted mean colour of each voxel's Gaussians (the decoder emits
        ``G`` per voxel, voxel-major). What the views draw and the evaluation scores."""
        if num_voxels <= 0 or len(self) % num_voxels:
            raise ValueError(f"{len(self)} Gaussians do not split evenly over {num_voxels} voxels")
        g = len(self) // num_voxels
        w = self.opacities.reshape(num_voxels, g, 1) + 1e-8
        return ((self.rgb.reshape(num_voxels, g, 3) * w).sum(1) / w.sum(1)).astype(np.float32)

    @classmethod
    def from_decoder_output(cls, decoder, out: SparseTensor, batch: int = 0) -> "Gaussians":
        """Activate the Gaussians of batch element ``batch`` of ``decoder.decode_features(slat)``.

        Args:
            decoder: a :class:`~fuse3d.trellis.vae.SLatGaussianDecoder` (or anything with its
                ``feature_layout``, ``resolution``, ``rep_config`` and ``offset_perturbation [G, 3]``).
            out: its output, ``coords [N, 4]`` in ``[0, resolution)``.
            batch: which batch element to read.

        Returns:
            ``N·G`` Gaussians, voxel-major (the ``G`` Gaussians of voxel 0 first).
        """
        cfg = decoder.rep_config
        lr = cfg.get("lr", {})
        coords, f = decoder_fields(decoder, out, ["xyz", "features_dc", "scaling", "rotation", "opacity"], batch)

        def scaled(name: str) -> torch.Tensor:
            return f[name] * float(lr.get("_" + name, 1.0))

        offset = scaled("xyz")  # [N, G, 3]
        if cfg.get("perturb_offset", False):
            offset = offset + decoder.offset_perturbation.detach().cpu().float()
        centres = (coords.float() + 0.5) / decoder.resolution
        positions = centres[:, None, :] + torch.tanh(offset) / decoder.resolution * 0.5 * float(cfg["voxel_size"])
        positions = positions.reshape(-1, 3) - 0.5

        activation = cfg.get("scaling_activation", "exp")
        bias = float(cfg["scaling_bias"])
        if activation == "softplus":
            scales = F.softplus(scaled("scaling").reshape(-1, 3) + (bias + math.log(-math.expm1(-bias))))
        elif activation == "exp":
            scales = torch.exp(scaled("scaling").reshape(-1, 3) + math.log(bias))
        else:
            raise ValueError(f"scaling_activation must be 'softplus' or 'exp', got {activation!r}")
        scales = torch.sqrt(scales.square() + float(cfg.get("3d_filter_kernel_size", 0.0)) ** 2)

        rotations = F.normalize(scaled("rotation").reshape(-1, 4) + torch.tensor([1.0, 0.0, 0.0, 0.0]), dim=-1)
        opacity_bias = float(cfg["opacity_bias"])
        opacities = torch.sigmoid(scaled("opacity").reshape(-1) + math.log(opacity_bias / (1.0 - opacity_bias)))
        sh_dc = scaled("features_dc").reshape(-1, 3)
        return cls(positions, scales, rotations, opacities, sh_dc)

    def __repr__(self) -> str:
        return f"Gaussians(n={len(self)})"

"""A given asset as TRELLIS's structured latent: the asset → SLAT path that editing starts from.

TRELLIS builds its training latents in three steps: render about 150 views of the asset, take the
DINOv2 patch features of each, and average onto every active 64³ voxel the feature found where the
voxel's centre projects in each view; the SLAT encoder maps these ``[N, 1024]`` features to the
``[N, 8]`` latent. :func:`encode_asset` does the same for any TRELLIS-format model, with the input
its SLAT encoder declares:

* ``"patch_features"`` (the published models; ``ckpts/slat_enc_swin8_B_64l8_fp16`` in
  TRELLIS-image-large reads DINOv2-L's 1024 channels): ``views`` renders of the asset by the
  project's renderer (field of view 40° at distance 2, as TRELLIS renders them; no crop), the
  condition encoder's patch tokens, projected and averaged (:func:`project_patch_features`);
* ``"color_normal"`` (fuse3d's own small models, ``pipeline.json``'s ``fuse3d.slat_encoder_input``):
  each voxel's surface colour and outward normal, as their training encodes objects.

The asset is first brought to :class:`SurfaceVoxels` (a procedural object, a vertex-coloured mesh, a
textured trimesh or a mesh file); the structure is its surface voxels.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ObjectSpec, View, VoxelObject, render, surface_normals, voxelize
from ..trellis.checkpoint import CheckpointError, load_network, resolve_folder
from ..trellis.sparse import SparseTensor
from .mesh import Mesh
from .voxelize import _lattice_samples, framed_triangles

__all__ = ["SurfaceVoxels", "EncodedAsset", "encode_asset", "load_slat_encoder", "slat_encoder_input",
           "project_patch_features", "sphere_views", "PUBLISHED_SLAT_ENCODER", "SLAT_ENCODER_INPUTS"]

#: Where TRELLIS-image-large keeps its SLAT encoder (the published loader never reads it).
PUBLISHED_SLAT_ENCODER = "ckpts/slat_enc_swin8_B_64l8_fp16"
SLAT_ENCODER_INPUTS = ("patch_features", "color_normal")
RENDER_SIZE = 518  # the condition encoder's input: renders go in uncropped, as TRELLIS's feature extraction


@dataclass
class SurfaceVoxels:
    """An asset's surface voxels with a colour and an outward normal each, in TRELLIS's frame.

    Attributes:
        coords: ``[N, 4]`` int32 ``(0, x, y, z)``, unique, sorted by ``(x, y, z)``.
        color: ``[N, 3]`` float32 RGB in ``[0, 1]``.
        normal: ``[N, 3]`` float32 unit vectors.
        resolution: voxels per side (64).
    """

    coords: torch.Tensor
    color: np.ndarray
    normal: np.ndarray
    resolution: int = 64

    def __post_init__(self) -> None:
        n = len(self.coords)
        if n == 0:
            raise ValueError("an asset needs at least one surface voxel")
        if self.color.shape != (n, 3) or self.normal.shape != (n, 3):
            raise ValueError(f"color and normal must be [{n}, 3] like the coords, got {self.color.shape}, {self.normal.shape}")

    def __len__(self) -> int:
        return len(self.coords)

    @classmethod
    def from_spec(cls, spec: ObjectSpec, resolution: int = 64) -> "SurfaceVoxels":
        """A procedural object: its surface voxels, the colour at each centre and the exact normal."""
        vox = voxelize(spec, resolution)
        centres = vox.positions()
        return cls(torch.from_numpy(vox.coords.astype(np.int32)), vox.color.astype(np.float32),
                   surface_normals(spec, centres), resolution)

    @classmethod
    def from_mesh(cls, mesh, resolution: int = 64, *, normalize: bool = True, from_y_up: bool = False) -> "SurfaceVoxels":
        """A coloured mesh (a :class:`~fuse3d.assets.Mesh` with vertex colours, a vertex-coloured or
        textured ``trimesh.Trimesh``, or a file trimesh reads): the voxels its surface passes through
        (as :func:`~fuse3d.assets.voxelize_mesh`), each with the mean colour and mean face normal of
        the surface samples inside it."""
        if isinstance(mesh, (str, os.PathLike)):
            import trimesh

            mesh = trimesh.load(mesh, force="mesh")
        colors = _vertex_colors(mesh)
        tri, faces = framed_triangles(mesh, normalize, from_y_up, "encode")
        face_normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        face_normal /= np.maximum(np.linalg.norm(face_normal, axis=1, keepdims=True), 1e-12)
        R = resolution
        keys, color_sum, normal_sum = [], [], []
        for face, weights, key in _lattice_samples(tri, R):
            keys.append(key)
            color_sum.append(np.einsum("kv,kvc->kc", weights, colors[faces[face]]))
            normal_sum.append(face_normal[face])
        key = np.concatenate(keys)
        uniq, inverse = np.unique(key, return_inverse=True)
        color = np.stack([np.bincount(inverse, np.concatenate(color_sum)[:, c], len(uniq)) for c in range(3)], 1)
        normal = np.stack([np.bincount(inverse, np.concatenate(normal_sum)[:, c], len(uniq)) for c in range(3)], 1)
        color /= np.bincount(inverse, minlength=len(uniq))[:, None]
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        xyz = np.stack([uniq // (R * R), (uniq // R) % R, uniq % R], 1)
        coords = np.concatenate([np.zeros((len(xyz), 1), np.int64), xyz], 1).astype(np.int32)
        return cls(torch.from_numpy(coords), np.clip(color, 0, 1).astype(np.float32), normal.astype(np.float32), R)

    def voxel_object(self) -> VoxelObject:
        """As a one-part :class:`~fuse3d.data.VoxelObject` (for the project's renderer)."""
        return VoxelObject(self.coords.numpy(), np.zeros(len(self), np.int32), self.color, ["asset"], self.resolution)

    def render(self, view: Optional[View] = None, size: int = 256, supersample: int = 2):
        """An RGBA render (:class:`~fuse3d.data.RenderResult`), e.g. the global image of an edit."""
        return render(self.voxel_object(), view, size, supersample=supersample)


@dataclass
class EncodedAsset:
    """A structured latent to edit: the structure and its latent, in the space ``run.final`` holds
    (de-normalised, ``x·std + mean``).

    Attributes:
        coords: ``[N, 4]`` int32 voxels; latent: ``[N, C]`` float32.
        name: a label; source: how the latent was made.
        voxels: the :class:`SurfaceVoxels` encoded (``None`` for a run's latent).
    """

    coords: torch.Tensor
    latent: torch.Tensor
    name: str = "asset"
    source: str = ""
    voxels: Optional[SurfaceVoxels] = None

    def __post_init__(self) -> None:
        if self.latent.ndim != 2 or len(self.latent) != len(self.coords):
            raise ValueError(f"latent must be [N, C] with N = {len(self.coords)} voxels, got {tuple(self.latent.shape)}")

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def key(self) -> str:
        """A content hash of the structure and latent (a cache key part)."""
        h = hashlib.sha256(self.coords.numpy().astype(np.int32).tobytes())
        h.update(self.latent.float().numpy().tobytes())
        return h.hexdigest()

    def sorted(self) -> "EncodedAsset":
        """The same asset with its voxels in the order structures use (by ``(x, y, z)``, unique)."""
        c = self.coords.long()
        if c.ndim != 2 or c.shape[1] != 4:
            raise ValueError(f"coords must be [N, 4] (batch, x, y, z), got {tuple(self.coords.shape)}")
        key = (c[:, 1] * 64 + c[:, 2]) * 64 + c[:, 3] if int(c[:, 1:].max()) < 64 else None
        if key is None or int(c[:, 1:].min()) < 0:
            raise ValueError("coords must lie in the 64³ grid")
        order = torch.argsort(key)
        if bool((key[order][1:] == key[order][:-1]).any()):
            raise ValueError("coords repeat a voxel")
        if bool((order == torch.arange(len(order))).all()):
            return self
        return EncodedAsset(self.coords[order].int(), self.latent[order], self.name, self.source,
                            None if self.voxels is None else SurfaceVoxels(
                                self.voxels.coords[order], self.voxels.color[order.numpy()],
                                self.voxels.normal[order.numpy()], self.voxels.resolution))

    def __repr__(self) -> str:
        return f"EncodedAsset({self.name!r}, {len(self)} voxels, latent {list(self.latent.shape)}, {self.source})"


AssetLike = Union[SurfaceVoxels, ObjectSpec, Mesh, "trimesh.Trimesh", str, os.PathLike]  # noqa: F821


def as_surface_voxels(asset: AssetLike, resolution: int = 64) -> SurfaceVoxels:
    """Any supported asset as :class:`SurfaceVoxels`."""
    if isinstance(asset, SurfaceVoxels):
        return asset
    if isinstance(asset, ObjectSpec):
        return SurfaceVoxels.from_spec(asset, resolution)
    return SurfaceVoxels.from_mesh(asset, resolution)


# ============================================================================ the model's encoder
def slat_encoder_input(pipe) -> str:
    """What the model's SLAT encoder reads per voxel (see the module docstring)."""
    kind = (getattr(pipe, "fuse3d_meta", None) or {}).get("slat_encoder_input", "patch_features")
    if kind not in SLAT_ENCODER_INPUTS:
        raise CheckpointError(f"{pipe.source}/pipeline.json: fuse3d.slat_encoder_input must be one of "
                              f"{', '.join(SLAT_ENCODER_INPUTS)}, got {kind!r}")
    return kind


def load_slat_encoder(pipe) -> torch.nn.Module:
    """The model's SLAT encoder, loaded once from its folder: ``pipeline.json``'s
    ``fuse3d.slat_encoder``, else TRELLIS-image-large's :data:`PUBLISHED_SLAT_ENCODER`."""
    net = getattr(pipe, "_slat_encoder", None)
    if net is None:
        rel = (getattr(pipe, "fuse3d_meta", None) or {}).get("slat_encoder", PUBLISHED_SLAT_ENCODER)
        label, fetch = resolve_folder(pipe.source)
        try:
            net = load_network(rel, device=pipe.device, dtype="fp32", fetch=fetch)
        except (CheckpointError, FileNotFoundError, OSError) as e:
            raise CheckpointError(f"{label} has no SLAT encoder at {rel}.json/.safetensors, which encoding an asset "
                                  f"needs (TRELLIS-image-large ships {PUBLISHED_SLAT_ENCODER}): {e}") from None
        net.eval()
        object.__setattr__(pipe, "_slat_encoder", net)  # not a child module: state_dict stays the published one
    return net


# ============================================================================ projected patch features
def sphere_views(n: int, distance: float = 2.0, fov_deg: float = 40.0) -> List[View]:
    """``n`` cameras spread evenly over the sphere (a Fibonacci lattice), looking at the origin."""
    if n < 1:
        raise ValueError(f"views must be at least 1, got {n}")
    golden = math.pi * (3 - math.sqrt(5))
    views = []
    for i in range(n):
        z = 1 - (2 * i + 1) / n
        views.append(View(math.degrees(i * golden) % 360, math.degrees(math.asin(z)), distance, fov_deg))
    return views


def project_points(points: np.ndarray, view: View) -> np.ndarray:
    """``[N, 2]`` positions of ``points [N, 3]`` in the view's image, in ``[-1, 1]`` (x right, y down),
    pixel-centre aligned as the renderer's rays (``align_corners=False``)."""
    eye, fwd, right, up = view.basis()
    half = math.tan(math.radians(view.fov_deg) / 2)
    rel = points - (eye if not view.ortho else 0)
    if view.ortho:
        return np.stack([rel @ right, -(rel @ up)], 1) / (view.distance * half)
    depth = rel @ fwd
    return np.stack([rel @ right, -(rel @ up)], 1) / (depth[:, None] * half)


def project_patch_features(points: np.ndarray, views: Sequence[View], patch_tokens: torch.Tensor) -> torch.Tensor:
    """The mean over views of the patch feature found where each point projects (bilinear).

    Args:
        points: ``[N, 3]`` positions (voxel centres).
        views: the ``V`` cameras the features were computed from (square images).
        patch_tokens: ``[V, P, C]`` with ``P = g²`` patches in row-major order.

    Returns:
        ``[N, C]`` float32.
    """
    V, P, C = patch_tokens.shape
    g = int(round(math.sqrt(P)))
    if g * g != P or V != len(views):
        raise ValueError(f"patch_tokens must be [{len(views)} views, g², C], got {tuple(patch_tokens.shape)}")
    grid = patch_tokens.float().transpose(1, 2).reshape(V, C, g, g)
    uv = torch.from_numpy(np.stack([project_points(points, v) for v in views])).to(grid)  # [V, N, 2]
    sampled = F.grid_sample(grid, uv[:, :, None, :], mode="bilinear", align_corners=False)  # [V, C, N, 1]
    return sampled[..., 0].mean(0).transpose(0, 1).contiguous()


@torch.no_grad()
def patch_features(pipe, voxels: SurfaceVoxels, views: int = 24, progress: bool = False) -> torch.Tensor:
    """TRELLIS's voxel features: ``views`` renders, their patch tokens, projected and averaged."""
    from tqdm.auto import tqdm

    cams = sphere_views(views)
    obj = voxels.voxel_object()
    prefix = pipe.image_encoder.num_prefix_tokens
    tokens = []
    for view in tqdm(cams, desc="Encoding views", disable=not progress, leave=False):
        r = render(obj, view, RENDER_SIZE)
        rgb = torch.from_numpy(r.rgba[..., :3].astype(np.float32) / 255.0) * torch.from_numpy(r.rgba[..., 3:] / 255.0)
        tokens.append(pipe.encode_images(rgb.permute(2, 0, 1)[None].float())[0, prefix:].cpu())
    centres = (voxels.coords[:, 1:].numpy() + 0.5) / voxels.resolution - 0.5
    return project_patch_features(centres, cams, torch.stack(tokens))


@torch.no_grad()
def encode_asset(pipe, asset: AssetLike, *, views: int = 24, name: Optional[str] = None,
                 progress: bool = False) -> EncodedAsset:
    """An asset's structure and structured latent under the model ``pipe`` (a loaded
    :class:`~fuse3d.trellis.pipeline.TrellisPipeline`).

    Args:
        asset: a :class:`SurfaceVoxels`, a procedural :class:`~fuse3d.data.ObjectSpec`, a coloured mesh or
            a mesh file.
        views: renders whose patch features are averaged (patch-feature encoders only; TRELLIS uses 150).
    """
    voxels = as_surface_voxels(asset)
    encoder = load_slat_encoder(pipe)
    kind = slat_encoder_input(pipe)
    if kind == "color_normal":
        feats = torch.from_numpy(np.concatenate([voxels.color, voxels.normal], 1))
        source = f"{pipe.model_name}'s SLAT encoder on each voxel's colour and normal"
    else:
        feats = patch_features(pipe, voxels, views, progress)
        source = f"{pipe.model_name}'s SLAT encoder on patch features averaged over {views} views"
    if feats.shape[1] != encoder.in_channels:
        raise CheckpointError(f"{pipe.source}: the SLAT encoder reads {encoder.in_channels} channels per voxel, "
                              f"but {kind} gives {feats.shape[1]}; set fuse3d.slat_encoder_input in pipeline.json")
    x = SparseTensor(feats.float().to(pipe.device), voxels.coords.to(pipe.device))
    latent = encoder(x, sample_posterior=False).feats.float().cpu()
    if name is None and isinstance(asset, ObjectSpec):
        name = asset.kind if getattr(asset, "seed", None) is None else f"{asset.kind} {asset.seed}"
    label = name or (os.path.basename(str(asset)) if isinstance(asset, (str, os.PathLike)) else type(asset).__name__)
    return EncodedAsset(voxels.coords.clone(), latent, label, source, voxels)


def _vertex_colors(mesh) -> np.ndarray:
    if isinstance(mesh, Mesh):
        colors = mesh.vertex_colors
    else:
        visual = getattr(mesh, "visual", None)
        colors = None
        if visual is not None and getattr(visual, "kind", None) is not None:
            colors = np.asarray(visual.to_color().vertex_colors, dtype=np.float32)[:, :3] / 255.0
    if colors is None:
        raise ValueError("the mesh has no colours to encode: give a Mesh with vertex_colors, or a vertex-coloured "
                         "or textured trimesh")
    return np.asarray(colors, dtype=np.float64)

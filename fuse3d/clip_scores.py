"""The paper's CLIP scores (§4, appendix B.3): region-specific and global CLIP similarity of an asset.

* **Region-specific CLIP similarity**, per local image: the asset rendered from fixed views with
  everything but the voxels aligned to that image blacked out, against the local image's selected
  region (masked the same way) — or against a text describing the region, as the appendix words it.
* **Global CLIP similarity**: the whole asset's renders against a text describing the fused asset
  (the paper's captions come from GPT-4o, which fuse3d cannot call: give your own), or against the
  global image when no text is given.

Each score is the mean over the views in which the region shows (at least ``min_pixels`` pixels).
Renders are the asset's voxels in their decoded colours (:meth:`Gaussians.voxel_colors
<fuse3d.assets.Gaussians.voxel_colors>`), drawn by the project's voxel renderer; every image is cut
to the square around its region (10 % margin) before CLIP's own preprocessing.

CLIP runs through open_clip (``pip install 'fuse3d[metrics]'``). Its weights are **never
downloaded**: :func:`load_clip` takes an open_clip folder (``open_clip_config.json`` and
``*.safetensors``) or a Hugging Face repo id already in the local cache (``FUSE3D_CLIP`` names one
by default). The paper uses ViT-L/14. No pickle: a folder without safetensors weights is refused.
:func:`write_tiny_clip` writes a random-weight model in the same format for tests.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .data import View, VoxelObject, fit_view, render

CLIP_ENV = "FUSE3D_CLIP"
#: Fixed views around the asset (yaw every 45°, 20° above), each framed to the asset.
VIEWS = tuple(View(float(yaw), 20.0) for yaw in range(0, 360, 45))
RENDER_SIZE = 336
MIN_PIXELS = 64
MARGIN = 0.1

__all__ = ["CLIP_ENV", "VIEWS", "ClipModel", "ClipScores", "ClipWeightsError", "clip_scores", "load_clip",
           "region_crop", "write_tiny_clip"]


class ClipWeightsError(FileNotFoundError):
    """CLIP weights that are missing, unreadable or not in safetensors."""


# ============================================================================ the model
@dataclass
class ClipModel:
    """An open_clip model with its image preprocessing and tokenizer (:func:`load_clip`)."""

    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    source: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[n, d]`` unit-norm image embeddings."""
        x = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        f = self.model.encode_image(x).float()
        return f / f.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """``[n, d]`` unit-norm text embeddings."""
        f = self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float()
        return f / f.norm(dim=-1, keepdim=True)

    def similarity(self, images: Sequence[Image.Image], reference: Union[Image.Image, str]) -> List[float]:
        """Cosine similarity of each image to ``reference`` (an image or a text)."""
        ref = self.text_features([reference]) if isinstance(reference, str) else self.image_features([reference])
        return (self.image_features(images) @ ref[0]).tolist()


def _open_clip():
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("CLIP scores need open_clip: pip install 'fuse3d[metrics]'") from e
    return open_clip


def resolve_clip_folder(source: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The local folder of ``source`` (a folder, or a Hugging Face repo id in the local cache; default:
    ``$FUSE3D_CLIP``). Nothing is downloaded."""
    source = source if source is not None else os.environ.get(CLIP_ENV)
    if not source:
        raise ClipWeightsError(f"no CLIP weights given: pass a folder or a Hugging Face repo id in the local cache, "
                               f"or set {CLIP_ENV} (fuse3d never downloads them; the paper uses ViT-L/14)")
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise ClipWeightsError(f"{source}: not a folder holding open_clip_config.json and safetensors weights")
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(str(source), local_files_only=True))
        except Exception as e:  # huggingface_hub raises several kinds for "not in the cache"
            raise ClipWeightsError(f"{source} is not in the local Hugging Face cache (fuse3d never downloads CLIP "
                                   f"weights; run `huggingface-cli download {source}` where there is a network): "
                                   f"{type(e).__name__}") from None
    if not (folder / "open_clip_config.json").is_file():
        raise ClipWeightsError(f"{folder} has no open_clip_config.json")
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        raise ClipWeightsError(f"{folder} has no safetensors weights" + (
            f" ({', '.join(found)} would need pickle, which fuse3d never loads)" if found else ""))
    return folder


def load_clip(source: Optional[Union[str, os.PathLike]] = None, device: Union[str, torch.device] = "cpu") -> ClipModel:
    """An open_clip model from a local folder or the Hugging Face cache (see :func:`resolve_clip_folder`)."""
    open_clip = _open_clip()
    folder = resolve_clip_folder(source)
    name = f"local-dir:{folder}"
    model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
    return ClipModel(model.eval(), preprocess, open_clip.get_tokenizer(name), str(source or folder), torch.device(device))


def write_tiny_clip(folder: Union[str, os.PathLike], seed: int = 0) -> Path:
    """A random-weight open_clip model (ViT, 1 block per tower, width 32) in the format
    :func:`load_clip` reads: ``open_clip_config.json`` + ``open_clip_model.safetensors``."""
    open_clip = _open_clip()
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                              "std": [0.26862954, 0.26130258, 0.27577711]}}, indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


# ============================================================================ images
def region_crop(rgb: np.ndarray, mask: np.ndarray, margin: float = MARGIN) -> Image.Image:
    """``rgb [H, W, 3]`` uint8 with everything outside ``mask [H, W]`` black, cut to the square around
    the mask (``margin`` of its side added; padded with black past the border)."""
    if not mask.any():
        raise ValueError("the region is empty")
    rows, cols = np.nonzero(mask)
    side = int(np.ceil(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1) * (1 + 2 * margin))
    cy, cx = (rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2
    top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
    out = np.zeros((side, side, 3), np.uint8)
    masked = np.where(mask[..., None], rgb, 0).astype(np.uint8)
    H, W = mask.shape
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + side, H), min(left + side, W)
    out[y0 - top:y1 - top, x0 - left:x1 - left] = masked[y0:y1, x0:x1]
    return Image.fromarray(out)


def condition_region(condition) -> Image.Image:
    """A condition's selected region in TRELLIS's preprocessed frame (its whole object without a mask)."""
    prepared = condition.prepare()
    rgb = np.asarray(prepared.image.convert("RGB"))
    if prepared.pixel_mask is not None:
        mask = prepared.pixel_mask & (rgb.max(-1) > 0)
    else:
        mask = rgb.max(-1) > 0
    return region_crop(rgb, mask)


def asset_renders(coords: np.ndarray, colors: np.ndarray, region: np.ndarray, views: Sequence[View] = VIEWS,
                  size: int = RENDER_SIZE):
    """``(rgb [H, W, 3] uint8, region mask [H, W] bool, object mask [H, W] bool)`` of each view of voxels
    ``coords [N, 4]`` in ``colors [N, 3]``; ``region [N]`` bool marks the voxels of the region."""
    obj = VoxelObject(np.asarray(coords, np.int32), np.asarray(region, np.int32), np.asarray(colors, np.float32),
                      ["rest", "region"])
    out = []
    for view in views:
        r = render(obj, fit_view(obj, view, fill=0.85), size)
        out.append((r.rgba[..., :3], r.part_id == 1, r.part_id >= 0))
    return out


# ============================================================================ scores
@dataclass
class ClipScores:
    """Region-specific (one per local image; ``None`` when its region shows in no view) and global
    CLIP similarity, and what they were measured against."""

    region: List[Optional[float]]
    global_: float
    region_reference: List[str]
    global_reference: str
    views: int
    model: str

    def as_dict(self) -> dict:
        return {"region_clip": self.region, "global_clip": self.global_, "region_reference": self.region_reference,
                "global_reference": self.global_reference, "views": self.views, "clip_model": self.model}


def clip_scores(run, clip: ClipModel, region_texts: Optional[Sequence[Optional[str]]] = None,
                global_text: Optional[str] = None, views: Sequence[View] = VIEWS, min_pixels: int = MIN_PIXELS) -> ClipScores:
    """The CLIP scores of a Fuse3D run's asset (decodes, and samples, what is not cached).

    Args:
        region_texts: per local image, a text to score its region against (``None``: its masked image).
        global_text: a description of the fused asset (``None``: the global image).
    """
    texts = list(region_texts) if region_texts is not None else [None] * run.K
    if len(texts) != run.K:
        raise ValueError(f"region_texts needs one entry per local image ({run.K}), got {len(texts)}")
    coords = run.structure.numpy()
    colors = run.gaussians.voxel_colors(len(coords))
    region, refs = [], []
    for k in range(run.K):
        aligned = run.refined_mask(k)[run.voxel_cell].numpy()
        shots = [(rgb, m) for rgb, m, _ in asset_renders(coords, colors, aligned, views) if m.sum() >= min_pixels]
        reference = texts[k] if texts[k] is not None else condition_region(run.local_conditions[k])
        refs.append(f"text: {texts[k]}" if texts[k] is not None else f"the selected region of {run.local_conditions[k].name}")
        region.append(float(np.mean(clip.similarity([region_crop(rgb, m) for rgb, m in shots], reference)))
                      if shots else None)
    whole = [(rgb, m) for rgb, _, m in asset_renders(coords, colors, np.zeros(len(coords), bool), views)]
    greference = global_text if global_text is not None else condition_region(run.global_condition)
    g = float(np.mean(clip.similarity([region_crop(rgb, m) for rgb, m in whole], greference)))
    gref = f"text: {global_text}" if global_text is not None else f"the global image {run.global_condition.name}"
    return ClipScores(region, g, refs, gref, len(views), clip.source)

"""TRELLIS's image condition tokens: DINOv2 with registers (through timm) and its token recipe.

Tokens are every token of the last block **before** DINOv2's final norm, then a layer norm without
affine weights: ``[CLS, REG×4, patches row-major]``; at 518×518 with patch 14 that is 1374 tokens
(``5 + 37·37``) and patch ``(i, j)`` is token ``5 + 37·i + j``.

Weights load from safetensors in either timm's key format or the original DINOv2 one (converted with
timm's ``checkpoint_filter_fn``), or from the original ``.pth`` release with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: torch.hub names used in ``pipeline.json`` → (timm architecture, timm HF repo, original file name)
DINOV2_HUB_NAMES: Dict[str, tuple] = {
    "dinov2_vits14_reg": ("vit_small_patch14_reg4_dinov2", "timm/vit_small_patch14_reg4_dinov2.lvd142m", "dinov2_vits14_reg4_pretrain.pth"),
    "dinov2_vitb14_reg": ("vit_base_patch14_reg4_dinov2", "timm/vit_base_patch14_reg4_dinov2.lvd142m", "dinov2_vitb14_reg4_pretrain.pth"),
    "dinov2_vitl14_reg": ("vit_large_patch14_reg4_dinov2", "timm/vit_large_patch14_reg4_dinov2.lvd142m", "dinov2_vitl14_reg4_pretrain.pth"),
    "dinov2_vitg14_reg": ("vit_giant_patch14_reg4_dinov2", "timm/vit_giant_patch14_reg4_dinov2.lvd142m", "dinov2_vitg14_reg4_pretrain.pth"),
}

DINOV2_ENV = "FUSE3D_DINOV2"


class DinoV2WeightsError(FileNotFoundError):
    pass


class DinoV2Encoder(nn.Module):
    """DINOv2 ViT with registers (a timm model) that returns TRELLIS condition tokens.

    Args:
        arch: timm architecture name, e.g. ``vit_large_patch14_reg4_dinov2``.
        img_size: input size (518 in TRELLIS: a 37×37 patch grid).
        **overrides: timm ``create_model`` overrides (``embed_dim``, ``depth``, ``num_heads``) for
            small models of the same architecture.
    """

    def __init__(self, arch: str = "vit_large_patch14_reg4_dinov2", img_size: int = 518, **overrides):
        super().__init__()
        import timm  # the viz-free core still needs timm for DINOv2

        self.arch = arch
        self.img_size = img_size
        self.overrides = dict(overrides)
        self.vit = timm.create_model(arch, pretrained=False, img_size=img_size, num_classes=0, **overrides)
        self.patch_size = self.vit.patch_embed.patch_size[0]
        self.num_prefix_tokens = self.vit.num_prefix_tokens

    @property
    def config(self) -> dict:
        return {"arch": self.arch, "img_size": self.img_size, **self.overrides}

    @property
    def grid(self) -> int:
        """Patches per side (37 for 518 / 14)."""
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.grid**2

    @property
    def width(self) -> int:
        return self.vit.embed_dim

    def prenorm_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised ``[B, 3, S, S]`` → every token before the final norm ``[B, T, C]``."""
        v = self.vit
        h = v.patch_embed(x)
        h = v._pos_embed(h)
        h = v.patch_drop(h)
        h = v.norm_pre(h)
        return v.blocks(h)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels [B, 3, S, S]`` in ``[0, 1]`` (RGB, premultiplied on black) → tokens ``[B, T, C]``."""
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (self.img_size,) * 2:
            raise ValueError(f"DinoV2Encoder expects pixels [B, 3, {self.img_size}, {self.img_size}], got {tuple(pixels.shape)}")
        mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
        x = (pixels.float() - mean) / std
        h = self.prenorm_tokens(x.to(next(self.parameters()).dtype))
        return F.layer_norm(h.float(), h.shape[-1:])

    def export_state_dict(self) -> Dict[str, torch.Tensor]:
        """The weights in timm's key format (what :meth:`load_weights` reads back)."""
        return dict(self.vit.state_dict())

    def load_weights(self, state_dict: Dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load timm-format or original-DINOv2-format weights (strict)."""
        from timm.models.vision_transformer import checkpoint_filter_fn

        if "register_tokens" in state_dict or any(k.endswith("ls1.gamma") for k in state_dict):
            state_dict = checkpoint_filter_fn(state_dict, self.vit)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
        from .storage import check_state_dict

        check_state_dict(self.vit, state_dict, source)
        self.vit.load_state_dict(state_dict, strict=True)


def images_to_pixels(images: Sequence, size: int = 518) -> torch.Tensor:
    """PIL images (already preprocessed, RGB on black) → ``[B, 3, size, size]`` in ``[0, 1]``.

    Images not already ``size`` × ``size`` are resized with LANCZOS, as TRELLIS does.
    """
    from PIL import Image

    out = []
    for im in images:
        if not isinstance(im, Image.Image):
            raise TypeError(f"expected PIL images, got {type(im).__name__}")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(out)


def _read_weights(path: Path) -> Dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from .storage import read_safetensors

        return read_safetensors(path)
    if path.suffix in (".pth", ".pt"):
        # The original DINOv2 release is a torch zip; weights_only=True refuses anything but tensors.
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(sd, dict):
            raise DinoV2WeightsError(f"{path}: expected a state dict, found {type(sd).__name__}")
        return sd
    raise DinoV2WeightsError(f"{path}: DINOv2 weights must be .safetensors or the original .pth")


def resolve_dinov2_weights(hub_name: str, source: Optional[Union[str, Path]] = None) -> Path:
    """Find DINOv2 weights for ``hub_name`` (e.g. ``dinov2_vitl14_reg``) without any download.

    Order: ``source`` (a file, a folder holding ``model.safetensors`` or the original ``.pth``, or a
    Hugging Face repo id in the local cache), then the ``FUSE3D_DINOV2`` environment variable (same
    forms), then timm's repo in the Hugging Face cache, then the torch hub checkpoint folder.
    """
    if hub_name not in DINOV2_HUB_NAMES:
        raise DinoV2WeightsError(f"unknown DINOv2 model {hub_name!r}; known: {', '.join(DINOV2_HUB_NAMES)}")
    _, hf_repo, original = DINOV2_HUB_NAMES[hub_name]
    tried: List[str] = []

    def from_spec(spec: str) -> Optional[Path]:
        p = Path(spec).expanduser()
        if p.is_file():
            return p
        if p.is_dir():
            for name in ("model.safetensors", original, original.replace(".pth", ".safetensors")):
                if (p / name).is_file():
                    return p / name
            tried.append(f"{p} (no model.safetensors or {original} inside)")
            return None
        if spec.count("/") == 1 and not p.exists():
            return _from_hf_cache(spec)
        tried.append(f"{spec} (no such file or folder)")
        return None

    def _from_hf_cache(repo: str) -> Optional[Path]:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, "model.safetensors")
        if isinstance(hit, str):
            return Path(hit)
        tried.append(f"Hugging Face cache: {repo}/model.safetensors")
        return None

    for spec in (source, os.environ.get(DINOV2_ENV)):
        if spec:
            found = from_spec(str(spec))
            if found is not None:
                return found
    found = _from_hf_cache(hf_repo)
    if found is not None:
        return found
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    candidate = torch_home / "hub" / "checkpoints" / original
    if candidate.is_file():
        return candidate
    tried.append(str(candidate))
    raise DinoV2WeightsError(
        f"no weights found for {hub_name}. Tried: " + "; ".join(tried)
        + f". Put timm's {hf_repo} in the Hugging Face cache, or point {DINOV2_ENV} (or dinov2=...) at a file or folder."
    )


def load_dinov2(hub_name: str, source: Optional[Union[str, Path]] = None, device="cpu") -> DinoV2Encoder:
    """A :class:`DinoV2Encoder` for a torch.hub name with weights from :func:`resolve_dinov2_weights`."""
    path = resolve_dinov2_weights(hub_name, source)
    arch = DINOV2_HUB_NAMES[hub_name][0]
    with torch.device("meta"):
        enc = DinoV2Encoder(arch, img_size=518)
    enc = enc.to_empty(device="cpu")
    enc.load_weights(_read_weights(path), source=str(path))
    return enc.to(device).eval()

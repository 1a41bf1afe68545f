"""Reading and writing TRELLIS-format checkpoints (safetensors + JSON only).

A model folder holds ``pipeline.json`` and, for each network, ``ckpts/NAME.json``
(``{"name": class, "args": {...}}``) and ``ckpts/NAME.safetensors``. Folders resolve locally or as a
Hugging Face repo id through ``huggingface_hub`` (its cache and ``HF_HUB_OFFLINE`` are respected).
Every problem is an error naming the file — never a silent fallback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from .registry import build
from .storage import (CheckpointError, PathLike, check_state_dict, file_fingerprint, read_json, read_safetensors,
                      write_json, write_safetensors)

__all__ = ["CheckpointError", "check_state_dict", "file_fingerprint", "load_network", "published_dtypes", "read_json",
           "read_safetensors", "resolve_folder", "save_network", "torso_dtype", "write_json", "write_safetensors"]


# ---------------------------------------------------------------------------- dtypes
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def torso_dtype(policy: Union[str, torch.dtype], device: Union[str, torch.device], use_fp16: bool) -> torch.dtype:
    """The dtype of a network's blocks under a dtype policy.

    ``"auto"``: float16 blocks on CUDA where the checkpoint was published in fp16, float32 on CPU.
    ``"fp32"``, ``"fp16"``, ``"bf16"`` (or a ``torch.dtype``) force the block dtype; embedders, input
    and output layers and norms stay float32 in every case, as published.
    """
    if isinstance(policy, torch.dtype):
        return policy
    if policy == "auto":
        return torch.float16 if (torch.device(device).type == "cuda" and use_fp16) else torch.float32
    if policy not in _DTYPES:
        raise ValueError(f"dtype must be 'auto', 'fp32', 'fp16' or 'bf16', got {policy!r}")
    return _DTYPES[policy]


# ---------------------------------------------------------------------------- networks
def published_dtypes(name: str, args: dict) -> Dict[str, torch.dtype]:
    """The dtype each state-dict entry has in a published checkpoint of this network."""
    with torch.device("meta"):
        model = build(name, **args)
    return {k: v.dtype for k, v in model.state_dict().items()}


def load_network(
    prefix: PathLike,
    device: Union[str, torch.device] = "cpu",
    dtype: Union[str, torch.dtype] = "auto",
    fetch: Optional[Callable[[str], Path]] = None,
) -> nn.Module:
    """Load ``PREFIX.json`` + ``PREFIX.safetensors`` into a freshly built network.

    ``fetch(relative name)`` maps file names to local paths (used for Hugging Face repos).
    """
    prefix = str(prefix)
    cfg_path = fetch(prefix + ".json") if fetch else Path(prefix + ".json")
    config = read_json(cfg_path)
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(f"{cfg_path} must hold {{'name': class, 'args': {{...}}}}")
    name, args = config["name"], dict(config.get("args", {}))
    weights_path = fetch(prefix + ".safetensors") if fetch else Path(prefix + ".safetensors")
    state_dict = read_safetensors(weights_path)
    return network_from_state_dict(name, args, state_dict, str(weights_path), device, dtype)


def network_from_state_dict(name, args, state_dict, source, device="cpu", dtype="auto") -> nn.Module:
    use_fp16 = bool(args.get("use_fp16", False))
    block_dtype = torso_dtype(dtype, device, use_fp16)
    build_args = dict(args)
    if "use_fp16" in build_args:
        build_args["use_fp16"] = False
    with torch.device("meta"):
        model = build(name, **build_args)
    if hasattr(model, "load_weights"):  # e.g. the DINOv2 encoder (timm or original key format)
        model = model.to_empty(device="cpu")
        model.load_weights(state_dict, source)
        return model.to(device).eval()
    check_state_dict(model, state_dict, source)
    if hasattr(model, "set_torso_dtype"):
        model.set_torso_dtype(block_dtype)
    model = model.to_empty(device=device)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def save_network(model: nn.Module, prefix: PathLike, name: str, args: dict) -> None:
    """Write ``PREFIX.json`` and ``PREFIX.safetensors`` in the published layout and dtypes."""
    prefix = Path(prefix)
    if hasattr(model, "export_state_dict"):
        tensors = model.export_state_dict()
    else:
        dtypes = published_dtypes(name, args)
        tensors = {k: v.to(dtypes[k]) for k, v in model.state_dict().items()}
    write_safetensors(prefix.with_name(prefix.name + ".safetensors"), tensors)
    write_json(prefix.with_name(prefix.name + ".json"), {"name": name, "args": args})


# ---------------------------------------------------------------------------- folders / repos
def resolve_folder(path_or_repo: PathLike) -> Tuple[str, Callable[[str], Path]]:
    """``(label, fetch)`` for a local model folder or a Hugging Face repo id.

    ``fetch(relative path)`` returns a local file path; for a repo it goes through
    ``hf_hub_download`` (cached files are used; ``HF_HUB_OFFLINE=1`` never touches the network).
    """
    p = Path(path_or_repo).expanduser()
    if p.is_dir():
        if not (p / "pipeline.json").is_file():
            raise CheckpointError(f"missing checkpoint file: {p / 'pipeline.json'}")
        return str(p), lambda rel: p / rel
    spec = str(path_or_repo)
    if spec.count("/") != 1 or p.exists():
        raise CheckpointError(f"{spec!r} is neither a model folder (with pipeline.json) nor a Hugging Face repo id")

    def fetch(rel: str) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(spec, rel))
        except Exception as e:
            raise CheckpointError(
                f"cannot get {rel} of Hugging Face repo {spec!r} (from the cache or, when online, the hub): "
                f"{type(e).__name__}: {e}"
            ) from None

    fetch("pipeline.json")
    return spec, fetch

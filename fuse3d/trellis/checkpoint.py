"""Reading and writing TRELLIS-format checkpoints (safetensors + JSON only).

A model folder holds ``pipeline.json`` and, for each network, ``ckpts/NAME.json``
(``{"name": class, "args": {...}}``) and ``ckpts/NAME.safetensors``. Folders resolve locally or as a
Hugging Face repo id through ``huggingface_hub`` (its cache and ``HF_HUB_OFFLINE`` are respected).
Every problem is an error naming the file — never a silent fallback.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from .registry import build

PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the network it describes."""


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


# ---------------------------------------------------------------------------- files
def read_json(path: PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def read_safetensors(path: PathLike) -> Dict[str, torch.Tensor]:
    """All tensors of a safetensors file (on CPU); an unreadable file is a :class:`CheckpointError`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file: {path}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt headers/data
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {e}") from None


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_safetensors(path: PathLike, tensors: Dict[str, torch.Tensor], metadata: Optional[dict] = None) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


# ---------------------------------------------------------------------------- state dicts
def check_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Strict key and shape check; the error names ``source``, the key and both shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():  # first mismatch in the network's own order
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape):
            problems.append(f"key {k!r}: expected shape {list(v.shape)}, found {list(state_dict[k].shape)}")
            break
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))


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


def file_fingerprint(path: PathLike, h=None):
    """Update (or start) a SHA-256 with a file's identity: its size and, for safetensors, its header.

    Reading the header (names, dtypes, shapes, offsets) instead of gigabytes of weights keeps this
    instant; two checkpoints with identical headers and sizes but different values would collide,
    which is why fuse3d also keys on the model folder's JSON files.
    """
    import hashlib
    import struct

    h = h or hashlib.sha256()
    path = Path(path)
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        if path.suffix == ".safetensors" and size >= 8:
            (n,) = struct.unpack("<Q", f.read(8))
            h.update(f.read(min(n, 64 << 20)))
            f.seek(max(size - (1 << 20), 8 + n))  # and the last MiB of tensor data
            h.update(f.read())
        else:
            h.update(f.read())
    return h

"""Files of fuse3d: safetensors + JSON only, written atomically; fingerprints; strict state-dict checks.

:func:`atomic_write` is the one way fuse3d writes a file: a temporary file in the same folder,
flushed to disk (``fsync``), then renamed over the target, so readers never see a partial file and
an interrupted write leaves nothing behind. Checkpoints, the stage cache and the training data all
go through it.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn as nn

PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the network it describes."""


def atomic_write(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename; mode 0644). An OS error
    propagates after the temporary file is removed; so does an interrupt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


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


def write_json(path: PathLike, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_safetensors(path: PathLike, tensors: Dict[str, torch.Tensor], metadata: Optional[dict] = None) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write(path, data)


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

"""Helpers shared by the asset modules: array conversion and reading decoder outputs."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import numpy as np
import torch

from ..trellis.sparse import SparseTensor

ArrayLike = Union[np.ndarray, torch.Tensor]


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A NumPy view or copy of an array or (detached, CPU) tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def decoder_fields(decoder, out: SparseTensor, names: Sequence[str], batch: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The voxels and named fields of one batch element of ``decoder.decode_features(...)``.

    Args:
        decoder: anything with ``feature_layout`` (name → ``(start, stop, shape)``), such as the
            decoders of :mod:`fuse3d.trellis.vae`.
        out: the decoder's output.
        names: fields to read.
        batch: batch element to read.

    Returns:
        ``coords [N, 3]`` (int64, x/y/z, on the CPU) and ``{name: [N, *shape]}`` (float32, on the CPU).
    """
    if not isinstance(out, SparseTensor):
        raise TypeError(f"expected the SparseTensor returned by decode_features, got {type(out).__name__}")
    layout = decoder.feature_layout
    channels = max(stop for _, stop, _ in layout.values())
    if out.feats.ndim != 2 or out.feats.shape[1] != channels:
        raise ValueError(
            f"decoder output has feats {tuple(out.feats.shape)} but the decoder's feature_layout describes "
            f"{channels} channels per voxel; pass the output of this decoder's decode_features"
        )
    if not 0 <= batch < out.batch_size:
        raise ValueError(f"batch={batch} is out of range for a decoder output of batch size {out.batch_size}")
    missing = [n for n in names if n not in layout]
    if missing:
        raise ValueError(f"decoder output has no field(s) {missing}; its fields are {list(layout)}")
    rows = (out.coords[:, 0] == batch).cpu()
    feats = out.feats.detach().cpu()[rows].float()
    coords = out.coords.cpu()[rows, 1:].long()
    fields = {}
    for name in names:
        start, stop, shape = layout[name]
        fields[name] = feats[:, start:stop].reshape(-1, *shape)
    return coords, fields

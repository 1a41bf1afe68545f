"""Checkpoint class names → network constructors."""
from __future__ import annotations

from typing import Dict, Type

import torch.nn as nn

from .dinov2 import DinoV2Encoder
from .flows import SLatFlowModel, SparseStructureFlowModel
from .vae import (
    SLatEncoder,
    SLatGaussianDecoder,
    SLatMeshDecoder,
    SLatRadianceFieldDecoder,
    SparseStructureDecoder,
    SparseStructureEncoder,
)

NETWORKS: Dict[str, Type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        SparseStructureFlowModel,
        SLatFlowModel,
        SparseStructureEncoder,
        SparseStructureDecoder,
        SLatEncoder,
        SLatGaussianDecoder,
        SLatMeshDecoder,
        SLatRadianceFieldDecoder,
        DinoV2Encoder,
    )
}
# The published "Elastic" variants differ only in training-time memory management.
for _name in ("SLatFlowModel", "SLatEncoder", "SLatGaussianDecoder", "SLatMeshDecoder", "SLatRadianceFieldDecoder"):
    NETWORKS["Elastic" + _name] = NETWORKS[_name]


class UnknownNetworkError(ValueError):
    pass


def build(name: str, **args) -> nn.Module:
    """Build a network from its checkpoint class name and constructor args (as in ``ckpts/NAME.json``).

    With ``use_fp16=True`` the blocks are float16, as published; everything else is float32.
    Build on the meta device (``with torch.device("meta"): build(...)``) to inspect a full-size network
    without allocating it.
    """
    if name not in NETWORKS:
        raise UnknownNetworkError(
            f"unknown network class {name!r}; fuse3d.trellis knows: {', '.join(sorted(NETWORKS))}"
        )
    try:
        model = NETWORKS[name](**args)
    except TypeError as e:
        raise TypeError(f"cannot build {name} with args {sorted(args)}: {e}") from None
    return model.eval()

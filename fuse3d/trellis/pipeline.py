"""A loaded TRELLIS image-to-3D model: networks, samplers, their parameters, normalisation, encoder.

:class:`TrellisPipeline` is an ``nn.Module`` whose children are the networks under short names, so
every attention module has a module path such as ``slat_flow.blocks.7.cross_attn``:

==================  ===========================  ==================================
attribute           ``pipeline.json`` key        network
==================  ===========================  ==================================
``ss_flow``         sparse_structure_flow_model  SparseStructureFlowModel
``ss_decoder``      sparse_structure_decoder     SparseStructureDecoder
``slat_flow``       slat_flow_model              SLatFlowModel
``slat_decoder_gs`` slat_decoder_gs              SLatGaussianDecoder
``slat_decoder_mesh`` slat_decoder_mesh          SLatMeshDecoder
``slat_decoder_rf`` slat_decoder_rf              SLatRadianceFieldDecoder
``image_encoder``   image_cond_model             DinoV2Encoder
==================  ===========================  ==================================
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ContextManager, Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoint import (CheckpointError, PathLike, file_fingerprint, load_network, read_json, resolve_folder,
                         save_network, write_json)
from .dinov2 import DINOV2_HUB_NAMES, images_to_pixels, load_dinov2
from .sampler import ModelCall, make_sampler
from .sparse import SparseTensor

MODEL_KEYS = {
    "sparse_structure_flow_model": "ss_flow",
    "sparse_structure_decoder": "ss_decoder",
    "slat_flow_model": "slat_flow",
    "slat_decoder_gs": "slat_decoder_gs",
    "slat_decoder_mesh": "slat_decoder_mesh",
    "slat_decoder_rf": "slat_decoder_rf",
}
REQUIRED = ("ss_flow", "ss_decoder", "slat_flow")
DECODERS = {"gaussian": "slat_decoder_gs", "mesh": "slat_decoder_mesh", "radiance_field": "slat_decoder_rf"}


class TrellisPipeline(nn.Module):
    """Networks + samplers of a TRELLIS image-to-3D checkpoint (see the module docstring).

    Attributes:
        ss_sampler, slat_sampler: :class:`FlowEulerSampler` s.
        ss_sampler_params, slat_sampler_params: defaults from ``pipeline.json``
            (``steps``, ``cfg_strength``, ``cfg_interval``, ``rescale_t``).
        slat_normalization: ``{"mean": [8], "std": [8]}``.
        model_name: which model this is (printed in every output).
        source: the folder or repo it was loaded from.
    """

    def __init__(self, networks: Dict[str, nn.Module], image_encoder: nn.Module, config: dict,
                 model_name: str, source: str):
        super().__init__()
        for attr in REQUIRED:
            if attr not in networks:
                raise CheckpointError(f"{source}: pipeline.json has no {attr} network")
        for attr, net in networks.items():
            self.add_module(attr, net)
        self.image_encoder = image_encoder
        #: replay every replayable sampling's flow forwards as CUDA graphs (on CUDA only; elsewhere
        #: nothing changes; see fuse3d.trellis.graphs). False is the eager switch, for debugging.
        self.cuda_graphs = True
        self.config = config
        self.model_name = model_name
        self.source = source
        ss = config["sparse_structure_sampler"]
        slat = config["slat_sampler"]
        self.ss_sampler = make_sampler(ss["name"], ss.get("args", {}))
        self.slat_sampler = make_sampler(slat["name"], slat.get("args", {}))
        self.ss_sampler_params = dict(ss.get("params", {}))
        self.slat_sampler_params = dict(slat.get("params", {}))
        norm = config["slat_normalization"]
        self.register_buffer("slat_mean", torch.tensor(norm["mean"], dtype=torch.float32), persistent=False)
        self.register_buffer("slat_std", torch.tensor(norm["std"], dtype=torch.float32), persistent=False)

    @property
    def slat_normalization(self) -> dict:
        return {"mean": self.slat_mean.tolist(), "std": self.slat_std.tolist()}

    @property
    def device(self) -> torch.device:
        return self.slat_mean.device

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, source={self.source!r}"

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_images(self, images: Union[Sequence, torch.Tensor]) -> torch.Tensor:
        """Preprocessed images (PIL, or pixels ``[B, 3, S, S]`` in [0, 1]) → tokens ``[B, T, C]``."""
        pixels = images if isinstance(images, torch.Tensor) else images_to_pixels(images, self.image_encoder.img_size)
        return self.image_encoder(pixels.to(self.device))

    # ------------------------------------------------------------------ stage 1: structure
    def structure_noise(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """``[B, C, r, r, r]`` standard normal noise, drawn on the CPU from ``seed`` (device-independent)."""
        flow = self.ss_flow
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, flow.in_channels, *[flow.resolution] * 3, generator=g).to(self.device)

    @torch.no_grad()
    def sample_structure(self, cond: torch.Tensor, seed: int = 0, progress: bool = True,
                         on_step=None, **params) -> torch.Tensor:
        """Sample the sparse structure: coords ``[N, 4] = (batch, x, y, z)`` int32, sorted.

        ``cond [B, T, C]``; ``params`` override ``ss_sampler_params``.
        """
        noise = self.structure_noise(cond.shape[0], seed)
        p = {**self.ss_sampler_params, **params}
        z = self.ss_sampler.sample(self.ss_flow, noise, cond, torch.zeros_like(cond), progress=progress,
                                   desc="Structure", on_step=on_step, cuda_graphs=self.cuda_graphs, **p).samples
        logits = self.ss_decoder(z)
        return torch.argwhere(logits > 0)[:, [0, 2, 3, 4]].int()

    # ------------------------------------------------------------------ stage 2: structured latent
    def latent_noise(self, coords: torch.Tensor, seed: int = 0) -> SparseTensor:
        """Standard normal SLAT noise on ``coords``, drawn on the CPU from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(coords.shape[0], self.slat_flow.in_channels, generator=g).to(self.device)
        return SparseTensor(feats, coords.to(self.device))

    @torch.no_grad()
    def sample_latent(self, cond: torch.Tensor, coords: torch.Tensor, seed: int = 0, noise: Optional[SparseTensor] = None,
                      neg_cond: Optional[torch.Tensor] = None, progress: bool = True,
                      call_context: Optional[Callable[[ModelCall], ContextManager]] = None,
                      on_step=None, normalize: bool = True, **params) -> SparseTensor:
        """Sample the structured latent on ``coords`` and de-normalise it (``x·std + mean``)."""
        noise = self.latent_noise(coords, seed) if noise is None else noise
        p = {**self.slat_sampler_params, **params}
        neg = torch.zeros_like(cond) if neg_cond is None else neg_cond
        slat = self.slat_sampler.sample(self.slat_flow, noise, cond, neg, progress=progress, desc="Latent",
                                        call_context=call_context, on_step=on_step, cuda_graphs=self.cuda_graphs,
                                        **p).samples
        return self.denormalize(slat) if normalize else slat

    def denormalize(self, slat: SparseTensor) -> SparseTensor:
        return slat.replace(slat.feats * self.slat_std.to(slat.feats) + self.slat_mean.to(slat.feats))

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode(self, slat: SparseTensor, formats: Sequence[str] = ("mesh", "gaussian")) -> Dict[str, SparseTensor]:
        """Raw decoder outputs (``decode_features``) for each requested format."""
        out = {}
        for fmt in formats:
            if fmt not in DECODERS:
                raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(DECODERS)}")
            attr = DECODERS[fmt]
            if not hasattr(self, attr):
                raise CheckpointError(f"{self.source} has no {attr} network for format {fmt!r}")
            out[fmt] = getattr(self, attr).decode_features(slat)
        return out


def load_pipeline(path_or_repo: PathLike, device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype] = "auto",
                  dinov2: Optional[PathLike] = None, progress: bool = True) -> TrellisPipeline:
    """Load a TRELLIS-format model folder or Hugging Face repo (e.g. ``microsoft/TRELLIS-image-large``).

    Args:
        path_or_repo: local folder holding ``pipeline.json``, or a Hugging Face repo id resolved
            through the local cache (``HF_HUB_OFFLINE=1`` is respected).
        device: where the networks live.
        dtype: ``"auto"`` (fp16 blocks on CUDA as published, fp32 on CPU), ``"fp32"``, ``"fp16"``, ``"bf16"``.
        dinov2: where DINOv2 weights are when ``pipeline.json`` names a torch.hub model such as
            ``dinov2_vitl14_reg`` (see :func:`fuse3d.trellis.dinov2.resolve_dinov2_weights`).
    """
    label, fetch = resolve_folder(path_or_repo)
    doc = read_json(fetch("pipeline.json"))
    if "args" not in doc or "models" not in doc["args"]:
        raise CheckpointError(f"{label}/pipeline.json has no args.models")
    config = doc["args"]
    for key in ("sparse_structure_sampler", "slat_sampler", "slat_normalization"):
        if key not in config:
            raise CheckpointError(f"{label}/pipeline.json has no args.{key}")
    networks: Dict[str, nn.Module] = {}
    fingerprint = file_fingerprint(fetch("pipeline.json"))
    items = [(k, v) for k, v in config["models"].items()]
    for key, rel in tqdm(items, desc="Loading networks", disable=not progress, leave=False):
        if key not in MODEL_KEYS:
            continue  # e.g. a text-conditioned sibling's extra networks
        networks[MODEL_KEYS[key]] = load_network(rel, device=device, dtype=dtype, fetch=fetch)
        for suffix in (".json", ".safetensors"):
            file_fingerprint(fetch(rel + suffix), fingerprint)
    cond_model = config.get("image_cond_model", "dinov2_vitl14_reg")
    if cond_model in DINOV2_HUB_NAMES:
        from .dinov2 import resolve_dinov2_weights

        encoder = load_dinov2(cond_model, dinov2, device=device)
        file_fingerprint(resolve_dinov2_weights(cond_model, dinov2), fingerprint)
    else:
        encoder = load_network(cond_model, device=device, dtype="fp32", fetch=fetch)
        for suffix in (".json", ".safetensors"):
            file_fingerprint(fetch(cond_model + suffix), fingerprint)
    meta = doc.get("fuse3d", {})
    name = meta.get("model_name") or (Path(label).name if Path(label).exists() else label)
    pipe = TrellisPipeline(networks, encoder, config, model_name=name, source=label)
    pipe.description = meta.get("description", "")
    pipe.fuse3d_meta = meta  # pipeline.json's "fuse3d" section, which the published loader ignores
    block_dtype = next(iter(networks["slat_flow"].blocks.parameters())).dtype
    fingerprint.update(f"{torch.device(device).type}:{block_dtype}".encode())
    pipe.fingerprint = fingerprint.hexdigest()
    return pipe.to(device)


def write_pipeline(folder: PathLike, networks: Dict[str, tuple], image_encoder: tuple, ss_sampler: dict,
                   slat_sampler: dict, slat_normalization: dict, fuse3d_meta: Optional[dict] = None) -> Path:
    """Write a TRELLIS-format model folder.

    Args:
        networks: ``{pipeline.json key: (model, ckpt name, class name, args)}``.
        image_encoder: ``(model, ckpt name)`` for a bundled encoder, or ``(None, hub name)`` to name a
            torch.hub DINOv2 model as the published ``pipeline.json`` does.
        ss_sampler, slat_sampler: ``{"name", "args", "params"}``.
        fuse3d_meta: extra ``"fuse3d"`` section (e.g. ``model_name``), ignored by the published loader.
    """
    folder = Path(folder)
    models = {}
    for key, (model, ckpt, cls, args) in networks.items():
        save_network(model, folder / "ckpts" / ckpt, cls, args)
        models[key] = f"ckpts/{ckpt}"
    enc_model, enc_name = image_encoder
    if enc_model is not None:
        save_network(enc_model, folder / "ckpts" / enc_name, "DinoV2Encoder", enc_model.config)
        enc_name = f"ckpts/{enc_name}"
    doc = {
        "name": "TrellisImageTo3DPipeline",
        "args": {
            "models": models,
            "sparse_structure_sampler": ss_sampler,
            "slat_sampler": slat_sampler,
            "slat_normalization": slat_normalization,
            "image_cond_model": enc_name,
        },
    }
    if fuse3d_meta:
        doc["fuse3d"] = fuse3d_meta
    write_json(folder / "pipeline.json", doc)
    return folder

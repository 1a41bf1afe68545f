"""TRELLIS-image-large networks in plain PyTorch: checkpoint-compatible and hookable.

``build(name, **args)`` makes a network from its checkpoint class name; ``load_pipeline(path_or_repo)``
loads a whole TRELLIS-format model folder or Hugging Face repo; ``SparseTensor`` holds voxel features.
"""
from .attention import (ExplicitProcessor, MultiHeadAttention, SDPAProcessor, attn_processors, set_attn_processor,
                        use_attn_processors)
from .pipeline import TrellisPipeline, load_pipeline, write_pipeline
from .registry import NETWORKS, build
from .sampler import FlowEulerSampler, ModelCall, SamplerOutput
from .sparse import SparseTensor

__all__ = ["ExplicitProcessor", "MultiHeadAttention", "SDPAProcessor", "attn_processors", "set_attn_processor",
           "use_attn_processors", "TrellisPipeline", "load_pipeline", "write_pipeline", "NETWORKS", "build",
           "FlowEulerSampler", "ModelCall", "SamplerOutput", "SparseTensor"]

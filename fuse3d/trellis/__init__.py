"""TRELLIS-image-large networks in plain PyTorch: checkpoint-compatible and hookable."""
from .attention import MultiHeadAttention, SDPAProcessor, ExplicitProcessor, attn_processors, set_attn_processor
from .registry import NETWORKS, build
from .sampler import FlowEulerSampler, ModelCall, SamplerOutput
from .sparse import SparseTensor

"""Sampler presets: named sampler settings a run can ask for (``sampler=...``).

``"pipeline"`` keeps the model's ``pipeline.json``. ``"published-demo"`` is the published Fuse3D
demo's: the structure in 12 steps at CFG 7.5, the latent in 12 steps at CFG 3.0 (``app.py``'s slider
defaults), on top of ``pipeline.json``'s other settings (``cfg_interval``, ``rescale_t``).
"""
from __future__ import annotations

from typing import Optional

from ..trellis.sampler import sampler_params

SAMPLER_PRESETS = {
    "pipeline": {"structure": {}, "latent": {}},
    "published-demo": {"structure": {"steps": 12, "cfg_strength": 7.5}, "latent": {"steps": 12, "cfg_strength": 3.0}},
}


def preset_sampler(base: dict, preset: str, kind: str, steps: Optional[int] = None,
                   cfg_strength: Optional[float] = None) -> dict:
    """``base`` (``pipeline.json``'s ``kind`` sampler: ``"structure"`` or ``"latent"``) with the preset's
    values, then the explicit ``steps`` / ``cfg_strength`` on top."""
    if preset not in SAMPLER_PRESETS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLER_PRESETS)}, got {preset!r}")
    return sampler_params({**base, **SAMPLER_PRESETS[preset][kind]}, steps, cfg_strength)

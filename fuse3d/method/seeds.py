"""Every sampling of a run gets its own reproducible seed, derived from the run's ``seed``."""
from __future__ import annotations

import hashlib


def derive_seed(seed: int, purpose: str) -> int:
    """An independent, reproducible seed for one use of the run's seed (e.g. ``"structure"``,
    ``"capture:global"``, ``"final"``): the first 31 bits of ``sha256("seed:purpose")``."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little") & 0x7FFFFFFF

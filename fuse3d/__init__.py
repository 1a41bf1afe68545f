"""fuse3d: an explainability toolkit for Fuse3D (multi-image controlled 3D generation on TRELLIS).

``from fuse3d import Fuse3D, Condition`` is all most users need; networks live in
:mod:`fuse3d.trellis`, the method's pure functions in :mod:`fuse3d.method`, views in the separate
``viz`` package.
"""
from .conditions import Condition, ConditionError
from .params import Fuse3DParams
from .pipeline import Fuse3D, Run

__version__ = "0.1.0"
__all__ = ["Fuse3D", "Run", "Condition", "ConditionError", "Fuse3DParams", "__version__"]

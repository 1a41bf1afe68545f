"""fuse3d: an explainability toolkit for Fuse3D (multi-image controlled 3D generation on TRELLIS)."""
__version__ = "0.1.0"

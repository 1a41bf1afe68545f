"""Which model fuse3d runs by default, and where it lives.

The default is the project's own: the trained small model bundled under ``fuse3d/weights/`` once it
exists, otherwise the tiny random-weight model, written on first use (deterministically, from code)
to ``$FUSE3D_HOME/models`` (default ``~/.cache/fuse3d/models``). Point fuse3d at real weights with a
folder or Hugging Face repo id (``Fuse3D.from_pretrained("microsoft/TRELLIS-image-large")``) or the
``FUSE3D_MODEL`` environment variable.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

BUNDLED = Path(__file__).parent / "weights"
TINY_DIR_NAME = "fuse3d-tiny-random-v2"
SMALL_MODEL_NAME = "fuse3d-small"  # the trained small model (``python -m fuse3d.train.train``)


def fuse3d_home() -> Path:
    return Path(os.environ.get("FUSE3D_HOME", Path.home() / ".cache" / "fuse3d"))


def bundled_models() -> list:
    """Model folders shipped inside the package (``fuse3d/weights/<name>/pipeline.json``)."""
    if not BUNDLED.is_dir():
        return []
    return sorted(p for p in BUNDLED.iterdir() if (p / "pipeline.json").is_file())


def tiny_model_path() -> Path:
    """The tiny random-weight model, written on first use."""
    from .tiny_model import write_tiny_model

    target = fuse3d_home() / "models" / TINY_DIR_NAME
    if (target / "pipeline.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{TINY_DIR_NAME}."))
    try:
        write_tiny_model(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def default_model_path() -> Path:
    """The bundled trained model if present, else the tiny random-weight model."""
    bundled = bundled_models()
    return bundled[0] if bundled else tiny_model_path()

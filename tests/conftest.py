import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REFERENCE = Path(__file__).parent / "fixtures" / "reference"


def load_reference(name: str):
    """``(config, params, tensors)`` of a reference fixture file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = REFERENCE / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["config"])
    data = load_file(str(path))
    params = {k[len("param."):]: v for k, v in data.items() if k.startswith("param.")}
    tensors = {k: v for k, v in data.items() if not k.startswith("param.")}
    return config, params, tensors


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from fuse3d.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_dir):
    from fuse3d.trellis.pipeline import load_pipeline

    return load_pipeline(tiny_model_dir, progress=False)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class NetworkCounter:
    """Counts forward calls of every network of a pipeline (flows, decoders, image encoder); use as a
    context manager or call :meth:`remove`."""

    def __init__(self, trellis):
        self.calls = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in trellis.named_children()]

    def _hook(self, name):
        def hook(module, args, out):
            self.calls[name] = self.calls.get(name, 0) + 1
        return hook

    def total(self):
        return sum(self.calls.values())

    def remove(self):
        for h in self.handles:
            h.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def rgba(color, box, size=(160, 160)) -> Image.Image:
    """An RGBA test image: a coloured box on transparent black."""
    a = np.zeros((size[1], size[0], 4), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1, :3] = color
    a[y0:y1, x0:x1, 3] = 255
    return Image.fromarray(a)


def two_locals():
    """``(global, [top, bottom])``: the pipeline tests' conditions (a mask and a box region)."""
    from fuse3d import Condition

    g = Condition(rgba((200, 60, 60), (30, 30, 130, 130)), name="global")
    top = np.zeros((160, 160), bool)
    top[20:60, 20:140] = True
    l1 = Condition(rgba((60, 200, 60), (20, 20, 140, 140)), top, name="top")
    l2 = Condition.from_box(rgba((60, 60, 200), (40, 10, 120, 150)), (40, 100, 120, 150), name="bottom")
    return g, [l1, l2]


@pytest.fixture(scope="session")
def conditions():
    return two_locals()
